package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/roster-dev/roster/cluster/clustertest/loopback"
	"github.com/roster-dev/roster/cluster/clustertest/syncbuf"
)

// TestMain checks that the tests leave no goroutine running. A closed member leaves
// none behind (etcd v3.7.3, grpc v1.83). Two kinds end a moment after their owner
// closed and are ignored: HTTP keep-alive connections of etcd's peer transport between
// members of one multi-member cluster (closed when the peer's side times them out),
// and memberlist's probe, which Shutdown does not wait for.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreAnyFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreAnyFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreAnyFunction("net/http.(*conn).serve"),
		goleak.IgnoreAnyFunction("net/http.(*connReader).backgroundRead"),
		goleak.IgnoreAnyFunction("github.com/hashicorp/memberlist.(*Memberlist).probeNode"),
	)
}

// verifyNoLeaks checks, after the test and its cleanups, that the test left no goroutine
// running that was not running when verifyNoLeaks was called.
func verifyNoLeaks(t *testing.T) {
	t.Helper()
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
}

// testConfig returns a valid config on free loopback ports and a fresh data dir. etcd's
// warnings and our logs go to a buffer that is printed if the test fails.
func testConfig(t testing.TB) Config {
	t.Helper()
	logs := &syncbuf.Buffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("logs:\n%s", logs)
		}
	})
	cfg := DefaultConfig()
	cfg.Name = "t1"
	cfg.DataDir = filepath.Join(t.TempDir(), "etcd") // etcd creates it, mode 0700
	cfg.ClientListen = loopback.MustAddr(t)
	cfg.PeerListen = loopback.MustAddr(t)
	cfg.StartTimeout = 30 * time.Second
	enc := zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig())
	cfg.EtcdLogger = zap.New(zapcore.NewCore(enc, zapcore.AddSync(logs), zapcore.WarnLevel))
	cfg.Logger = slog.New(slog.NewTextHandler(logs, nil))
	return cfg
}

// start starts a member from cfg and closes it when the test ends.
func start(t testing.TB, cfg Config) *Member {
	t.Helper()
	m, err := Start(t.Context(), cfg)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return m
}

func TestStartPutGetClose(t *testing.T) {
	cfg := testConfig(t)
	m := start(t, cfg)
	ctx := t.Context()

	if got, want := m.ClientURL(), "http://"+cfg.ClientListen; got != want {
		t.Errorf("ClientURL() = %q, want %q", got, want)
	}
	if _, err := m.Client().Put(ctx, "/test/k", "v1"); err != nil {
		t.Fatalf("Put: %v", err)
	}
	resp, err := m.Client().Get(ctx, "/test/k")
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	if len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v1" {
		t.Fatalf("Get /test/k = %v, want v1", resp.Kvs)
	}
	select {
	case <-m.Done():
		t.Fatal("Done closed before Close")
	default:
	}

	// A watch stream is open during Close: Close must end it, not wait for it.
	wch := m.Client().Watch(ctx, "/test/")

	begin := time.Now()
	if err := m.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	t.Logf("Close with a watch open took %s", time.Since(begin))
	if err := m.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	select {
	case <-m.Done():
	default:
		t.Fatal("Done not closed after Close")
	}
	if err, ok := <-m.Err(); ok {
		t.Fatalf("Err after Close received %v, want a closed channel", err)
	}
	for range wch { // ends because Close closed the client
	}
	if m.Client().Ctx().Err() == nil {
		t.Fatal("client still open after Close")
	}
}

func TestCloseConcurrent(t *testing.T) {
	m := start(t, testConfig(t))

	var wg sync.WaitGroup
	errs := make([]error, 8)
	for i := range errs {
		wg.Go(func() { errs[i] = m.Close() })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("Close #%d: %v", i, err)
		}
	}
}

func TestRestartKeepsData(t *testing.T) {
	cfg := testConfig(t)
	ctx := t.Context()

	m1 := start(t, cfg)
	if _, err := m1.Client().Put(ctx, "/test/persist", "yes"); err != nil {
		t.Fatalf("Put: %v", err)
	}
	id1 := m1.etcd.Server.MemberID()
	if err := m1.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	m2 := start(t, cfg)
	if id2 := m2.etcd.Server.MemberID(); id2 != id1 {
		t.Errorf("member ID after restart = %s, want %s (same member)", id2, id1)
	}
	resp, err := m2.Client().Get(ctx, "/test/persist")
	if err != nil {
		t.Fatalf("Get after restart: %v", err)
	}
	if len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "yes" {
		t.Fatalf("Get /test/persist after restart = %v, want yes", resp.Kvs)
	}
}

func TestRestartKeepsLease(t *testing.T) {
	cfg := testConfig(t)
	ctx := t.Context()

	m1 := start(t, cfg)
	lease, err := m1.Client().Grant(ctx, 300)
	if err != nil {
		t.Fatalf("Grant: %v", err)
	}
	if _, err := m1.Client().Put(ctx, "/test/leased", "x", clientv3.WithLease(lease.ID)); err != nil {
		t.Fatalf("Put: %v", err)
	}
	if err := m1.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	m2 := start(t, cfg)
	ttl, err := m2.Client().TimeToLive(ctx, lease.ID, clientv3.WithAttachedKeys())
	if err != nil {
		t.Fatalf("TimeToLive after restart: %v", err)
	}
	if ttl.TTL <= 0 {
		t.Fatalf("lease TTL after restart = %d, want > 0 (lease restored)", ttl.TTL)
	}
	if len(ttl.Keys) != 1 || string(ttl.Keys[0]) != "/test/leased" {
		t.Errorf("lease keys after restart = %q, want [/test/leased]", ttl.Keys)
	}
}

func TestErrReportsUnexpectedStop(t *testing.T) {
	m := start(t, testConfig(t))

	m.etcd.Server.HardStop() // what a fatal storage error does
	select {
	case err := <-m.Err():
		if !errors.Is(err, ErrStopped) {
			t.Fatalf("Err received %v, want ErrStopped", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no error on Err after the server stopped")
	}
	if err := m.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

func TestStartPortInUse(t *testing.T) {
	tests := []struct {
		name string
		busy func(*Config) *string
	}{
		{name: "client port", busy: func(c *Config) *string { return &c.ClientListen }},
		{name: "peer port", busy: func(c *Config) *string { return &c.PeerListen }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			verifyNoLeaks(t)
			cfg := testConfig(t)
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			*tt.busy(&cfg) = l.Addr().String()

			m, err := Start(t.Context(), cfg)
			if err == nil {
				m.Close()
				t.Fatal("Start succeeded on a port in use")
			}
			if !errors.Is(err, syscall.EADDRINUSE) {
				t.Errorf("Start error = %v, want EADDRINUSE", err)
			}
			if !strings.HasPrefix(err.Error(), "cluster: ") {
				t.Errorf("Start error %q lacks the package prefix", err)
			}
			// Cleaned up: the other port is free again.
			for _, addr := range []string{cfg.ClientListen, cfg.PeerListen} {
				if addr == l.Addr().String() {
					continue
				}
				l2, err := net.Listen("tcp", addr)
				if err != nil {
					t.Fatalf("%s still held after failed Start: %v", addr, err)
				}
				l2.Close()
			}
		})
	}
}

func TestStartTimeout(t *testing.T) {
	verifyNoLeaks(t)
	cfg := testConfig(t)
	cfg.StartTimeout = time.Millisecond // expires while etcd starts

	m, err := Start(t.Context(), cfg)
	if err == nil {
		m.Close()
		t.Fatal("Start succeeded within 1ms")
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Start error = %v, want DeadlineExceeded", err)
	}

	// Cleaned up: the same ports and data dir work.
	cfg.StartTimeout = 30 * time.Second
	start(t, cfg)
}

func TestStartCanceled(t *testing.T) {
	cfg := testConfig(t)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := Start(ctx, cfg); !errors.Is(err, context.Canceled) {
		t.Fatalf("Start with a canceled context: error = %v, want context.Canceled", err)
	}
}

func TestConfigValidate(t *testing.T) {
	valid := func() Config {
		c := DefaultConfig()
		c.Name = "n1"
		c.DataDir = "/var/lib/roster/etcd"
		return c
	}
	tests := []struct {
		name    string
		mutate  func(*Config)
		wantErr string // substring; empty means valid
	}{
		{name: "defaults", mutate: func(*Config) {}},
		{name: "localhost", mutate: func(c *Config) { c.ClientListen = "localhost:2379" }},
		{name: "ipv6", mutate: func(c *Config) { c.PeerListen = "[::1]:7402" }},
		{name: "dotted name", mutate: func(c *Config) { c.Name = "node-1.dc_a" }},
		{name: "empty name", mutate: func(c *Config) { c.Name = "" }, wantErr: `cluster: name "": must not be empty`},
		{name: "name with comma", mutate: func(c *Config) { c.Name = "a,b" }, wantErr: `cluster: name "a,b": character ','`},
		{name: "name with equals", mutate: func(c *Config) { c.Name = "a=b" }, wantErr: `cluster: name "a=b"`},
		{name: "empty data dir", mutate: func(c *Config) { c.DataDir = "" }, wantErr: "cluster: data dir is empty"},
		{name: "empty client listen", mutate: func(c *Config) { c.ClientListen = "" }, wantErr: `cluster: client listen "": must be host:port`},
		{name: "client listen without port", mutate: func(c *Config) { c.ClientListen = "127.0.0.1" }, wantErr: `cluster: client listen "127.0.0.1": must be host:port`},
		{name: "client listen hostname", mutate: func(c *Config) { c.ClientListen = "example.com:7401" }, wantErr: `cluster: client listen "example.com:7401": host "example.com" must be an IP address or localhost`},
		{name: "client listen unspecified", mutate: func(c *Config) { c.ClientListen = "0.0.0.0:7401" }, wantErr: `cluster: client listen "0.0.0.0:7401": host 0.0.0.0 is unspecified`},
		{name: "client listen empty host", mutate: func(c *Config) { c.ClientListen = ":7401" }, wantErr: `cluster: client listen ":7401": host "" must be`},
		{name: "peer listen port zero", mutate: func(c *Config) { c.PeerListen = "127.0.0.1:0" }, wantErr: `cluster: peer listen "127.0.0.1:0": port "0" must be a number`},
		{name: "peer listen port too big", mutate: func(c *Config) { c.PeerListen = "127.0.0.1:65536" }, wantErr: `cluster: peer listen "127.0.0.1:65536": port "65536"`},
		{name: "peer listen port name", mutate: func(c *Config) { c.PeerListen = "127.0.0.1:http" }, wantErr: `cluster: peer listen "127.0.0.1:http": port "http"`},
		{name: "same listen", mutate: func(c *Config) { c.PeerListen = c.ClientListen }, wantErr: `cluster: client listen and peer listen are both "127.0.0.1:7401"`},
		{name: "zero quota", mutate: func(c *Config) { c.QuotaBytes = 0 }, wantErr: "cluster: quota bytes 0: must be positive"},
		{name: "negative quota", mutate: func(c *Config) { c.QuotaBytes = -1 }, wantErr: "cluster: quota bytes -1: must be positive"},
		{name: "zero retention", mutate: func(c *Config) { c.CompactionRetention = 0 }, wantErr: "cluster: compaction retention 0s: must be positive"},
		{name: "negative start timeout", mutate: func(c *Config) { c.StartTimeout = -time.Second }, wantErr: "cluster: start timeout -1s: must be positive"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := valid()
			tt.mutate(&c)
			before := c
			err := c.Validate()
			if c != before {
				t.Errorf("Validate changed the config: %+v, was %+v", c, before)
			}
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("Validate() = %v, want nil", err)
			case tt.wantErr != "" && err == nil:
				t.Fatalf("Validate() = nil, want an error containing %q", tt.wantErr)
			case tt.wantErr != "" && !strings.Contains(err.Error(), tt.wantErr):
				t.Fatalf("Validate() = %q, want it to contain %q", err, tt.wantErr)
			}
		})
	}
}

func TestEmbedConfig(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Name = "n1"
	cfg.DataDir = "/data/etcd"
	ec := embedConfig(cfg, zap.NewNop())

	if ec.Dir != cfg.DataDir {
		t.Errorf("Dir = %q, want %q", ec.Dir, cfg.DataDir)
	}
	if want := "n1=http://127.0.0.1:7402"; ec.InitialCluster != want {
		t.Errorf("InitialCluster = %q, want %q", ec.InitialCluster, want)
	}
	if ec.QuotaBackendBytes != 4<<30 {
		t.Errorf("QuotaBackendBytes = %d, want 4 GiB", ec.QuotaBackendBytes)
	}
	if ec.AutoCompactionMode != "periodic" || ec.AutoCompactionRetention != "1h0m0s" {
		t.Errorf("auto-compaction = %q %q, want periodic 1h0m0s", ec.AutoCompactionMode, ec.AutoCompactionRetention)
	}
	if ec.WatchProgressNotifyInterval != 10*time.Minute {
		t.Errorf("WatchProgressNotifyInterval = %s, want 10m (a fifth of the retention, at most etcd's default)", ec.WatchProgressNotifyInterval)
	}
	cfg.CompactionRetention = 5 * time.Minute
	if got := embedConfig(cfg, zap.NewNop()).WatchProgressNotifyInterval; got != time.Minute {
		t.Errorf("with a retention of 5m, WatchProgressNotifyInterval = %s, want 1m (a fifth)", got)
	}
	if ec.MaxTxnOps != MaxTxnOps {
		t.Errorf("MaxTxnOps = %d, want %d (registry.Config.MaxTxnOps is given the constant)", ec.MaxTxnOps, MaxTxnOps)
	}
	if ec.MaxRequestBytes < 3<<19 {
		t.Errorf("MaxRequestBytes = %d, want at least 1.5 MiB", ec.MaxRequestBytes)
	}
	if ec.EnableGRPCGateway {
		t.Error("gRPC gateway enabled")
	}
}

func TestEtcdExpectedWarningsDemoted(t *testing.T) {
	tests := []struct {
		name     string
		level    zapcore.Level
		wantSeen bool // whether the expected lines show at all
	}{
		{name: "etcd at warn is quiet", level: zapcore.WarnLevel, wantSeen: false},
		{name: "etcd at info shows them at info", level: zapcore.InfoLevel, wantSeen: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			logs := &syncbuf.Buffer{}
			cfg := testConfig(t)
			enc := zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig())
			cfg.EtcdLogger = zap.New(zapcore.NewCore(enc, zapcore.AddSync(logs), tt.level))
			m := start(t, cfg)
			if _, err := m.Client().Put(t.Context(), "/test/k", "v"); err != nil {
				t.Fatalf("Put: %v", err)
			}
			if err := m.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}

			seen := map[string]bool{}
			for line := range strings.Lines(logs.String()) {
				var entry struct{ Level, Msg string }
				if err := json.Unmarshal([]byte(line), &entry); err != nil {
					t.Fatalf("log line %q: %v", line, err)
				}
				if !expectedMessages[entry.Msg] && !closingMessages[entry.Msg] {
					continue
				}
				seen[entry.Msg] = true
				if entry.Level != "info" {
					t.Errorf("expected etcd line logged at %s, want info: %s", entry.Level, line)
				}
			}
			for _, msg := range []string{
				"Running http and grpc server on single port. This is not recommended for production.",
				"setting up serving from embedded etcd failed.",
			} {
				if seen[msg] != tt.wantSeen {
					t.Errorf("line %q seen = %v, want %v", msg, seen[msg], tt.wantSeen)
				}
			}
			if t.Failed() {
				t.Logf("etcd logs:\n%s", logs)
			}
		})
	}
}

// TestStartWithoutQuorumGivesUp: a member whose cluster's other voter never comes never
// becomes ready; Start gives up at its timeout and closes what it started (etcd's own
// Close would wait forever for a member that never became ready).
func TestStartWithoutQuorumGivesUp(t *testing.T) {
	verifyNoLeaks(t)
	cfg := testConfig(t)
	cfg.InitialCluster = cfg.Name + "=http://" + cfg.PeerListen + ",absent=http://" + loopback.MustAddr(t)
	cfg.StartTimeout = 3 * time.Second
	done := make(chan error, 1)
	go func() {
		m, err := Start(context.Background(), cfg)
		if m != nil {
			m.Close()
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "start timeout") {
			t.Fatalf("Start: %v, want the start timeout", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("Start did not return a minute after its 3s timeout: closing a member that never became ready hangs")
	}
}

// TestAutoCompaction: the member compacts its history by itself, to the
// revision of CompactionRetention ago, and tells a quiet watch how far it
// has got, so a stream can resume from a revision not yet compacted.
func TestAutoCompaction(t *testing.T) {
	cfg := testConfig(t)
	cfg.CompactionRetention = 5 * time.Second
	m := start(t, cfg)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	cli := m.Client()

	quiet := cli.Watch(ctx, "/quiet/", clientv3.WithPrefix(), clientv3.WithProgressNotify())
	first, err := cli.Put(ctx, "/test/gone", "v")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Delete(ctx, "/test/gone"); err != nil {
		t.Fatal(err)
	}
	// Writes go on, as on a node in use, so that there are newer revisions
	// to keep; the revision of the first put must become compacted.
	var compacted bool
	for !compacted {
		if _, err := cli.Put(ctx, "/test/tick", "v"); err != nil {
			t.Fatal(err)
		}
		_, err := cli.Get(ctx, "/test/gone", clientv3.WithRev(first.Header.Revision))
		switch {
		case errors.Is(err, rpctypes.ErrCompacted):
			compacted = true
		case err != nil:
			t.Fatal(err)
		case ctx.Err() != nil:
			t.Fatalf("revision %d never compacted with a retention of %s", first.Header.Revision, cfg.CompactionRetention)
		default:
			time.Sleep(200 * time.Millisecond)
		}
	}
	// The latest revision is still there to read.
	if _, err := cli.Get(ctx, "/test/tick"); err != nil {
		t.Fatalf("read after the compaction: %v", err)
	}
	// The quiet watch heard of the progress (every fifth of the retention).
	for resp := range quiet {
		if resp.IsProgressNotify() {
			if resp.Header.Revision <= first.Header.Revision {
				t.Errorf("progress notification at revision %d, want past %d", resp.Header.Revision, first.Header.Revision)
			}
			return
		}
		if len(resp.Events) > 0 || resp.Err() != nil {
			t.Fatalf("quiet watch: %d events, error %v", len(resp.Events), resp.Err())
		}
	}
	t.Fatal("the quiet watch ended without a progress notification")
}
