package e2e_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/roster-dev/roster/e2e"
	"github.com/roster-dev/roster/registry"
	"github.com/roster-dev/roster/registry/client"
)

// beater heartbeats one session through a client, as a live client does, until it is
// halted or learns that the session ended; it remembers its last successful heartbeat.
type beater struct {
	id     string
	lastOK atomic.Int64 // Unix ns of the last heartbeat answered OK (or of the open)
	ended  atomic.Pointer[client.EndedError]
	stop   chan struct{}
	done   chan struct{}
}

// startBeater heartbeats session id through cl every `every`, and every 100 ms after a
// failure (cl moves to its next endpoint when a node cannot be reached), until ctx ends.
func startBeater(ctx context.Context, cl *client.Client, id string, every time.Duration) *beater {
	b := &beater{id: id, stop: make(chan struct{}), done: make(chan struct{})}
	b.lastOK.Store(time.Now().UnixNano())
	go func() {
		defer close(b.done)
		for {
			actx, cancel := context.WithTimeout(ctx, 3*time.Second)
			_, err := cl.Heartbeat(actx, id, "")
			cancel()
			var ended *client.EndedError
			switch {
			case err == nil:
				b.lastOK.Store(time.Now().UnixNano())
			case errors.As(err, &ended):
				b.ended.Store(ended)
				return
			}
			wait := every
			if err != nil {
				wait = 100 * time.Millisecond
			}
			select {
			case <-ctx.Done():
				return
			case <-b.stop:
				return
			case <-time.After(wait):
			}
		}
	}()
	return b
}

// halt stops the heartbeats (a client that dies) and returns when the last one was
// answered.
func (b *beater) halt() time.Time {
	close(b.stop)
	<-b.done
	return time.Unix(0, b.lastOK.Load())
}

// goneAt polls GET /v1/sessions/{id} through cl every 50 ms until the session is
// gone (410 or 404) and returns when that was seen.
func goneAt(ctx context.Context, cl *client.Client, id string) (time.Time, error) {
	for {
		actx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := cl.Get(actx, id)
		cancel()
		var ended *client.EndedError
		if errors.As(err, &ended) || errors.Is(err, client.ErrNotFound) {
			return time.Now(), nil
		}
		select {
		case <-ctx.Done():
			return time.Time{}, fmt.Errorf("session %s still served: %v (last answer: %v)", id, ctx.Err(), err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// pinned returns a client whose first endpoint is n, then the other nodes.
func pinned(c *e2e.Cluster, nodes []*e2e.Node, n *e2e.Node) *client.Client {
	return c.Client(append([]*e2e.Node{n}, others(nodes, n)...)...)
}

// TestLivenessAcrossLeaderKill: three nodes, six sessions (TTL 6 s) heartbeated every
// second, two through each node. Three of them (one per node) stop; 1.5 s later the
// node of the etcd leader is SIGKILLed, and the new leader renews every lease to its
// full TTL. The stopped sessions still end as expired by Roster's liveness view (the
// history says by "liveness"), not by their renewed leases; the others, whose clients
// move to a survivor, live on.
func TestLivenessAcrossLeaderKill(t *testing.T) {
	ctx := testContext(t, 3*time.Minute)
	c := threeVoters(ctx, t)
	nodes := c.Running()
	const ttl = 6 * time.Second
	type sess struct {
		id   string
		node *e2e.Node
		b    *beater
		last time.Time // the stopped ones' last heartbeat
	}
	var ss []*sess
	for i := range 6 {
		n := nodes[i%3]
		cl := pinned(c, nodes, n)
		opened, err := openRaw(ctx, cl, registry.OpenRequest{User: fmt.Sprintf("live-%d", i), Module: "sales", TTLSeconds: int64(ttl / time.Second)})
		if err != nil {
			t.Fatalf("open through %s: %v", n.Name, err)
		}
		ss = append(ss, &sess{id: opened.ID, node: n, b: startBeater(ctx, cl, opened.ID, time.Second)})
	}
	time.Sleep(2 * time.Second)
	stopped, beating := ss[:3], ss[3:]
	for _, s := range stopped {
		s.last = s.b.halt()
	}
	time.Sleep(1500 * time.Millisecond)
	leader := c.Leader(ctx)
	c.Kill(leader)
	killed := time.Now()
	t.Logf("SIGKILLed %s, the etcd leader, %s after the last heartbeat of the stopped sessions", leader.Name, killed.Sub(stopped[2].last).Round(time.Millisecond))

	survivors := c.Running()
	cl := c.Client(survivors...)
	for _, s := range stopped {
		gone, err := goneAt(ctx, cl, s.id)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("session heartbeated through %s: gone %s after its last heartbeat (TTL %s)", s.node.Name, gone.Sub(s.last).Round(time.Millisecond), ttl)
	}

	// The history records each as expired by the liveness view.
	want := map[string]bool{}
	for _, s := range stopped {
		want[s.id] = true
	}
	var recs []registry.HistoryRecord
	if err := retry(ctx, 200*time.Millisecond, 5*time.Second, func(ctx context.Context) error {
		all, err := readHistory(ctx, cl)
		recs = recs[:0]
		for _, h := range all {
			if want[h.ID] {
				recs = append(recs, h)
			}
		}
		if err == nil && len(recs) < len(want) {
			err = fmt.Errorf("%d of %d ends recorded", len(recs), len(want))
		}
		return err
	}); err != nil {
		t.Fatalf("history of the stopped sessions: %v", err)
	}
	for _, h := range recs {
		if h.Reason != registry.EndExpired || h.By != registry.ByLiveness {
			t.Errorf("session %s ended as %s by %q, want expired by %q (history: %+v)", h.ID, h.Reason, h.By, registry.ByLiveness, h)
		}
	}

	// The heartbeated sessions live on for another TTL, through the survivors.
	time.Sleep(ttl)
	for _, s := range beating {
		if e := s.b.ended.Load(); e != nil {
			t.Errorf("session heartbeated through %s ended: %v", s.node.Name, e)
			continue
		}
		if _, err := cl.Get(ctx, s.id); err != nil {
			t.Errorf("session heartbeated through %s: %v", s.node.Name, err)
		}
		if last := time.Unix(0, s.b.lastOK.Load()); last.Before(killed) {
			t.Errorf("session first heartbeated through %s has not been heartbeated since the kill (last %s)", s.node.Name, last)
		}
		s.b.halt()
	}
}
