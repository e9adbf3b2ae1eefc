package registry

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"iter"
	"strings"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Listing limits.
const (
	DefaultListLimit = 100
	MaxListLimit     = 1000
	scanBatch        = 1000
	maxTxnOps        = 100 // below etcd's default --max-txn-ops of 128
)

// listPlan is the index range a listing reads and the filters the range
// does not already apply.
type listPlan struct {
	prefix string
	post   func(indexAttrs) bool // nil when the range is the exact answer
}

func planList(f ListFilter) listPlan {
	var prefix string
	covered := map[string]bool{}
	switch {
	case f.Connection != "":
		prefix, covered["connection"] = connSessionsPrefix(f.Connection), true
	case f.OpenedByToken != "":
		prefix, covered["opened_by"] = ixOwnerPrefix+f.OpenedByToken+"/", true
	case f.User != "":
		prefix, covered["user"] = ixUserPrefix+f.User+"/", true
		if f.Tenant != "" {
			prefix, covered["tenant"] = prefix+f.Tenant+"/", true
			if f.Module != "" {
				prefix, covered["module"] = prefix+f.Module+"/", true
			}
		}
	case f.Module != "":
		prefix, covered["module"] = ixModulePrefix+f.Module+"/", true
		if f.Tenant != "" {
			prefix, covered["tenant"] = prefix+f.Tenant+"/", true
		}
	case f.Pool != "":
		prefix, covered["pool"] = ixPoolPrefix+f.Pool+"/", true
	case f.Tenant != "":
		prefix, covered["tenant"] = ixTenantPrefix+f.Tenant+"/", true
	default:
		prefix = ixTenantPrefix
	}
	checks := []struct {
		name, want string
		get        func(indexAttrs) string
	}{
		{"tenant", f.Tenant, func(a indexAttrs) string { return a.Tenant }},
		{"user", f.User, func(a indexAttrs) string { return a.User }},
		{"module", f.Module, func(a indexAttrs) string { return a.Module }},
		{"pool", f.Pool, func(a indexAttrs) string { return a.Pool }},
		{"site", f.Site, func(a indexAttrs) string { return a.Site }},
		{"node", f.Node, func(a indexAttrs) string { return a.Node }},
		{"client_kind", string(f.ClientKind), func(a indexAttrs) string { return string(a.Kind) }},
		{"opened_by", f.OpenedByToken, func(a indexAttrs) string { return a.OpenedByToken }},
	}
	var post []func(indexAttrs) bool
	for _, c := range checks {
		if c.want == "" || covered[c.name] {
			continue
		}
		want, get := c.want, c.get
		post = append(post, func(a indexAttrs) bool { return get(a) == want })
	}
	plan := listPlan{prefix: prefix}
	if len(post) > 0 {
		plan.post = func(a indexAttrs) bool {
			for _, ok := range post {
				if !ok(a) {
					return false
				}
			}
			return true
		}
	}
	return plan
}

func (r *Registry) checkFilter(f *ListFilter) error {
	for _, c := range []struct{ field, v string }{
		{"tenant", f.Tenant}, {"user", f.User}, {"module", f.Module}, {"pool", f.Pool}, {"site", f.Site}, {"node", f.Node},
	} {
		if c.v != "" {
			if err := checkName(c.field, c.v); err != nil {
				return err
			}
		}
	}
	if f.ClientKind != "" {
		if err := checkKind(f.ClientKind); err != nil {
			return err
		}
	}
	if f.Connection != "" {
		if err := CheckConnectionID("connection", f.Connection); err != nil {
			return err
		}
	}
	switch {
	case f.Limit == 0:
		f.Limit = DefaultListLimit
	case f.Limit < 0 || f.Limit > MaxListLimit:
		return invalid("limit", "%d is out of range; use 1-%d (default %d)", f.Limit, MaxListLimit, DefaultListLimit)
	}
	return nil
}

// scope narrows a filter to what the principal may see.
func (p Principal) scope(f *ListFilter) error {
	switch {
	case p.isSession():
		if p.ended {
			return fmt.Errorf("%w: the session token of %s belongs to a session that has ended", ErrUnauthenticated, p.SessionID)
		}
		if (f.Tenant != "" && f.Tenant != p.Tenant) || (f.User != "" && f.User != p.User) {
			return denied("%s may list only the sessions of user %s/%s", p.describe(), p.Tenant, p.User)
		}
		f.Tenant, f.User = p.Tenant, p.User
	case p.Role == RoleClient:
		f.OpenedByToken = p.TokenID
	case p.Role == RoleAdmin || p.Role == RoleOperator:
	default:
		return denied("%s may not list sessions", p.describe())
	}
	return nil
}

func encodeCursor(key string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(strings.TrimPrefix(key, indexPrefix)))
}

func decodeCursor(c, prefix string) (string, error) {
	raw, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil || len(raw) == 0 || len(raw) > 1024 {
		return "", invalid("cursor", "is malformed; pass the next_cursor of the previous page unchanged")
	}
	key := indexPrefix + string(raw)
	if !strings.HasPrefix(key, prefix) {
		return "", invalid("cursor", "belongs to a listing with other filters; repeat the filters of the first page, or start again without a cursor")
	}
	return key, nil
}

// List returns one page of the sessions that match f, in index order, with
// the total number of matches. Filters by user, module, pool and tenant
// read index keys only; the other filters are applied to the index values,
// never to the session records. Pages are read at one etcd revision.
func (r *Registry) List(ctx context.Context, p Principal, f ListFilter) (SessionPage, error) {
	if err := r.checkFilter(&f); err != nil {
		return SessionPage{}, err
	}
	if err := p.scope(&f); err != nil {
		return SessionPage{}, err
	}
	plan := planList(f)
	start := plan.prefix
	if f.Cursor != "" {
		key, err := decodeCursor(f.Cursor, plan.prefix)
		if err != nil {
			return SessionPage{}, err
		}
		start = key + "\x00"
	}
	end := clientv3.GetPrefixRangeEnd(plan.prefix)
	cctx, cancel := r.opCtx(ctx)
	defer cancel()

	var (
		keys  []string
		total int
		more  bool
		rev   int64
	)
	if plan.post == nil {
		resp, err := r.cli.Get(cctx, plan.prefix, clientv3.WithRange(end), clientv3.WithCountOnly())
		if err != nil {
			return SessionPage{}, translate("count sessions", err)
		}
		total, rev = int(resp.Count), resp.Header.Revision
		page, err := r.cli.Get(cctx, start, clientv3.WithRange(end), clientv3.WithRev(rev), clientv3.WithKeysOnly(), clientv3.WithLimit(int64(f.Limit+1)))
		if err != nil {
			return SessionPage{}, translate("list sessions", err)
		}
		for _, kv := range page.Kvs {
			keys = append(keys, string(kv.Key))
		}
		if more = len(keys) > f.Limit; more {
			keys = keys[:f.Limit]
		}
	} else {
		// Every match counts towards total, so the whole range is read, a
		// batch at a time, at one revision.
		for kv, err := range r.scan(cctx, plan.prefix, end, scanBatch, &rev) {
			if err != nil {
				return SessionPage{}, translate("list sessions", err)
			}
			var a indexAttrs
			if err := json.Unmarshal(kv.Value, &a); err != nil || !plan.post(a) {
				continue
			}
			total++
			if string(kv.Key) < start {
				continue
			}
			if len(keys) < f.Limit {
				keys = append(keys, string(kv.Key))
			} else {
				more = true
			}
		}
	}

	sessions, leases, err := r.readSessions(cctx, keys, rev)
	if err != nil {
		return SessionPage{}, err
	}
	r.fillExpiry(ctx, sessions, leases)
	out := SessionPage{Sessions: sessions, Total: total}
	if more && len(keys) > 0 {
		out.NextCursor = encodeCursor(keys[len(keys)-1])
	}
	return out, nil
}

// readSessions reads the records behind index keys at revision rev, in
// transactions of at most maxTxnOps reads.
func (r *Registry) readSessions(ctx context.Context, keys []string, rev int64) ([]Session, []int64, error) {
	sessions := make([]Session, 0, len(keys))
	leases := make([]int64, 0, len(keys))
	for len(keys) > 0 {
		n := min(len(keys), maxTxnOps)
		ops := make([]clientv3.Op, n)
		for i, k := range keys[:n] {
			ops[i] = clientv3.OpGet(sessionKey(k[strings.LastIndexByte(k, '/')+1:]), clientv3.WithRev(rev))
		}
		resp, err := r.cli.Txn(ctx).Then(ops...).Commit()
		if err != nil {
			return nil, nil, translate("read sessions", err)
		}
		for _, op := range resp.Responses {
			for _, kv := range op.GetResponseRange().Kvs {
				rec, err := decodeRecord(kv)
				if err != nil {
					return nil, nil, err
				}
				sessions = append(sessions, rec.Session)
				leases = append(leases, rec.LeaseID)
			}
		}
		keys = keys[n:]
	}
	return sessions, leases, nil
}

// scan yields the key-values of [from, end) in key order, read batch at a
// time at one revision: *rev if it is not 0, else that of the first read,
// which it stores in *rev. A failed read is yielded as the error, with no
// key-value, and ends the scan.
func (r *Registry) scan(ctx context.Context, from, end string, batch int64, rev *int64) iter.Seq2[*mvccpb.KeyValue, error] {
	return func(yield func(*mvccpb.KeyValue, error) bool) {
		for {
			opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(batch)}
			if *rev != 0 {
				opts = append(opts, clientv3.WithRev(*rev))
			}
			resp, err := r.cli.Get(ctx, from, opts...)
			if err != nil {
				yield(nil, err)
				return
			}
			*rev = resp.Header.Revision
			for _, kv := range resp.Kvs {
				if !yield(kv, nil) {
					return
				}
			}
			if !resp.More || len(resp.Kvs) == 0 {
				return
			}
			from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
		}
	}
}
