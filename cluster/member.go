package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// MaxTxnOps is the embedded etcd's --max-txn-ops: the most operations, and the most
// compares, it takes in one transaction. etcd's default is 128; a storm of lapsed
// sessions is ended in transactions of up to this many operations (about 100 sessions
// each instead of 11: see registry.Config.MaxTxnOps), which at 1.5 MiB a request
// (maxRequestBytes) leaves room for tombstones of some 14 KiB each.
const MaxTxnOps = 1024

const (
	// initialClusterToken keeps Roster's etcd peers from talking to another etcd cluster
	// that happens to use the same peer addresses.
	initialClusterToken = "roster"

	// maxRequestBytes is etcd's request size limit; etcd's default, set explicitly so a
	// change of default cannot shrink it.
	maxRequestBytes = 3 << 19 // 1.5 MiB

	// clientDialTimeout bounds the client's connection attempts.
	clientDialTimeout = 5 * time.Second
	// clientKeepAliveTime and clientKeepAliveTimeout detect a hung server while streams
	// are open. The time must stay above etcd's GRPCKeepAliveMinTime (5s), or the server
	// answers the pings with GOAWAY "too_many_pings".
	clientKeepAliveTime    = 10 * time.Second
	clientKeepAliveTimeout = 5 * time.Second

	// closeReadyWait is how long Close lets a member that is not ready yet finish its
	// start before stopping it hard.
	closeReadyWait = 5 * time.Second
)

// Member is this node's running etcd member and a client connected to it. Its methods
// are safe to call concurrently.
type Member struct {
	name      string
	clientURL string
	log       *slog.Logger
	etcd      *embed.Etcd
	client    *clientv3.Client

	closing   *atomic.Bool  // set when Close starts; read by etcd's logger
	ready     atomic.Bool   // etcd reported ready
	errc      chan error    // fatal errors for the owner; closed at the end of Close
	stopc     chan struct{} // closed when Close starts
	donec     chan struct{} // closed when Close has finished
	watchDone chan struct{} // closed when watch returns; nil if watch never ran

	closeOnce sync.Once
	closeErr  error
}

// Start starts a single-member etcd cluster: the initial cluster is Name=peer URL and the
// state is new, or, when cfg.DataDir already holds a member, that member restarts with
// its data. Start waits until the member is ready to serve and connects a client to it.
//
// ctx and cfg.StartTimeout bound the wait for readiness, which on a restart includes
// replaying the write-ahead log; cancelling ctx makes Start return ctx's cause. Opening
// the data dir and the listeners is not interruptible. When Start fails half-way it
// closes whatever it started and returns no Member.
func Start(ctx context.Context, cfg Config) (*Member, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log, elog := orDiscard(cfg.Logger), orNop(cfg.EtcdLogger)
	closing := new(atomic.Bool)
	elog = quietLogger(elog, closing)
	begin := time.Now()

	wctx, cancel := context.WithTimeoutCause(ctx, cfg.StartTimeout,
		fmt.Errorf("start timeout %s exceeded: %w", cfg.StartTimeout, context.DeadlineExceeded))
	defer cancel()
	if err := context.Cause(wctx); err != nil {
		return nil, fmt.Errorf("cluster: start member %q: %w", cfg.Name, err)
	}

	e, err := embed.StartEtcd(embedConfig(cfg, elog))
	if err != nil {
		// StartEtcd closes what it opened when it fails.
		return nil, fmt.Errorf("cluster: start member %q: %w", cfg.Name, err)
	}
	m := &Member{
		name:      cfg.Name,
		clientURL: clientURL(cfg).String(),
		log:       log,
		etcd:      e,
		closing:   closing,
		errc:      make(chan error),
		stopc:     make(chan struct{}),
		donec:     make(chan struct{}),
	}
	if err := m.waitReady(wctx, elog); err != nil {
		m.Close()
		return nil, fmt.Errorf("cluster: start member %q: %w", cfg.Name, err)
	}
	m.watchDone = make(chan struct{})
	go m.watch()

	m.log.Info("etcd member ready",
		slog.String("name", m.name),
		slog.String("member-id", e.Server.MemberID().String()),
		slog.String("client-url", m.clientURL),
		slog.String("data-dir", cfg.DataDir),
		slog.Duration("took", time.Since(begin)))
	return m, nil
}

// waitReady waits until etcd is ready, then connects m.client and checks it with one
// round trip. On error the caller closes m, including a client already set.
func (m *Member) waitReady(ctx context.Context, elog *zap.Logger) error {
	select {
	case <-m.etcd.Server.ReadyNotify():
		m.ready.Store(true)
	case err := <-m.etcd.Err():
		if err == nil {
			err = ErrStopped
		}
		return fmt.Errorf("etcd failed before it was ready: %w", err)
	case <-m.etcd.Server.StopNotify():
		return fmt.Errorf("before it was ready: %w", ErrStopped)
	case <-ctx.Done():
		return fmt.Errorf("wait for etcd to be ready: %w", context.Cause(ctx))
	}

	client, err := clientv3.New(clientv3.Config{
		Endpoints:            []string{m.clientURL},
		DialTimeout:          clientDialTimeout,
		DialKeepAliveTime:    clientKeepAliveTime,
		DialKeepAliveTimeout: clientKeepAliveTimeout,
		Logger:               elog.Named("client"),
	})
	if err != nil {
		return fmt.Errorf("create etcd client: %w", err)
	}
	m.client = client
	// clientv3.New does not dial; one request proves the client reaches the member. A
	// serializable count-only read, which a learner serves too, not Maintenance Status:
	// etcd v3.7 panics serving Status on a member that has just applied its own
	// removal, and the panic would kill this process (a member restarted on its data
	// after being removed while down).
	if _, err := client.Get(ctx, "\x00", clientv3.WithSerializable(), clientv3.WithCountOnly()); err != nil {
		if cause := context.Cause(ctx); cause != nil {
			err = cause
		}
		return fmt.Errorf("connect etcd client to %s: %w", m.clientURL, err)
	}
	return nil
}

// embedConfig is the one place that decides how the embedded etcd runs. Joining an
// existing cluster will change its bootstrap part: the initial cluster and its state.
func embedConfig(cfg Config, elog *zap.Logger) *embed.Config {
	peerURL := peerURL(cfg)
	clientURL := clientURL(cfg)

	ec := embed.NewConfig()
	ec.Name = cfg.Name
	ec.Dir = cfg.DataDir
	ec.Logger = "zap"
	ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(elog)

	// Listeners. Peers and clients each get one URL, advertised as listened on. No gRPC
	// gateway (Roster talks gRPC only), no pprof, no separate metrics listener.
	ec.ListenPeerUrls = []url.URL{*peerURL}
	ec.AdvertisePeerUrls = []url.URL{*peerURL}
	ec.ListenClientUrls = []url.URL{*clientURL}
	ec.AdvertiseClientUrls = []url.URL{*clientURL}
	ec.ListenClientHttpUrls = nil
	ec.ListenMetricsUrls = nil
	ec.EnableGRPCGateway = false
	ec.EnablePprof = false

	// Bootstrap. etcd ignores these when the data dir already holds a member.
	ec.InitialCluster = cfg.Name + "=" + peerURL.String()
	if cfg.InitialCluster != "" {
		ec.InitialCluster = cfg.InitialCluster
	}
	ec.ClusterState = embed.ClusterStateFlagNew
	if cfg.JoinExisting {
		ec.ClusterState = embed.ClusterStateFlagExisting
	}
	ec.InitialClusterToken = initialClusterToken

	// Storage.
	ec.QuotaBackendBytes = cfg.QuotaBytes
	ec.AutoCompactionMode = embed.CompactorModePeriodic
	ec.AutoCompactionRetention = cfg.CompactionRetention.String()
	ec.WatchProgressNotifyInterval = progressInterval(cfg.CompactionRetention)
	ec.MaxRequestBytes = maxRequestBytes
	ec.MaxTxnOps = MaxTxnOps
	return ec
}

// progressInterval is how often etcd tells a quiet watch the revision it
// has reached: a fifth of the compaction retention, so that an event stream
// with nothing to send can still resume after a break of most of the
// retention; at least a second, and at most etcd's default of 10 minutes.
func progressInterval(retention time.Duration) time.Duration {
	return min(max(retention/5, time.Second), 10*time.Minute)
}

// peerURL is the URL etcd listens on for, and advertises to, peers.
func peerURL(cfg Config) *url.URL { return &url.URL{Scheme: "http", Host: cfg.PeerListen} }

// clientURL is the URL etcd listens on for, and advertises to, clients.
func clientURL(cfg Config) *url.URL { return &url.URL{Scheme: "http", Host: cfg.ClientListen} }

// watch forwards etcd's fatal errors to Err until Close starts.
func (m *Member) watch() {
	defer close(m.watchDone)
	errs := m.etcd.Err()
	stopped := m.etcd.Server.StopNotify()
	for {
		select {
		case <-m.stopc:
			return
		case err, ok := <-errs:
			if !ok {
				errs = nil
				continue
			}
			if err != nil {
				m.report(fmt.Errorf("cluster: etcd: %w", err))
			}
		case <-stopped:
			stopped = nil
			// Close closes stopc before it stops etcd, so a stop caused by Close is
			// seen here and not reported.
			select {
			case <-m.stopc:
				return
			default:
			}
			m.report(ErrStopped)
		}
	}
}

// report hands err to a reader of Err, or drops it when Close starts first.
func (m *Member) report(err error) {
	select {
	case m.errc <- err:
	case <-m.stopc:
	}
}

// ID returns the etcd member id.
func (m *Member) ID() uint64 { return uint64(m.etcd.Server.MemberID()) }

// ClusterID returns the id of the etcd cluster the member belongs to.
func (m *Member) ClusterID() uint64 { return uint64(m.etcd.Server.Cluster().ID()) }

// Leader returns the member id of the etcd leader this member knows, 0 when it knows
// none (an election is running, or quorum is lost).
func (m *Member) Leader() uint64 { return uint64(m.etcd.Server.Leader()) }

// IsLearner reports whether the member is a learner (a non-voting member). A member
// removed from the cluster is no learner. (etcd's own EtcdServer.IsLearner panics once
// the local member is gone from the membership, which happens between its removal and
// the server's stop.)
func (m *Member) IsLearner() bool {
	mem := m.etcd.Server.Cluster().Member(m.etcd.Server.MemberID())
	return mem != nil && mem.IsLearner
}

// Removed reports whether the member is no longer in the cluster's membership as this
// member knows it.
func (m *Member) Removed() bool {
	return m.etcd.Server.Cluster().Member(m.etcd.Server.MemberID()) == nil
}

// Client returns the client connected to this member. Close closes it; do not close it
// yourself.
func (m *Member) Client() *clientv3.Client { return m.client }

// ClientURL returns the URL etcd serves clients on, e.g. "http://127.0.0.1:7401".
func (m *Member) ClientURL() string { return m.clientURL }

// Err returns a channel that receives etcd's fatal errors while the member runs: a
// listener that stopped serving, or ErrStopped when the server stopped by itself. After
// an error the member is unusable and the owner should Close it. The channel is closed
// when Close has finished, so a nil receive means the member was closed.
func (m *Member) Err() <-chan error { return m.errc }

// Done returns a channel that is closed once Close has finished.
func (m *Member) Done() <-chan struct{} { return m.donec }

// Close stops the member and releases everything Start acquired. It is idempotent and
// safe to call concurrently: every call blocks until the first has finished and returns
// its result.
//
// The steps, in reverse start order:
//  1. close the stop channel, so that the error watcher exits and the shutdown is not
//     reported on Err, and mark the member closing, so that etcd's complaints about
//     its listeners being closed are logged at info, not as errors;
//  2. close Client(), cancelling its watches and lease keep-alives: etcd stops its gRPC
//     server gracefully, which can wait up to its request timeout (about 7s) for streams
//     still open. Streams of other clients of this member can delay Close the same way,
//     so close those clients first;
//  3. close the embedded etcd, exactly once, as it panics when closed twice: it stops
//     serving, transfers leadership if it can, stops raft and the listeners and waits
//     for its goroutines;
//  4. wait for the error watcher, then close Err and Done.
func (m *Member) Close() error {
	m.closeOnce.Do(func() {
		begin := time.Now()
		m.closing.Store(true)
		close(m.stopc)
		if m.client != nil {
			if err := m.client.Close(); err != nil && !errors.Is(err, context.Canceled) {
				m.closeErr = fmt.Errorf("cluster: close etcd client: %w", err)
			}
		}
		if !m.ready.Load() {
			// embed.Etcd.Close waits for its client servers, which wait for the server
			// to become ready or to stop: a member that never becomes ready (it waits
			// for a quorum that is gone) must be stopped first, or Close blocks forever
			// (etcd v3.7.3). A member that is merely slow gets a moment to finish its
			// start: stopping a new cluster's first member before its first commit
			// leaves a data dir that never elects a leader again.
			select {
			case <-m.etcd.Server.ReadyNotify():
			case <-m.etcd.Server.StopNotify():
			case <-time.After(closeReadyWait):
				m.etcd.Server.HardStop()
			}
		}
		m.etcd.Close()
		if m.watchDone != nil {
			<-m.watchDone
		}
		close(m.errc)
		close(m.donec)
		m.log.Info("etcd member closed", slog.String("name", m.name), slog.Duration("took", time.Since(begin)))
	})
	return m.closeErr
}
