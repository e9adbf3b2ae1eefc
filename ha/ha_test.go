package ha_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/roster-dev/roster/cluster/clustertest"
	"github.com/roster-dev/roster/ha"
)

const prefix = "/roster/v1/ha/leader/" // the default

func TestValidate(t *testing.T) {
	cli := &clientv3.Client{} // never used: Validate does no I/O
	tests := []struct {
		name string
		cfg  ha.Config
		want string // a substring of the error, "" for none
	}{
		{name: "defaults", cfg: ha.Config{Client: cli, Node: "n1"}},
		{name: "all set", cfg: ha.Config{Client: cli, Node: "n1", Prefix: "/x/", TTL: 5 * time.Second}},
		{name: "no client", cfg: ha.Config{Node: "n1"}, want: "Client"},
		{name: "no node", cfg: ha.Config{Client: cli}, want: "Node"},
		{name: "prefix without slash", cfg: ha.Config{Client: cli, Node: "n1", Prefix: "/x"}, want: "Prefix"},
		{name: "ttl too short", cfg: ha.Config{Client: cli, Node: "n1", TTL: 500 * time.Millisecond}, want: "TTL"},
		{name: "ttl negative", cfg: ha.Config{Client: cli, Node: "n1", TTL: -time.Second}, want: "TTL"},
		{name: "ttl not whole seconds", cfg: ha.Config{Client: cli, Node: "n1", TTL: 1500 * time.Millisecond}, want: "TTL"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("Validate: %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("Validate = %v, want an error naming %s", err, tt.want)
			}
			if _, err2 := ha.New(tt.cfg); (err2 == nil) != (err == nil) {
				t.Fatalf("New = %v, Validate = %v", err2, err)
			}
		})
	}
}

func TestNewChecksDuties(t *testing.T) {
	cfg := ha.Config{Client: &clientv3.Client{}, Node: "n1"}
	run := func(context.Context) error { return nil }
	tests := []struct {
		name   string
		duties []ha.Duty
		want   string
	}{
		{name: "none", duties: nil},
		{name: "two", duties: []ha.Duty{{Name: "a", Run: run}, {Name: "b", Run: run}}},
		{name: "no name", duties: []ha.Duty{{Name: "a", Run: run}, {Run: run}}, want: "duty 1: Name"},
		{name: "no run", duties: []ha.Duty{{Name: "a"}}, want: `duty "a": Run`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ha.New(cfg, tt.duties...)
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("New: %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("New = %v, want an error with %q", err, tt.want)
			}
		})
	}
}

// TestOneLeaderAtATime closes the leader of three runners again and again
// (starting a new runner each time): another runner always picks the duty
// up, and never do two runs of it overlap.
func TestOneLeaderAtATime(t *testing.T) {
	m := clustertest.Start(t)
	p := &probe{}
	nodes := map[string]*node{}
	for i := 1; i <= 3; i++ {
		name := fmt.Sprintf("n%d", i)
		nodes[name] = startNode(t, m.ClientURL(), ha.Config{Node: name}, p.duty(name))
	}
	for i := 4; i <= 8; i++ {
		leader := waitSoleLeader(t, nodes, p)
		closed := time.Now()
		if err := leader.r.Close(); err != nil {
			t.Fatalf("close leader %s: %v", leader.name, err)
		}
		if leader.r.IsLeader() {
			t.Fatalf("%s: IsLeader after Close", leader.name)
		}
		delete(nodes, leader.name)
		eventually(t, 15*time.Second, "another node runs the duty", func() bool {
			holder, _ := p.current()
			return holder != "" && holder != leader.name
		})
		holder, last := p.current()
		t.Logf("%s closed, %s took over after %s", leader.name, holder, last.at.Sub(closed))

		name := fmt.Sprintf("n%d", i)
		nodes[name] = startNode(t, m.ClientURL(), ha.Config{Node: name}, p.duty(name))
	}
	waitSoleLeader(t, nodes, p)
	if got := p.maxSeen.Load(); got != 1 {
		t.Fatalf("at most %d runs of the duty were alive at once, want 1", got)
	}
}

// TestCrashFailover cuts the leader's connections to etcd as a SIGKILL would:
// it can neither renew nor resign, and another node leads once etcd expires
// its lease; the dead leader's duty stopped before that.
func TestCrashFailover(t *testing.T) {
	m := clustertest.Start(t)
	p := &probe{}
	nodes := map[string]*node{}
	for _, name := range []string{"n1", "n2", "n3"} {
		nodes[name] = startNode(t, m.ClientURL(), ha.Config{Node: name, TTL: 2 * time.Second}, p.duty(name))
	}
	leader := waitSoleLeader(t, nodes, p)
	crashed := time.Now()
	leader.crash()
	eventually(t, 15*time.Second, "another node runs the duty", func() bool {
		holder, _ := p.current()
		return holder != "" && holder != leader.name
	})
	holder, last := p.current()
	t.Logf("takeover after a crash (TTL 2s): %s by %s", last.at.Sub(crashed).Round(time.Millisecond), holder)
	delete(nodes, leader.name)
	waitSoleLeader(t, nodes, p)
	if got := p.maxSeen.Load(); got != 1 {
		t.Fatalf("at most %d runs of the duty were alive at once, want 1", got)
	}
}

// TestCutOffLeaderStopsFirst cuts the leader off from etcd without closing
// its connections: its renewals go unanswered, and it must stop its duties
// before etcd expires its lease and another node starts them.
func TestCutOffLeaderStopsFirst(t *testing.T) {
	m := clustertest.Start(t)
	p := &probe{}
	nodes := map[string]*node{}
	for _, name := range []string{"n1", "n2"} {
		nodes[name] = startNode(t, m.ClientURL(), ha.Config{Node: name, TTL: 2 * time.Second}, p.duty(name))
	}
	leader := waitSoleLeader(t, nodes, p)
	cut := time.Now()
	leader.net.frozen.Store(true)

	var stopped time.Duration
	eventually(t, 15*time.Second, "the cut-off leader stops its duty", func() bool {
		if holder, _ := p.current(); holder == leader.name {
			return false
		}
		stopped = time.Since(cut)
		return true
	})
	eventually(t, 15*time.Second, "another node runs the duty", func() bool {
		holder, _ := p.current()
		return holder != "" && holder != leader.name
	})
	_, last := p.current()
	t.Logf("cut-off leader stopped its duty %s after the cut; %s took over %s after it",
		stopped.Round(time.Millisecond), last.node, last.at.Sub(cut).Round(time.Millisecond))
	if got := p.maxSeen.Load(); got != 1 {
		t.Fatalf("at most %d runs of the duty were alive at once, want 1", got)
	}
	if leader.r.IsLeader() {
		t.Fatalf("%s still says it leads", leader.name)
	}
	if !strings.Contains(leader.logs.String(), "not renewed in time") {
		t.Errorf("the cut-off leader did not log why it lost the lead:\n%s", leader.logs)
	}
}

// TestLostLeadCancelsDuty revokes the leader's lease behind its back: the
// duty's context ends, and the runner campaigns again with a new lease and
// runs the duty again.
func TestLostLeadCancelsDuty(t *testing.T) {
	m := clustertest.Start(t)
	runs := make(chan context.Context, 10)
	n := startNode(t, m.ClientURL(), ha.Config{Node: "n1"}, ha.Duty{Name: "d", Run: func(ctx context.Context) error {
		runs <- ctx
		<-ctx.Done()
		return ctx.Err()
	}})
	first := receive(t, runs)
	_, lease := leaderKey(t, m.Client(), prefix)
	if _, err := m.Client().Revoke(context.Background(), lease); err != nil {
		t.Fatalf("revoke the leader's lease: %v", err)
	}
	select {
	case <-first.Done():
	case <-time.After(15 * time.Second):
		t.Fatal("the duty's context was not cancelled when the lead was lost")
	}
	receive(t, runs)
	eventually(t, 15*time.Second, "n1 leads again", n.r.IsLeader)
	if _, again := leaderKey(t, m.Client(), prefix); again == lease || again == 0 {
		t.Fatalf("leads again on lease %x, want a new lease (old %x)", again, lease)
	}
	logs := n.logs.String()
	for _, want := range []string{"duty leader: this node leads", "lost the duty lead", "leader key deleted"} {
		if !strings.Contains(logs, want) {
			t.Errorf("logs lack %q:\n%s", want, logs)
		}
	}
}

// TestFailingDutyRestarts: a duty that returns an error runs again while
// the node still leads, on the same lease; the other duty runs on.
func TestFailingDutyRestarts(t *testing.T) {
	m := clustertest.Start(t)
	var failing, steady atomic.Int32
	n := startNode(t, m.ClientURL(), ha.Config{Node: "n1"},
		ha.Duty{Name: "failing", Run: func(ctx context.Context) error {
			if failing.Add(1) <= 2 {
				return errors.New("boom")
			}
			<-ctx.Done()
			return nil
		}},
		ha.Duty{Name: "steady", Run: func(ctx context.Context) error {
			steady.Add(1)
			<-ctx.Done()
			return nil
		}},
	)
	eventually(t, 15*time.Second, "n1 leads", n.r.IsLeader)
	_, lease := leaderKey(t, m.Client(), prefix)
	eventually(t, 15*time.Second, "the failing duty's third run", func() bool { return failing.Load() >= 3 })
	if !n.r.IsLeader() {
		t.Fatal("n1 lost the lead")
	}
	if _, now := leaderKey(t, m.Client(), prefix); now != lease {
		t.Fatalf("the lease changed from %x to %x: the restart should not cost the lead", lease, now)
	}
	if got := steady.Load(); got != 1 {
		t.Fatalf("the steady duty ran %d times, want 1", got)
	}
	if logs := n.logs.String(); strings.Count(logs, "level=WARN msg=\"duty failed; restarting\" duty=failing error=boom") != 2 {
		t.Fatalf("want two warnings naming the failing duty and its error:\n%s", logs)
	}
}

// TestLeader: Leader names the leader wherever it is read; IsLeader agrees;
// a closed leader resigns at once.
func TestLeader(t *testing.T) {
	m := clustertest.Start(t)
	p := &probe{}
	n1 := startNode(t, m.ClientURL(), ha.Config{Node: "n1"}, p.duty("n1"))
	waitSoleLeader(t, map[string]*node{"n1": n1}, p)
	n2 := startNode(t, m.ClientURL(), ha.Config{Node: "n2"}, p.duty("n2"))
	nodes := map[string]*node{"n1": n1, "n2": n2}
	if got := waitSoleLeader(t, nodes, p); got != n1 {
		t.Fatalf("%s leads, want n1 (the older candidate)", got.name)
	}

	closed := time.Now()
	if err := n1.r.Close(); err != nil {
		t.Fatalf("close n1: %v", err)
	}
	delete(nodes, "n1")
	waitSoleLeader(t, nodes, p)
	_, last := p.current()
	t.Logf("takeover after a graceful Close: %s", last.at.Sub(closed))

	// A closed runner still reads the leader.
	if got, err := n1.r.Leader(context.Background()); err != nil || got != "n2" {
		t.Fatalf("Leader through closed n1 = %q, %v; want n2", got, err)
	}
	if err := n2.r.Close(); err != nil {
		t.Fatalf("close n2: %v", err)
	}
	if got, err := n2.r.Leader(context.Background()); err != nil || got != "" {
		t.Fatalf("Leader after every runner closed = %q, %v; want none", got, err)
	}
}

// TestLifecycle: Close before Start, Start after Close, Close twice, and a
// cancelled Start context, which resigns.
func TestLifecycle(t *testing.T) {
	m := clustertest.Start(t)
	cli := m.Client()

	r, err := ha.New(ha.Config{Client: cli, Node: "n1"})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatalf("Close before Start: %v", err)
	}
	r.Start(context.Background())
	if err := r.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if got, err := r.Leader(context.Background()); err != nil || got != "" {
		t.Fatalf("Leader after Start after Close = %q, %v; want none", got, err)
	}

	r, err = ha.New(ha.Config{Client: cli, Node: "n2"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.Start(ctx)
	r.Start(ctx) // no second loop
	eventually(t, 15*time.Second, "n2 leads", r.IsLeader)
	cancel()
	eventually(t, 15*time.Second, "n2 resigns", func() bool {
		got, err := r.Leader(context.Background())
		return err == nil && got == "" && !r.IsLeader()
	})
	for range 2 {
		if err := r.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
	}
}

// TestTTLRaisedByEtcd asks for a 1 s TTL and reports what etcd grants.
func TestTTLRaisedByEtcd(t *testing.T) {
	m := clustertest.Start(t)
	n := startNode(t, m.ClientURL(), ha.Config{Node: "n1", TTL: time.Second})
	eventually(t, 15*time.Second, "n1 leads", n.r.IsLeader)
	_, lease := leaderKey(t, m.Client(), prefix)
	resp, err := m.Client().TimeToLive(context.Background(), lease)
	if err != nil {
		t.Fatalf("lease TTL: %v", err)
	}
	t.Logf("asked for a 1s TTL, etcd granted %ds", resp.GrantedTTL)
	if resp.GrantedTTL < 1 {
		t.Fatalf("granted TTL %ds", resp.GrantedTTL)
	}
	if resp.GrantedTTL != 1 && !strings.Contains(n.logs.String(), "granted-ttl="+fmt.Sprint(resp.GrantedTTL)) {
		t.Errorf("the runner did not log the granted TTL:\n%s", n.logs)
	}
}

// TestCrashTakeoverTime measures, five times, how long after a crash of the
// leader (its connections reset, so its lease expires) another node runs the
// duty, with TTL 2s. The runs start at a random point of etcd's 500 ms
// expiry tick (back to back they would lock onto it) and the crash comes at
// a random point of the leader's renewal cycle (a third of the TTL); the
// sleeps are those random phases, not waits for a state.
func TestCrashTakeoverTime(t *testing.T) {
	if testing.Short() {
		t.Skip("measurement")
	}
	m := clustertest.Start(t)
	const ttl = 2 * time.Second
	var took []time.Duration
	for i := range 5 {
		time.Sleep(rand.N(500 * time.Millisecond))
		p := &probe{}
		cfg := func(name string) ha.Config {
			return ha.Config{Node: name, TTL: ttl, Prefix: fmt.Sprintf("/roster/test/crash-%d/", i)}
		}
		nodes := map[string]*node{
			"a": startNode(t, m.ClientURL(), cfg("a"), p.duty("a")),
			"b": startNode(t, m.ClientURL(), cfg("b"), p.duty("b")),
		}
		leader := waitSoleLeader(t, nodes, p)
		time.Sleep(rand.N(ttl / 3))
		crashed := time.Now()
		leader.crash()
		eventually(t, 15*time.Second, "another node runs the duty", func() bool {
			holder, _ := p.current()
			return holder != "" && holder != leader.name
		})
		_, last := p.current()
		took = append(took, last.at.Sub(crashed))
		t.Logf("run %d: takeover after a crash %s", i+1, took[i].Round(time.Millisecond))
		for _, n := range nodes {
			n.r.Close()
			n.crash()
		}
	}
	t.Logf("takeover after a crash, TTL %s, %d runs: median %s, min %s, max %s", ttl, len(took),
		median(took).Round(time.Millisecond), minOf(took).Round(time.Millisecond), maxOf(took).Round(time.Millisecond))
}

func minOf(ds []time.Duration) time.Duration {
	m := ds[0]
	for _, d := range ds {
		m = min(m, d)
	}
	return m
}

func maxOf(ds []time.Duration) time.Duration {
	m := ds[0]
	for _, d := range ds {
		m = max(m, d)
	}
	return m
}

// receive waits for the next value on ch.
func receive[T any](t testing.TB, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(15 * time.Second):
		t.Fatal("nothing arrived within 15s")
		var zero T
		return zero
	}
}
