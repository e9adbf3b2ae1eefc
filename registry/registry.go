package registry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/roster-dev/roster/registry/liveness"
)

// Config configures a Registry.
type Config struct {
	// Client is the etcd client the registry works through (required).
	Client *clientv3.Client
	// Node, Site and Pool describe the node serving the API; new sessions
	// record Node and Site, and take Pool unless they name one.
	Node, Site, Pool string
	// DefaultTTL, MinTTL and MaxTTL bound session TTLs (whole seconds).
	DefaultTTL, MinTTL, MaxTTL time.Duration
	// TombstoneTTL is how long the reason a session ended stays known.
	TombstoneTTL time.Duration
	// ShutdownRetention is how long a finished (done or cancelled) shutdown
	// request is kept for GET /v1/shutdowns; the duty leader then deletes it.
	ShutdownRetention time.Duration
	// RequestTimeout bounds each etcd call a request makes.
	RequestTimeout time.Duration
	// RenewStreams is how many long-lived LeaseKeepAlive streams carry heartbeats.
	RenewStreams int
	// LeaderURL, when set, returns the etcd leader's client URL ("" when
	// unknown), where the keepalive streams go (see leaderConns); without it
	// the registry asks etcd's Maintenance Status of the client's first
	// endpoint. A node with an embedded member gives cluster.Node's
	// EtcdLeaderURL, which asks no member that may be leaving.
	LeaderURL func(context.Context) string
	// AliveInterval is how often the registry rewrites the cluster's alive
	// beacon; a beacon older than two intervals at start means the whole
	// cluster was down (see Start).
	AliveInterval time.Duration
	// HistoryRetention is how long the history of ended sessions keeps a
	// record (see RecordHistory); 0 keeps no history. The duty leader's
	// setting counts, so give every node the same.
	HistoryRetention time.Duration
	// HistoryPruneInterval is how often the history duty deletes the records
	// older than HistoryRetention.
	HistoryPruneInterval time.Duration
	// AuditRetention is how long the audit log keeps a record (see
	// Audit); 0 keeps no audit log: the node writes none, and the duty
	// leader deletes it. Give every node the same.
	AuditRetention time.Duration
	// CleanupInterval is how often the clean-up duty (RunCleanup) looks for
	// sessions to end.
	CleanupInterval time.Duration
	// Logger receives the registry's own logs; nil discards them.
	Logger *slog.Logger
	// MaxTxnOps is the most operations (and compares) the etcd cluster takes in one
	// transaction, its --max-txn-ops; 0 means etcd's default, 128. The liveness view's
	// end transactions fill up to it, so a storm of lapsed sessions takes fewer raft
	// entries; everything else stays within 100. Where a member refuses a transaction
	// as too large (a member with a lower limit), the view falls back to 100.
	MaxTxnOps int
	// Liveness is the node's view of the last heartbeat of every session on any
	// node (see RunLiveness); the registry notes every heartbeat and open in it.
	// Nil leaves expiry to the etcd leases alone. The registry does not own it:
	// its owner starts and closes it.
	Liveness *liveness.View
}

// DefaultConfig returns a Config with the documented defaults and no client.
func DefaultConfig() Config {
	return Config{
		Pool:              "default",
		DefaultTTL:        60 * time.Second,
		MinTTL:            5 * time.Second,
		MaxTTL:            24 * time.Hour,
		TombstoneTTL:      15 * time.Minute,
		ShutdownRetention: 7 * 24 * time.Hour,
		RequestTimeout:    5 * time.Second,
		RenewStreams:      4,
		AliveInterval:     5 * time.Second,

		HistoryRetention:     DefaultHistoryRetention,
		HistoryPruneInterval: time.Minute,
		AuditRetention:       DefaultAuditRetention,
		CleanupInterval:      10 * time.Second,
	}
}

// Validate checks the configuration and names the first wrong field.
func (c *Config) Validate() error {
	if c.Client == nil {
		return errors.New("registry: config: Client is required")
	}
	return c.ValidateSettings()
}

// ValidateSettings checks everything but the client, so a node can refuse
// bad flags before it starts etcd.
func (c *Config) ValidateSettings() error {
	switch {
	case c.Node == "":
		return errors.New("registry: config: Node is required")
	case c.MinTTL < time.Second || c.MinTTL%time.Second != 0:
		return fmt.Errorf("registry: config: min TTL %s must be whole seconds, at least 1s", c.MinTTL)
	case c.MaxTTL < c.MinTTL || c.MaxTTL%time.Second != 0:
		return fmt.Errorf("registry: config: max TTL %s must be whole seconds and at least the min TTL %s", c.MaxTTL, c.MinTTL)
	case c.DefaultTTL < c.MinTTL || c.DefaultTTL > c.MaxTTL || c.DefaultTTL%time.Second != 0:
		return fmt.Errorf("registry: config: default TTL %s must be whole seconds between %s and %s", c.DefaultTTL, c.MinTTL, c.MaxTTL)
	case c.TombstoneTTL < time.Second:
		return fmt.Errorf("registry: config: tombstone TTL %s must be at least 1s", c.TombstoneTTL)
	case c.ShutdownRetention < time.Second:
		return fmt.Errorf("registry: config: shutdown retention %s must be at least 1s", c.ShutdownRetention)
	case c.RequestTimeout <= 0:
		return fmt.Errorf("registry: config: request timeout %s must be positive", c.RequestTimeout)
	case c.RenewStreams < 1 || c.RenewStreams > 64:
		return fmt.Errorf("registry: config: renew streams %d must be 1-64", c.RenewStreams)
	case c.AliveInterval < 100*time.Millisecond:
		return fmt.Errorf("registry: config: alive interval %s must be at least 100ms", c.AliveInterval)
	case c.HistoryRetention < 0:
		return fmt.Errorf("registry: config: history retention %s must not be negative (0 keeps no history)", c.HistoryRetention)
	case c.AuditRetention < 0:
		return fmt.Errorf("registry: config: audit retention %s must not be negative (0 keeps no audit log)", c.AuditRetention)
	case c.HistoryPruneInterval <= 0:
		return fmt.Errorf("registry: config: history prune interval %s must be positive", c.HistoryPruneInterval)
	case c.MaxTxnOps != 0 && c.MaxTxnOps < maxTxnOps:
		return fmt.Errorf("registry: config: max txn ops %d must be 0 (etcd's default) or at least %d", c.MaxTxnOps, maxTxnOps)
	case c.CleanupInterval < 100*time.Millisecond:
		return fmt.Errorf("registry: config: clean-up interval %s must be at least 100ms", c.CleanupInterval)
	}
	if err := checkName("node", c.Node); err != nil {
		return fmt.Errorf("registry: config: %w", err)
	}
	if err := checkName("pool", c.Pool); err != nil {
		return fmt.Errorf("registry: config: %w", err)
	}
	if c.Site != "" {
		if err := checkName("site", c.Site); err != nil {
			return fmt.Errorf("registry: config: %w", err)
		}
	}
	return nil
}

// Registry is the session registry on top of an etcd client. Its methods
// are safe for concurrent use. It does not own the client: Close leaves it
// open.
type Registry struct {
	cfg     Config
	cli     *clientv3.Client
	log     *slog.Logger
	renewer *renewer

	// live caches the records of live sessions (their fields never change)
	// so a heartbeat costs one renewal and no read. The session watch
	// evicts ended sessions; a heartbeat that races an eviction still
	// finds the lease revoked.
	liveMu      sync.RWMutex
	live        map[string]*record
	evictedUpTo int64 // the revision of the newest deletion evicted

	// watched is how far the session watch has handled deletions.
	watched watchProgress

	// deadlines is what this node has seen of its sessions' lease deadlines
	// (listings show it as expires_in_seconds).
	deadlines leaseDeadlines
	// noRangeStream is set once etcd has answered that it has no
	// RangeStream (before 3.7): listings then read ranges in batches.
	noRangeStream atomic.Bool

	tombMu        sync.Mutex
	tombLease     clientv3.LeaseID
	tombLeaseFrom time.Time

	// shutMu guards pending, the node's cache of pending shutdown requests by id
	// (watchShutdowns keeps it; heartbeats read it).
	shutMu  sync.RWMutex
	pending map[string]*Shutdown
	// pendingChanged is closed and replaced whenever pending changes.
	pendingChanged chan struct{}
	// shutEnds is when this node's session watch last saw a session end by
	// each shutdown request (see noteShutdownEnds); guarded by shutMu.
	shutEnds map[string]time.Time

	// actMu guards policies, the node's copy of the clean-up policies
	// (watchPolicies keeps it), and lastActive, when this node last wrote
	// each session's activity (see noteActivity).
	actMu      sync.Mutex
	policies   policySet
	lastActive map[string]time.Time

	// audit writes the audit records that belong to no other transaction.
	audit auditor
	// lapseLead counts the liveness duty's runs on this node (RunLiveness): while it
	// is not 0 the node ends lapsed sessions at once; lapseBackstop is how long after
	// their lapse it ends them otherwise (ns).
	lapseLead     atomic.Int32
	lapseBackstop atomic.Int64
	// endOpsLimit, once a member refused an end transaction as too large, is the
	// limit the liveness view's end transactions keep to instead of Config.MaxTxnOps.
	endOpsLimit atomic.Int64
	etcdSeen    continuity // when this node last read etcd (see probeEtcd)

	// rights is the node's copy of the user master and the licences
	// (watchRights keeps it); leases keeps pre-granted leases for opens.
	rights rightsCache
	leases leasePool

	// streamsMu orders the start of event streams (goTracked) before
	// Close's wait for them.
	streamsMu sync.Mutex
	closing   bool

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup
	once   sync.Once
}

// New builds a registry; it starts nothing.
func New(cfg Config) (*Registry, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &Registry{cfg: cfg, cli: cfg.Client, log: log, ctx: ctx, cancel: cancel, live: map[string]*record{}, lastActive: map[string]time.Time{}}
	r.policies = newPolicySet(nil)
	r.watched.ch = make(chan struct{})
	r.pendingChanged = make(chan struct{})
	r.audit.q = make(chan auditWrite, auditQueue)
	r.audit.tokens, r.audit.refilled = authFailBurst, time.Now()
	r.renewer = newRenewer(ctx, cfg.Client, cfg.RenewStreams)
	r.renewer.leader.lookup = cfg.LeaderURL
	r.lapseBackstop.Store(int64(LapseBackstop + time.Duration(mrand.Int64N(int64(LapseBackstop/4)))))
	r.renewer.tell(&r.deadlines)
	return r, nil
}

// Start ends the sessions that expired while the whole cluster was down
// (see expireDowntime), then starts the background work: the watch on
// session deletions that evicts the cache and records a tombstone for
// every session whose lease expired, the alive beacon, the watches that
// keep the pending shutdown requests and the clean-up policies, the
// shutdown backstop, the watch that records dead shared connections, the one
// that keeps the node's copy of the user master and the licences for opens
// (see rightsCache), and, with a liveness view, the ending of lapsed
// sessions (see RunLiveness). If the downtime check cannot read etcd, Start
// returns its error and starts nothing; cancelling ctx abandons the check.
func (r *Registry) Start(ctx context.Context) error {
	if err := r.expireDowntime(ctx); err != nil {
		return err
	}
	r.wg.Add(2)
	go func() {
		defer r.wg.Done()
		r.watchSessions(r.ctx)
	}()
	go func() {
		defer r.wg.Done()
		r.beacon(r.ctx)
	}()
	r.wg.Add(2)
	go func() {
		defer r.wg.Done()
		r.watchShutdowns(r.ctx)
	}()
	go func() {
		defer r.wg.Done()
		r.backstopShutdowns(r.ctx)
	}()
	r.wg.Add(2)
	go func() {
		defer r.wg.Done()
		r.watchConnections(r.ctx)
	}()
	go func() {
		defer r.wg.Done()
		r.watchPolicies(r.ctx)
	}()
	if v := r.cfg.Liveness; v != nil {
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			r.endLapses(r.ctx, v)
		}()
	}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		r.watchRights(r.ctx)
	}()
	return nil
}

// maxCached bounds the live-session cache (about 500 bytes an entry).
const maxCached = 1 << 20

func (r *Registry) cached(id string) *record {
	r.liveMu.RLock()
	defer r.liveMu.RUnlock()
	return r.live[id]
}

// remember caches a record read at revision rev, unless the watch has
// already evicted a deletion after rev: then the record may be dead and
// caching it would revive it.
func (r *Registry) remember(rec *record, rev int64) {
	r.liveMu.Lock()
	defer r.liveMu.Unlock()
	if r.evictedUpTo < rev && len(r.live) < maxCached {
		r.live[rec.ID] = rec
	}
}

// evict drops a session deleted at revision rev; the watch calls it.
func (r *Registry) evict(id string, rev int64) {
	r.liveMu.Lock()
	defer r.liveMu.Unlock()
	r.evictedUpTo = max(r.evictedUpTo, rev)
	delete(r.live, id)
	r.forgetActivity(id)
	if r.cfg.Liveness != nil {
		r.cfg.Liveness.Forget(id)
	}
}

func (r *Registry) forget(id string) {
	r.liveMu.Lock()
	defer r.liveMu.Unlock()
	delete(r.live, id)
}

func (r *Registry) forgetAll() {
	r.liveMu.Lock()
	defer r.liveMu.Unlock()
	clear(r.live)
}

// Close stops the registry: (1) it refuses new event streams, (2) cancels
// the background work, the event streams and the heartbeat streams, (3)
// waits for their goroutines, (4) revokes the leases left in the lease
// pool, best effort. Safe to call twice.
func (r *Registry) Close() {
	r.once.Do(func() {
		r.streamsMu.Lock()
		r.closing = true
		r.streamsMu.Unlock()
		r.cancel()
		r.renewer.close()
		r.wg.Wait()
		r.closeLeases()
	})
}

// opCtx bounds one etcd call of a request.
func (r *Registry) opCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, r.cfg.RequestTimeout)
}

// translate turns etcd client errors into the registry's sentinels.
func translate(op string, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.Canceled) {
		return fmt.Errorf("registry: %s: %w", op, err)
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, rpctypes.ErrNoLeader) ||
		errors.Is(err, rpctypes.ErrTimeout) || errors.Is(err, rpctypes.ErrTimeoutDueToLeaderFail) ||
		errors.Is(err, rpctypes.ErrTimeoutDueToConnectionLost) || errors.Is(err, rpctypes.ErrGRPCNoLeader) ||
		isUnavailable(err) {
		return fmt.Errorf("%w: %s: %v", ErrUnavailable, op, err)
	}
	return fmt.Errorf("registry: %s: %w", op, err)
}

// Ready reports whether a linearizable read succeeds: the node can serve.
func (r *Registry) Ready(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	_, err := r.cli.Get(ctx, root+"ready-probe", clientv3.WithCountOnly())
	return translate("readiness read", err)
}
