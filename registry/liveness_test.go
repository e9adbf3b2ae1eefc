package registry_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/roster-dev/roster/cluster"
	"github.com/roster-dev/roster/cluster/clustertest/syncbuf"
	"github.com/roster-dev/roster/registry"
	"github.com/roster-dev/roster/registry/api"
	"github.com/roster-dev/roster/registry/liveness"
)

// lnode is one node of a liveness test: a registry on the shared etcd with its own
// liveness view, whose API (the real handler) serves the other nodes' pushes.
type lnode struct {
	name string
	reg  *registry.Registry
	view *liveness.View
}

// gossip is what the nodes of a liveness test see of each other: name → API URL, and
// which are gone.
type gossip struct {
	mu   sync.Mutex
	urls map[string]string
	gone map[string]bool
}

func (g *gossip) peers() []liveness.Peer {
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []liveness.Peer
	for name, url := range g.urls {
		out = append(out, liveness.Peer{Name: name, URL: url, Gone: g.gone[name]})
	}
	return out
}

func (g *gossip) set(name, url string, gone bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.urls[name], g.gone[name] = url, gone
}

// livenessNodes wipes etcd and starts one node per name, each pushing to the others
// every 50 ms, plus, for each of mute, a node gossip shows alive whose API never
// answers a push (and which never pushes). No duty runs: see runLiveness.
func livenessNodes(t *testing.T, names []string, mute ...string) ([]*lnode, *gossip) {
	t.Helper()
	return livenessNodesWith(t, names, nil, mute...)
}

// livenessNodesWith is livenessNodes with opt (if not nil) applied to every node's
// registry Config.
func livenessNodesWith(t *testing.T, names []string, opt func(*registry.Config), mute ...string) ([]*lnode, *gossip) {
	t.Helper()
	g := &gossip{urls: map[string]string{}, gone: map[string]bool{}}
	var nodes []*lnode
	for i, name := range names {
		lcfg := liveness.DefaultConfig()
		lcfg.Node, lcfg.Interval, lcfg.Peers = name, 50*time.Millisecond, g.peers
		view, err := liveness.New(lcfg)
		if err != nil {
			t.Fatal(err)
		}
		opt := func(c *registry.Config) {
			c.Node, c.Liveness = name, view
			if opt != nil {
				opt(c)
			}
		}
		var r *registry.Registry
		if i == 0 {
			r = newRegistry(t, opt) // wipes etcd
		} else {
			cfg := registry.DefaultConfig()
			cfg.Client, cfg.MinTTL = etcd.Client(), time.Second
			opt(&cfg)
			if r, err = registry.New(cfg); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(r.Close)
			if err := r.Start(context.Background()); err != nil {
				t.Fatal(err)
			}
		}
		srv := httptest.NewServer(api.New(api.Config{Registry: r, Node: name, Liveness: view}))
		t.Cleanup(srv.Close)
		t.Cleanup(view.Close)
		g.set(name, srv.URL, false)
		nodes = append(nodes, &lnode{name: name, reg: r, view: view})
	}
	for _, name := range mute {
		srv := httptest.NewServer(api.New(api.Config{Registry: nodes[0].reg, Node: name})) // no view: 503
		t.Cleanup(srv.Close)
		g.set(name, srv.URL, false)
	}
	secret, err := nodes[0].reg.PeerSecret(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		if s, err := n.reg.PeerSecret(context.Background()); err != nil || s != secret {
			t.Fatalf("node %s read the peer secret %q, %v; node %s created %q", n.name, s, err, nodes[0].name, secret)
		}
		n.view.Start(secret)
	}
	return nodes, g
}

// runLiveness runs n's liveness duty until the test ends.
func runLiveness(t *testing.T, n *lnode) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		n.reg.RunLiveness(ctx)
	}()
	t.Cleanup(func() { cancel(); <-done })
}

// openLong opens a session with a TTL of ttl seconds on a lease of 10 minutes: only
// Roster's liveness view can end it by expiry, as when an etcd leader change has
// renewed its lease.
func openLong(t testing.TB, r *registry.Registry, req registry.OpenRequest) registry.OpenedSession {
	t.Helper()
	lease, err := etcd.Client().Grant(context.Background(), 600)
	if err != nil {
		t.Fatal(err)
	}
	s, err := r.OpenOnLease(context.Background(), admin, req, lease.ID)
	if err != nil {
		t.Fatalf("open %+v: %v", req, err)
	}
	return s
}

// endedAs returns how session id ended as r answers a Get, or nil while it lives.
func endedAs(t *testing.T, r *registry.Registry, id string) *registry.Ended {
	t.Helper()
	_, err := r.Get(context.Background(), admin, id)
	var ended *registry.EndedError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &ended):
		return &ended.Ended
	}
	t.Fatalf("get %s: %v", id, err)
	return nil
}

// beat heartbeats session s through r every period until the test ends or stop is
// closed, and counts the failures.
func beat(t *testing.T, r *registry.Registry, s registry.OpenedSession, period time.Duration, stop <-chan struct{}) *atomic.Int32 {
	var failed atomic.Int32
	done := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		defer close(done)
		for {
			if _, err := r.Heartbeat(ctx, admin, s.ID); err != nil && ctx.Err() == nil {
				failed.Add(1)
			}
			select {
			case <-ctx.Done():
				return
			case <-stop:
				return
			case <-time.After(period):
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return &failed
}

// TestLivenessBackstop: with no duty leader, the other nodes end a lapsed session a
// little later by themselves.
func TestLivenessBackstop(t *testing.T) {
	nodes, _ := livenessNodes(t, []string{"a", "b"})
	s := openLong(t, nodes[0].reg, registry.OpenRequest{User: "orphan", Module: "sales", TTLSeconds: 1})
	var how *registry.Ended
	eventually(t, 15*time.Second, "the lapsed session's end", func() bool { how = endedAs(t, nodes[1].reg, s.ID); return how != nil })
	if how.Reason != registry.EndExpired || how.By != registry.ByLiveness {
		t.Fatalf("ended as %+v, want expired by %s", how, registry.ByLiveness)
	}
}

// TestLivenessEndsLapsedSession: three nodes; the duty runs on a. A session opened on b
// and never heartbeated is ended by the view as expired (by liveness) although its lease
// would live for minutes, freeing its login and its licence seat; a session opened on a
// and heartbeated only through b, and one heartbeated only through c, live on.
func TestLivenessEndsLapsedSession(t *testing.T) {
	nodes, _ := livenessNodes(t, []string{"a", "b", "c"})
	a, b, c := nodes[0], nodes[1], nodes[2]
	setSeats(t, a.reg, "default", "sales", 3)
	runLiveness(t, a)

	dead := openLong(t, b.reg, registry.OpenRequest{User: "dead", Module: "sales", TTLSeconds: 2})
	viaB := openLong(t, a.reg, registry.OpenRequest{User: "via-b", Module: "sales", TTLSeconds: 2})
	viaC := openLong(t, c.reg, registry.OpenRequest{User: "via-c", Module: "sales", TTLSeconds: 2})
	failedB := beat(t, b.reg, viaB, 600*time.Millisecond, nil)
	failedC := beat(t, c.reg, viaC, 600*time.Millisecond, nil)

	var how *registry.Ended
	eventually(t, 15*time.Second, "the unbeaten session's end", func() bool { how = endedAs(t, a.reg, dead.ID); return how != nil })
	if how.Reason != registry.EndExpired || how.By != registry.ByLiveness || !strings.Contains(how.Message, "TTL of 2s") {
		t.Fatalf("the unbeaten session ended as %+v, want expired by %s", how, registry.ByLiveness)
	}
	for _, n := range nodes {
		if got := endedAs(t, n.reg, dead.ID); got == nil || got.By != registry.ByLiveness {
			t.Fatalf("node %s shows the unbeaten session as %+v", n.name, got)
		}
	}
	// Its login and its seat are free: dead may log in again, and a third user gets
	// the seat it held.
	openLong(t, c.reg, registry.OpenRequest{User: "dead", Module: "sales", TTLSeconds: 60})
	if inUse(t, a.reg, "default", "sales") != 3 {
		t.Fatalf("seats in use after the lapse and two opens: %d, want 3", inUse(t, a.reg, "default", "sales"))
	}

	// Two more TTLs: the beaten sessions live on.
	time.Sleep(4 * time.Second)
	for _, s := range []registry.OpenedSession{viaB, viaC} {
		if got := endedAs(t, a.reg, s.ID); got != nil {
			t.Fatalf("session %s (user %s), heartbeated every 0.6 s, ended: %+v", s.ID, s.User, got)
		}
	}
	if failedB.Load() > 0 || failedC.Load() > 0 {
		t.Fatalf("heartbeats failed: %d through b, %d through c", failedB.Load(), failedC.Load())
	}
}

// TestLivenessWaitsForSilentNode: while a node gossip shows alive does not report, the
// view ends nothing (the leases decide); once gossip says it is gone, the lapsed
// session is ended.
func TestLivenessWaitsForSilentNode(t *testing.T) {
	nodes, g := livenessNodes(t, []string{"a", "b"}, "mute")
	a, b := nodes[0], nodes[1]
	runLiveness(t, a)
	s := openLong(t, b.reg, registry.OpenRequest{User: "quiet", Module: "sales", TTLSeconds: 1})

	time.Sleep(4 * time.Second) // four TTLs
	if got := endedAs(t, a.reg, s.ID); got != nil {
		t.Fatalf("a session ended while a live node did not report: %+v", got)
	}
	if v := a.view.Check(s.ID, time.Second, time.Now()); v.State != liveness.Unknown || v.Waiting != "mute" {
		t.Fatalf("a's verdict = %+v, want unknown waiting for mute", v)
	}

	g.set("mute", "", true)
	var how *registry.Ended
	eventually(t, 15*time.Second, "the end once mute is gone", func() bool { how = endedAs(t, a.reg, s.ID); return how != nil })
	if how.Reason != registry.EndExpired || how.By != registry.ByLiveness {
		t.Fatalf("ended as %+v, want expired by %s", how, registry.ByLiveness)
	}
}

// TestLivenessLateHeartbeat: a heartbeat that arrives after the view has confirmed its
// session lapsed is not answered with a renewal: the node ends the session and answers
// expired, even with no node ending lapsed sessions by itself.
func TestLivenessLateHeartbeat(t *testing.T) {
	nodes, _ := livenessNodes(t, []string{"a", "b"})
	a, b := nodes[0], nodes[1]
	for _, n := range nodes {
		n.reg.SetLapseBackstop(time.Hour) // no node ends lapsed sessions by itself
	}
	s := openLong(t, a.reg, registry.OpenRequest{User: "late", Module: "sales", TTLSeconds: 1})
	eventually(t, 15*time.Second, "b's view finding the session lapsed", func() bool {
		return b.view.Check(s.ID, time.Second, time.Time{}).State == liveness.Lapsed
	})
	_, err := b.reg.Heartbeat(context.Background(), admin, s.ID)
	var ended *registry.EndedError
	if !errors.As(err, &ended) || ended.Ended.Reason != registry.EndExpired || ended.Ended.By != registry.ByLiveness {
		t.Fatalf("late heartbeat = %v, want expired by %s", err, registry.ByLiveness)
	}
	// a learns of the end by its watch, a moment later.
	var got *registry.Ended
	eventually(t, 15*time.Second, "a showing the end", func() bool { got = endedAs(t, a.reg, s.ID); return got != nil })
	if got.By != registry.ByLiveness {
		t.Fatalf("after the late heartbeat a shows %+v", got)
	}
}

// TestLivenessLeaseOutlastsTTL: on a node with a view a session's lease is granted
// LeaseSlack longer than its TTL, so the view, not the lease, ends a dead client's
// session; heartbeats and Get still count down the TTL. The view's end leaves the
// lease, which holds none of the session's keys, to run out.
func TestLivenessLeaseOutlastsTTL(t *testing.T) {
	nodes, _ := livenessNodes(t, []string{"a", "b"})
	a := nodes[0]
	runLiveness(t, a)
	ctx := context.Background()
	s := open(t, nodes[1].reg, admin, registry.OpenRequest{User: "slack", Module: "sales", TTLSeconds: 2})
	kv, err := etcd.Client().Get(ctx, "/roster/v1/sessions/"+s.ID)
	if err != nil || len(kv.Kvs) != 1 {
		t.Fatalf("read the session: %v", err)
	}
	ttl, err := etcd.Client().TimeToLive(ctx, clientv3.LeaseID(kv.Kvs[0].Lease))
	if err != nil || ttl.GrantedTTL != 2+int64(registry.LeaseSlack/time.Second) {
		t.Fatalf("lease granted %+v, %v; want %d s", ttl, err, 2+int64(registry.LeaseSlack/time.Second))
	}
	hb, err := nodes[1].reg.Heartbeat(ctx, admin, s.ID)
	if err != nil || hb.ExpiresInSeconds != 2 || hb.TTLSeconds != 2 {
		t.Fatalf("heartbeat = %+v, %v; want TTL and expires-in 2", hb, err)
	}
	if got, err := a.reg.Get(ctx, admin, s.ID); err != nil || got.ExpiresInSeconds > 2 {
		t.Fatalf("get = %+v, %v; want expires-in at most 2", got, err)
	}
	var how *registry.Ended
	eventually(t, 15*time.Second, "the end", func() bool { how = endedAs(t, a.reg, s.ID); return how != nil })
	if how.Reason != registry.EndExpired || how.By != registry.ByLiveness {
		t.Fatalf("ended as %+v, want expired by %s", how, registry.ByLiveness)
	}
	// The view leaves the lease to run out by itself: it holds none of the keys.
	left, err := etcd.Client().TimeToLive(ctx, clientv3.LeaseID(kv.Kvs[0].Lease), clientv3.WithAttachedKeys())
	if err != nil {
		t.Fatal(err)
	}
	if len(left.Keys) != 0 {
		t.Fatalf("the ended session's lease still holds %q", left.Keys)
	}
}

// TestLivenessEndsOnTheFeed: sessions the view ends in one transaction share a
// revision; the feed delivers each one's end, expired by liveness, and every event but
// the last of the revision says More.
func TestLivenessEndsOnTheFeed(t *testing.T) {
	nodes, g := livenessNodes(t, []string{"a", "b"}, "mute")
	a := nodes[0]
	runLiveness(t, a)
	want := map[string]bool{}
	for i := range 3 {
		want[openLong(t, nodes[i%2].reg, registry.OpenRequest{User: fmt.Sprintf("feed-%d", i), Module: "sales", TTLSeconds: 1}).ID] = true
	}
	feed := events(t, nodes[1].reg, admin, registry.EventFilter{}, 0)
	g.set("mute", "", true) // all three lapse together a TTL from now
	var ends []registry.Event
	for len(ends) < len(want) {
		e := nextEvent(t, feed)
		if e.Type == registry.EventExpired && want[e.Session.ID] {
			ends = append(ends, e)
		}
	}
	for i, e := range ends {
		if e.By != registry.ByLiveness {
			t.Errorf("end of %s by %q, want %q", e.Session.ID, e.By, registry.ByLiveness)
		}
		if last := i == len(ends)-1 || ends[i+1].Rev != e.Rev; e.More == last {
			t.Errorf("event %d (rev %d): More %v, but the last of its revision: %v", i, e.Rev, e.More, last)
		}
	}
	if ends[0].Rev != ends[2].Rev {
		t.Logf("the three ends took more than one transaction (revisions %d, %d, %d)", ends[0].Rev, ends[1].Rev, ends[2].Rev)
	}
}

// TestLivenessStorm: 10,000 sessions (1,000 under the race detector), heartbeated
// through two nodes, stop at once; the duty ends every one of them, each once, as
// expired by the view. While they are opened and heartbeated a third node gossip shows
// alive does not report, so the view holds every verdict back however long that takes;
// when gossip declares it gone, every session counts as beaten then and all lapse
// together a TTL later.
func TestLivenessStorm(t *testing.T) {
	if testing.Short() {
		t.Skip("opens 10,000 sessions")
	}
	n := 10_000
	if raceEnabled {
		n = 1_000
	}
	nodes, g := livenessNodes(t, []string{"a", "b"}, "mute")
	ctx := context.Background()
	cli := etcd.Client()

	// Leases granted by the test that outlive it: only the view ends the sessions.
	ids := make([]string, n)
	var mu sync.Mutex
	var errs []error
	sem := make(chan struct{}, 64)
	var wg sync.WaitGroup
	run := func(f func(i int) error) {
		for i := range n {
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				if err := f(i); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		if len(errs) > 0 {
			t.Fatalf("%d of %d calls failed, e.g. %v", len(errs), n, errs[0])
		}
	}
	begin := time.Now()
	run(func(i int) error {
		lease, err := cli.Grant(ctx, 600)
		if err != nil {
			return err
		}
		s, err := nodes[i%2].reg.OpenOnLease(ctx, admin, registry.OpenRequest{User: fmt.Sprintf("s%05d", i), Module: "storm", TTLSeconds: 2}, lease.ID)
		ids[i] = s.ID
		return err
	})
	run(func(i int) error { // each heartbeated through the node that did not open it
		_, err := nodes[(i+1)%2].reg.Heartbeat(ctx, admin, ids[i])
		return err
	})
	t.Logf("opened and heartbeated %d sessions in %s", n, time.Since(begin).Round(time.Millisecond))

	runLiveness(t, nodes[0])
	g.set("mute", "", true)
	stopped := time.Now()
	count := func(prefix string) int64 {
		resp, err := cli.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			t.Fatal(err)
		}
		return resp.Count
	}
	eventually(t, 60*time.Second, "every session's end", func() bool { return count("/roster/v1/sessions/") == 0 })
	t.Logf("the silent node declared gone to the last of %d sessions ended: %s (TTL 2 s)", n, time.Since(stopped).Round(time.Millisecond))

	resp, err := cli.Get(ctx, "/roster/v1/tombstones/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	byView := 0
	for _, kv := range resp.Kvs {
		if strings.Contains(string(kv.Value), `"reason":"expired","by":"liveness"`) {
			byView++
		}
	}
	if len(resp.Kvs) != n || byView != n {
		t.Fatalf("%d tombstones, %d of them expired by liveness; want %d and %d", len(resp.Kvs), byView, n, n)
	}
	if left := count("/roster/v1/ix/") + count("/roster/v1/activity/"); left != 0 {
		t.Fatalf("%d index or activity keys left after every session ended", left)
	}
}

// TestLivenessStormTransactions: a storm of 300 lapsed sessions holding seats is ended
// in transactions of up to Config.MaxTxnOps operations: with the embedded member's
// limit, in a few large ones; with etcd's default, or with more than the member takes
// (it refuses the first, and the view falls back to 100), in transactions of about 11
// sessions. Either way each session ends once, expired by the view, with one end
// event on the feed, and its seat, index and activity keys go with it.
func TestLivenessStormTransactions(t *testing.T) {
	const n = 300
	// Each session here ends with 9 operations: record, 5 index keys, seat, activity
	// and tombstone; so 11 a transaction within 100 (at least 28 transactions), 113
	// within cluster.MaxTxnOps (at least 3).
	for _, tc := range []struct {
		name      string
		maxTxnOps int
		wantOps   int    // the limit the view ends by afterwards
		txns      string // "few": at most 10 transactions; "many": at least 28; "": not counted
	}{
		{"etcd's default", 0, 100, "many"},
		{"the member's limit", cluster.MaxTxnOps, cluster.MaxTxnOps, "few"},
		// The view falls back to 100 operations when the member refuses a transaction
		// as too large; a pass of fewer than 114 sessions fits the member's limit and
		// is not refused, so how many ended before the fallback depends on how the
		// lapses were split into passes (18 transactions in one -race run).
		{"above the member's limit", 4 * cluster.MaxTxnOps, 100, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nodes, g := livenessNodesWith(t, []string{"a", "b"}, func(c *registry.Config) { c.MaxTxnOps = tc.maxTxnOps }, "mute")
			a := nodes[0]
			ctx := context.Background()
			cli := etcd.Client()
			setSeats(t, a.reg, "default", "storm", n)
			runLiveness(t, a)
			ids := map[string]bool{}
			for i := range n {
				ids[openLong(t, nodes[i%2].reg, registry.OpenRequest{User: fmt.Sprintf("tx-%03d", i), Module: "storm", TTLSeconds: 1}).ID] = true
			}
			feed := events(t, nodes[1].reg, admin, registry.EventFilter{Module: "storm"}, 0)
			g.set("mute", "", true) // all lapse together a TTL from now

			ends := map[string]int{}
			for len(ends) < n {
				e := nextEvent(t, feed)
				if !ids[e.Session.ID] || e.Type == registry.EventOpened {
					continue
				}
				if e.Type != registry.EventExpired || e.By != registry.ByLiveness {
					t.Fatalf("session %s: event %s by %q, want expired by %s", e.Session.ID, e.Type, e.By, registry.ByLiveness)
				}
				ends[e.Session.ID]++
			}

			resp, err := cli.Get(ctx, "/roster/v1/tombstones/", clientv3.WithPrefix())
			if err != nil {
				t.Fatal(err)
			}
			txns := map[int64]bool{}
			for _, kv := range resp.Kvs {
				if !strings.Contains(string(kv.Value), `"reason":"expired","by":"liveness"`) {
					t.Fatalf("tombstone %s = %s, want expired by liveness", kv.Key, kv.Value)
				}
				txns[kv.ModRevision] = true
			}
			if len(resp.Kvs) != n {
				t.Fatalf("%d tombstones, want %d", len(resp.Kvs), n)
			}
			if tc.txns == "few" && len(txns) > 10 || tc.txns == "many" && len(txns) < 28 {
				t.Fatalf("the %d sessions ended in %d transactions; with MaxTxnOps %d want %s", n, len(txns), tc.maxTxnOps, tc.txns)
			}
			if got := a.reg.EndTxnOps(); got != tc.wantOps {
				t.Fatalf("the view ends by transactions of %d operations, want %d", got, tc.wantOps)
			}
			if left := countKeys(t, "/roster/v1/ix/") + countKeys(t, "/roster/v1/activity/") + countKeys(t, "/roster/v1/sessions/"); left != 0 {
				t.Fatalf("%d session, index or activity keys left after every session ended", left)
			}
			eventually(t, 10*time.Second, "every seat free", func() bool { return inUse(t, a.reg, "default", "storm") == 0 })
			for id, k := range ends {
				if k != 1 {
					t.Fatalf("session %s: %d end events, want 1", id, k)
				}
			}
		})
	}
}

// TestHistoryOfAStorm: the view ends 300 lapsed sessions in a few large
// transactions, so the history duty gets their tombstones in bursts of about
// a hundred; it records them once the burst is over, every session once, as
// expired.
func TestHistoryOfAStorm(t *testing.T) {
	const n = 300
	var logs syncbuf.Buffer
	nodes, g := livenessNodesWith(t, []string{"a", "b"}, func(c *registry.Config) {
		c.MaxTxnOps = cluster.MaxTxnOps
		c.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}, "mute")
	runLiveness(t, nodes[0])
	startHistory(t, nodes[1].reg)
	e := newEnder(t)
	for i := range n {
		s := openLong(t, nodes[i%2].reg, registry.OpenRequest{User: e.user(), Module: "storm", TTLSeconds: 1})
		e.expect(s.ID, registry.EndExpired)
	}
	g.set("mute", "", true) // all lapse together a TTL from now
	e.check(nodes[0].reg)
	if !strings.Contains(logs.String(), "recording a burst of ends after it") {
		t.Fatal("the history never got a burst of tombstones: the test did not test it")
	}
}

// countKeys counts the keys under prefix.
func countKeys(t *testing.T, prefix string) int64 {
	t.Helper()
	resp, err := etcd.Client().Get(context.Background(), prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	return resp.Count
}

// TestHeartbeatRenewsWhenDue: on a node with a liveness view a heartbeat, single or in
// a batch, leaves its session's lease alone while the newest renewal the node has seen
// was less than a second ago, and renews it (and notes the new deadline) once it was
// longer ago; without a view every heartbeat renews. The node's
// deadlines are set by hand so that nothing here depends on timing.
func TestHeartbeatRenewsWhenDue(t *testing.T) {
	const ttl = 10
	full := ttl*time.Second + registry.LeaseSlack
	due := ttl*time.Second + registry.LeaseSlack - 2*time.Second // renewed 2 s ago: due
	leaseOf := func(t *testing.T, id string) int64 {
		t.Helper()
		kv, err := etcd.Client().Get(context.Background(), "/roster/v1/sessions/"+id)
		if err != nil || len(kv.Kvs) != 1 {
			t.Fatalf("read session %s: %v", id, err)
		}
		return kv.Kvs[0].Lease
	}
	// check heartbeats the session on lease with the node's deadline set to
	// left from now, and fails unless it was renewed as want says.
	check := func(t *testing.T, r *registry.Registry, lease int64, left time.Duration, want bool, beat func() int64) {
		t.Helper()
		var set, before, at time.Time
		for try := 0; ; try++ {
			set = time.Now().Add(left)
			r.SetLeaseDeadline(lease, set)
			before = time.Now()
			if expires := beat(); expires != ttl {
				t.Fatalf("heartbeat with %s left: expires in %d s, want %d", left, expires, ttl)
			}
			at, _ = r.LeaseDeadline(lease)
			// A full lease counts as renewed under a second ago only while the
			// heartbeat comes within the second: after a stall (-race on a busy
			// machine) try again rather than take the renewal for a failure.
			if want || !at.After(set) || time.Since(before) < 500*time.Millisecond || try == 4 {
				break
			}
		}
		switch renewed := at.After(set); {
		case renewed != want:
			t.Fatalf("heartbeat with %s of the lease left: renewed %v, want %v", left, renewed, want)
		case renewed && at.Before(before.Add(ttl*time.Second)):
			t.Fatalf("renewed to %s after the heartbeat began, want at least the TTL", at.Sub(before))
		}
		if left, err := etcd.Client().TimeToLive(context.Background(), clientv3.LeaseID(lease)); err != nil || left.TTL < ttl-1 {
			t.Fatalf("the lease has %+v, %v left after the heartbeat", left, err)
		}
	}
	t.Run("single", func(t *testing.T) {
		nodes, _ := livenessNodes(t, []string{"a"})
		r := nodes[0].reg
		s := open(t, r, admin, registry.OpenRequest{User: "due", Module: "sales", TTLSeconds: ttl})
		lease := leaseOf(t, s.ID)
		beat := func() int64 {
			hb, err := r.Heartbeat(context.Background(), admin, s.ID)
			if err != nil {
				t.Fatal(err)
			}
			return hb.ExpiresInSeconds
		}
		check(t, r, lease, full, false, beat)
		check(t, r, lease, due, true, beat)
		check(t, r, lease, full, false, beat)
	})
	t.Run("batch", func(t *testing.T) {
		nodes, _ := livenessNodes(t, []string{"a"})
		r := nodes[0].reg
		_, app := token(t, r, "app-1", registry.RoleClient)
		allow(t, r, "default", []string{"web-user"}, []string{"web"}, registry.RightMultiLogin)
		conn := register(t, r, app, registry.ConnectionRequest{Service: "web", TTLSeconds: 600})
		s := open(t, r, app, registry.OpenRequest{User: "web-user", Module: "sales", TTLSeconds: ttl, Connections: []string{conn.ID}})
		lease := leaseOf(t, s.ID)
		beat := func() int64 {
			res, err := r.HeartbeatBatch(context.Background(), app, registry.BatchHeartbeatRequest{Connection: conn.ID, Sessions: []string{s.ID}})
			if err != nil || res.Sessions[0].Err != nil {
				t.Fatalf("batch heartbeat: %v, %+v", err, res.Sessions)
			}
			return res.Sessions[0].ExpiresInSeconds
		}
		check(t, r, lease, full, false, beat)
		check(t, r, lease, due, true, beat)
	})
	t.Run("no view", func(t *testing.T) {
		r := newRegistry(t)
		s := open(t, r, admin, registry.OpenRequest{User: "due", Module: "sales", TTLSeconds: ttl})
		lease := leaseOf(t, s.ID)
		check(t, r, lease, ttl*time.Second, true, func() int64 {
			hb, err := r.Heartbeat(context.Background(), admin, s.ID)
			if err != nil {
				t.Fatal(err)
			}
			return hb.ExpiresInSeconds
		})
	})
}
