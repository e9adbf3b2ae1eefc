package registry_test

import (
	"context"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/roster-dev/roster/registry"
)

// attachedKeys lists the keys etcd holds on lease.
func attachedKeys(t *testing.T, lease clientv3.LeaseID) []string {
	t.Helper()
	resp, err := etcd.Client().TimeToLive(context.Background(), lease, clientv3.WithAttachedKeys())
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, k := range resp.Keys {
		keys = append(keys, string(k))
	}
	return keys
}

// TestEndedSessionLeaseReused: the lease of a session that is killed or
// logs out goes back to the lease pool when it has room, and the next open
// takes it, carrying nothing of the ended session: not its record, index
// keys, licence seat or activity key, and not an activity put that comes
// after the end (a heartbeat through a node whose copy still holds it).
func TestEndedSessionLeaseReused(t *testing.T) {
	tests := []struct {
		name string
		end  func(r *registry.Registry, s registry.OpenedSession) error
	}{
		{"kill", func(r *registry.Registry, s registry.OpenedSession) error {
			_, err := r.Kill(context.Background(), admin, s.ID, "test")
			return err
		}},
		{"logout", func(r *registry.Registry, s registry.OpenedSession) error {
			_, err := r.Logout(context.Background(), admin, s.ID)
			return err
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRegistry(t)
			ctx := context.Background()
			setSeats(t, r, "default", "sales", 10)
			if _, err := r.SetPolicy(ctx, admin, registry.PolicyModule, "sales", registry.PolicySpec{IdleTimeoutSeconds: 600}); err != nil {
				t.Fatal(err)
			}
			eventually(t, 5*time.Second, "the node sees the policy", func() bool { return r.HasIdlePolicy("default", "sales") })
			open(t, r, admin, registry.OpenRequest{User: "warm", Module: "sales", TTLSeconds: 30}) // starts the pool of 30 s
			r.PooledLeases()
			r.PausePoolGrants(time.Hour) // the pool has room once alice took a lease

			alice := open(t, r, admin, registry.OpenRequest{User: "alice", Module: "sales", TTLSeconds: 30})
			if _, err := r.HeartbeatWith(ctx, admin, alice.ID, registry.HeartbeatRequest{Active: true}); err != nil {
				t.Fatal(err)
			}
			if r.ActivityRevision(ctx, alice.ID) == 0 {
				t.Fatal("an active heartbeat recorded no activity")
			}
			lease := sessionLease(t, alice.ID)
			if err := tt.end(r, alice); err != nil {
				t.Fatal(err)
			}
			eventually(t, 5*time.Second, "the ended session's lease back in the pool", func() bool { return r.PoolHas(lease) })
			if keys := attachedKeys(t, lease); len(keys) != 0 {
				t.Fatalf("the pooled lease %x still holds %q", lease, keys)
			}

			// A late activity put for alice must not land on the lease.
			r.NoteActivityFor(ctx, alice.Session, lease)
			if rev := r.ActivityRevision(ctx, alice.ID); rev != 0 {
				t.Fatalf("an activity put after the end was written (revision %d)", rev)
			}

			bob := open(t, r, admin, registry.OpenRequest{User: "bob", Module: "sales", TTLSeconds: 30})
			if got := sessionLease(t, bob.ID); got != lease {
				t.Fatalf("bob's session is on lease %x, not on alice's ended lease %x", got, lease)
			}
			if left := ttlLeft(t, lease); left < 29 {
				t.Fatalf("right after the open bob's session has %d s left of its 30 s TTL", left)
			}
			r.NoteActivityFor(ctx, alice.Session, lease)
			keys := attachedKeys(t, lease)
			for _, k := range keys {
				if strings.Contains(k, alice.ID) || strings.Contains(k, "/alice") {
					t.Fatalf("bob's lease holds %s of alice's session (all: %q)", k, keys)
				}
			}
			if len(keys) == 0 {
				t.Fatal("bob's lease holds no keys")
			}
		})
	}
}

// TestEndedSessionLeaseRevokedWhenPoolFull: with the pool of its TTL full,
// an ended session's lease is revoked as before.
func TestEndedSessionLeaseRevokedWhenPoolFull(t *testing.T) {
	r := newRegistry(t)
	open(t, r, admin, registry.OpenRequest{User: "warm", Module: "sales", TTLSeconds: 30})
	alice := open(t, r, admin, registry.OpenRequest{User: "alice", Module: "sales", TTLSeconds: 30})
	r.PooledLeases() // full again
	lease := sessionLease(t, alice.ID)
	if _, err := r.Kill(context.Background(), admin, alice.ID, "test"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "the ended session's lease revoked", func() bool { return ttlLeft(t, lease) == -1 })
}
