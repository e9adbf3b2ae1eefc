package registry_test

import (
	"context"
	"testing"
	"time"

	"github.com/roster-dev/roster/registry"
)

// noEvent checks that the stream delivers nothing within d.
func noEvent(t *testing.T, s *registry.EventStream, d time.Duration) {
	t.Helper()
	select {
	case e, ok := <-s.Events():
		t.Fatalf("unexpected event %+v (open %v)", e, ok)
	case <-time.After(d):
	}
}

// TestSessionStreamShutdownEvents: a session's stream gets shutdown_requested for
// each request that covers it (pool, all, the session itself) and
// shutdown_cancelled for a cancelled one, on any node, and not those of other
// pools; a stream opened late begins with the pending requests; a resumed
// stream gets exactly what it missed; the feed filters requests by tenant and
// pool.
func TestSessionStreamShutdownEvents(t *testing.T) {
	r := newRegistry(t)
	r2 := secondNode(t)
	ctx := context.Background()
	before := currentRev(t)
	alice := open(t, r, admin, registry.OpenRequest{User: "alice", Module: "sales", Pool: "blue", TTLSeconds: 60})
	bob := open(t, r, admin, registry.OpenRequest{User: "bob", Module: "sales", Pool: "green", TTLSeconds: 60})
	ap, bp := sessionPrincipal(t, r, alice), sessionPrincipal(t, r, bob)
	as := events(t, r2, ap, registry.EventFilter{SessionID: alice.ID}, 0)
	bs := events(t, r, bp, registry.EventFilter{SessionID: bob.ID}, 0)
	greenFeed := events(t, r2, admin, registry.EventFilter{Pool: "green"}, 0)

	blue, err := r.RequestShutdown(ctx, admin, registry.ShutdownRequest{Scope: registry.ScopePool, Pool: "blue", GraceSeconds: grace(60), Message: "Release 26.4"})
	if err != nil {
		t.Fatal(err)
	}
	e := expect(t, as, step{registry.EventShutdownRequested, "", "Release 26.4"})[0]
	if n := e.Shutdown; n == nil || n.ID != blue.ID || n.Scope != "pool" || n.Pool != "blue" || !n.Deadline.Equal(blue.Deadline) || n.RequestedBy != "admin" || n.Message != "Release 26.4" {
		t.Fatalf("shutdown_requested carries %+v, want request %+v", e.Shutdown, blue)
	}
	first := e.Rev
	if _, err := r2.CancelShutdown(ctx, admin, blue.ID); err != nil {
		t.Fatal(err)
	}
	if c := expect(t, as, step{registry.EventShutdownCancelled, "", ""})[0]; c.By != "admin" || c.Shutdown == nil || c.Shutdown.ID != blue.ID {
		t.Fatalf("shutdown_cancelled = %+v", c)
	}
	// Nothing pending now: a new stream starts empty.
	quiet := events(t, r, ap, registry.EventFilter{SessionID: alice.ID}, 0)

	all, err := r.RequestShutdown(ctx, admin, registry.ShutdownRequest{Scope: registry.ScopeAll, GraceSeconds: grace(60), Message: "maintenance"})
	if err != nil {
		t.Fatal(err)
	}
	expect(t, as, step{registry.EventShutdownRequested, "", "maintenance"})
	expect(t, quiet, step{registry.EventShutdownRequested, "", "maintenance"})
	// bob (pool green) saw neither blue event: the "all" request is its first.
	if e := expect(t, bs, step{registry.EventShutdownRequested, "", "maintenance"})[0]; e.Shutdown.ID != all.ID {
		t.Fatalf("bob's first event is %+v", e)
	}
	if e := expect(t, greenFeed, step{registry.EventShutdownRequested, "", "maintenance"})[0]; e.Shutdown.Scope != "all" {
		t.Fatalf("the green feed's first event is %+v", e)
	}

	// Opened late, a stream begins with the pending request.
	late := events(t, r2, ap, registry.EventFilter{SessionID: alice.ID}, 0)
	if e := expect(t, late, step{registry.EventShutdownRequested, "", "maintenance"})[0]; e.Shutdown.ID != all.ID {
		t.Fatalf("a late stream begins with %+v", e)
	}
	// Resumed after the first event, on the other node: exactly what followed.
	resumed := events(t, r, ap, registry.EventFilter{SessionID: alice.ID}, first+1)
	expect(t, resumed, step{registry.EventShutdownCancelled, "", ""}, step{registry.EventShutdownRequested, "", "maintenance"})
	// From before the session opened: its opening first.
	expect(t, events(t, r, ap, registry.EventFilter{SessionID: alice.ID}, before+1), step{registry.EventOpened, alice.ID, ""},
		step{registry.EventShutdownRequested, "", "Release 26.4"}, step{registry.EventShutdownCancelled, "", ""},
		step{registry.EventShutdownRequested, "", "maintenance"})

	// A request for alice alone, enforced at once: her streams get it and her end.
	runDuty(t, r)
	if _, err := r.RequestShutdown(ctx, admin, registry.ShutdownRequest{Scope: registry.ScopeSession, Session: alice.ID, GraceSeconds: grace(0), Message: "bye"}); err != nil {
		t.Fatal(err)
	}
	for _, s := range []*registry.EventStream{as, late, resumed} {
		expect(t, s, step{registry.EventShutdownRequested, "", "bye"}, step{registry.EventShutdown, alice.ID, "bye"})
		waitClosed(t, s)
	}
	noEvent(t, bs, 500*time.Millisecond)
	// The green feed has no session-scope request of a blue session.
	noEvent(t, greenFeed, 10*time.Millisecond)
	if _, err := r.CancelShutdown(ctx, admin, all.ID); err != nil {
		t.Fatal(err)
	}
	expect(t, bs, step{registry.EventShutdownCancelled, "", ""})
	expect(t, greenFeed, step{registry.EventShutdownCancelled, "", ""})
}

// TestFeedShutdownVisibility: a client token's feed shows requests for pools and
// tenants, not those for one session.
func TestFeedShutdownVisibility(t *testing.T) {
	r := newRegistry(t)
	ctx := context.Background()
	_, app := token(t, r, "app", registry.RoleClient)
	s := open(t, r, app, registry.OpenRequest{User: "alice", Module: "sales", Pool: "blue", TTLSeconds: 60})
	feed := events(t, r, app, registry.EventFilter{}, 0)
	ops := events(t, r, admin, registry.EventFilter{}, 0)
	for _, req := range []registry.ShutdownRequest{
		{Scope: registry.ScopeSession, Session: s.ID, GraceSeconds: grace(60), Message: "one"},
		{Scope: registry.ScopePool, Pool: "blue", GraceSeconds: grace(60), Message: "pool"},
	} {
		if _, err := r.RequestShutdown(ctx, admin, req); err != nil {
			t.Fatal(err)
		}
	}
	expect(t, feed, step{registry.EventShutdownRequested, "", "pool"})
	expect(t, ops, step{registry.EventShutdownRequested, "", "one"}, step{registry.EventShutdownRequested, "", "pool"})
}
