package e2e_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/roster-dev/roster/e2e"
	"github.com/roster-dev/roster/registry"
	"github.com/roster-dev/roster/registry/client"
)

// testContext returns a context that ends after d or when the test ends.
func testContext(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// retry calls f every `every` until it succeeds or ctx ends, each attempt
// bounded by attempt; it returns nil or the last error.
func retry(ctx context.Context, every, attempt time.Duration, f func(context.Context) error) error {
	for {
		actx, cancel := context.WithTimeout(ctx, attempt)
		err := f(actx)
		cancel()
		if err == nil {
			return nil
		}
		t := time.NewTimer(every)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w (last error: %v)", ctx.Err(), err)
		case <-t.C:
		}
	}
}

// roleWatch records every etcd role each node is seen with while it runs.
type roleWatch struct {
	mu   sync.Mutex
	seen map[string]map[string]bool // node name → roles
	stop context.CancelFunc
	done chan struct{}
}

// watchRoles polls the members every 100 ms until the returned watch is
// stopped (or the test ends).
func watchRoles(ctx context.Context, c *e2e.Cluster) *roleWatch {
	c.Token()
	ctx, stop := context.WithCancel(ctx)
	w := &roleWatch{seen: map[string]map[string]bool{}, stop: stop, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for ctx.Err() == nil {
			if ms, err := c.Members(ctx); err == nil {
				w.mu.Lock()
				for _, m := range ms {
					if w.seen[m.Name] == nil {
						w.seen[m.Name] = map[string]bool{}
					}
					w.seen[m.Name][m.EtcdRole] = true
				}
				w.mu.Unlock()
			}
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	return w
}

// Stop ends the watch and waits for it.
func (w *roleWatch) Stop() { w.stop(); <-w.done }

// Saw reports whether node name was ever seen with role.
func (w *roleWatch) Saw(name, role string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.seen[name][role]
}

// promotionLogged reports whether any node logged a line about promoting
// the node named name (a message mentioning "promot" with a field or the
// message naming it).
func promotionLogged(c *e2e.Cluster, name string) bool {
	for _, n := range c.Nodes() {
		for _, l := range n.LogLines() {
			msg, _ := l["msg"].(string)
			if !strings.Contains(strings.ToLower(msg), "promot") {
				continue
			}
			if strings.Contains(msg, " "+name) {
				return true
			}
			for k, v := range l {
				if s, ok := v.(string); ok && k != "msg" && s == name {
					return true
				}
			}
		}
	}
	return false
}

// TestClusterForms: three nodes that expect each other bootstrap one
// cluster; two more join and become voters (the voter target is 5); a
// sixth stays the standby learner; a seventh runs no etcd member and still
// serves the API.
func TestClusterForms(t *testing.T) {
	ctx := testContext(t, 5*time.Minute)
	args := []string{"--voters", "5"}
	begin := time.Now()
	c := e2e.StartCluster(t, bin, 3, append([]string{"--bootstrap-expect", "3"}, args...)...)
	ms := c.WaitFor(ctx, "a cluster of 3 voters", c.Formed(3, 0))
	t.Logf("first start to 3 voters: %s", time.Since(begin).Round(time.Millisecond))
	t.Logf("members:\n%s", ms)

	// The lowest name bootstraps, so n1 wrote the admin token, alone (Token
	// fails the test if two nodes wrote one).
	c.Token()
	if _, err := os.Stat(filepath.Join(c.Node("n1").DataDir(), "admin.token")); err != nil {
		t.Errorf("the bootstrapping node n1 has no admin.token: %v", err)
	}

	roles := watchRoles(ctx, c)
	n4, n5 := c.Add("n4", args...), c.Add("n5", args...)
	n4.Join, n5.Join = c.GossipAddrs(), c.GossipAddrs()
	joined := time.Now()
	c.Start(n4, n5)
	c.WaitFor(ctx, "n4 and n5 promoted to voters", c.Formed(5, 0))
	t.Logf("n4 and n5 started to 5 voters: %s", time.Since(joined).Round(time.Millisecond))
	for _, name := range []string{"n4", "n5"} {
		saw, logged := roles.Saw(name, e2e.RoleLearner), promotionLogged(c, name)
		t.Logf("%s: seen as a learner %v, promotion logged %v", name, saw, logged)
		if !saw && !logged {
			t.Errorf("%s became a voter, but was never seen as a learner nor logged as promoted", name)
		}
	}

	n6 := c.Add("n6", args...)
	n6.Join = c.GossipAddrs(n6)
	c.Start(n6)
	c.WaitFor(ctx, "n6 as the standby learner", e2e.All(c.Formed(5, 1), func(ms e2e.Members) bool {
		return ms.Role("n6", e2e.RoleLearner)
	}))
	// It stays the standby: watch for a few seconds that nothing changes.
	wctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	changed, err := c.Until(wctx, func(ms e2e.Members) bool {
		return !ms.Role("n6", e2e.RoleLearner) || ms.Count(e2e.RoleVoter) != 5
	})
	cancel()
	if err == nil {
		t.Fatalf("the standby n6 did not stay a learner beside 5 voters:\n%s", changed)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("watching the standby: %v", err)
	}

	n7 := c.Add("n7", args...)
	n7.Join = c.GossipAddrs(n7)
	c.Start(n7)
	ms = c.WaitFor(ctx, "n7 without an etcd member", e2e.All(c.Formed(5, 1), func(ms e2e.Members) bool {
		return ms.Role("n7", e2e.RoleNone)
	}))
	roles.Stop()
	if len(ms) != 7 {
		t.Fatalf("%d member rows, want 7:\n%s", len(ms), ms)
	}
	t.Logf("members:\n%s", ms)

	// n7 serves the API as a client of the voters: a session opened through
	// it, alone, is heartbeated through it.
	cl := c.Client(n7)
	var beats atomic.Int32
	s, err := cl.OpenSession(ctx, registry.OpenRequest{User: "seven", Module: "sales", TTLSeconds: 6},
		client.WithHeartbeatHook(func(_ registry.HeartbeatResult, err error) {
			if err == nil {
				beats.Add(1)
			}
		}))
	if err != nil {
		t.Fatalf("open through n7: %v", err)
	}
	if s.Info().Node != "n7" {
		t.Errorf("session opened through n7 records node %q", s.Info().Node)
	}
	if _, err := cl.Heartbeat(ctx, s.ID(), s.Token()); err != nil {
		t.Fatalf("heartbeat through n7: %v", err)
	}
	if err := retry(ctx, 200*time.Millisecond, 5*time.Second, func(context.Context) error {
		if beats.Load() < 2 {
			return errors.New("fewer than 2 background heartbeats")
		}
		return nil
	}); err != nil {
		t.Fatalf("background heartbeats through n7: %v (session: %v)", err, s.Err())
	}
	if got, err := cl.Get(ctx, s.ID()); err != nil || got.User != "seven" {
		t.Fatalf("get through n7: %+v %v", got, err)
	}
	if err := s.Close(ctx); err != nil || !errors.Is(s.Err(), client.ErrClosed) {
		t.Fatalf("close through n7: %v, %v", err, s.Err())
	}
	checkMemberRows(t, c, ms)
}

// checkMemberRows checks what every row of a settled cluster must say: a
// name, the node's API URL and gossip address, and for etcd members an id
// and the node's peer and etcd client URLs; no two rows share a name or
// member id.
func checkMemberRows(t *testing.T, c *e2e.Cluster, ms e2e.Members) {
	t.Helper()
	names, ids := map[string]bool{}, map[string]bool{}
	for _, m := range ms {
		if names[m.Name] {
			t.Errorf("two rows named %s:\n%s", m.Name, ms)
		}
		names[m.Name] = true
		n := c.Node(m.Name)
		if !n.Running() {
			continue
		}
		if m.APIURL != n.URL() || m.Address != n.Gossip {
			t.Errorf("row %s: api_url %q address %q, want %q %q", m.Name, m.APIURL, m.Address, n.URL(), n.Gossip)
		}
		if m.EtcdRole == e2e.RoleVoter || m.EtcdRole == e2e.RoleLearner {
			if m.EtcdMemberID == "" || ids[m.EtcdMemberID] {
				t.Errorf("row %s: etcd member id %q missing or shared:\n%s", m.Name, m.EtcdMemberID, ms)
			}
			ids[m.EtcdMemberID] = true
			if m.PeerURL != n.PeerURL() {
				t.Errorf("row %s: peer_url %q, want %q", m.Name, m.PeerURL, n.PeerURL())
			}
			if m.EtcdClientURL != "http://"+n.Etcd {
				t.Errorf("row %s: etcd_client_url %q, want http://%s", m.Name, m.EtcdClientURL, n.Etcd)
			}
		}
	}
}

// held is a set of open sessions, each kept alive by its *client.Session,
// with the time of each one's last successful heartbeat.
type held struct {
	sessions []*client.Session
	lastOK   []atomic.Int64 // unix nanoseconds
}

// openHeld opens n sessions with ttl through clients (round robin), each a
// different user, and keeps them alive until the test ends, when it logs
// them out.
func openHeld(ctx context.Context, tb testing.TB, clients []*client.Client, n int, ttl int64) *held {
	tb.Helper()
	h := &held{sessions: make([]*client.Session, n), lastOK: make([]atomic.Int64, n)}
	errs := make([]error, n)
	sem := make(chan struct{}, 16)
	var wg sync.WaitGroup
	for i := range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			hook := client.WithHeartbeatHook(func(_ registry.HeartbeatResult, err error) {
				if err == nil {
					h.lastOK[i].Store(time.Now().UnixNano())
				}
			})
			req := registry.OpenRequest{User: fmt.Sprintf("u%03d", i), Module: "sales", Host: "PC", TTLSeconds: ttl}
			h.sessions[i], errs[i] = clients[i%len(clients)].OpenSession(ctx, req, hook)
		})
	}
	wg.Wait()
	tb.Cleanup(func() { h.close() })
	if err := errors.Join(errs...); err != nil {
		tb.Fatalf("open %d sessions: %v", n, err)
	}
	return h
}

// ended returns a line for each session that has ended, with why.
func (h *held) ended() []string {
	var out []string
	for _, s := range h.sessions {
		select {
		case <-s.Done():
			out = append(out, fmt.Sprintf("%s: %v", s.ID(), s.Err()))
		default:
		}
	}
	return out
}

// beatSince returns how many sessions had a successful heartbeat after t.
func (h *held) beatSince(t time.Time) int {
	n := 0
	for i := range h.lastOK {
		if h.lastOK[i].Load() > t.UnixNano() {
			n++
		}
	}
	return n
}

// close logs every session out, bounded; errors do not matter here.
func (h *held) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	for _, s := range h.sessions {
		if s == nil {
			continue
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			s.Close(ctx)
		})
	}
	wg.Wait()
}

// clientsFor returns one admin client per node, each with every node's
// endpoint but starting at a different one, so that sessions spread.
func clientsFor(tb testing.TB, c *e2e.Cluster, nodes []*e2e.Node) []*client.Client {
	tb.Helper()
	var out []*client.Client
	for i := range nodes {
		rotated := append(slices.Clone(nodes[i:]), nodes[:i]...)
		out = append(out, c.Client(rotated...))
	}
	return out
}
