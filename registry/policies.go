package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// PolicyScope says what a clean-up policy applies to.
type PolicyScope string

// The policy scopes. Where both apply to a session, each limit the module's
// policy sets wins, and the tenant's applies where the module's sets none.
const (
	PolicyModule PolicyScope = "module" // every session of the module, in every tenant
	PolicyTenant PolicyScope = "tenant" // every session of the tenant
)

// MaxPolicySeconds bounds a policy's limits: 30 days.
const MaxPolicySeconds = 30 * 86400

// activityGrain divides an idle timeout into the steps in which activity is
// recorded: a session's last activity is written at most once per tenth of
// the timeout, and clean-up waits a tenth longer than the timeout, so it
// never ends a session that was active within the timeout.
const activityGrain = 10

// ErrPolicyNotFound: no policy for that module or tenant.
var ErrPolicyNotFound = errors.New("registry: policy not found")

// Policy is a clean-up policy of a module or a tenant.
type Policy struct {
	Scope PolicyScope `json:"scope"`
	Name  string      `json:"name"`
	// IdleTimeoutSeconds: clean-up ends, with reason idle, a session whose
	// user did nothing (no heartbeat with "active": true) for this long; 0 is
	// no limit.
	IdleTimeoutSeconds int64 `json:"idle_timeout_seconds"`
	// MaxLifetimeSeconds: clean-up ends, with reason cleanup, a session
	// opened longer ago than this; 0 is no limit.
	MaxLifetimeSeconds int64     `json:"max_lifetime_seconds"`
	SetBy              string    `json:"set_by"`
	SetAt              time.Time `json:"set_at"`
}

// PolicySpec is the body of PUT /v1/policies/{scope}/{name}.
type PolicySpec struct {
	IdleTimeoutSeconds int64 `json:"idle_timeout_seconds"`
	MaxLifetimeSeconds int64 `json:"max_lifetime_seconds"`
}

func checkScope(scope PolicyScope, name string) error {
	switch scope {
	case PolicyModule, PolicyTenant:
	default:
		return invalid("scope", "%q is not a policy scope; use module or tenant", truncate(string(scope), 40))
	}
	return checkName(string(scope), name)
}

// SetPolicy sets the clean-up policy of a module or a tenant (admins only),
// replacing the one it had. Idleness counts at most from the moment the
// policy is set: activity before it was not recorded.
func (r *Registry) SetPolicy(ctx context.Context, p Principal, scope PolicyScope, name string, spec PolicySpec) (Policy, error) {
	if err := requireRole(p, "set policies", RoleAdmin); err != nil {
		return Policy{}, err
	}
	if err := checkScope(scope, name); err != nil {
		return Policy{}, err
	}
	for _, f := range []struct {
		field string
		v     int64
	}{{"idle_timeout_seconds", spec.IdleTimeoutSeconds}, {"max_lifetime_seconds", spec.MaxLifetimeSeconds}} {
		if f.v < 0 || f.v > MaxPolicySeconds {
			return Policy{}, invalid(f.field, "is %d; give 1 to %d seconds (30 days), or 0 for no limit", f.v, MaxPolicySeconds)
		}
	}
	if spec.IdleTimeoutSeconds == 0 && spec.MaxLifetimeSeconds == 0 {
		return Policy{}, invalid("idle_timeout_seconds", "and max_lifetime_seconds are both 0; set at least one (or delete the policy)")
	}
	pol := Policy{Scope: scope, Name: name, IdleTimeoutSeconds: spec.IdleTimeoutSeconds, MaxLifetimeSeconds: spec.MaxLifetimeSeconds,
		SetBy: p.By(), SetAt: time.Now().UTC().Truncate(time.Second)}
	val, _ := json.Marshal(pol)
	if err := r.putAudited(ctx, policyKey(scope, name), string(val), AuditRecord{Action: AuditPolicySet, Actor: p.By(), Target: string(scope) + "/" + name,
		Details: map[string]string{"idle_timeout_seconds": strconv.FormatInt(spec.IdleTimeoutSeconds, 10), "max_lifetime_seconds": strconv.FormatInt(spec.MaxLifetimeSeconds, 10)}}); err != nil {
		return Policy{}, translate("set policy", err)
	}
	r.log.Info("clean-up policy set", "scope", scope, "name", name, "idle-timeout", spec.IdleTimeoutSeconds, "max-lifetime", spec.MaxLifetimeSeconds, "by", p.By())
	return pol, nil
}

// DeletePolicy removes the clean-up policy of a module or a tenant (admins only).
func (r *Registry) DeletePolicy(ctx context.Context, p Principal, scope PolicyScope, name string) error {
	if err := requireRole(p, "delete policies", RoleAdmin); err != nil {
		return err
	}
	if err := checkScope(scope, name); err != nil {
		return err
	}
	found, err := r.deleteAudited(ctx, policyKey(scope, name), AuditRecord{Action: AuditPolicyDelete, Actor: p.By(), Target: string(scope) + "/" + name})
	if err != nil {
		return translate("delete policy", err)
	}
	if !found {
		return policyNotFound(scope, name)
	}
	return nil
}

func policyNotFound(scope PolicyScope, name string) error {
	return &notFoundError{ErrPolicyNotFound, fmt.Sprintf("%s %s has no clean-up policy", scope, name)}
}

// GetPolicy returns the clean-up policy of a module or a tenant (operators and admins).
func (r *Registry) GetPolicy(ctx context.Context, p Principal, scope PolicyScope, name string) (Policy, error) {
	if err := checkScope(scope, name); err != nil {
		return Policy{}, err
	}
	all, err := r.Policies(ctx, p)
	if err != nil {
		return Policy{}, err
	}
	for _, pol := range all {
		if pol.Scope == scope && pol.Name == name {
			return pol, nil
		}
	}
	return Policy{}, policyNotFound(scope, name)
}

// Policies lists every clean-up policy, module policies first, by name (the
// order of their keys), for operators and admins.
func (r *Registry) Policies(ctx context.Context, p Principal) ([]Policy, error) {
	if err := requireRole(p, "read policies", RoleOperator, RoleAdmin); err != nil {
		return nil, err
	}
	cctx, cancel := r.opCtx(ctx)
	defer cancel()
	resp, err := r.cli.Get(cctx, policiesPrefix, clientv3.WithPrefix())
	if err != nil {
		return nil, translate("read policies", err)
	}
	return decodePolicies(resp.Kvs)
}

func decodePolicies(kvs []*mvccpb.KeyValue) ([]Policy, error) {
	out := make([]Policy, 0, len(kvs))
	for _, kv := range kvs {
		var pol Policy
		if err := json.Unmarshal(kv.Value, &pol); err != nil {
			return nil, fmt.Errorf("registry: decode policy %s: %w", kv.Key, err)
		}
		out = append(out, pol)
	}
	return out, nil
}

// policySet is every policy, by scope and name.
type policySet struct {
	module, tenant map[string]Policy
}

func newPolicySet(all []Policy) policySet {
	ps := policySet{module: map[string]Policy{}, tenant: map[string]Policy{}}
	for _, pol := range all {
		if pol.Scope == PolicyModule {
			ps.module[pol.Name] = pol
		} else {
			ps.tenant[pol.Name] = pol
		}
	}
	return ps
}

func (ps policySet) empty() bool { return len(ps.module) == 0 && len(ps.tenant) == 0 }

// limit is one limit of a session's effective policy and where it comes from.
type limit struct {
	d     time.Duration // 0: none
	setAt time.Time
	from  string // "module sales", "tenant acme"
}

// effective returns a session's idle timeout and max lifetime: each from its
// module's policy if that sets it, else from its tenant's.
func (ps policySet) effective(tenant, module string) (idle, maxLife limit) {
	pick := func(get func(Policy) int64) limit {
		if pol, ok := ps.module[module]; ok && get(pol) > 0 {
			return limit{time.Duration(get(pol)) * time.Second, pol.SetAt, "module " + module}
		}
		if pol, ok := ps.tenant[tenant]; ok && get(pol) > 0 {
			return limit{time.Duration(get(pol)) * time.Second, pol.SetAt, "tenant " + tenant}
		}
		return limit{}
	}
	return pick(func(p Policy) int64 { return p.IdleTimeoutSeconds }), pick(func(p Policy) int64 { return p.MaxLifetimeSeconds })
}

// watchPolicies keeps the node's copy of the policies, which heartbeats read
// to decide whether activity is worth recording, until ctx ends.
func (r *Registry) watchPolicies(ctx context.Context) {
	for ctx.Err() == nil {
		rev, err := r.loadPolicies(ctx)
		if err != nil {
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
			continue
		}
		// Watch from just after the read, so no change in between is missed;
		// on any watch error, read again.
		for range r.cli.Watch(clientv3.WithRequireLeader(ctx), policiesPrefix, clientv3.WithPrefix(), clientv3.WithKeysOnly(), clientv3.WithRev(rev+1)) {
			_, _ = r.loadPolicies(ctx)
		}
	}
}

// loadPolicies reads the policies into the node's copy and returns the
// revision it read at.
func (r *Registry) loadPolicies(ctx context.Context) (int64, error) {
	cctx, cancel := r.opCtx(ctx)
	defer cancel()
	resp, err := r.cli.Get(cctx, policiesPrefix, clientv3.WithPrefix())
	if err != nil {
		return 0, err
	}
	all, err := decodePolicies(resp.Kvs)
	if err != nil {
		r.log.Warn("undecodable clean-up policy", "error", err)
		return 0, err
	}
	r.actMu.Lock()
	r.policies = newPolicySet(all)
	r.actMu.Unlock()
	return resp.Header.Revision, nil
}

// noteActivity records that the users of recs did something now, cheaply:
// only for sessions whose effective policy has an idle timeout, and only
// when this node has not written the session's activity within the last
// tenth of that timeout. So an active session costs at most ten etcd writes
// per idle timeout however often it heartbeats, one without an idle policy
// none, and the writes of a batch go in transactions of up to maxTxnOps
// puts. The activity key lives on the session's lease. Failures are logged,
// not returned: a missed write makes clean-up see the session idle a tenth
// of the timeout sooner at most, and the next active heartbeat retries.
func (r *Registry) noteActivity(ctx context.Context, recs []*record) {
	now := time.Now()
	var ops []clientv3.Op
	r.actMu.Lock()
	for _, rec := range recs {
		idle, _ := r.policies.effective(rec.Tenant, rec.Module)
		if idle.d == 0 {
			continue
		}
		if last, ok := r.lastActive[rec.ID]; ok && now.Sub(last) < idle.d/activityGrain {
			continue
		}
		if len(r.lastActive) < maxCached {
			r.lastActive[rec.ID] = now
		}
		ops = append(ops, clientv3.OpPut(activityKey(rec.ID), strconv.FormatInt(now.UnixMilli(), 10), clientv3.WithLease(clientv3.LeaseID(rec.LeaseID))))
	}
	r.actMu.Unlock()
	for len(ops) > 0 {
		n := min(len(ops), maxTxnOps)
		cctx, cancel := r.opCtx(ctx)
		_, err := r.cli.Txn(cctx).Then(ops[:n]...).Commit()
		if err != nil {
			// One lease gone (its session ended a moment ago) fails the
			// whole transaction: write the others one by one.
			for _, op := range ops[:n] {
				if _, err := r.cli.Txn(cctx).Then(op).Commit(); err != nil {
					r.log.Debug("record activity failed", "key", string(op.KeyBytes()), "error", err)
				}
			}
		}
		cancel()
		ops = ops[n:]
	}
}

// forgetActivity drops what the node knows of a session's recorded activity.
func (r *Registry) forgetActivity(id string) {
	r.actMu.Lock()
	delete(r.lastActive, id)
	r.actMu.Unlock()
}

// idTime is the moment encoded in a session id (see newSessionID).
func idTime(id string) (time.Time, bool) {
	if len(id) < 12 {
		return time.Time{}, false
	}
	ms, err := strconv.ParseInt(id[:12], 16, 64)
	if err != nil {
		return time.Time{}, false
	}
	return time.UnixMilli(ms), true
}
