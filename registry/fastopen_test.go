package registry_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/roster-dev/roster/registry"
)

// sessionLease is the lease a session's record lives on.
func sessionLease(t *testing.T, id string) clientv3.LeaseID {
	t.Helper()
	resp, err := etcd.Client().Get(context.Background(), "/roster/v1/sessions/"+id)
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("read session %s: %v", id, err)
	}
	return clientv3.LeaseID(resp.Kvs[0].Lease)
}

// ttlLeft is what etcd says is left of a lease, in whole seconds (-1: gone).
func ttlLeft(t *testing.T, lease clientv3.LeaseID) int64 {
	t.Helper()
	resp, err := etcd.Client().TimeToLive(context.Background(), lease)
	if err != nil {
		t.Fatal(err)
	}
	return resp.TTL
}

// leaseSet lists every lease etcd holds.
func leaseSet(t *testing.T) []int64 {
	t.Helper()
	resp, err := etcd.Client().Leases(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var ids []int64
	for _, l := range resp.Leases {
		ids = append(ids, int64(l.ID))
	}
	slices.Sort(ids)
	return ids
}

// TestPooledLeaseLivesFullTTL: a session opened on a lease that waited in
// the pool lives its full TTL from the open, not from the lease's grant.
func TestPooledLeaseLivesFullTTL(t *testing.T) {
	r := newRegistry(t)
	open(t, r, admin, registry.OpenRequest{User: "warm", Module: "sales", TTLSeconds: 10}) // starts the pool of 10 s
	pooled := r.PooledLeases()
	if len(pooled) == 0 {
		t.Fatal("no pool of leases after an open")
	}
	// The pooled leases age (the pool renews them only every 3.3 s): without
	// a renewal at the open, a session on one would have about 7 s left.
	time.Sleep(2500 * time.Millisecond)
	s := open(t, r, admin, registry.OpenRequest{User: "alice", Module: "sales", TTLSeconds: 10})
	lease := sessionLease(t, s.ID)
	if !slices.Contains(pooled, int64(lease)) {
		t.Fatalf("the session's lease %x did not come from the pool %x", lease, pooled)
	}
	if left := ttlLeft(t, lease); left < 9 {
		t.Fatalf("right after the open the session has %d s left of its 10 s TTL", left)
	}
}

// TestLeasePoolRevokedAtClose: Close revokes the leases left in the pool;
// only the sessions' leases remain.
func TestLeasePoolRevokedAtClose(t *testing.T) {
	r := newRegistry(t)
	s := open(t, r, admin, registry.OpenRequest{User: "alice", Module: "sales", TTLSeconds: 30})
	pooled := r.PooledLeases()
	if len(pooled) == 0 {
		t.Fatal("no pool of leases after an open")
	}
	r.Close()
	for _, id := range pooled {
		if left := ttlLeft(t, clientv3.LeaseID(id)); left != -1 {
			t.Fatalf("pooled lease %x survived Close with %d s left", id, left)
		}
	}
	if got, want := leaseSet(t), []int64{int64(sessionLease(t, s.ID))}; !slices.Equal(got, want) {
		t.Fatalf("leases after Close: %x, want only the session's %x", got, want)
	}
}

// TestLeasePoolNothingLeaks: opens that fail give their lease back to the
// pool or revoke it: afterwards etcd holds the live sessions' leases and the
// pool's, nothing else.
func TestLeasePoolNothingLeaks(t *testing.T) {
	r := newRegistry(t)
	ctx := context.Background()
	held := open(t, r, admin, registry.OpenRequest{User: "held", Module: "sales"})
	setSeats(t, r, "default", "full", 0)
	if _, err := r.DeactivatePool(ctx, admin, "blue", "upgrade"); err != nil {
		t.Fatal(err)
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	tests := []struct {
		name string
		ctx  context.Context
		req  registry.OpenRequest
		want error
	}{
		{"already logged in", ctx, registry.OpenRequest{User: "held", Module: "sales"}, registry.ErrAlreadyLoggedIn},
		{"no seat", ctx, registry.OpenRequest{User: "x", Module: "full"}, registry.ErrNoLicenseSeat},
		{"service not allowed", ctx, registry.OpenRequest{User: "x", Module: "sales", Connection: &registry.DirectConnection{Service: "erp-ui"}}, registry.ErrServiceNotAllowed},
		{"pool inactive", ctx, registry.OpenRequest{User: "x", Module: "sales", Pool: "blue"}, registry.ErrPoolInactive},
		{"connection gone", ctx, registry.OpenRequest{User: "x", Module: "sales", Connections: []string{"0123456789abcdef0123456789abcdef"}}, registry.ErrConnectionGone},
		{"cancelled", cancelled, registry.OpenRequest{User: "x", Module: "sales"}, context.Canceled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for range 3 { // the first may grant, the next take from the pool
				if _, err := r.Open(tt.ctx, admin, tt.req); !errors.Is(err, tt.want) {
					t.Fatalf("err = %v, want %v", err, tt.want)
				}
			}
		})
	}
	want := append(r.PooledLeases(), int64(sessionLease(t, held.ID)))
	slices.Sort(want)
	if got := leaseSet(t); !slices.Equal(got, want) {
		t.Fatalf("leases %x, want the session's and the pool's %x", got, want)
	}
}

// TestPooledLeasesRevokedBehindItsBack: when the pool's leases were revoked
// by someone else, opens still succeed, on leases that live.
func TestPooledLeasesRevokedBehindItsBack(t *testing.T) {
	r := newRegistry(t)
	open(t, r, admin, registry.OpenRequest{User: "warm", Module: "sales", TTLSeconds: 20})
	for _, id := range r.PooledLeases() {
		if _, err := etcd.Client().Revoke(context.Background(), clientv3.LeaseID(id)); err != nil {
			t.Fatal(err)
		}
	}
	for _, u := range []string{"alice", "bob"} {
		s := open(t, r, admin, registry.OpenRequest{User: u, Module: "sales", TTLSeconds: 20})
		if left := ttlLeft(t, sessionLease(t, s.ID)); left < 19 {
			t.Fatalf("%s's session has %d s left of 20", u, left)
		}
	}
}

// TestRightsCacheStaleness: a node plans opens from its copy of the user
// master and the licences, but a change made through another node is
// honoured by the very next open, even while the copy has not seen it yet:
// a right, service or licence seat revoked is never used, one granted is
// never missed.
func TestRightsCacheStaleness(t *testing.T) {
	direct := func(u string) registry.OpenRequest {
		return registry.OpenRequest{User: u, Module: "sales", Connection: &registry.DirectConnection{Service: "erp-ui"}}
	}
	put := func(user string, spec registry.UserSpec) func(context.Context, *registry.Registry) error {
		return func(ctx context.Context, b *registry.Registry) error {
			_, err := b.PutUser(ctx, admin, "default", user, spec)
			return err
		}
	}
	seats := func(n int) func(context.Context, *registry.Registry) error {
		return func(ctx context.Context, b *registry.Registry) error {
			_, err := b.SetLicense(ctx, admin, "default", "sales", registry.LicenseSpec{Seats: n})
			return err
		}
	}
	multi := registry.UserSpec{Rights: []registry.Right{registry.RightMultiLogin}}
	erpUI := registry.UserSpec{Services: []string{"erp-ui"}}
	tests := []struct {
		name   string
		key    string                                          // the key the change makes stale
		setup  func(context.Context, *registry.Registry) error // through the second node, before
		opened *registry.OpenRequest                           // a session opened before the change
		change func(context.Context, *registry.Registry) error // through the second node, unseen
		open   registry.OpenRequest
		want   error // nil: the open succeeds
	}{
		{name: "multi-login revoked", key: "users/default/carol", setup: put("carol", multi),
			opened: &registry.OpenRequest{User: "carol", Module: "sales"}, change: put("carol", registry.UserSpec{}),
			open: registry.OpenRequest{User: "carol", Module: "sales"}, want: registry.ErrAlreadyLoggedIn},
		{name: "multi-login granted", key: "users/default/dave",
			opened: &registry.OpenRequest{User: "dave", Module: "sales"}, change: put("dave", multi),
			open: registry.OpenRequest{User: "dave", Module: "sales"}},
		{name: "service revoked", key: "users/default/alice", setup: put("alice", erpUI),
			change: put("alice", registry.UserSpec{}), open: direct("alice"), want: registry.ErrServiceNotAllowed},
		{name: "user deleted", key: "users/default/alice", setup: put("alice", erpUI),
			change: func(ctx context.Context, b *registry.Registry) error {
				return b.DeleteUser(ctx, admin, "default", "alice")
			},
			open: direct("alice"), want: registry.ErrServiceNotAllowed},
		{name: "service granted", key: "users/default/erin", change: put("erin", erpUI), open: direct("erin")},
		{name: "seats lowered to none", key: "licenses/default/sales", setup: seats(5), change: seats(0),
			open: registry.OpenRequest{User: "x", Module: "sales"}, want: registry.ErrNoLicenseSeat},
		{name: "licence added", key: "licenses/default/sales", change: seats(0),
			open: registry.OpenRequest{User: "x", Module: "sales"}, want: registry.ErrNoLicenseSeat},
		{name: "licence lifted", key: "licenses/default/sales", setup: seats(0),
			change: func(ctx context.Context, b *registry.Registry) error {
				return b.DeleteLicense(ctx, admin, "default", "sales")
			},
			open: registry.OpenRequest{User: "x", Module: "sales"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := newRegistry(t)
			b := secondNode(t)
			ctx := context.Background()
			key := "/roster/v1/" + tt.key
			current := func() int64 {
				resp, err := etcd.Client().Get(ctx, key)
				if err != nil {
					t.Fatal(err)
				}
				if len(resp.Kvs) == 0 {
					return 0
				}
				return resp.Kvs[0].ModRevision
			}
			if tt.setup != nil {
				if err := tt.setup(ctx, b); err != nil {
					t.Fatal(err)
				}
			}
			eventually(t, 5*time.Second, "the first node's copy is current", func() bool { return a.CachedRevision(key) == current() })
			if tt.opened != nil {
				open(t, a, admin, *tt.opened)
			}
			release := a.HoldRights()
			defer release()
			if err := tt.change(ctx, b); err != nil {
				t.Fatal(err)
			}
			if cached, now := a.CachedRevision(key), current(); cached == now {
				t.Fatalf("the first node's copy is not stale (revision %d)", now)
			}
			_, err := a.Open(ctx, admin, tt.open)
			if (tt.want == nil && err != nil) || !errors.Is(err, tt.want) {
				t.Fatalf("open on the stale node: %v, want %v", err, tt.want)
			}
		})
	}
}

// copiedToken creates an API token named name through b and returns its
// principal as a authenticates it from its copy of the tokens, once the
// copy has it.
func copiedToken(t *testing.T, a, b *registry.Registry, name string, role registry.Role) registry.Principal {
	t.Helper()
	ctx := context.Background()
	tok, _ := token(t, b, name, role)
	eventually(t, 5*time.Second, "the first node's copy has the token", func() bool {
		p, err := a.AuthenticateFromCopy(ctx, tok)
		return err == nil && p.Name == name && p.FromCopy()
	})
	p, err := a.AuthenticateFromCopy(ctx, tok)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestRevokedTokenOpensNothing: an API token revoked through another node
// opens no session on a node whose copy of the tokens has not seen the
// revocation yet, and learns nothing from a refusal either.
func TestRevokedTokenOpensNothing(t *testing.T) {
	a := newRegistry(t)
	b := secondNode(t)
	ctx := context.Background()
	p := copiedToken(t, a, b, "app-1", registry.RoleClient)
	held := open(t, a, p, registry.OpenRequest{User: "held", Module: "sales"})
	release := a.HoldRights()
	defer release()
	if err := b.DeleteToken(ctx, admin, "app-1"); err != nil {
		t.Fatal(err)
	}
	for _, req := range []registry.OpenRequest{{User: "alice", Module: "sales"}, {User: "held", Module: "sales"}} {
		if _, err := a.Open(ctx, p, req); !errors.Is(err, registry.ErrUnauthenticated) {
			t.Fatalf("open %s with the revoked token: %v, want unauthenticated", req.User, err)
		}
	}
	page, err := a.List(ctx, admin, registry.ListFilter{})
	if err != nil || page.Total != 1 || page.Sessions[0].ID != held.ID {
		t.Fatalf("sessions after the revoked token's opens: %+v, %v", page, err)
	}
}

// TestPooledLeaseOutlivesTTLWithView: on a node with a liveness view a
// pooled lease carries the view's slack; an open takes one granted a moment
// ago without renewing it, and one older with a renewal. Either way the
// lease outlives the session's TTL from the open by more than half the
// slack, so the view, not the lease, ends a session whose client stops.
func TestPooledLeaseOutlivesTTLWithView(t *testing.T) {
	nodes, _ := livenessNodes(t, []string{"a"})
	r := nodes[0].reg
	open(t, r, admin, registry.OpenRequest{User: "warm", Module: "sales", TTLSeconds: 10}) // starts the pool of 10 s + slack
	slack := int64(registry.LeaseSlack / time.Second)
	for _, c := range []struct {
		user string
		wait time.Duration
	}{
		{"fresh", 0}, // the pool was just filled
		{"aged", registry.LeaseSlack/2 + 500*time.Millisecond}, // older than half the slack: renewed at the open
	} {
		pooled := r.PooledLeases()
		time.Sleep(c.wait)
		s := open(t, r, admin, registry.OpenRequest{User: c.user, Module: "sales", TTLSeconds: 10})
		lease := sessionLease(t, s.ID)
		if !slices.Contains(pooled, int64(lease)) {
			t.Fatalf("%s: the session's lease %x did not come from the pool %x", c.user, lease, pooled)
		}
		if left := ttlLeft(t, lease); left < 10+slack/2 {
			t.Fatalf("%s: right after the open the session's lease has %d s left; want at least its TTL of 10 s plus half the slack of %d s", c.user, left, slack)
		}
	}
}

// TestRevokedTokenEndsNothing: an API token revoked through another node
// kills and closes no session on a node whose copy of the tokens has not
// seen the revocation yet, and learns nothing from a refusal either; while
// it lives, the same principal from the copy kills and closes.
func TestRevokedTokenEndsNothing(t *testing.T) {
	a := newRegistry(t)
	b := secondNode(t)
	ctx := context.Background()
	p := copiedToken(t, a, b, "ops-1", registry.RoleAdmin)
	killed := open(t, b, admin, registry.OpenRequest{User: "killed", Module: "sales"})
	closed := open(t, b, admin, registry.OpenRequest{User: "closed", Module: "sales"})
	if ended, err := a.Kill(ctx, p, killed.ID, "live token"); err != nil || ended.Reason != registry.EndKilled || ended.By != "ops-1" {
		t.Fatalf("kill with the live token: %+v, %v", ended, err)
	}
	if ended, err := a.Logout(ctx, p, closed.ID); err != nil || ended.Reason != registry.EndClosed {
		t.Fatalf("close with the live token: %+v, %v", ended, err)
	}

	held := open(t, b, admin, registry.OpenRequest{User: "held", Module: "sales"})
	release := a.HoldRights()
	defer release()
	if err := b.DeleteToken(ctx, admin, "ops-1"); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		end  func() (registry.Ended, error)
	}{
		{"kill a live session", func() (registry.Ended, error) { return a.Kill(ctx, p, held.ID, "revoked token") }},
		{"close a live session", func() (registry.Ended, error) { return a.Logout(ctx, p, held.ID) }},
		{"kill an ended session", func() (registry.Ended, error) { return a.Kill(ctx, p, killed.ID, "revoked token") }},
		{"close an ended session", func() (registry.Ended, error) { return a.Logout(ctx, p, closed.ID) }},
		{"kill an unknown session", func() (registry.Ended, error) { return a.Kill(ctx, p, strings.Repeat("0", 32), "revoked token") }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if ended, err := tt.end(); !errors.Is(err, registry.ErrUnauthenticated) {
				t.Fatalf("with the revoked token: %+v, %v, want unauthenticated", ended, err)
			}
		})
	}
	if _, err := a.Get(ctx, admin, held.ID); err != nil {
		t.Fatalf("the session after the revoked token's kill and close: %v", err)
	}
}
