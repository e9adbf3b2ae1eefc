package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"go.uber.org/zap"
	"go.uber.org/zap/zapgrpc"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc/grpclog"

	"github.com/roster-dev/roster/cluster"
	"github.com/roster-dev/roster/ha"
	"github.com/roster-dev/roster/registry"
	"github.com/roster-dev/roster/registry/api"
	"github.com/roster-dev/roster/registry/liveness"
)

// readyLine is the one log line a node writes when it serves; scripts and
// the e2e harness wait for it.
const readyLine = "roster node ready"

type serveFlags struct {
	name, dataDir, listen, etcdListen, peerListen string
	apiURL, gossipListen, gossipAdvertise         string
	join, etcdEndpoints                           []string
	bootstrap, leave                              bool
	bootstrapExpect, voters                       int
	deadAfter                                     time.Duration
	site, pool, logLevel                          string
	defaultTTL, minTTL, maxTTL, tombstoneTTL      time.Duration
	historyRetention                              time.Duration
	auditRetention                                time.Duration
	etcdQuota                                     int64
	etcdCompaction                                time.Duration
	cleanupInterval                               time.Duration
	livenessInterval                              time.Duration
	pprofListen                                   string
}

func newServeFlags(stderr io.Writer) (*pflag.FlagSet, *serveFlags) {
	host, _ := os.Hostname()
	if host == "" {
		host = "roster"
	}
	f := &serveFlags{}
	fs := pflag.NewFlagSet("serve", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&f.name, "name", host, "node name (also the etcd member name)")
	fs.StringVar(&f.dataDir, "data-dir", "./roster-data", "directory for etcd's data and the admin token")
	fs.StringVar(&f.listen, "listen", "127.0.0.1:7400", "address of the HTTP API")
	fs.StringVar(&f.etcdListen, "etcd-listen", "127.0.0.1:7401", "address etcd serves its clients on")
	fs.StringVar(&f.peerListen, "peer-listen", "127.0.0.1:7402", "address etcd serves its peers on")
	fs.StringVar(&f.apiURL, "api-url", "", "API URL other nodes and 'roster members' show (default http://<listen>)")
	fs.StringVar(&f.gossipListen, "gossip-listen", cluster.DefaultGossipListen, "address gossip listens on (TCP and UDP)")
	fs.StringVar(&f.gossipAdvertise, "gossip-advertise", "", "gossip address other nodes reach this node at (default: --gossip-listen)")
	fs.StringSliceVar(&f.join, "join", nil, "comma-separated gossip addresses of other nodes to join")
	fs.BoolVar(&f.bootstrap, "bootstrap", false, "start a new cluster with this node alone (first node)")
	fs.IntVar(&f.bootstrapExpect, "bootstrap-expect", 0, "wait for this many new nodes to gossip, then the lowest name starts the cluster")
	fs.IntVar(&f.voters, "voters", cluster.DefaultVoters, "number of etcd voters the cluster keeps (1-7); one more node is a standby learner")
	fs.DurationVar(&f.deadAfter, "dead-after", cluster.DefaultDeadAfter, "how long a node must be dead before its etcd member is removed")
	fs.BoolVar(&f.leave, "leave", false, "on SIGTERM remove this node from etcd and gossip (a restart then joins as a new member)")
	fs.StringSliceVar(&f.etcdEndpoints, "etcd-endpoints", nil, "comma-separated client URLs of an external etcd cluster: run no embedded member")
	fs.StringVar(&f.site, "site", "", "site (data centre) of this node; voters are spread across sites")
	fs.StringVar(&f.pool, "pool", "default", "pool of sessions opened through this node unless they name one")
	fs.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.DurationVar(&f.defaultTTL, "default-ttl", 60*time.Second, "TTL of a session that names none")
	fs.DurationVar(&f.minTTL, "min-ttl", 5*time.Second, "shortest TTL a session may ask for")
	fs.DurationVar(&f.maxTTL, "max-ttl", 24*time.Hour, "longest TTL a session may ask for")
	fs.DurationVar(&f.tombstoneTTL, "tombstone-ttl", 15*time.Minute, "how long the reason a session ended stays known")
	fs.DurationVar(&f.historyRetention, "history-retention", registry.DefaultHistoryRetention, "how long the history of ended sessions is kept (0 keeps none); give every node the same")
	fs.DurationVar(&f.auditRetention, "audit-retention", registry.DefaultAuditRetention, "how long the audit log (logins, refusals, kills, changes, failed authentication) is kept (0 keeps none); give every node the same")
	fs.Int64Var(&f.etcdQuota, "etcd-quota-bytes", cluster.DefaultQuotaBytes, "etcd backend quota in bytes")
	fs.DurationVar(&f.etcdCompaction, "etcd-compaction-retention", cluster.DefaultCompactionRetention, "history etcd keeps before auto-compaction")
	fs.DurationVar(&f.cleanupInterval, "cleanup-interval", registry.DefaultConfig().CleanupInterval, "how often the duty leader's clean-up ends dead shared connections' sessions, idle and too old ones")
	fs.DurationVar(&f.livenessInterval, "liveness-interval", liveness.DefaultInterval, "how often each node pushes the heartbeats it answered to the others, so that a dead client's session ends about a TTL after its last heartbeat even across etcd leader changes (50ms-2s; 0 turns this off and leaves expiry to the etcd leases); give every node the same")
	fs.StringVar(&f.pprofListen, "pprof-listen", "", "address to serve Go's runtime profiles on (/debug/pprof/, no authentication: use loopback); off by default")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: roster serve [flags]\n\nRuns a Roster node: gossip, an embedded etcd member it manages with the other nodes\n(or a client of an external etcd with --etcd-endpoints), and the HTTP API.\nWith an empty data dir and neither --join nor --bootstrap-expect the node starts a\ncluster of its own.\nEvery flag can also be set as ROSTER_<FLAG> (e.g. ROSTER_DATA_DIR).\n\nFlags:\n%s", fs.FlagUsages())
	}
	return fs, f
}

// envFlags fills every flag not given on the command line from its
// ROSTER_<FLAG> environment variable.
func envFlags(fs *pflag.FlagSet) error {
	var err error
	fs.VisitAll(func(fl *pflag.Flag) {
		env := "ROSTER_" + strings.ToUpper(strings.ReplaceAll(fl.Name, "-", "_"))
		v, ok := os.LookupEnv(env)
		if !ok || fs.Changed(fl.Name) || err != nil {
			return
		}
		if e := fs.Set(fl.Name, v); e != nil {
			err = fmt.Errorf("%s=%q: %v", env, v, e)
		}
	})
	return err
}

// runServe runs a node until ctx is cancelled (SIGINT/SIGTERM) or a part
// fails. It returns the process exit code.
func runServe(ctx context.Context, args []string, stderr io.Writer) int {
	fs, f := newServeFlags(stderr)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "roster serve: %v\n", err)
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "roster serve: unexpected argument %q; see 'roster serve --help'\n", fs.Arg(0))
		return 2
	}
	if err := envFlags(fs); err != nil {
		fmt.Fprintf(stderr, "roster serve: %v\n", err)
		return 2
	}
	log, etcdLog, err := newLogging(f.logLevel, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "roster serve: %v\n", err)
		return 2
	}
	// gRPC (inside the etcd client and server) logs through the same sink;
	// this must happen before any gRPC activity.
	grpclog.SetLoggerV2(zapgrpc.NewLogger(etcdLog.Named("grpc")))
	if err := serve(ctx, f, log, etcdLog); err != nil {
		log.Error("roster node stopped", "error", err)
		return 1
	}
	return 0
}

func serve(ctx context.Context, f *serveFlags, log *slog.Logger, etcdLog *zap.Logger) error {
	begin := time.Now()
	apiURL := f.apiURL
	if apiURL == "" {
		apiURL = "http://" + f.listen
	}
	ccfg := cluster.DefaultNodeConfig()
	ccfg.DataDir = f.dataDir
	ccfg.Member.Name = f.name
	ccfg.Member.ClientListen, ccfg.Member.PeerListen = f.etcdListen, f.peerListen
	ccfg.Member.QuotaBytes, ccfg.Member.CompactionRetention = f.etcdQuota, f.etcdCompaction
	ccfg.Gossip.Name, ccfg.Gossip.Listen, ccfg.Gossip.Advertise, ccfg.Gossip.Join = f.name, f.gossipListen, f.gossipAdvertise, f.join
	ccfg.Site, ccfg.Pool, ccfg.APIURL = f.site, f.pool, apiURL
	ccfg.Bootstrap, ccfg.BootstrapExpect, ccfg.Voters, ccfg.DeadAfter = f.bootstrap, f.bootstrapExpect, f.voters, f.deadAfter
	ccfg.EtcdEndpoints = f.etcdEndpoints
	ccfg.EtcdLogger, ccfg.Logger = etcdLog, log.With("component", "cluster")
	ccfg.Gossip.Logger = log.With("component", "gossip")
	rcfg := registry.DefaultConfig()
	rcfg.Node, rcfg.Site, rcfg.Pool = f.name, f.site, f.pool
	rcfg.DefaultTTL, rcfg.MinTTL, rcfg.MaxTTL, rcfg.TombstoneTTL = f.defaultTTL, f.minTTL, f.maxTTL, f.tombstoneTTL
	rcfg.HistoryRetention = f.historyRetention
	rcfg.AuditRetention = f.auditRetention
	rcfg.CleanupInterval = f.cleanupInterval
	if len(f.etcdEndpoints) == 0 {
		rcfg.MaxTxnOps = cluster.MaxTxnOps // the embedded member's --max-txn-ops; an external etcd keeps its own limit
	}
	rcfg.Logger = log.With("component", "registry")
	if err := ccfg.Validate(); err != nil {
		return err
	}
	if err := rcfg.ValidateSettings(); err != nil {
		return err
	}
	if i := f.livenessInterval; i < 0 || (i > 0 && (i < 50*time.Millisecond || i > 2*time.Second)) {
		return fmt.Errorf("--liveness-interval %s: give 50ms to 2s, or 0 to turn the liveness view off", i)
	}
	// Created only once the settings are known good: a bad flag leaves nothing behind.
	if err := os.MkdirAll(f.dataDir, 0o700); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	ln, err := net.Listen("tcp", f.listen)
	if err != nil {
		return fmt.Errorf("listen for the API on %s: %w (is another node running? pick another --listen)", f.listen, err)
	}
	defer ln.Close()
	if f.pprofListen != "" {
		pprofLn, err := listenPprof(f.pprofListen)
		if err != nil {
			return err
		}
		// Profiles are served until everything else has stopped, so that a
		// goroutine profile shows what a slow shutdown waits for.
		pctx, stopPprof := context.WithCancel(context.WithoutCancel(ctx))
		pprofDone := make(chan error, 1)
		go func() { pprofDone <- servePprof(pctx, pprofLn, log) }()
		defer func() {
			stopPprof()
			if err := <-pprofDone; err != nil {
				log.Warn("pprof server failed", "error", err)
			}
		}()
	}

	// Start order: cluster node, registry, API. Stop order is the reverse; with --leave
	// the node leaves the cluster once the API and the registry have stopped.
	node, err := cluster.StartNode(ctx, ccfg)
	if err != nil {
		return err
	}
	defer stopWithin(log, "etcd member and gossip", nodeStopWait, func() { node.Close() })
	rcfg.Client = node.Client()
	rcfg.LeaderURL = node.EtcdLeaderURL
	var view *liveness.View
	if f.livenessInterval > 0 {
		lcfg := liveness.DefaultConfig()
		lcfg.Node, lcfg.Interval, lcfg.Peers = f.name, f.livenessInterval, livenessPeers(node)
		lcfg.Forget = f.maxTTL + time.Hour
		lcfg.Logger = log.With("component", "liveness")
		if view, err = liveness.New(lcfg); err != nil {
			return err
		}
		rcfg.Liveness = view
	}
	reg, err := registry.New(rcfg)
	if err != nil {
		return err
	}
	defer stopWithin(log, "registry", registryStopWait, reg.Close)
	if err := reg.Start(ctx); err != nil {
		return err
	}
	// The node that started the cluster writes the admin token; against an external
	// etcd no node started it, so the first node to find no admin token writes one.
	if err := ensureAdminToken(ctx, reg, f.dataDir, node.Bootstrapped() || len(f.etcdEndpoints) > 0, log); err != nil {
		return err
	}
	if view != nil {
		secret, err := reg.PeerSecret(ctx)
		if err != nil {
			return err
		}
		view.Start(secret)
		defer stopWithin(log, "liveness view", viewStopWait, view.Close)
	}

	// Singleton duties (shutdown deadlines, the history of ended sessions, clean-up, the audit log's retention) run
	// on the node that wins the election; another takes over when it dies.
	duties, err := ha.New(ha.Config{Client: node.Client(), Node: f.name, Logger: log.With("component", "ha")},
		ha.Duty{Name: "shutdown-deadlines", Run: reg.EnforceShutdowns},
		ha.Duty{Name: "history", Run: reg.RecordHistory},
		ha.Duty{Name: "cleanup", Run: reg.RunCleanup},
		ha.Duty{Name: "audit", Run: reg.KeepAudit},
		ha.Duty{Name: "liveness", Run: reg.RunLiveness})
	if err != nil {
		return err
	}
	duties.Start(ctx)
	defer stopWithin(log, "duties", dutiesStopWait, func() { duties.Close() })

	srv := &http.Server{
		Handler:           api.New(api.Config{Registry: reg, Cluster: node, Duties: duties, Node: f.name, Logger: log.With("component", "api"), Liveness: view}),
		ReadHeaderTimeout: 10 * time.Second,
		// A request body (at most 1 MiB) must arrive within this; a
		// client that trickles it does not hold a connection longer.
		ReadTimeout: 30 * time.Second,
		IdleTimeout: 2 * time.Minute,
		ErrorLog:    slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("API server: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		select {
		case err := <-node.Err():
			return fmt.Errorf("etcd member failed: %w", err)
		case <-gctx.Done():
			return nil
		}
	})
	g.Go(func() error {
		<-gctx.Done()
		log.Info("roster node stopping")
		sctx, cancel := context.WithTimeout(context.WithoutCancel(gctx), apiDrainWait)
		defer cancel()
		if err := srv.Shutdown(sctx); err != nil {
			// Requests still running: closing their connections cancels their
			// contexts. What a request wrote is whole or absent (one etcd
			// transaction each); its client gets no answer and tries again.
			log.Info("shutdown: API requests still running after the drain; closing their connections",
				"waited", apiDrainWait, "error", err)
			srv.Close()
		}
		return nil
	})
	log.Info(readyLine, "name", f.name, "api-url", apiURL, "etcd-role", node.Role(),
		"data-dir", f.dataDir, "took", time.Since(begin).Round(time.Millisecond))
	err = g.Wait()
	if err == nil && f.leave {
		stopWithin(log, "duties", dutiesStopWait, func() { duties.Close() })
		stopWithin(log, "registry", registryStopWait, reg.Close)
		lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 20*time.Second)
		err = node.Leave(lctx)
		cancel()
		if err == nil {
			log.Info("left the cluster")
		}
	}
	if err == nil {
		log.Info("roster node stopped")
	}
	return err
}

// How long each stage of a node's shutdown may take, in the order serve stops them
// after SIGTERM; 12 s in all, within the 15 s the e2e harness gives and the 30 s of
// Kubernetes' default grace period. Each stage is normally much quicker: a stage is
// only cut short when etcd is slow, as in a storm of ends on a busy machine.
const (
	// apiDrainWait is how long requests in flight get to finish; then their
	// connections are closed.
	apiDrainWait = 3 * time.Second
	// dutiesStopWait covers stopping the duties and revoking the election lease
	// (which ha bounds to its TTL, 2 s).
	dutiesStopWait = 3 * time.Second
	// viewStopWait covers the liveness view's pushes in flight.
	viewStopWait = time.Second
	// registryStopWait covers the registry's background work and the revocation
	// of its pooled leases (which it bounds to a second).
	registryStopWait = 2 * time.Second
	// nodeStopWait covers the etcd member and gossip: etcd waits for the requests
	// in flight, transfers its leadership and applies the entries it has
	// committed before it stops.
	nodeStopWait = 3 * time.Second
)

// stopWithin runs stop, one stage of the shutdown, and waits for it at most d. A stage
// that takes longer is left running while the shutdown goes on, and the process exits
// without it: what it abandons is safe to abandon (registry writes are single etcd
// transactions, whole or absent; a session end in flight is finished by the liveness
// view or the lease; an etcd member recovers from its write-ahead log as after a
// crash). That is logged at info; a stage on time is logged at debug.
func stopWithin(log *slog.Logger, stage string, d time.Duration, stop func()) {
	begin := time.Now()
	done := make(chan struct{})
	go func() {
		defer close(done)
		stop()
	}()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-done:
		log.Debug("shutdown: stopped", "stage", stage, "took", time.Since(begin).Round(time.Millisecond))
	case <-t.C:
		log.Info("shutdown: a stage took too long; going on without waiting for it", "stage", stage, "waited", d)
	}
}

// livenessPeers lists the nodes gossip knows, for the liveness exchange: their API
// URLs, and whether gossip declared them dead or they left.
func livenessPeers(node *cluster.Node) func() []liveness.Peer {
	return func() []liveness.Peer {
		ps := node.Peers()
		out := make([]liveness.Peer, 0, len(ps))
		for _, p := range ps {
			out = append(out, liveness.Peer{Name: p.Name, URL: p.Meta.API, Self: p.Self,
				Gone: p.State == cluster.GossipDead || p.State == cluster.GossipLeft})
		}
		return out
	}
}

// ensureAdminToken writes a new admin token to <data-dir>/admin.token
// (mode 0600) when the file is missing, mayCreate is set (the node started
// the cluster) and the cluster has no admin token yet, which is the case on
// the first node's first start. The secret is saved to
// admin.token.new before it is stored in etcd, and renamed once it is: a
// start that fails in between finishes on the next start with the same
// secret, so the admin token is never lost.
func ensureAdminToken(ctx context.Context, reg *registry.Registry, dataDir string, mayCreate bool, log *slog.Logger) error {
	path := filepath.Join(dataDir, "admin.token")
	pending := path + ".new"
	if _, err := os.Stat(path); err == nil {
		return nil
	}
	tok := ""
	if b, err := os.ReadFile(pending); err == nil {
		tok = strings.TrimSpace(string(b))
	} else if !mayCreate {
		// Only the node that started the cluster writes the admin token, so that its
		// file is where the README says, whichever node reaches etcd first.
		log.Info("this node joined a running cluster and writes no admin token; use the admin.token of the node that started the cluster, or 'roster token create --role admin'")
		return nil
	} else {
		tok = registry.NewAPIToken()
		if err := writeSynced(pending, tok+"\n"); err != nil {
			return fmt.Errorf("write the admin token: %w", err)
		}
	}
	ok, err := reg.EnsureAdminToken(ctx, tok)
	if err != nil {
		return fmt.Errorf("create the admin token: %w", err)
	}
	if !ok {
		os.Remove(pending)
		log.Info("the cluster has an admin token already, so this node writes none; use the admin.token of the first node, or 'roster token create --role admin'", "path", path)
		return nil
	}
	if err := os.Rename(pending, path); err != nil {
		return fmt.Errorf("write the admin token: %w", err)
	}
	abs, _ := filepath.Abs(path)
	log.Info("wrote the admin token", "path", abs)
	return nil
}

// writeSynced writes a new file of mode 0600 and syncs it to disk.
func writeSynced(path, content string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(content); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
