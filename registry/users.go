package registry

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

func (u User) has(r Right) bool { return slices.Contains(u.Rights, r) }

// hasService reports whether the user may use connections of service s.
func (u User) hasService(s string) bool { return slices.Contains(u.Services, s) }

// MaxUserServices bounds the services of one user.
const MaxUserServices = 64

// decodeUser decodes a user entry; an entry written before services
// existed has none.
func decodeUser(val []byte, u *User) error {
	if err := json.Unmarshal(val, u); err != nil {
		return err
	}
	if u.Services == nil {
		u.Services = []string{}
	}
	return nil
}

// readUser reads a user entry and its revision; a user not in the master
// has no rights and revision 0. Extra reads are made in the same
// transaction; their responses follow the user's in the returned one.
func (r *Registry) readUser(ctx context.Context, tenant, user string, extra ...clientv3.Op) (User, int64, *clientv3.TxnResponse, error) {
	cctx, cancel := r.opCtx(ctx)
	defer cancel()
	resp, err := r.cli.Txn(cctx).Then(append([]clientv3.Op{clientv3.OpGet(userKey(tenant, user))}, extra...)...).Commit()
	if err != nil {
		return User{}, 0, nil, translate("read user", err)
	}
	var kv *mvccpb.KeyValue
	if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 {
		kv = kvs[0]
	}
	u, rev, err := userOf(tenant, user, kv)
	if err != nil {
		return User{}, 0, nil, err
	}
	return u, rev, resp, nil
}

// userOf decodes the user entry kv of tenant/user and returns it with its
// mod revision; a user not in the master (kv nil) has no rights and
// revision 0.
func userOf(tenant, user string, kv *mvccpb.KeyValue) (User, int64, error) {
	if kv == nil {
		return User{Tenant: tenant, User: user, Rights: []Right{}, Services: []string{}}, 0, nil
	}
	var u User
	if err := decodeUser(kv.Value, &u); err != nil {
		return User{}, 0, fmt.Errorf("registry: decode user %s/%s: %w", tenant, user, err)
	}
	return u, kv.ModRevision, nil
}

func checkUserName(tenant, user string) error {
	if err := checkName("tenant", tenant); err != nil {
		return err
	}
	return checkName("user", user)
}

// PutUser creates or replaces a user entry with its rights and services; admins only.
func (r *Registry) PutUser(ctx context.Context, p Principal, tenant, user string, spec UserSpec) (User, error) {
	if err := requireRole(p, "change users", RoleAdmin); err != nil {
		return User{}, err
	}
	if err := checkUserName(tenant, user); err != nil {
		return User{}, err
	}
	if err := checkRights(spec.Rights); err != nil {
		return User{}, err
	}
	rights := []Right{}
	for _, right := range spec.Rights {
		if !slices.Contains(rights, right) {
			rights = append(rights, right)
		}
	}
	slices.Sort(rights)
	services, err := checkServices(spec.Services)
	if err != nil {
		return User{}, err
	}
	u := User{Tenant: tenant, User: user, Rights: rights, Services: services, UpdatedAt: time.Now().UTC().Truncate(time.Second)}
	val, _ := json.Marshal(u)
	if err := r.putAudited(ctx, userKey(tenant, user), string(val), AuditRecord{Action: AuditUserSet, Actor: p.By(), Tenant: tenant,
		User: user, Details: map[string]string{"rights": joinRights(rights), "services": strings.Join(services, ",")}}); err != nil {
		return User{}, translate("write user", err)
	}
	return u, nil
}

// GetUser reads a user entry; admins and operators only.
func (r *Registry) GetUser(ctx context.Context, p Principal, tenant, user string) (User, error) {
	if err := requireRole(p, "read users", RoleAdmin, RoleOperator); err != nil {
		return User{}, err
	}
	if err := checkUserName(tenant, user); err != nil {
		return User{}, err
	}
	u, rev, _, err := r.readUser(ctx, tenant, user)
	if err != nil {
		return User{}, err
	}
	if rev == 0 {
		return User{}, &notFoundError{ErrUserNotFound, fmt.Sprintf("user %s/%s is not in the user master (so it has no rights); 'roster user set' adds it", tenant, user)}
	}
	return u, nil
}

// ListUsers lists the user entries of a tenant, or of every tenant when
// tenant is empty; admins and operators only.
func (r *Registry) ListUsers(ctx context.Context, p Principal, tenant string) ([]User, error) {
	if err := requireRole(p, "read users", RoleAdmin, RoleOperator); err != nil {
		return nil, err
	}
	prefix := usersPrefix
	if tenant != "" {
		if err := checkName("tenant", tenant); err != nil {
			return nil, err
		}
		prefix = usersOfTenant(tenant)
	}
	cctx, cancel := r.opCtx(ctx)
	defer cancel()
	resp, err := r.cli.Get(cctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, translate("list users", err)
	}
	out := make([]User, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		var u User
		if err := decodeUser(kv.Value, &u); err != nil {
			return nil, fmt.Errorf("registry: decode user %q: %w", kv.Key, err)
		}
		out = append(out, u)
	}
	return out, nil
}

// DeleteUser removes a user entry (and so its rights); admins only. Its
// sessions stay.
func (r *Registry) DeleteUser(ctx context.Context, p Principal, tenant, user string) error {
	if err := requireRole(p, "change users", RoleAdmin); err != nil {
		return err
	}
	if err := checkUserName(tenant, user); err != nil {
		return err
	}
	found, err := r.deleteAudited(ctx, userKey(tenant, user), AuditRecord{Action: AuditUserDelete, Actor: p.By(), Tenant: tenant, User: user})
	if err != nil {
		return translate("delete user", err)
	}
	if !found {
		return &notFoundError{ErrUserNotFound, fmt.Sprintf("user %s/%s is not in the user master", tenant, user)}
	}
	return nil
}

// checkServices validates a user's services and returns them sorted, without
// duplicates.
func checkServices(services []string) ([]string, error) {
	if len(services) > MaxUserServices {
		return nil, invalid("services", "has %d entries; at most %d are allowed", len(services), MaxUserServices)
	}
	out := []string{}
	for i, s := range services {
		if err := checkName(fmt.Sprintf("services[%d]", i), s); err != nil {
			return nil, err
		}
		if !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	slices.Sort(out)
	return out, nil
}

// joinRights lists rights separated by commas.
func joinRights(rights []Right) string {
	out := make([]string, len(rights))
	for i, r := range rights {
		out[i] = string(r)
	}
	return strings.Join(out, ",")
}
