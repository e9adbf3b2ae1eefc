package registry

import (
	"context"
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
	s, err := r.openOnLease(ctx, p, req, lease)
	if err == nil {
		r.noteBeat(s.ID)
	}
	return s, err
}

// SetLapseBackstop sets how long after a session lapsed this node ends it when it is
// not the liveness duty's leader (for tests).
func (r *Registry) SetLapseBackstop(d time.Duration) { r.lapseBackstop.Store(int64(d)) }
