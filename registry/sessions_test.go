package registry_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/roster-dev/roster/registry"
)

func TestOpenGetHeartbeatLogout(t *testing.T) {
	r := newRegistry(t)
	ctx := context.Background()
	s := open(t, r, admin, registry.OpenRequest{User: "alice", Module: "sales", Host: "PC-17", PID: 4242, OS: "windows", TTLSeconds: 30, Labels: map[string]string{"build": "26.4"}})
	if s.Tenant != "default" || s.Pool != "default" || s.ClientKind != registry.KindUI || s.Node != "n1" || s.Site != "fra" {
		t.Fatalf("defaults not filled: %+v", s.Session)
	}
	if len(s.ID) != 32 || !strings.HasPrefix(s.Token, "rs1."+s.ID+".") {
		t.Fatalf("id %q / token %q malformed", s.ID, s.Token)
	}
	got, err := r.Get(ctx, admin, s.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.User != "alice" || got.Host != "PC-17" || got.Labels["build"] != "26.4" || got.ExpiresInSeconds < 28 || got.ExpiresInSeconds > 30 {
		t.Fatalf("Get = %+v", got)
	}
	sp := sessionPrincipal(t, r, s)
	hb, err := r.Heartbeat(ctx, sp, s.ID)
	if err != nil || hb.ExpiresInSeconds != 30 || hb.TTLSeconds != 30 {
		t.Fatalf("Heartbeat = %+v, %v", hb, err)
	}
	ended, err := r.Logout(ctx, sp, s.ID)
	if err != nil || ended.Reason != registry.EndClosed || ended.By != "user:default/alice" {
		t.Fatalf("Logout = %+v, %v", ended, err)
	}
	// Everything is gone: record, indexes, lease.
	resp, err := etcd.Client().Get(ctx, "/roster/v1/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range resp.Kvs {
		if strings.Contains(string(kv.Key), s.ID) && !strings.HasPrefix(string(kv.Key), "/roster/v1/tombstones/") {
			t.Errorf("key %s survived the logout", kv.Key)
		}
	}
	// The user may log in again at once.
	open(t, r, admin, registry.OpenRequest{User: "alice", Module: "sales"})
}

// TestSingleLoginConcurrent fires 50 simultaneous logins of one user into
// one module: exactly one wins, the others are told who holds it.
func TestSingleLoginConcurrent(t *testing.T) {
	r := newRegistry(t)
	leasesBefore := leaseCount(t)
	const n = 50
	var (
		wg       sync.WaitGroup
		start    = make(chan struct{})
		mu       sync.Mutex
		winners  []registry.OpenedSession
		refusals []*registry.AlreadyLoggedInError
		others   []error
	)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			s, err := r.Open(context.Background(), admin, registry.OpenRequest{User: "alice", Module: "sales", Host: fmt.Sprintf("PC-%d", i)})
			mu.Lock()
			defer mu.Unlock()
			var already *registry.AlreadyLoggedInError
			switch {
			case err == nil:
				winners = append(winners, s)
			case errors.As(err, &already):
				refusals = append(refusals, already)
			default:
				others = append(others, err)
			}
		}()
	}
	close(start)
	wg.Wait()
	if len(winners) != 1 || len(refusals) != n-1 || len(others) != 0 {
		t.Fatalf("winners %d, refusals %d, other errors %v; want 1, %d, none", len(winners), len(refusals), others, n-1)
	}
	w := winners[0]
	for _, e := range refusals {
		if e.Host != w.Host || !e.Since.Equal(w.StartedAt) || e.SessionID != w.ID || !errors.Is(e, registry.ErrAlreadyLoggedIn) {
			t.Fatalf("refusal %+v does not name the winner %+v", e, w.Session)
		}
	}
	page, err := r.List(context.Background(), admin, registry.ListFilter{User: "alice"})
	if err != nil || page.Total != 1 {
		t.Fatalf("list after the race: total %d, %v", page.Total, err)
	}
	// The refused logins' leases went back to the lease pool or were
	// revoked, not left to expire: besides the pool's, one new lease remains.
	pooled := r.PooledLeases()
	if got := leaseCount(t) - leasesBefore - len(pooled); got != 1 {
		t.Fatalf("%d new leases remain after the race besides the %d in the lease pool; want 1", got, len(pooled))
	}
}

func leaseCount(t testing.TB) int {
	t.Helper()
	resp, err := etcd.Client().Leases(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return len(resp.Leases)
}

func TestAlreadyLoggedInMessage(t *testing.T) {
	r := newRegistry(t)
	s := open(t, r, admin, registry.OpenRequest{User: "alice", Module: "sales", Host: "PC-17"})
	_, err := r.Open(context.Background(), admin, registry.OpenRequest{User: "alice", Module: "sales", Host: "PC-99"})
	want := fmt.Sprintf("user alice is already logged in to module sales on host PC-17 since %s and has no multi-login right", s.StartedAt.Format(time.RFC3339))
	if err == nil || err.Error() != want {
		t.Fatalf("got %v\nwant %s", err, want)
	}
}

func TestSingleLoginScope(t *testing.T) {
	r := newRegistry(t)
	ctx := context.Background()
	open(t, r, admin, registry.OpenRequest{User: "alice", Module: "sales"})
	tests := []struct {
		name    string
		req     registry.OpenRequest
		wantErr bool
	}{
		{"same user and module", registry.OpenRequest{User: "alice", Module: "sales"}, true},
		{"same user, other module", registry.OpenRequest{User: "alice", Module: "hr"}, false},
		{"other user, same module", registry.OpenRequest{User: "bob", Module: "sales"}, false},
		{"same user and module, other tenant", registry.OpenRequest{Tenant: "acme", User: "alice", Module: "sales"}, false},
		{"user whose name is a prefix", registry.OpenRequest{User: "alic", Module: "sales"}, false},
		{"module whose name is a prefix", registry.OpenRequest{User: "alice", Module: "sale"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := r.Open(ctx, admin, tt.req)
			if (err != nil) != tt.wantErr || (err != nil && !errors.Is(err, registry.ErrAlreadyLoggedIn)) {
				t.Fatalf("err = %v, want error %v", err, tt.wantErr)
			}
		})
	}
}

func TestMultiLoginRight(t *testing.T) {
	r := newRegistry(t)
	ctx := context.Background()
	if _, err := r.PutUser(ctx, admin, "default", "carol", registry.UserSpec{Rights: []registry.Right{registry.RightMultiLogin}}); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		open(t, r, admin, registry.OpenRequest{User: "carol", Module: "sales", Host: fmt.Sprintf("PC-%d", i)})
	}
	// Without the right again, the next login is refused.
	if _, err := r.PutUser(ctx, admin, "default", "carol", registry.UserSpec{Rights: []registry.Right{}}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Open(ctx, admin, registry.OpenRequest{User: "carol", Module: "sales"}); !errors.Is(err, registry.ErrAlreadyLoggedIn) {
		t.Fatalf("open after the right was revoked: %v", err)
	}
}

func TestKillRights(t *testing.T) {
	r := newRegistry(t)
	ctx := context.Background()
	_, operator := token(t, r, "ops", registry.RoleOperator)
	_, client := token(t, r, "app", registry.RoleClient)
	if _, err := r.PutUser(ctx, admin, "default", "boss", registry.UserSpec{Rights: []registry.Right{registry.RightInterruptSessions}}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.PutUser(ctx, admin, "acme", "boss", registry.UserSpec{Rights: []registry.Right{registry.RightInterruptSessions}}); err != nil {
		t.Fatal(err)
	}
	bob := sessionPrincipal(t, r, open(t, r, admin, registry.OpenRequest{User: "bob", Module: "hr"}))
	boss := sessionPrincipal(t, r, open(t, r, admin, registry.OpenRequest{User: "boss", Module: "hr"}))
	acmeBoss := sessionPrincipal(t, r, open(t, r, admin, registry.OpenRequest{Tenant: "acme", User: "boss", Module: "hr"}))

	tests := []struct {
		name    string
		by      registry.Principal
		allowed bool
	}{
		{"admin", admin, true},
		{"operator", operator, true},
		{"client token", client, false},
		{"the same user from another module", sessionPrincipal(t, r, open(t, r, admin, registry.OpenRequest{User: "alice", Module: "hr"})), true},
		{"another user without the right", bob, false},
		{"another user with interrupt-sessions", boss, true},
		{"a user with the right in another tenant", acmeBoss, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			victim := open(t, r, admin, registry.OpenRequest{User: "alice", Module: "sales", Host: "PC-17"})
			ended, err := r.Kill(ctx, tt.by, victim.ID, "PC crashed")
			if !tt.allowed {
				if !errors.Is(err, registry.ErrPermissionDenied) {
					t.Fatalf("kill: %v, want permission denied", err)
				}
				if _, err := r.Get(ctx, admin, victim.ID); err != nil {
					t.Fatalf("refused kill touched the session: %v", err)
				}
				if _, err := r.Logout(ctx, admin, victim.ID); err != nil {
					t.Fatal(err)
				}
				return
			}
			if err != nil {
				t.Fatalf("kill: %v", err)
			}
			if ended.Reason != registry.EndKilled || ended.By != tt.by.By() || ended.Message != "PC crashed" {
				t.Fatalf("ended = %+v", ended)
			}
		})
	}
}

func TestTombstoneReasons(t *testing.T) {
	r := newRegistry(t)
	ctx := context.Background()
	closed := open(t, r, admin, registry.OpenRequest{User: "u1", Module: "m"})
	killed := open(t, r, admin, registry.OpenRequest{User: "u2", Module: "m"})
	expired := open(t, r, admin, registry.OpenRequest{User: "u3", Module: "m", TTLSeconds: 1})
	if _, err := r.Logout(ctx, admin, closed.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Kill(ctx, admin, killed.ID, "PC crashed"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 15*time.Second, "expiry of a TTL-1 session", func() bool {
		_, err := r.Get(ctx, admin, expired.ID)
		return errors.Is(err, registry.ErrSessionEnded)
	})
	tests := []struct {
		name    string
		s       registry.OpenedSession
		reason  registry.EndReason
		by, msg string
	}{
		{"closed", closed, registry.EndClosed, "admin", ""},
		{"killed", killed, registry.EndKilled, "admin", "PC crashed"},
		{"expired", expired, registry.EndExpired, "lease", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// The session's own token still authenticates, to learn why.
			sp := sessionPrincipal(t, r, tt.s)
			_, err := r.Heartbeat(ctx, sp, tt.s.ID)
			var ended *registry.EndedError
			if !errors.As(err, &ended) {
				t.Fatalf("heartbeat: %v, want an EndedError", err)
			}
			if ended.Ended.Reason != tt.reason || ended.Ended.By != tt.by || ended.Ended.Message != tt.msg || ended.Ended.At.IsZero() {
				t.Fatalf("ended = %+v", ended.Ended)
			}
			if _, err := r.Logout(ctx, sp, tt.s.ID); !errors.As(err, &ended) || ended.Ended.Reason != tt.reason {
				t.Fatalf("logout of an ended session: %v", err)
			}
			if _, err := r.Kill(ctx, sp, tt.s.ID, ""); !errors.Is(err, registry.ErrUnauthenticated) {
				t.Fatalf("kill with the token of an ended session: %v", err)
			}
		})
	}
}

func TestTombstoneExpires(t *testing.T) {
	r := newRegistry(t, func(c *registry.Config) { c.TombstoneTTL = time.Second })
	s := open(t, r, admin, registry.OpenRequest{User: "u", Module: "m"})
	if _, err := r.Logout(context.Background(), admin, s.ID); err != nil {
		t.Fatal(err)
	}
	// The tombstone lease lives TombstoneTTL plus a minute's sharing window;
	// revoke it to see the end of a tombstone without waiting for that.
	resp, err := etcd.Client().Get(context.Background(), "/roster/v1/tombstones/"+s.ID)
	if err != nil || len(resp.Kvs) != 1 || resp.Kvs[0].Lease == 0 {
		t.Fatalf("tombstone not on a lease: %v %v", resp, err)
	}
	if _, err := etcd.Client().Revoke(context.Background(), clientv3.LeaseID(resp.Kvs[0].Lease)); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Heartbeat(context.Background(), admin, s.ID); !errors.Is(err, registry.ErrSessionNotFound) {
		t.Fatalf("heartbeat after the tombstone went: %v", err)
	}
}

func TestHeartbeatKeepsAlivePastTTL(t *testing.T) {
	r := newRegistry(t)
	ctx := context.Background()
	s := open(t, r, admin, registry.OpenRequest{User: "u", Module: "m", TTLSeconds: 2})
	sp := sessionPrincipal(t, r, s)
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := r.Heartbeat(ctx, sp, s.ID); err != nil {
			t.Fatalf("heartbeat: %v", err)
		}
		time.Sleep(500 * time.Millisecond)
	}
	if _, err := r.Get(ctx, admin, s.ID); err != nil {
		t.Fatalf("heartbeated session gone: %v", err)
	}
	// Once the heartbeats stop, it expires and the user may log in again.
	eventually(t, 15*time.Second, "expiry", func() bool {
		_, err := r.Open(ctx, admin, registry.OpenRequest{User: "u", Module: "m"})
		return err == nil
	})
	if _, err := r.Heartbeat(ctx, sp, s.ID); !errors.Is(err, registry.ErrSessionEnded) {
		t.Fatalf("heartbeat after expiry: %v", err)
	}
}

func TestHeartbeatAndLogoutRights(t *testing.T) {
	r := newRegistry(t)
	ctx := context.Background()
	_, app := token(t, r, "app", registry.RoleClient)
	_, other := token(t, r, "other-app", registry.RoleClient)
	_, operator := token(t, r, "ops", registry.RoleOperator)
	s := open(t, r, app, registry.OpenRequest{User: "u", Module: "m"})
	sibling := sessionPrincipal(t, r, open(t, r, app, registry.OpenRequest{User: "u", Module: "other"}))
	tests := []struct {
		name    string
		by      registry.Principal
		allowed bool
	}{
		{"the client token that opened it", app, true},
		{"admin", admin, true},
		{"another client token", other, false},
		{"operator", operator, false},
		{"a sibling session of the same user", sibling, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := r.Heartbeat(ctx, tt.by, s.ID)
			if tt.allowed != (err == nil) || (!tt.allowed && !errors.Is(err, registry.ErrPermissionDenied)) {
				t.Fatalf("heartbeat: %v, allowed %v", err, tt.allowed)
			}
		})
	}
	if _, err := r.Logout(ctx, other, s.ID); !errors.Is(err, registry.ErrPermissionDenied) {
		t.Fatalf("logout by another client: %v", err)
	}
	if _, err := r.Logout(ctx, app, s.ID); err != nil {
		t.Fatalf("logout by its client: %v", err)
	}
}

func TestReadScopes(t *testing.T) {
	r := newRegistry(t)
	ctx := context.Background()
	_, app := token(t, r, "app", registry.RoleClient)
	_, other := token(t, r, "other-app", registry.RoleClient)
	a1 := open(t, r, app, registry.OpenRequest{User: "alice", Module: "sales"})
	a2 := open(t, r, admin, registry.OpenRequest{User: "alice", Module: "hr"})
	open(t, r, admin, registry.OpenRequest{User: "bob", Module: "hr"})
	alice := sessionPrincipal(t, r, a2)

	tests := []struct {
		name   string
		by     registry.Principal
		filter registry.ListFilter
		want   int
		denied bool
	}{
		{"admin sees all", admin, registry.ListFilter{}, 3, false},
		{"client sees what it opened", app, registry.ListFilter{}, 1, false},
		{"other client sees nothing", other, registry.ListFilter{}, 0, false},
		{"a user sees their own sessions", alice, registry.ListFilter{}, 2, false},
		{"a user may not list another user", alice, registry.ListFilter{User: "bob"}, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			page, err := r.List(ctx, tt.by, tt.filter)
			if tt.denied {
				if !errors.Is(err, registry.ErrPermissionDenied) {
					t.Fatalf("err = %v", err)
				}
				return
			}
			if err != nil || page.Total != tt.want || len(page.Sessions) != tt.want {
				t.Fatalf("total %d, %d sessions, %v; want %d", page.Total, len(page.Sessions), err, tt.want)
			}
		})
	}
	if _, err := r.Get(ctx, other, a1.ID); !errors.Is(err, registry.ErrPermissionDenied) {
		t.Fatalf("get by another client: %v", err)
	}
	if _, err := r.Get(ctx, alice, a1.ID); err != nil {
		t.Fatalf("get of a sibling session: %v", err)
	}
}

// TestTokenNameReuseInheritsNothing: a client token revoked and created
// again under the same name is a new token; the sessions the old one
// opened are not its to heartbeat, close or list.
func TestTokenNameReuseInheritsNothing(t *testing.T) {
	r := newRegistry(t)
	ctx := context.Background()
	_, old := token(t, r, "app", registry.RoleClient)
	s := open(t, r, old, registry.OpenRequest{User: "u", Module: "m"})
	if err := r.DeleteToken(ctx, admin, "app"); err != nil {
		t.Fatal(err)
	}
	_, again := token(t, r, "app", registry.RoleClient)
	if again.TokenID == old.TokenID {
		t.Fatalf("a re-created token has the old id %s", old.TokenID)
	}
	if _, err := r.Heartbeat(ctx, again, s.ID); !errors.Is(err, registry.ErrPermissionDenied) {
		t.Fatalf("heartbeat by the re-created token: %v", err)
	}
	if _, err := r.Logout(ctx, again, s.ID); !errors.Is(err, registry.ErrPermissionDenied) {
		t.Fatalf("logout by the re-created token: %v", err)
	}
	page, err := r.List(ctx, again, registry.ListFilter{})
	if err != nil || page.Total != 0 {
		t.Fatalf("the re-created token lists %d sessions (%v); want 0", page.Total, err)
	}
	// The session itself is untouched and still shows who opened it.
	if got, err := r.Get(ctx, admin, s.ID); err != nil || got.OpenedBy != "app" {
		t.Fatalf("Get = %+v, %v", got, err)
	}
}

// TestExpiryStorm: 1,000 sessions whose clients all stop at once, watched by
// two nodes, each get exactly one "expired" tombstone; a logout before them
// gets no "expired" one, even when its tombstone's lease is revoked before
// the watches handle the deletion.
func TestExpiryStorm(t *testing.T) {
	r1 := newRegistry(t)
	newRegistry(t, func(c *registry.Config) { c.Node = "n2" })
	ctx := context.Background()
	// First, before any expiry tombstone shares its lease: a logout whose
	// tombstone's lease is revoked at once.
	closed := open(t, r1, admin, registry.OpenRequest{User: "leaver", Module: "m", TTLSeconds: 60})
	if _, err := r1.Logout(ctx, admin, closed.ID); err != nil {
		t.Fatal(err)
	}
	tomb, err := etcd.Client().Get(ctx, "/roster/v1/tombstones/"+closed.ID)
	if err != nil || len(tomb.Kvs) != 1 {
		t.Fatalf("the logout's tombstone: %v %v", tomb, err)
	}
	if _, err := etcd.Client().Revoke(ctx, clientv3.LeaseID(tomb.Kvs[0].Lease)); err != nil {
		t.Fatal(err)
	}
	const n = 1000
	ids := make([]string, n)
	var wg sync.WaitGroup
	for w := range 20 { // 20 clients open 50 each
		wg.Go(func() {
			for i := w; i < n; i += 20 {
				s, err := r1.Open(ctx, admin, registry.OpenRequest{User: fmt.Sprintf("storm%d", i), Module: "m", TTLSeconds: 1})
				if err != nil {
					t.Error(err)
					return
				}
				ids[i] = s.ID
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	eventually(t, 60*time.Second, "every session's expired tombstone", func() bool {
		resp, err := etcd.Client().Get(ctx, "/roster/v1/tombstones/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		return err == nil && resp.Count >= n
	})
	resp, err := etcd.Client().Get(ctx, "/roster/v1/tombstones/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != n {
		t.Errorf("%d tombstones, want %d", len(resp.Kvs), n)
	}
	for _, kv := range resp.Kvs {
		if kv.Version != 1 || !strings.Contains(string(kv.Value), `"reason":"expired"`) || !strings.Contains(string(kv.Value), `"by":"lease"`) {
			t.Fatalf("tombstone %s (version %d): %s", kv.Key, kv.Version, kv.Value)
		}
		if strings.HasSuffix(string(kv.Key), closed.ID) {
			t.Fatalf("the closed session, whose tombstone was revoked, got an expired one")
		}
	}
	for _, id := range ids[:10] {
		if _, err := r1.Get(ctx, admin, id); !errors.Is(err, registry.ErrSessionEnded) {
			t.Fatalf("get of an expired session: %v", err)
		}
	}
}
