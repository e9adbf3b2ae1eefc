package ha

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

const (
	defaultPrefix = "/roster/v1/ha/leader/"
	defaultTTL    = 2 * time.Second

	// restartBackoff is how long a duty that returned while its node leads
	// waits before it runs again.
	restartBackoff = time.Second
	// retryBackoff is how long the runner waits after a failed grant or
	// campaign before it tries again.
	retryBackoff = time.Second
	// requestTimeout bounds the grant, the campaign's put and the reads.
	requestTimeout = 5 * time.Second
	// renewRetry is how soon a failed lease renewal is tried again.
	renewRetry = 100 * time.Millisecond
)

// Why a lead or a session ended; they appear in the logs as the reason.
var (
	errClosed       = errors.New("ha: runner closed")
	errLeaseExpired = errors.New("ha: election lease expired")
	errRenewLate    = errors.New("ha: election lease not renewed in time")
	errKeyDeleted   = errors.New("ha: leader key deleted")
	errWatchEnded   = errors.New("ha: watch on the leader key ended")
)

// Duty is work that runs on one node of the cluster at a time.
type Duty struct {
	// Name names the duty in logs.
	Name string
	// Run runs while this node leads; ctx is cancelled when leadership is
	// lost or the runner closes. If Run returns before that (error or nil),
	// it is logged and started again after a short backoff (1 s) while
	// still leading. Run must return soon after ctx is cancelled: a closing
	// runner resigns only once every duty has returned, but when this node
	// is cut off from etcd a successor may start a quarter TTL after the
	// cancellation.
	Run func(ctx context.Context) error
}

// Config configures a Runner. Zero Prefix and TTL take their defaults.
type Config struct {
	// Client is the etcd client the runner campaigns through (required).
	// The runner does not own it: Close leaves it open.
	Client *clientv3.Client
	// Node is this node's name, required; it is the election value that
	// Leader returns.
	Node string
	// Prefix is the election prefix, default "/roster/v1/ha/leader/". It
	// must end in "/". Every runner of a cluster uses the same one.
	Prefix string
	// TTL is the election session's lease TTL, whole seconds, default 2s,
	// at least 1s. A dead leader is replaced within about TTL + 0.5 s. etcd
	// raises it to its own minimum (2 s with default election settings).
	TTL time.Duration
	// Logger receives leadership changes (info) and duty failures (warn);
	// nil discards them.
	Logger *slog.Logger
}

// Validate checks the configuration and names the first wrong field. It
// changes nothing; zero Prefix and TTL are valid and mean the defaults.
func (c *Config) Validate() error {
	switch {
	case c.Client == nil:
		return errors.New("ha: config: Client is required")
	case c.Node == "":
		return errors.New("ha: config: Node is required")
	case c.Prefix != "" && !strings.HasSuffix(c.Prefix, "/"):
		return fmt.Errorf("ha: config: Prefix %q must end in \"/\"", c.Prefix)
	case c.TTL != 0 && (c.TTL < time.Second || c.TTL%time.Second != 0):
		return fmt.Errorf("ha: config: TTL %s must be whole seconds, at least 1s", c.TTL)
	}
	return nil
}

// Runner campaigns for the duty lead and runs the duties while this node
// holds it. Its methods are safe for concurrent use.
type Runner struct {
	cfg    Config
	cli    *clientv3.Client
	log    *slog.Logger
	duties []Duty

	leading   atomic.Bool
	ttlLogged atomic.Bool // a granted TTL other than the configured one was logged

	mu       sync.Mutex
	closed   bool
	cancel   context.CancelCauseFunc // stops the loop; nil until Start
	done     chan struct{}           // closed when the loop has returned
	closeErr error                   // the loop's last revocation; read after done
}

// New builds a runner for the duties; it starts nothing. Every duty needs a
// Name and a Run.
func New(cfg Config, duties ...Duty) (*Runner, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	for i, d := range duties {
		switch {
		case d.Name == "":
			return nil, fmt.Errorf("ha: duty %d: Name is required", i)
		case d.Run == nil:
			return nil, fmt.Errorf("ha: duty %q: Run is required", d.Name)
		}
	}
	if cfg.Prefix == "" {
		cfg.Prefix = defaultPrefix
	}
	if cfg.TTL == 0 {
		cfg.TTL = defaultTTL
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return &Runner{cfg: cfg, cli: cfg.Client, log: log, duties: append([]Duty(nil), duties...)}, nil
}

// Start campaigns in the background: when elected, it runs every duty in
// its own goroutine; when its election session ends (the lease was lost:
// the node was cut off from etcd, an etcd leader change let it expire, or
// someone revoked it) it cancels the duties, waits for them to return, and
// campaigns again with a new session. Cancelling ctx stops the runner the
// way Close does, but only Close waits for it. Start after Start or Close
// does nothing.
func (r *Runner) Start(ctx context.Context) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed || r.cancel != nil {
		return
	}
	ctx, r.cancel = context.WithCancelCause(ctx)
	r.done = make(chan struct{})
	go func() {
		defer close(r.done)
		r.closeErr = r.loop(ctx)
	}()
}

// IsLeader reports whether this node currently runs the duties. It turns
// false the moment the lead is lost, before the duties have returned.
func (r *Runner) IsLeader() bool { return r.leading.Load() }

// Leader returns the name of the node that leads now ("" when none), read
// from etcd: the value of the oldest candidate key. A node whose lease etcd
// has not expired yet still counts. Cancelling ctx abandons the read.
func (r *Runner) Leader(ctx context.Context) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	resp, err := r.cli.Get(ctx, r.cfg.Prefix, clientv3.WithFirstCreate()...)
	if err != nil {
		return "", fmt.Errorf("ha: read leader: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return "", nil
	}
	return string(resp.Kvs[0].Value), nil
}

// Close stops the runner: (1) it cancels the duties and waits for them to
// return, (2) revokes the election lease, which resigns the lead if this
// node held it (so another node takes over at once) and withdraws its
// candidacy otherwise, (3) waits for the runner's goroutines. When etcd
// cannot be reached the revocation gives up after the TTL, by when the lease
// has expired anyway, and Close returns its error. Safe to call twice and
// before Start; it leaves the client open.
func (r *Runner) Close() error {
	r.mu.Lock()
	r.closed = true
	cancel, done := r.cancel, r.done
	r.mu.Unlock()
	if cancel == nil {
		return nil
	}
	cancel(errClosed)
	<-done
	return r.closeErr
}

// loop runs election sessions one after another until ctx ends and returns
// the error of the last session's revocation.
func (r *Runner) loop(ctx context.Context) error {
	for {
		failed, err := r.term(ctx)
		if ctx.Err() != nil {
			return err
		}
		if err != nil {
			r.log.Warn("duty election: revoke lease", "node", r.cfg.Node, "error", err)
		}
		if failed && !sleep(ctx, retryBackoff) {
			return nil
		}
	}
}

// term runs one election session: it grants a lease, campaigns with it,
// leads while the lease lives, and revokes the lease at the end. It returns
// whether the grant or the campaign failed (the caller then backs off before
// the next term), and the revocation's error.
func (r *Runner) term(ctx context.Context) (failed bool, revokeErr error) {
	s, err := r.grant(ctx)
	if err != nil {
		if ctx.Err() == nil {
			r.log.Warn("duty election: grant lease", "node", r.cfg.Node, "error", err)
		}
		return true, nil
	}
	defer func() { revokeErr = s.close(r.cli) }()

	key := r.cfg.Prefix + fmt.Sprintf("%x", int64(s.id))
	begun := time.Now()
	rev, err := r.campaign(s.ctx, key, s.id)
	if err != nil {
		if s.ctx.Err() == nil {
			r.log.Warn("duty election: campaign", "node", r.cfg.Node, "error", err)
			return true, nil
		}
		return false, nil
	}
	r.lead(s, key, rev, time.Since(begun))
	return false, nil
}

// campaign puts this node's candidate key on the lease and blocks until no
// older candidate key is left: then this node leads. It returns the key's
// creation revision. Cancelling ctx abandons the wait; the key stays until
// the lease is revoked.
func (r *Runner) campaign(ctx context.Context, key string, lease clientv3.LeaseID) (int64, error) {
	pctx, cancel := context.WithTimeout(ctx, requestTimeout)
	resp, err := r.cli.Put(pctx, key, r.cfg.Node, clientv3.WithLease(lease))
	cancel()
	if err != nil {
		return 0, fmt.Errorf("ha: put candidate key: %w", err)
	}
	rev := resp.Header.Revision
	return rev, waitPredecessors(ctx, r.cli, r.cfg.Prefix, rev)
}

// lead runs the duties until the session ends or the leader key is deleted,
// then cancels them and waits for them to return.
func (r *Runner) lead(s *session, key string, rev int64, waited time.Duration) {
	ctx, cancel := context.WithCancelCause(s.ctx)
	defer cancel(nil)
	r.leading.Store(true)
	r.log.Info("duty leader: this node leads", "node", r.cfg.Node,
		"lease-id", fmt.Sprintf("%x", int64(s.id)), "campaign-took", waited.Round(time.Millisecond))

	var wg sync.WaitGroup
	for _, d := range r.duties {
		wg.Go(func() { r.runDuty(ctx, d) })
	}
	cancel(watchDeleted(ctx, r.cli, key, rev, rev+1))

	r.leading.Store(false)
	reason := context.Cause(ctx)
	r.log.Info("lost the duty lead", "node", r.cfg.Node, "reason", reason.Error())
	lost := time.Now()
	wg.Wait()
	if took := time.Since(lost); took > s.margin && !errors.Is(reason, errClosed) {
		r.log.Warn("duties stopped late after the lead was lost; a successor may have started meanwhile",
			"node", r.cfg.Node, "took", took.Round(time.Millisecond))
	}
}

// runDuty runs d until ctx ends, restarting it after restartBackoff each
// time it returns early.
func (r *Runner) runDuty(ctx context.Context, d Duty) {
	for {
		err := d.Run(ctx)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			err = errors.New("returned while leading")
		}
		r.log.Warn("duty failed; restarting", "duty", d.Name, "error", err.Error(), "backoff", restartBackoff)
		if !sleep(ctx, restartBackoff) {
			return
		}
	}
}

// sleep waits for d or until ctx ends; it reports whether ctx is still live.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
