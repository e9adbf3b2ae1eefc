package registry

import (
	"context"
	"encoding/json"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// HasIdlePolicy reports whether this node's copy of the policies gives
// sessions of module in tenant an idle timeout (for tests).
func (r *Registry) HasIdlePolicy(tenant, module string) bool {
	r.actMu.Lock()
	defer r.actMu.Unlock()
	idle, _ := r.policies.effective(tenant, module)
	return idle.d > 0
}

// ActivityRevision is the mod revision of a session's activity key, 0 when
// none is recorded (for tests).
func (r *Registry) ActivityRevision(ctx context.Context, id string) int64 {
	resp, err := r.cli.Get(ctx, activityKey(id), clientv3.WithKeysOnly())
	if err != nil || len(resp.Kvs) == 0 {
		return 0
	}
	return resp.Kvs[0].ModRevision
}

// OpenOnLease opens a session on a lease the caller granted, as Open does on the lease
// it grants (for tests whose leases must outlive the sessions' TTL, as an etcd leader
// change makes them).
func (r *Registry) OpenOnLease(ctx context.Context, p Principal, req OpenRequest, lease clientv3.LeaseID) (OpenedSession, error) {
	if err := requireRole(p, "open sessions", RoleClient, RoleAdmin); err != nil {
		return OpenedSession{}, err
	}
	if err := r.normalize(&req); err != nil {
		return OpenedSession{}, err
	}
	s, err := r.openOnLease(ctx, p, req, &sessionLease{pooledLease: pooledLease{id: lease, since: time.Now()}})
	if err == nil {
		r.noteBeat(s.ID)
	}
	return s, err
}

// SetLapseBackstop sets how long after a session lapsed this node ends it when it is
// not the liveness duty's leader (for tests).
func (r *Registry) SetLapseBackstop(d time.Duration) { r.lapseBackstop.Store(int64(d)) }

// PooledLeases waits (up to 10 s) until the lease pool is settled: every
// TTL's pool full, no grant under way and none to revoke. It returns the
// leases in the pool (for tests).
func (r *Registry) PooledLeases() []int64 {
	deadline := time.Now().Add(10 * time.Second)
	for {
		lp := &r.leases
		lp.mu.Lock()
		settled := len(lp.drop) == 0 && lp.revoking == 0
		var ids []int64
		for _, p := range lp.byTTL {
			settled = settled && p.granting == 0 && len(p.free) == poolLeases
			for _, l := range p.free {
				ids = append(ids, int64(l.id))
			}
		}
		lp.mu.Unlock()
		if settled || time.Now().After(deadline) {
			return ids
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// HoldRights makes this node's copy of the user master and the licences
// stop applying changes until release is called, so that a test can make it
// stale on purpose (for tests).
func (r *Registry) HoldRights() (release func()) {
	hold := make(chan struct{})
	r.rights.mu.Lock()
	r.rights.hold = hold
	r.rights.mu.Unlock()
	return func() {
		r.rights.mu.Lock()
		r.rights.hold = nil
		r.rights.mu.Unlock()
		close(hold)
	}
}

// RightsReady reports whether this node's copy of the user master and the
// licences is loaded and watched (for tests).
func (r *Registry) RightsReady() bool {
	r.rights.mu.RLock()
	defer r.rights.mu.RUnlock()
	return r.rights.ready
}

// CachedRevision is the mod revision of key in this node's copy of the user
// master and the licences: 0 when the copy has no such key, -1 when it is
// not ready (for tests).
func (r *Registry) CachedRevision(key string) int64 {
	r.rights.mu.RLock()
	defer r.rights.mu.RUnlock()
	switch {
	case !r.rights.ready:
		return -1
	case r.rights.kvs[key] == nil:
		return 0
	}
	return r.rights.kvs[key].ModRevision
}

// FromCopy reports whether AuthenticateFromCopy found p's API token in the
// node's copy, leaving its check to Open, Kill or Logout (for tests).
func (p Principal) FromCopy() bool { return p.tokenRev != 0 }

// EndTxnOps is how many operations the liveness view's end transactions carry.
func (r *Registry) EndTxnOps() int { return r.endTxnOps() }

// LeaseDeadline is the deadline of lease as this node has seen it renewed (see
// leaseDeadlines), and false when it has seen none (for tests).
func (r *Registry) LeaseDeadline(lease int64) (time.Time, bool) {
	r.deadlines.mu.Lock()
	defer r.deadlines.mu.Unlock()
	at, ok := r.deadlines.at[lease]
	return at, ok
}

// SetLeaseDeadline makes this node take lease to run until at, as if it had seen a
// renewal say so (for tests).
func (r *Registry) SetLeaseDeadline(lease int64, at time.Time) {
	r.deadlines.mu.Lock()
	defer r.deadlines.mu.Unlock()
	if r.deadlines.at == nil {
		r.deadlines.at, r.deadlines.swept = map[int64]time.Time{}, time.Now()
	}
	r.deadlines.at[lease] = at
}

// ShutdownRevision is the mod revision of shutdown request id as this node reads it
// now, 0 when there is none (for tests).
func (r *Registry) ShutdownRevision(ctx context.Context, id string) int64 {
	all, err := r.readShutdowns(ctx)
	if err != nil {
		return 0
	}
	for _, s := range all {
		if s.ID == id {
			return s.modRev
		}
	}
	return 0
}

// TerminateAsOf terminates the sessions in scope of shutdown request id at once, as
// its deadline does, each end conditional on the request's mod revision being modRev
// (for tests). It returns how many it ended and found open.
func (r *Registry) TerminateAsOf(ctx context.Context, id string, modRev int64) (int, int, error) {
	all, err := r.readShutdowns(ctx)
	if err != nil {
		return 0, 0, err
	}
	for _, s := range all {
		if s.ID == id {
			s.modRev = modRev
			return r.terminateInScope(ctx, &s, false)
		}
	}
	return 0, 0, ErrShutdownNotFound
}

// TombstoneShutdownID is tombstoneShutdownID (for tests).
var TombstoneShutdownID = tombstoneShutdownID

// TombstoneValue is the stored value of the tombstone of a session with labels
// that ended as how says (for tests).
func TombstoneValue(how Ended, labels map[string]string) ([]byte, error) {
	rec := &record{Session: Session{ID: how.ID, Tenant: "acme", User: "anna", Module: "fk", Labels: labels}}
	return json.Marshal(tombstoneOf(rec, how))
}

// NoteShutdownEndAt makes this node take an end by shutdown request id to have
// been seen at at, as its session watch notes them (for tests).
func (r *Registry) NoteShutdownEndAt(id string, at time.Time) {
	r.shutMu.Lock()
	defer r.shutMu.Unlock()
	if r.shutEnds == nil {
		r.shutEnds = map[string]time.Time{}
	}
	r.shutEnds[id] = at
}

// ShutdownPendingHere reports whether this node's copy of the requests has id
// pending (for tests).
func (r *Registry) ShutdownPendingHere(id string) bool {
	r.shutMu.RLock()
	defer r.shutMu.RUnlock()
	_, ok := r.pending[id]
	return ok
}

// ShutdownEndSeen is when this node's session watch last saw a session end by
// shutdown request id (zero if never, or the request is no longer pending).
func (r *Registry) ShutdownEndSeen(id string) time.Time {
	r.shutMu.RLock()
	defer r.shutMu.RUnlock()
	return r.shutEnds[id]
}
