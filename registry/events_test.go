package registry_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/roster-dev/roster/registry"
)

// nextEvent waits up to 15 s for the stream's next event.
func nextEvent(t *testing.T, s *registry.EventStream) registry.Event {
	t.Helper()
	select {
	case e, ok := <-s.Events():
		if !ok {
			t.Fatalf("the stream ended (err %v) while an event was expected", s.Err())
		}
		return e
	case <-time.After(15 * time.Second):
		t.Fatal("no event within 15 s")
	}
	panic("unreachable")
}

// waitClosed waits up to 5 s for the stream to end with no further event.
func waitClosed(t *testing.T, s *registry.EventStream) {
	t.Helper()
	select {
	case e, ok := <-s.Events():
		if ok {
			t.Fatalf("event %+v after the stream should have ended", e)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the stream did not end within 5 s")
	}
}

func events(t *testing.T, r *registry.Registry, p registry.Principal, f registry.EventFilter, fromRev int64) *registry.EventStream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	s, err := r.Events(ctx, p, f, fromRev)
	if err != nil {
		t.Fatalf("Events(%+v, %d): %v", f, fromRev, err)
	}
	return s
}

// step is an expected event: its type, the session's id and the reason.
type step struct {
	typ    registry.EventType
	id     string
	reason string
}

// expect reads len(want) events and checks them and their order.
func expect(t *testing.T, s *registry.EventStream, want ...step) []registry.Event {
	t.Helper()
	var got []registry.Event
	last := s.Start()
	for i, w := range want {
		e := nextEvent(t, s)
		if e.Type != w.typ || e.Session.ID != w.id || e.Reason != w.reason {
			t.Fatalf("event %d = %s %s reason %q, want %s %s reason %q (%+v)", i, e.Type, e.Session.ID, e.Reason, w.typ, w.id, w.reason, e)
		}
		if e.Rev <= last {
			t.Fatalf("event %d has rev %d, not after %d", i, e.Rev, last)
		}
		last = e.Rev
		got = append(got, e)
	}
	return got
}

func currentRev(t *testing.T) int64 {
	t.Helper()
	resp, err := etcd.Client().Get(context.Background(), "/roster/", clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	return resp.Header.Revision
}

// secondNode starts another registry on the same etcd, as another node would run.
func secondNode(t *testing.T) *registry.Registry {
	t.Helper()
	return otherNode(t, "n2", "")
}

// otherNode starts another registry, node name at site, on the test etcd.
func otherNode(tb testing.TB, name, site string) *registry.Registry {
	tb.Helper()
	cfg := registry.DefaultConfig()
	cfg.Client, cfg.Node, cfg.Site, cfg.MinTTL = etcd.Client(), name, site, time.Second
	r, err := registry.New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(r.Close)
	if err := r.Start(context.Background()); err != nil {
		tb.Fatal(err)
	}
	return r
}

// TestEventsLifecycle: open, logout, kill and expiry arrive in order, with
// increasing revisions, their types, reasons and the session as recorded;
// an expiry seen by two nodes' expiry watches is one event.
func TestEventsLifecycle(t *testing.T) {
	r := newRegistry(t)
	secondNode(t) // its expiry watch races ours to write the tombstone
	ctx := context.Background()
	s := events(t, r, admin, registry.EventFilter{}, 0)

	a := open(t, r, admin, registry.OpenRequest{User: "ev-a", Module: "sales", Host: "PC-1", Labels: map[string]string{"k": "v"}})
	if _, err := r.Logout(ctx, admin, a.ID); err != nil {
		t.Fatal(err)
	}
	b := open(t, r, admin, registry.OpenRequest{User: "ev-b", Module: "sales"})
	if _, err := r.Kill(ctx, admin, b.ID, "PC crashed"); err != nil {
		t.Fatal(err)
	}
	c := open(t, r, admin, registry.OpenRequest{User: "ev-c", Module: "hr", Host: "PC-3", TTLSeconds: 1}) // never heartbeated
	// Neither node has it cached now, so the expiry's tombstone is written from
	// the record read back as of just before its deletion.
	r.ForgetCached()
	got := expect(t, s,
		step{registry.EventOpened, a.ID, ""},
		step{registry.EventClosed, a.ID, ""},
		step{registry.EventOpened, b.ID, ""},
		step{registry.EventKilled, b.ID, "PC crashed"},
		step{registry.EventOpened, c.ID, ""},
		step{registry.EventExpired, c.ID, ""},
	)
	if o := got[0]; o.Session.Host != "PC-1" || o.Session.Labels["k"] != "v" || o.Session.Node != "n1" || o.Session.ExpiresInSeconds != 60 || !o.At.Equal(a.StartedAt) {
		t.Errorf("opened event: %+v", o)
	}
	if e := got[1]; e.By != "admin" || e.Session.User != "ev-a" || e.Session.Host != "PC-1" || e.Session.Labels["k"] != "v" || e.At.IsZero() {
		t.Errorf("closed event: %+v", e)
	}
	if e := got[3]; e.By != "admin" || e.Session.Module != "sales" {
		t.Errorf("killed event: %+v", e)
	}
	if e := got[5]; e.By != "lease" || e.Session.Module != "hr" || e.Session.User != "ev-c" || e.Session.Host != "PC-3" || e.Session.TTLSeconds != 1 {
		t.Errorf("expired event: %+v", e)
	}
	// Exactly one end per session: the next event is a new session's.
	d := open(t, r, admin, registry.OpenRequest{User: "ev-d", Module: "sales"})
	expect(t, s, step{registry.EventOpened, d.ID, ""})
}

// TestEventsFilters: tenant, pool and module filters, and a client token's
// stream of the sessions it opened; session tokens may not watch all.
func TestEventsFilters(t *testing.T) {
	r := newRegistry(t)
	ctx := context.Background()
	_, client := token(t, r, "ev-client", registry.RoleClient)
	_, ops := token(t, r, "ev-ops", registry.RoleOperator)
	byModule := events(t, r, ops, registry.EventFilter{Module: "m1"}, 0)
	byTenant := events(t, r, admin, registry.EventFilter{Tenant: "t2"}, 0)
	byPool := events(t, r, admin, registry.EventFilter{Pool: "p2"}, 0)
	mine := events(t, r, client, registry.EventFilter{}, 0)

	s1 := open(t, r, admin, registry.OpenRequest{User: "u1", Module: "m1"})
	s2 := open(t, r, admin, registry.OpenRequest{User: "u2", Module: "m2", Tenant: "t2"})
	s3 := open(t, r, admin, registry.OpenRequest{User: "u3", Module: "m3", Pool: "p2"})
	s4 := open(t, r, client, registry.OpenRequest{User: "u4", Module: "m4"})
	for _, s := range []registry.OpenedSession{s1, s2, s3, s4} {
		if _, err := r.Kill(ctx, admin, s.ID, ""); err != nil {
			t.Fatal(err)
		}
	}
	// A last match per stream: anything that leaked through a filter would come before it.
	m1 := open(t, r, admin, registry.OpenRequest{User: "u5", Module: "m1"})
	m2 := open(t, r, admin, registry.OpenRequest{User: "u5", Module: "m9", Tenant: "t2"})
	m3 := open(t, r, admin, registry.OpenRequest{User: "u5", Module: "m8", Pool: "p2"})
	m4 := open(t, r, client, registry.OpenRequest{User: "u5", Module: "m7"})

	tests := []struct {
		name   string
		stream *registry.EventStream
		s, m   registry.OpenedSession
	}{
		{"module", byModule, s1, m1},
		{"tenant", byTenant, s2, m2},
		{"pool", byPool, s3, m3},
		{"client token", mine, s4, m4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			expect(t, tt.stream,
				step{registry.EventOpened, tt.s.ID, ""},
				step{registry.EventKilled, tt.s.ID, ""},
				step{registry.EventOpened, tt.m.ID, ""})
		})
	}

	sp := sessionPrincipal(t, r, m1)
	if _, err := r.Events(ctx, sp, registry.EventFilter{}, 0); !errors.Is(err, registry.ErrPermissionDenied) {
		t.Errorf("session token watching everything: %v", err)
	}
	if _, err := r.Events(ctx, admin, registry.EventFilter{Module: "a/b"}, 0); !errors.Is(err, registry.ErrInvalidArgument) {
		t.Errorf("bad filter: %v", err)
	}
}

// TestEventsResume: a stream resumed after the revision of an event gets
// exactly the events after it, once each.
func TestEventsResume(t *testing.T) {
	r := newRegistry(t)
	ctx := context.Background()
	s := events(t, r, admin, registry.EventFilter{}, 0)
	var want []step
	for i := range 3 {
		o := open(t, r, admin, registry.OpenRequest{User: fmt.Sprintf("res-%d", i), Module: "sales"})
		if _, err := r.Kill(ctx, admin, o.ID, fmt.Sprint("reason ", i)); err != nil {
			t.Fatal(err)
		}
		want = append(want, step{registry.EventOpened, o.ID, ""}, step{registry.EventKilled, o.ID, fmt.Sprint("reason ", i)})
	}
	all := expect(t, s, want...)

	resumed := events(t, r, admin, registry.EventFilter{}, all[1].Rev+1)
	if resumed.Start() != all[1].Rev {
		t.Errorf("resumed stream starts after %d, want %d", resumed.Start(), all[1].Rev)
	}
	got := expect(t, resumed, want[2:]...)
	for i := range got {
		if got[i].Rev != all[i+2].Rev {
			t.Fatalf("resumed event %d has rev %d, the first stream had %d", i, got[i].Rev, all[i+2].Rev)
		}
	}
	// From the first stream's start: everything.
	expect(t, events(t, r, admin, registry.EventFilter{}, s.Start()+1), want...)
	// No duplicate: what follows is new.
	n := open(t, r, admin, registry.OpenRequest{User: "res-new", Module: "sales"})
	expect(t, resumed, step{registry.EventOpened, n.ID, ""})
}

// TestEventsCompacted: resuming from a compacted revision, or one this
// cluster never had, starts with a resync event and goes on from now.
func TestEventsCompacted(t *testing.T) {
	r := newRegistry(t)
	ctx := context.Background()
	old := currentRev(t)
	o := open(t, r, admin, registry.OpenRequest{User: "cmp", Module: "sales"})
	if _, err := r.Logout(ctx, admin, o.ID); err != nil {
		t.Fatal(err)
	}
	compacted := currentRev(t)
	if _, err := etcd.Client().Compact(ctx, compacted); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name string
		from int64
	}{{"compacted", old + 1}, {"future", compacted + 1_000_000}} {
		t.Run(tt.name, func(t *testing.T) {
			s := events(t, r, admin, registry.EventFilter{}, tt.from)
			e := nextEvent(t, s)
			if e.Type != registry.EventResync || e.Rev < compacted || e.Session.ID != "" {
				t.Fatalf("first event %+v, want a resync at %d or later", e, compacted)
			}
			n := open(t, r, admin, registry.OpenRequest{User: "cmp-" + tt.name, Module: "sales"})
			if got := nextEvent(t, s); got.Type != registry.EventOpened || got.Session.ID != n.ID || got.Rev <= e.Rev {
				t.Fatalf("after the resync: %+v", got)
			}
		})
	}
}

// TestSessionEvents: a session's own stream, for live and ended sessions,
// and who may watch it.
func TestSessionEvents(t *testing.T) {
	r := newRegistry(t)
	ctx := context.Background()

	t.Run("live until killed", func(t *testing.T) {
		o := open(t, r, admin, registry.OpenRequest{User: "se-live", Module: "sales"})
		other := open(t, r, admin, registry.OpenRequest{User: "se-other", Module: "sales"})
		s := events(t, r, sessionPrincipal(t, r, o), registry.EventFilter{SessionID: o.ID}, 0)
		if _, err := r.Kill(ctx, admin, other.ID, ""); err != nil {
			t.Fatal(err)
		}
		if _, err := r.Kill(ctx, admin, o.ID, "maintenance"); err != nil {
			t.Fatal(err)
		}
		expect(t, s, step{registry.EventKilled, o.ID, "maintenance"})
		waitClosed(t, s)
		if s.Err() != nil {
			t.Fatalf("Err = %v after the end", s.Err())
		}
	})

	t.Run("expired", func(t *testing.T) {
		o := open(t, r, admin, registry.OpenRequest{User: "se-exp", Module: "sales", TTLSeconds: 1})
		s := events(t, r, admin, registry.EventFilter{SessionID: o.ID}, 0)
		expect(t, s, step{registry.EventExpired, o.ID, ""})
		waitClosed(t, s)
	})

	ended := open(t, r, admin, registry.OpenRequest{User: "se-ended", Module: "sales", Host: "PC-9"})
	sp := sessionPrincipal(t, r, ended)
	if _, err := r.Kill(ctx, admin, ended.ID, "gone"); err != nil {
		t.Fatal(err)
	}
	t.Run("ended before the stream", func(t *testing.T) {
		for _, p := range []registry.Principal{admin, sessionPrincipal(t, r, ended)} {
			s := events(t, r, p, registry.EventFilter{SessionID: ended.ID}, 0)
			got := expect(t, s, step{registry.EventKilled, ended.ID, "gone"})
			if got[0].Session.Host != "PC-9" {
				t.Fatalf("end event %+v of a stream that starts after %d", got[0], s.Start())
			}
			waitClosed(t, s)
		}
	})
	t.Run("ended, from before its open", func(t *testing.T) {
		s := events(t, r, admin, registry.EventFilter{SessionID: ended.ID}, 1)
		got := expect(t, s, step{registry.EventOpened, ended.ID, ""}, step{registry.EventKilled, ended.ID, "gone"})
		if got[0].Session.Host != "PC-9" {
			t.Fatalf("opened event rebuilt from the tombstone: %+v", got[0])
		}
		waitClosed(t, s)
		// Resumed after its end: nothing will come, and it says why.
		_, err := r.Events(ctx, admin, registry.EventFilter{SessionID: ended.ID}, got[1].Rev+1)
		var end *registry.EndedError
		if !errors.As(err, &end) || end.Ended.Reason != registry.EndKilled {
			t.Fatalf("resume after the end: %v", err)
		}
	})

	live := open(t, r, admin, registry.OpenRequest{User: "se-auth", Module: "sales"})
	_, client := token(t, r, "se-client", registry.RoleClient)
	_, ops := token(t, r, "se-ops", registry.RoleOperator)
	t.Run("live, from before its open", func(t *testing.T) {
		s := events(t, r, ops, registry.EventFilter{SessionID: live.ID}, 1)
		expect(t, s, step{registry.EventOpened, live.ID, ""})
	})
	t.Run("who may watch", func(t *testing.T) {
		tests := []struct {
			name string
			p    registry.Principal
			id   string
			want error
		}{
			{"another session's token", sp, live.ID, registry.ErrPermissionDenied},
			{"client token that did not open it", client, live.ID, registry.ErrPermissionDenied},
			{"unknown session", admin, "0123456789abcdef0123456789abcdef", registry.ErrSessionNotFound},
			{"malformed id", admin, "nope", registry.ErrInvalidArgument},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				if _, err := r.Events(ctx, tt.p, registry.EventFilter{SessionID: tt.id}, 0); !errors.Is(err, tt.want) {
					t.Fatalf("err = %v, want %v", err, tt.want)
				}
			})
		}
	})
}

// TestEventsEndWithRegistry: closing the registry ends its streams with
// ErrUnavailable, so clients move to another node.
func TestEventsEndWithRegistry(t *testing.T) {
	newRegistry(t)
	r2 := secondNode(t)
	s := events(t, r2, admin, registry.EventFilter{}, 0)
	r2.Close()
	waitClosed(t, s)
	if !errors.Is(s.Err(), registry.ErrUnavailable) {
		t.Fatalf("Err = %v", s.Err())
	}
	if _, err := r2.Events(context.Background(), admin, registry.EventFilter{}, 0); !errors.Is(err, registry.ErrUnavailable) {
		t.Fatalf("Events on a closed registry: %v", err)
	}
}
