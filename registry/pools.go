package registry

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Pool states.
const (
	PoolActive   = "active"
	PoolInactive = "inactive"
)

// Pool is one pool of sessions: the pools that hold sessions, and those an operator
// deactivated.
type Pool struct {
	Name     string `json:"name"`
	State    string `json:"state"` // PoolActive or PoolInactive
	Sessions int    `json:"sessions"`
	// For an inactive pool: since when, by whom and why.
	Since   *time.Time `json:"since,omitempty"`
	By      string     `json:"by,omitempty"`
	Message string     `json:"message,omitempty"`
}

// poolState is the value of an inactive pool's key; an active pool has no key.
type poolState struct {
	Since   time.Time `json:"since"`
	By      string    `json:"by"`
	Message string    `json:"message,omitempty"`
}

// Pools lists every pool that holds sessions or is inactive, sorted by name. It reads
// only keys: the pool index and the pool states, at one revision.
func (r *Registry) Pools(ctx context.Context, p Principal) ([]Pool, error) {
	if err := requireRole(p, "list pools", RoleOperator, RoleAdmin); err != nil {
		return nil, err
	}
	cctx, cancel := r.opCtx(ctx)
	defer cancel()
	resp, err := r.cli.Txn(cctx).Then(
		clientv3.OpGet(ixPoolPrefix, clientv3.WithPrefix(), clientv3.WithKeysOnly()),
		clientv3.OpGet(poolsPrefix, clientv3.WithPrefix()),
	).Commit()
	if err != nil {
		return nil, translate("list pools", err)
	}
	byName := map[string]*Pool{}
	get := func(name string) *Pool {
		if byName[name] == nil {
			byName[name] = &Pool{Name: name, State: PoolActive}
		}
		return byName[name]
	}
	for _, kv := range resp.Responses[0].GetResponseRange().Kvs {
		// ix/p/<pool>/<id>
		name, _, ok := strings.Cut(strings.TrimPrefix(string(kv.Key), ixPoolPrefix), "/")
		if ok {
			get(name).Sessions++
		}
	}
	for _, kv := range resp.Responses[1].GetResponseRange().Kvs {
		var st poolState
		if err := json.Unmarshal(kv.Value, &st); err != nil {
			return nil, fmt.Errorf("registry: decode pool state %s: %w", kv.Key, err)
		}
		pl := get(strings.TrimPrefix(string(kv.Key), poolsPrefix))
		pl.State, pl.Since, pl.By, pl.Message = PoolInactive, &st.Since, st.By, st.Message
	}
	out := make([]Pool, 0, len(byName))
	for _, pl := range byName {
		out = append(out, *pl)
	}
	slices.SortFunc(out, func(a, b Pool) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// Pool returns one pool; a pool that holds no session and was never deactivated is
// active and empty.
func (r *Registry) Pool(ctx context.Context, p Principal, name string) (Pool, error) {
	if err := checkName("pool", name); err != nil {
		return Pool{}, err
	}
	pools, err := r.Pools(ctx, p)
	if err != nil {
		return Pool{}, err
	}
	for _, pl := range pools {
		if pl.Name == name {
			return pl, nil
		}
	}
	return Pool{Name: name, State: PoolActive}, nil
}

// DeactivatePool refuses new logins into pool name from now on, with message shown to
// whoever is refused; sessions already open are untouched. Deactivating an inactive
// pool replaces its message.
func (r *Registry) DeactivatePool(ctx context.Context, p Principal, name, message string) (Pool, error) {
	if err := requireRole(p, "deactivate pools", RoleOperator, RoleAdmin); err != nil {
		return Pool{}, err
	}
	if err := checkName("pool", name); err != nil {
		return Pool{}, err
	}
	if err := checkOptionalText("message", message, MaxReasonBytes); err != nil {
		return Pool{}, err
	}
	val, _ := json.Marshal(poolState{Since: time.Now().UTC().Truncate(time.Second), By: p.By(), Message: message})
	if err := r.putAudited(ctx, poolKey(name), string(val), AuditRecord{Action: AuditPoolDeactivate, Actor: p.By(), Target: name, Message: message}); err != nil {
		return Pool{}, translate("deactivate pool", err)
	}
	return r.Pool(ctx, p, name)
}

// ActivatePool accepts logins into pool name again.
func (r *Registry) ActivatePool(ctx context.Context, p Principal, name string) (Pool, error) {
	if err := requireRole(p, "activate pools", RoleOperator, RoleAdmin); err != nil {
		return Pool{}, err
	}
	if err := checkName("pool", name); err != nil {
		return Pool{}, err
	}
	cctx, cancel := r.opCtx(ctx)
	defer cancel()
	ops := r.withAudit(ctx, []clientv3.Op{clientv3.OpDelete(poolKey(name))}, AuditRecord{Action: AuditPoolActivate, Actor: p.By(), Target: name})
	if _, err := r.cli.Txn(cctx).Then(ops...).Commit(); err != nil {
		return Pool{}, translate("activate pool", err)
	}
	return r.Pool(ctx, p, name)
}

// poolInactive builds the refusal of an open into the inactive pool name, whose state
// value is val, naming the pools that accept logins.
func (r *Registry) poolInactive(ctx context.Context, name string, val []byte) error {
	e := &PoolInactiveError{Pool: name}
	var st poolState
	if json.Unmarshal(val, &st) == nil {
		e.Message = st.Message
	}
	if pools, err := r.Pools(ctx, Principal{Role: RoleAdmin}); err == nil {
		for _, pl := range pools {
			if pl.State == PoolActive {
				e.Active = append(e.Active, pl.Name)
			}
		}
	}
	return e
}
