package e2e_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/roster-dev/roster/registry"
	"github.com/roster-dev/roster/registry/client"
)

// The figures of docs/performance.md about expiry by Roster's liveness view. They are
// benchmarks, so `go test` (and CI) never runs them; each iteration forms a new
// three-node cluster of real processes:
//
//	go test -run '^$' -bench 'Liveness' -benchtime 1x -timeout 30m ./e2e/
//
// The "lease-only" variants run the nodes with --liveness-interval 0: expiry by etcd's
// leases alone, for comparison.

// livenessTTL is the TTL of the sessions of the liveness figures.
const livenessTTL = 10 * time.Second

// endWatch follows the cluster's event feed through one node and records when each
// session's end arrived, and by whom.
type endWatch struct {
	mu   sync.Mutex
	at   map[string]time.Time
	by   map[string]string
	n    atomic.Int64
	stop func()
}

func watchEnds(ctx context.Context, tb testing.TB, cl *client.Client) *endWatch {
	ctx, cancel := context.WithCancel(ctx)
	st, err := cl.Events(ctx, registry.EventFilter{}, 0)
	if err != nil {
		tb.Fatal(err)
	}
	w := &endWatch{at: map[string]time.Time{}, by: map[string]string{}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for e := range st.Events() {
			if !e.Type.IsEnd() {
				continue
			}
			w.mu.Lock()
			if _, seen := w.at[e.Session.ID]; !seen {
				w.at[e.Session.ID], w.by[e.Session.ID] = time.Now(), e.By
				w.n.Add(1)
			}
			w.mu.Unlock()
		}
	}()
	w.stop = func() { cancel(); st.Close(); <-done }
	tb.Cleanup(w.stop)
	return w
}

func (w *endWatch) get(id string) (time.Time, string, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	at, ok := w.at[id]
	return at, w.by[id], ok
}

// BenchmarkLivenessLatency: a dead client's session, from its last heartbeat to its
// end event (the keys are deleted a few ms before), on three nodes. 30 sessions (TTL
// 10 s), 10 through each node, are heartbeated every TTL/3 (random phases) by the
// test; they stop one every 200 ms; in the leader-kill variants the node of the etcd
// leader is SIGKILLed 8 s after the first stop, so that they lapse from 2 s to 8 s
// after the kill, and the end events are read through a survivor. Reported over all iterations' sessions: over-ttl-p50-ms, over-ttl-p99-ms
// and over-ttl-max-ms (time past last heartbeat + TTL), and by-lease (how many
// sessions etcd's lease ended rather than the view).
func BenchmarkLivenessLatency(b *testing.B) {
	for _, v := range []struct {
		name      string
		kill      bool
		leaseOnly bool
	}{
		{"steady", false, false},
		{"leader-kill", true, false},
		{"leader-kill-lease-only", true, true},
	} {
		b.Run(v.name, func(b *testing.B) {
			var over []time.Duration
			byLease := 0
			for range b.N {
				o, l := livenessRound(b, v.kill, v.leaseOnly)
				over, byLease = append(over, o...), byLease+l
			}
			b.ReportMetric(0, "ns/op")
			b.ReportMetric(percentileMS(over, 0.5), "over-ttl-p50-ms")
			b.ReportMetric(percentileMS(over, 0.99), "over-ttl-p99-ms")
			b.ReportMetric(percentileMS(over, 1), "over-ttl-max-ms")
			b.ReportMetric(float64(byLease), "by-lease")
		})
	}
}

// livenessRound runs one iteration of BenchmarkLivenessLatency and returns each
// session's end past its last heartbeat + TTL, and how many the lease ended.
func livenessRound(b *testing.B, kill, leaseOnly bool) ([]time.Duration, int) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var extra []string
	if leaseOnly {
		extra = []string{"--liveness-interval", "0"}
	}
	c := threeVoters(ctx, b, extra...)
	nodes := c.Running()
	leader := c.Leader(ctx)
	watcher := others(nodes, leader)[0]
	w := watchEnds(ctx, b, c.Client(watcher))

	const n = 30
	beaters := make([]*beater, n)
	for i := range n {
		cl := pinned(c, nodes, nodes[i%3])
		opened, err := openRaw(ctx, cl, registry.OpenRequest{User: fmt.Sprintf("dead-%02d", i), Module: "sales", TTLSeconds: int64(livenessTTL / time.Second)})
		if err != nil {
			b.Fatal(err)
		}
		beaters[i] = startBeater(ctx, cl, opened.ID, livenessTTL/3)
		time.Sleep(time.Duration(rand.Int64N(int64(50 * time.Millisecond))))
	}
	sleepCtx(ctx, livenessTTL/3)
	last := make([]time.Time, n)
	for i, bt := range beaters {
		last[i] = bt.halt()
		sleepCtx(ctx, 200*time.Millisecond)
	}
	if kill {
		// The sessions lapse from 2 s after the kill on, while the etcd leader is
		// elected, gossip finds the node dead and, if it ran the duty, the duty moves.
		sleepCtx(ctx, time.Until(last[0].Add(livenessTTL-2*time.Second)))
		c.Kill(leader)
		b.Logf("SIGKILLed %s, the etcd leader, %s after the first session stopped", leader.Name, time.Since(last[0]).Round(time.Millisecond))
	}
	deadline := time.Now().Add(4 * livenessTTL)
	for w.n.Load() < n && time.Now().Before(deadline) {
		sleepCtx(ctx, 100*time.Millisecond)
	}
	var over []time.Duration
	byLease := 0
	for i, bt := range beaters {
		at, by, ok := w.get(bt.id)
		if !ok {
			_, gerr := c.Client(watcher).Get(ctx, bt.id)
			b.Fatalf("session %s did not end within %s of its last heartbeat (%d of %d ends seen; GET: %v)", bt.id, time.Since(last[i]), w.n.Load(), n, gerr)
		}
		over = append(over, at.Sub(last[i].Add(livenessTTL)))
		if by != registry.ByLiveness {
			byLease++
		}
	}
	b.Logf("%d sessions: past TTL p50 %.0f ms, max %.0f ms; %d ended by the lease", n, percentileMS(over, 0.5), percentileMS(over, 1), byLease)
	w.stop()
	c.Close()
	return over, byLease
}

// BenchmarkLivenessStorm: 10,000 sessions (TTL 10 s) of one application server, kept
// alive through its shared connection by batch heartbeats through one node of three,
// die at once (no heartbeat after the last batch). The test counts the sessions (GET
// /v1/sessions total, through another node) every 100 ms. Reported: first-gone-ms and
// last-gone-ms, from the last batch's answer to the first count below 10,000 and to
// the count of 0, and by-view, how many end events (read within 10 s more) say the
// liveness view ended the session. ROSTER_STORM_SESSIONS sets another number.
func BenchmarkLivenessStorm(b *testing.B) {
	for _, v := range []struct {
		name      string
		leaseOnly bool
	}{{"view", false}, {"lease-only", true}} {
		b.Run(v.name, func(b *testing.B) {
			var lasts, firsts []time.Duration
			byView := 0
			for range b.N {
				first, last, l := stormRound(b, v.leaseOnly)
				firsts, lasts, byView = append(firsts, first), append(lasts, last), byView+l
			}
			b.ReportMetric(0, "ns/op")
			b.ReportMetric(medianMS(firsts), "first-gone-ms")
			b.ReportMetric(medianMS(lasts), "last-gone-ms")
			b.ReportMetric(float64(byView), "by-view")
		})
	}
}

func stormRound(b *testing.B, leaseOnly bool) (first, last time.Duration, byView int) {
	n := registry.MaxBatchSessions
	if v := os.Getenv("ROSTER_STORM_SESSIONS"); v != "" {
		n, _ = strconv.Atoi(v)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	var extra []string
	if leaseOnly {
		extra = []string{"--liveness-interval", "0"}
	}
	c := threeVoters(ctx, b, extra...)
	nodes := c.Running()
	app := c.Client(nodes[0])
	if _, err := app.PutUser(ctx, "default", "app", registry.UserSpec{Rights: []registry.Right{registry.RightMultiLogin}, Services: []string{"erp"}}); err != nil {
		b.Fatal(err)
	}
	conn, err := app.RegisterConnection(ctx, registry.ConnectionRequest{Service: "erp", Host: "appserver-1", TTLSeconds: 600})
	if err != nil {
		b.Fatal(err)
	}
	ids := make([]string, n)
	var opened atomic.Int64
	beat := func() (time.Time, error) {
		var live []string
		for _, id := range ids {
			if id != "" {
				live = append(live, id)
			}
		}
		ans, err := app.HeartbeatBatch(ctx, registry.BatchHeartbeatRequest{Connection: conn.ID, Sessions: live})
		if err == nil && ans.Failed > 0 {
			err = fmt.Errorf("%d of %d sessions not renewed", ans.Failed, len(live))
		}
		return time.Now(), err
	}
	// Open through the connection, 32 at a time, with a batch heartbeat every 2 s
	// meanwhile so that none lapses before the storm.
	var mu sync.Mutex
	stop := make(chan struct{})
	keeper := make(chan error, 1)
	go func() {
		for {
			select {
			case <-stop:
				keeper <- nil
				return
			case <-time.After(2 * time.Second):
				mu.Lock()
				_, err := beat()
				mu.Unlock()
				if err != nil {
					keeper <- err
					return
				}
			}
		}
	}()
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	begin := time.Now()
	for range 32 {
		wg.Go(func() {
			for i := next.Add(1) - 1; i < int64(n); i = next.Add(1) - 1 {
				s, err := openRaw(ctx, app, registry.OpenRequest{User: "app", Module: "sales", TTLSeconds: int64(livenessTTL / time.Second), Connections: []string{conn.ID}})
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				ids[i] = s.ID
				mu.Unlock()
				opened.Add(1)
			}
		})
	}
	wg.Wait()
	close(stop)
	if err := <-keeper; err != nil {
		b.Fatal(err)
	}
	select {
	case err := <-errs:
		b.Fatal(err)
	default:
	}
	b.Logf("opened %d sessions through one connection in %s", n, time.Since(begin).Round(time.Millisecond))
	counter := c.Client(nodes[1])
	w := watchEnds(ctx, b, counter)
	lastBeat, err := beat()
	if err != nil {
		b.Fatal(err)
	}
	var firstAt, lastAt time.Time
	for deadline := lastBeat.Add(2 * time.Minute); time.Now().Before(deadline); sleepCtx(ctx, 100*time.Millisecond) {
		page, err := counter.List(ctx, registry.ListFilter{Limit: 1})
		if err != nil {
			continue
		}
		if page.Total < n && firstAt.IsZero() {
			firstAt = time.Now()
		}
		if page.Total == 0 {
			lastAt = time.Now()
			break
		}
	}
	if lastAt.IsZero() {
		b.Fatalf("sessions still listed %s after the last heartbeat", 2*time.Minute)
	}
	for deadline := time.Now().Add(10 * time.Second); w.n.Load() < int64(n) && time.Now().Before(deadline); {
		sleepCtx(ctx, 100*time.Millisecond)
	}
	for _, id := range ids {
		if _, by, ok := w.get(id); ok && by == registry.ByLiveness {
			byView++
		}
	}
	b.Logf("%d sessions (TTL %s) died at once: first gone %s, last gone %s after the last heartbeat; %d ended by the view (%d end events seen)",
		n, livenessTTL, firstAt.Sub(lastBeat).Round(time.Millisecond), lastAt.Sub(lastBeat).Round(time.Millisecond), byView, w.n.Load())
	w.stop()
	c.Close()
	return firstAt.Sub(lastBeat), lastAt.Sub(lastBeat), byView
}
