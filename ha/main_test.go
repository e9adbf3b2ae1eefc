package ha_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"go.uber.org/zap"

	"github.com/roster-dev/roster/cluster/clustertest/syncbuf"
	"github.com/roster-dev/roster/ha"
)

// TestMain checks that the tests leave no goroutine running: a closed runner,
// a closed client and a closed member leave none behind.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// node is one simulated Roster node: its runner, with an etcd client of its
// own that reaches etcd through a proxy of its own (its network).
type node struct {
	name  string
	cli   *clientv3.Client
	net   *proxy
	r     *ha.Runner
	logs  *syncbuf.Buffer
	close sync.Once
}

// crash cuts every connection of the node to etcd at once and lets nothing
// through afterwards, as a SIGKILL does, then closes its client so the
// runner's further attempts fail fast. The runner itself runs on, cut off.
func (n *node) crash() {
	n.close.Do(func() {
		n.net.kill()
		n.cli.Close()
	})
}

// newClient returns a client of its own on endpoint (a separate node's view
// of etcd); the caller closes it.
func newClient(t testing.TB, endpoint string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{endpoint},
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		t.Fatalf("etcd client: %v", err)
	}
	return cli
}

// startNode starts a runner on a node of its own that reaches etcd's client
// URL through a proxy. When the test ends the runner closes, then the client
// and the proxy, all before the member (which the test started earlier).
func startNode(t testing.TB, etcdURL string, cfg ha.Config, duties ...ha.Duty) *node {
	t.Helper()
	n := &node{name: cfg.Node, net: startProxy(t, strings.TrimPrefix(etcdURL, "http://")), logs: &syncbuf.Buffer{}}
	n.cli = newClient(t, n.net.addr())
	t.Cleanup(func() { n.close.Do(func() { n.cli.Close() }) })
	cfg.Client = n.cli
	cfg.Logger = slog.New(slog.NewTextHandler(io.MultiWriter(n.logs, testOutput{t}), nil))
	r, err := ha.New(cfg, duties...)
	if err != nil {
		t.Fatalf("ha.New: %v", err)
	}
	n.r = r
	t.Cleanup(func() { r.Close() })
	r.Start(context.Background())
	return n
}

// testOutput writes a runner's log lines to the test's log (shown with -v or
// when the test fails).
type testOutput struct{ t testing.TB }

func (o testOutput) Write(p []byte) (int, error) {
	o.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s did not happen within %s", what, within)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// probe is a duty that counts how many of its runs are alive at once and
// records who runs it and when each run started.
type probe struct {
	running atomic.Int32
	maxSeen atomic.Int32

	mu     sync.Mutex
	holder string // the node whose run is alive, "" when none
	starts []started
}

type started struct {
	node string
	at   time.Time
}

// duty returns the probe's duty as node runs it.
func (p *probe) duty(node string) ha.Duty {
	return ha.Duty{Name: "probe", Run: func(ctx context.Context) error {
		n := p.running.Add(1)
		for m := p.maxSeen.Load(); n > m && !p.maxSeen.CompareAndSwap(m, n); m = p.maxSeen.Load() {
		}
		p.mu.Lock()
		p.holder = node
		p.starts = append(p.starts, started{node, time.Now()})
		p.mu.Unlock()

		<-ctx.Done()

		p.mu.Lock()
		if p.holder == node {
			p.holder = ""
		}
		p.mu.Unlock()
		p.running.Add(-1)
		return nil
	}}
}

// current returns the node whose run is alive ("" when none) and the start
// of the latest run.
func (p *probe) current() (string, started) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var last started
	if len(p.starts) > 0 {
		last = p.starts[len(p.starts)-1]
	}
	return p.holder, last
}

// leaderKey returns the oldest candidate key under prefix, read through cli.
func leaderKey(t testing.TB, cli *clientv3.Client, prefix string) (key string, lease clientv3.LeaseID) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, prefix, clientv3.WithFirstCreate()...)
	if err != nil {
		t.Fatalf("read leader key: %v", err)
	}
	if len(resp.Kvs) == 0 {
		return "", 0
	}
	return string(resp.Kvs[0].Key), clientv3.LeaseID(resp.Kvs[0].Lease)
}

// waitSoleLeader waits until exactly one of nodes says it leads, the probe
// runs on it, and Leader, read through every node, names it; it returns it.
func waitSoleLeader(t testing.TB, nodes map[string]*node, p *probe) *node {
	t.Helper()
	var leader *node
	eventually(t, 15*time.Second, "one consistent leader", func() bool {
		leader = nil
		for _, n := range nodes {
			if n.r.IsLeader() {
				if leader != nil {
					return false
				}
				leader = n
			}
		}
		if leader == nil {
			return false
		}
		if holder, _ := p.current(); holder != leader.name {
			return false
		}
		for _, n := range nodes {
			got, err := n.r.Leader(context.Background())
			if err != nil || got != leader.name {
				return false
			}
		}
		return true
	})
	return leader
}

// median returns the median of ds.
func median(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// proxy forwards TCP connections to a target. Frozen, it drops every byte
// in both directions without closing anything, like a network partition the
// client does not notice; killed, it resets every connection and refuses new
// ones, as the network sees a SIGKILLed process.
type proxy struct {
	l        net.Listener
	target   string
	frozen   atomic.Bool
	accepted chan struct{} // closed when accept has returned

	mu    sync.Mutex
	conns []net.Conn
	wg    sync.WaitGroup
}

// startProxy starts a proxy to target on a free loopback port, closed when
// the test ends.
func startProxy(t testing.TB, target string) *proxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("proxy: %v", err)
	}
	p := &proxy{l: l, target: target, accepted: make(chan struct{})}
	go p.accept()
	t.Cleanup(p.kill)
	return p
}

func (p *proxy) addr() string { return "http://" + p.l.Addr().String() }

func (p *proxy) accept() {
	defer close(p.accepted)
	for {
		c, err := p.l.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c, up)
		p.mu.Unlock()
		p.wg.Go(func() { p.pipe(up, c) })
		p.wg.Go(func() { p.pipe(c, up) })
	}
}

// pipe copies src to dst until either closes, dropping what it reads while
// the proxy is frozen.
func (p *proxy) pipe(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if err != nil {
			dst.Close()
			return
		}
		if p.frozen.Load() {
			continue
		}
		if _, err := dst.Write(buf[:n]); err != nil {
			src.Close()
			return
		}
	}
}

// kill closes the listener and every connection and waits for the proxy's
// goroutines. Safe to call twice.
func (p *proxy) kill() {
	p.l.Close()
	<-p.accepted
	p.mu.Lock()
	for _, c := range p.conns {
		if tc, ok := c.(*net.TCPConn); ok {
			tc.SetLinger(0) // reset, as the kernel does for a killed process's sockets
		}
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}
