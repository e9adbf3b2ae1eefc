package registry_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/roster-dev/roster/registry"
)

func grace(s int64) *int64 { return &s }

// runDuty runs EnforceShutdowns as the duty leader would, until the test ends.
func runDuty(t *testing.T, r *registry.Registry) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.EnforceShutdowns(ctx)
	}()
	t.Cleanup(func() { cancel(); <-done })
}

// endedReason waits up to 15 s for session id to end and returns its end reason.
func endedReason(t *testing.T, r *registry.Registry, id string) registry.EndReason {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		_, err := r.Get(context.Background(), admin, id)
		var ended *registry.EndedError
		if errors.As(err, &ended) {
			return ended.Ended.Reason
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("session %s did not end", id)
	return ""
}

func TestShutdownPoolDeadline(t *testing.T) {
	r := newRegistry(t)
	ctx := context.Background()
	var blue []registry.OpenedSession
	for _, u := range []string{"a", "b", "c"} {
		blue = append(blue, open(t, r, admin, registry.OpenRequest{User: u, Module: "sales", Pool: "blue", TTLSeconds: 60}))
	}
	green := open(t, r, admin, registry.OpenRequest{User: "g", Module: "sales", Pool: "green", TTLSeconds: 60})

	s, err := r.RequestShutdown(ctx, admin, registry.ShutdownRequest{Scope: registry.ScopePool, Pool: "blue", GraceSeconds: grace(3), Message: "Release 26.4"})
	if err != nil || s.State != registry.ShutdownPending || s.InScope != 3 || s.RequestedBy != "admin" || s.Deadline.Sub(s.CreatedAt) != 3*time.Second {
		t.Fatalf("RequestShutdown = %+v, %v", s, err)
	}
	// Heartbeats in scope carry the notice (once the node's cache has it); others none.
	sp := sessionPrincipal(t, r, blue[0])
	deadline := time.Now().Add(5 * time.Second)
	for {
		hb, err := r.Heartbeat(ctx, sp, blue[0].ID)
		if err != nil {
			t.Fatal(err)
		}
		if hb.Shutdown != nil {
			if hb.Shutdown.ID != s.ID || hb.Shutdown.Message != "Release 26.4" || !hb.Shutdown.Deadline.Equal(s.Deadline) {
				t.Fatalf("notice = %+v", hb.Shutdown)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("heartbeats never carried the pending shutdown")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if hb, err := r.Heartbeat(ctx, sessionPrincipal(t, r, green), green.ID); err != nil || hb.Shutdown != nil {
		t.Fatalf("a green heartbeat: %+v, %v", hb, err)
	}
	// One client saves and logs off in time.
	if _, err := r.Logout(ctx, sp, blue[0].ID); err != nil {
		t.Fatal(err)
	}

	runDuty(t, r)
	for _, b := range blue[1:] {
		if reason := endedReason(t, r, b.ID); reason != registry.EndShutdown {
			t.Errorf("session %s ended %s, want shutdown", b.ID, reason)
		}
	}
	if reason := endedReason(t, r, blue[0].ID); reason != registry.EndClosed {
		t.Errorf("the session that logged off ended %s", reason)
	}
	if _, err := r.Get(ctx, admin, green.ID); err != nil {
		t.Fatalf("green session: %v", err)
	}
	var got registry.Shutdown
	for until := time.Now().Add(5 * time.Second); time.Now().Before(until); {
		if got, err = r.Shutdown(ctx, admin, s.ID); err == nil && got.State == registry.ShutdownDone {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if got.State != registry.ShutdownDone || got.Terminated != 2 || got.InScope != 3 || got.FinishedAt == nil {
		t.Fatalf("finished request = %+v", got)
	}
}

func TestShutdownAllRefusesLoginsUntilCancelled(t *testing.T) {
	r := newRegistry(t)
	ctx := context.Background()
	alice := open(t, r, admin, registry.OpenRequest{User: "alice", Module: "sales"})
	s, err := r.RequestShutdown(ctx, admin, registry.ShutdownRequest{Scope: registry.ScopeAll, GraceSeconds: grace(2), Message: "upgrade"})
	if err != nil || s.Tenant != "default" || s.InScope != 1 {
		t.Fatalf("RequestShutdown = %+v, %v", s, err)
	}
	_, err = r.Open(ctx, admin, registry.OpenRequest{User: "bob", Module: "sales"})
	var maint *registry.MaintenanceError
	if !errors.As(err, &maint) || maint.ID != s.ID || !strings.Contains(err.Error(), "upgrade") || !strings.Contains(err.Error(), s.Deadline.Format(time.RFC3339)) {
		t.Fatalf("open during maintenance: %v", err)
	}
	// Another tenant is not affected.
	open(t, r, admin, registry.OpenRequest{Tenant: "other", User: "bob", Module: "sales"})

	c, err := r.CancelShutdown(ctx, admin, s.ID)
	if err != nil || c.State != registry.ShutdownCancelled || c.By != "admin" {
		t.Fatalf("CancelShutdown = %+v, %v", c, err)
	}
	if _, err := r.CancelShutdown(ctx, admin, s.ID); !errors.Is(err, registry.ErrShutdownFinished) {
		t.Fatalf("second cancel: %v", err)
	}
	open(t, r, admin, registry.OpenRequest{User: "bob", Module: "sales"})
	// Past the deadline nothing is terminated.
	runDuty(t, r)
	time.Sleep(3 * time.Second)
	if _, err := r.Get(ctx, admin, alice.ID); err != nil {
		t.Fatalf("a cancelled request terminated alice: %v", err)
	}
}

// TestShutdownOverdueEnforcedAtOnce: a request whose deadline passed while no duty ran
// (the duty leader died) is enforced as soon as a duty starts.
func TestShutdownOverdueEnforcedAtOnce(t *testing.T) {
	r := newRegistry(t)
	ctx := context.Background()
	s1 := open(t, r, admin, registry.OpenRequest{User: "alice", Module: "sales", TTLSeconds: 60})
	// The deadline passed a while ago, as the duty leader was down.
	if _, err := r.RequestShutdown(ctx, admin, registry.ShutdownRequest{Scope: registry.ScopeSession, Session: s1.ID, GraceSeconds: grace(0)}); err != nil {
		t.Fatal(err)
	}
	runDuty(t, r)
	if reason := endedReason(t, r, s1.ID); reason != registry.EndShutdown {
		t.Fatalf("ended %s", reason)
	}
}

// TestShutdownBackstop: with no duty leader at all, every node enforces a request left
// pending BackstopDelay after its deadline; the request is marked done by a node.
func TestShutdownBackstop(t *testing.T) {
	r := newRegistry(t)
	ctx := context.Background()
	s1 := open(t, r, admin, registry.OpenRequest{User: "alice", Module: "sales", TTLSeconds: 60})
	req, err := r.RequestShutdown(ctx, admin, registry.ShutdownRequest{Scope: registry.ScopeSession, Session: s1.ID, GraceSeconds: grace(1)})
	if err != nil {
		t.Fatal(err)
	}
	if reason := endedReason(t, r, s1.ID); reason != registry.EndShutdown {
		t.Fatalf("ended %s", reason)
	}
	// The node marks the request done in a transaction of its own after the end.
	var done registry.Shutdown
	eventually(t, 10*time.Second, "the request marked done", func() bool {
		done, err = r.Shutdown(ctx, admin, req.ID)
		return err == nil && done.State != registry.ShutdownPending
	})
	if done.State != registry.ShutdownDone || done.Terminated != 1 || done.By != "node:n1" {
		t.Fatalf("after the backstop: %+v", done)
	}
}

// TestShutdownEnforcersCountExactly: three nodes' duties and backstops enforce one
// request at once; every session is ended once and the count is exact.
func TestShutdownEnforcersCountExactly(t *testing.T) {
	r := newRegistry(t)
	r2, r3 := secondNode(t), secondNode(t)
	ctx := context.Background()
	const n = 120
	var ids []string
	for i := range n {
		ids = append(ids, open(t, r, admin, registry.OpenRequest{User: fmt.Sprintf("u%d", i), Module: "sales", Pool: "blue", TTLSeconds: 60}).ID)
	}
	keep := open(t, r, admin, registry.OpenRequest{User: "green", Module: "sales", Pool: "green", TTLSeconds: 60})
	req, err := r.RequestShutdown(ctx, admin, registry.ShutdownRequest{Scope: registry.ScopePool, Pool: "blue", GraceSeconds: grace(1)})
	if err != nil {
		t.Fatal(err)
	}
	for _, reg := range []*registry.Registry{r, r2, r3} {
		runDuty(t, reg)
	}
	for _, id := range ids {
		if reason := endedReason(t, r, id); reason != registry.EndShutdown {
			t.Fatalf("session %s ended %s", id, reason)
		}
	}
	eventually(t, 10*time.Second, "the request counts every termination", func() bool {
		s, err := r.Shutdown(ctx, admin, req.ID)
		return err == nil && s.State == registry.ShutdownDone && s.Terminated == n
	})
	if _, err := r.Get(ctx, admin, keep.ID); err != nil {
		t.Fatalf("green session: %v", err)
	}
}

func TestShutdownInput(t *testing.T) {
	r := newRegistry(t)
	ctx := context.Background()
	client := registry.Principal{Role: registry.RoleClient, Name: "app"}
	for _, tc := range []struct {
		p    registry.Principal
		req  registry.ShutdownRequest
		want string
	}{
		{client, registry.ShutdownRequest{Scope: "all"}, "may not request shutdowns: it needs a token with role operator or admin"},
		{admin, registry.ShutdownRequest{}, "scope: is required: session, all or pool"},
		{admin, registry.ShutdownRequest{Scope: "everything"}, `scope: is "everything"; want session, all or pool`},
		{admin, registry.ShutdownRequest{Scope: "all", GraceSeconds: grace(-1)}, "grace_seconds: is -1"},
		{admin, registry.ShutdownRequest{Scope: "pool"}, "pool: is required"},
		{admin, registry.ShutdownRequest{Scope: "pool", Pool: "blue", Tenant: "x"}, "tenant: is not used with scope pool"},
		{admin, registry.ShutdownRequest{Scope: "session", Session: "0123456789abcdef0123456789abcdef"}, "not found"},
		{admin, registry.ShutdownRequest{Scope: "all", Message: "a\x00b"}, "message: must not contain control"},
	} {
		if _, err := r.RequestShutdown(ctx, tc.p, tc.req); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("RequestShutdown(%+v): %v, want %q", tc.req, err, tc.want)
		}
	}
	if all, err := r.Shutdowns(ctx, admin); err != nil || len(all) != 0 {
		t.Fatalf("refused requests were stored: %+v, %v", all, err)
	}
	if _, err := r.CancelShutdown(ctx, admin, "0123456789abcdef0123456789abcdef"); !errors.Is(err, registry.ErrShutdownNotFound) {
		t.Fatalf("cancel of an unknown request: %v", err)
	}
}

// TestShutdownRetention: the duty leader deletes finished requests after the retention;
// pending ones stay.
func TestShutdownRetention(t *testing.T) {
	r := newRegistry(t, func(c *registry.Config) { c.ShutdownRetention = 2 * time.Second })
	ctx := context.Background()
	s1 := open(t, r, admin, registry.OpenRequest{User: "alice", Module: "sales", TTLSeconds: 60})
	done, err := r.RequestShutdown(ctx, admin, registry.ShutdownRequest{Scope: registry.ScopeSession, Session: s1.ID, GraceSeconds: grace(0)})
	if err != nil {
		t.Fatal(err)
	}
	pending, err := r.RequestShutdown(ctx, admin, registry.ShutdownRequest{Scope: registry.ScopeAll, Tenant: "other", GraceSeconds: grace(3600)})
	if err != nil {
		t.Fatal(err)
	}
	runDuty(t, r)
	eventually(t, 15*time.Second, "the finished request is deleted", func() bool {
		_, err := r.Shutdown(ctx, admin, done.ID)
		return errors.Is(err, registry.ErrShutdownNotFound)
	})
	if s, err := r.Shutdown(ctx, admin, pending.ID); err != nil || s.State != registry.ShutdownPending {
		t.Fatalf("the pending request: %+v, %v", s, err)
	}
}

// TestShutdownTerminatesInBatches: the deadline ends many sessions in a few
// transactions, each conditional on the request: with the request changed since it
// was read nothing ends; as read, every session in scope ends as shutdown, and no
// other.
func TestShutdownTerminatesInBatches(t *testing.T) {
	r := newRegistry(t)
	ctx := context.Background()
	const n = 60 // several transactions of etcd's default 128 operations
	// Half the sessions through another node: the terminating node ends the
	// sessions in its cache while it reads the others' records.
	r2 := secondNode(t)
	var ids []string
	for i := range n {
		via := r
		if i%2 == 1 {
			via = r2
		}
		ids = append(ids, open(t, via, admin, registry.OpenRequest{User: fmt.Sprintf("u%d", i), Module: "sales", Pool: "blue", TTLSeconds: 60}).ID)
	}
	green := open(t, r, admin, registry.OpenRequest{User: "g", Module: "sales", Pool: "green", TTLSeconds: 60})
	req, err := r.RequestShutdown(ctx, admin, registry.ShutdownRequest{Scope: registry.ScopePool, Pool: "blue", GraceSeconds: grace(300)})
	if err != nil {
		t.Fatal(err)
	}
	rev := r.ShutdownRevision(ctx, req.ID)
	if rev == 0 {
		t.Fatal("the request has no revision")
	}

	ended, found, err := r2.TerminateAsOf(ctx, req.ID, rev-1)
	if err != nil || ended != 0 || found != n {
		t.Fatalf("terminate as of a changed request = %d ended of %d found, %v; want 0 of %d", ended, found, err, n)
	}
	for _, id := range ids {
		if _, err := r.Get(ctx, admin, id); err != nil {
			t.Fatalf("session %s after a terminate as of a changed request: %v", id, err)
		}
	}

	ended, found, err = r2.TerminateAsOf(ctx, req.ID, rev)
	if err != nil || ended != n || found != n {
		t.Fatalf("terminate = %d ended of %d found, %v; want %d of %d", ended, found, err, n, n)
	}
	for _, id := range ids {
		if reason := endedReason(t, r, id); reason != registry.EndShutdown {
			t.Errorf("session %s ended %s, want shutdown", id, reason)
		}
	}
	if _, err := r.Get(ctx, admin, green.ID); err != nil {
		t.Fatalf("the session out of scope: %v", err)
	}
	// Many sessions a transaction (a tombstone's mod revision is its transaction's),
	// the sessions node 2 had cached (its own) in other transactions than those whose
	// records it read (node 1's).
	txnOf := map[int64]int{} // revision → 1 for node 1's sessions, 2 for node 2's
	for i, id := range ids {
		resp, err := etcd.Client().Get(ctx, "/roster/v1/tombstones/"+id)
		if err != nil || len(resp.Kvs) != 1 {
			t.Fatalf("the tombstone of session %s: %v, %d keys", id, err, len(resp.Kvs))
		}
		via := 1 + i%2
		rev := resp.Kvs[0].ModRevision
		if other, ok := txnOf[rev]; ok && other != via {
			t.Fatalf("a transaction (revision %d) ended sessions of node 1 and of node 2: the cached sessions and the read ones were not ended apart", rev)
		}
		txnOf[rev] = via
	}
	if len(txnOf) < 2 || len(txnOf) > 12 {
		t.Fatalf("the %d sessions ended in %d transactions; want 2 to 12 (a few for each node's sessions)", n, len(txnOf))
	}
	// The other node's session watch saw the ends, which holds its backstop off.
	for deadline := time.Now().Add(10 * time.Second); r.ShutdownEndSeen(req.ID).IsZero(); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("node 1 saw no end by shutdown request %s in 10 s", req.ID)
		}
	}
	// The ended sessions no longer hold their logins.
	for _, user := range []string{"u0", "u1"} {
		open(t, r, admin, registry.OpenRequest{User: user, Module: "sales", Pool: "green", TTLSeconds: 60})
	}
}

// TestBackstopHoldsOff: a node's backstop leaves a request alone while the node sees
// its sessions end (another node is at work) until 500 ms after the last end it saw,
// at most BackstopDelay + 10 s after the deadline, and then enforces it.
func TestBackstopHoldsOff(t *testing.T) {
	r := newRegistry(t)
	ctx := context.Background()
	pendingOn := func(id string) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); !r.ShutdownPendingHere(id); time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("shutdown request %s not pending in the node's copy after 10 s", id)
			}
		}
	}

	// The usual case: ends seen until 2 s past the backstop's turn; it enforces the
	// request 500 ms after the last of them.
	s := open(t, r, admin, registry.OpenRequest{User: "a", Module: "sales", Pool: "blue", TTLSeconds: 60})
	req, err := r.RequestShutdown(ctx, admin, registry.ShutdownRequest{Scope: registry.ScopePool, Pool: "blue", GraceSeconds: grace(1)})
	if err != nil {
		t.Fatal(err)
	}
	pendingOn(req.ID)
	lastEnd := req.Deadline.Add(registry.BackstopDelay + 2*time.Second)
	for time.Now().Before(lastEnd) {
		r.NoteShutdownEndAt(req.ID, time.Now())
		time.Sleep(100 * time.Millisecond)
	}
	if _, err := r.Get(ctx, admin, s.ID); err != nil {
		t.Fatalf("while ends are seen, 2 s past the backstop's turn: the session %v; want it left open", err)
	}
	if reason := endedReason(t, r, s.ID); reason != registry.EndShutdown {
		t.Fatalf("after the ends stopped: the session ended %s, want shutdown", reason)
	}
	// About 500 ms after the last end seen, not at the longest hold (8 s later).
	if after := time.Since(lastEnd); after > 4*time.Second {
		t.Fatalf("the session ended %v after the last end seen; want about 500 ms, well before the longest hold", after)
	}

	// An end seen "in an hour" holds the backstop for as long as it may hold: 10 s
	// past its turn.
	s = open(t, r, admin, registry.OpenRequest{User: "b", Module: "sales", Pool: "blue", TTLSeconds: 60})
	req, err = r.RequestShutdown(ctx, admin, registry.ShutdownRequest{Scope: registry.ScopePool, Pool: "blue", GraceSeconds: grace(1)})
	if err != nil {
		t.Fatal(err)
	}
	pendingOn(req.ID)
	r.NoteShutdownEndAt(req.ID, time.Now().Add(time.Hour))
	time.Sleep(time.Until(req.Deadline.Add(registry.BackstopDelay + 5*time.Second)))
	if _, err := r.Get(ctx, admin, s.ID); err != nil {
		t.Fatalf("5 s past the backstop's turn, an end seen later: the session %v; want it left open", err)
	}
	if reason := endedReason(t, r, s.ID); reason != registry.EndShutdown {
		t.Fatalf("after the longest hold: the session ended %s, want shutdown", reason)
	}
	if after := time.Since(req.Deadline); after > registry.BackstopDelay+13*time.Second {
		t.Fatalf("the session ended %v after the deadline; want at most BackstopDelay and 10 s (and 3 s to spare)", after)
	}
}

func TestTombstoneShutdownID(t *testing.T) {
	fake := map[string]string{"shutdown_id": "fake", `","shutdown_id":"`: "fake"}
	for _, c := range []struct {
		how    registry.Ended
		labels map[string]string
		want   string
	}{
		{registry.Ended{ID: "s1", Reason: registry.EndShutdown, ShutdownID: "abc123"}, nil, "abc123"},
		{registry.Ended{ID: "s1", Reason: registry.EndShutdown, ShutdownID: "abc123"}, fake, "abc123"},
		{registry.Ended{ID: "s1", Reason: registry.EndKilled, Message: `x","shutdown_id":"fake`}, nil, ""},
		{registry.Ended{ID: "s1", Reason: registry.EndKilled, Message: `x",,"tenant":"`}, fake, ""},
		{registry.Ended{ID: "s1", Reason: registry.EndClosed}, fake, ""},
		{registry.Ended{ID: "s1", Reason: registry.EndShutdown, Message: `"shutdown_id":"fake"`, ShutdownID: "abc123"}, nil, "abc123"},
	} {
		val, err := registry.TombstoneValue(c.how, c.labels)
		if err != nil {
			t.Fatal(err)
		}
		if got := registry.TombstoneShutdownID(val); got != c.want {
			t.Errorf("TombstoneShutdownID(%s) = %q, want %q", val, got, c.want)
		}
	}
}
