package registry

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"slices"
	"strings"
	"sync"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
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
//
// A page costs a few etcd requests whatever its size: one transaction for
// the count and the page's index keys (or, with a filter on the index
// values, one stream of the whole index range), and the records this node
// has not cached yet (see readSessions). Everything after the first read is
// read at its revision from whichever member answers, without a new
// linearizable round. ExpiresInSeconds comes from what this node has seen
// of the leases (fillSeenExpiry), not from etcd.
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
		// One transaction, so one revision: the page's keys from start
		// (etcd counts the rest of the range with them) and the count of
		// the keys before start.
		ops := []clientv3.Op{clientv3.OpGet(start, clientv3.WithRange(end), clientv3.WithKeysOnly(), clientv3.WithLimit(int64(f.Limit+1)))}
		if start != plan.prefix {
			ops = append(ops, clientv3.OpGet(plan.prefix, clientv3.WithRange(start), clientv3.WithCountOnly()))
		}
		resp, err := r.cli.Txn(cctx).Then(ops...).Commit()
		if err != nil {
			return SessionPage{}, translate("list sessions", err)
		}
		rev = resp.Header.Revision
		page := resp.Responses[0].GetResponseRange()
		total = int(page.Count)
		if len(resp.Responses) > 1 {
			total += int(resp.Responses[1].GetResponseRange().Count)
		}
		for _, kv := range page.Kvs {
			keys = append(keys, string(kv.Key))
		}
		if more = len(keys) > f.Limit; more {
			keys = keys[:f.Limit]
		}
	} else {
		// Every match counts towards total, so the whole range is read, in
		// one stream, at one revision.
		for kv, err := range r.scanAll(cctx, plan.prefix, end, &rev) {
			if err != nil {
				return SessionPage{}, translate("list sessions", err)
			}
			a, err := decodeIndexAttrs(kv.Value)
			if err != nil || !plan.post(a) {
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

	sessions, leases, err := r.readSessions(cctx, keys, rev, strings.HasPrefix(plan.prefix, ixTenantPrefix))
	if err != nil {
		return SessionPage{}, err
	}
	r.fillSeenExpiry(sessions, leases)
	out := SessionPage{Sessions: sessions, Total: total}
	if more && len(keys) > 0 {
		out.NextCursor = encodeCursor(keys[len(keys)-1])
	}
	return out, nil
}

// Reading the records of a page.
const (
	// recordTxnsInFlight bounds the transactions of point reads one page
	// sends at once.
	recordTxnsInFlight = 4
	// A range read of a run of n keys' records may return n + n/denseSlack
	// records (other tenants' sessions lie between them) before the rest
	// of the run is read key by key.
	denseSlack = 4
)

// readSessions returns the sessions behind index keys at revision rev, in
// the order of keys, with their leases. A session's record never changes
// while it lives, so one this node has cached (see Registry.live) is taken
// from the cache; the others are read at rev, and cached. With dense, the
// keys are tenant index keys: a run of them in one tenant names sessions in
// id order, whose records lie together under sessions/ unless other
// tenants' sessions lie between them, so a run of which at least half is
// not cached is read as one range of records, bounded to a quarter more
// than the run (what it does not hold is read key by key). Otherwise each
// record is read by its key, in transactions of at most maxTxnOps reads, a
// few at once.
func (r *Registry) readSessions(ctx context.Context, keys []string, rev int64, dense bool) ([]Session, []int64, error) {
	ids := make([]string, len(keys))
	recs := make([]*record, len(keys))
	uncached := 0
	for i, k := range keys {
		ids[i] = k[strings.LastIndexByte(k, '/')+1:]
		if recs[i] = r.cached(ids[i]); recs[i] == nil {
			uncached++
		}
	}
	if uncached > 0 {
		found := make(map[string]*mvccpb.KeyValue, uncached)
		if dense {
			if err := r.readRuns(ctx, keys, ids, recs, rev, found); err != nil {
				return nil, nil, err
			}
		}
		var missing []string
		for i, id := range ids {
			if recs[i] == nil && found[id] == nil {
				missing = append(missing, id)
			}
		}
		if err := r.readKeys(ctx, missing, rev, found); err != nil {
			return nil, nil, err
		}
		for i, id := range ids {
			if kv := found[id]; recs[i] == nil && kv != nil {
				rec, err := decodeRecord(kv)
				if err != nil {
					return nil, nil, err
				}
				r.remember(rec, rev)
				recs[i] = rec
			}
		}
	}
	sessions := make([]Session, 0, len(keys))
	leases := make([]int64, 0, len(keys))
	for _, rec := range recs {
		if rec == nil {
			continue // not at rev: cannot happen, an index key and its record are written and deleted together
		}
		sessions = append(sessions, rec.Session)
		leases = append(leases, rec.LeaseID)
	}
	return sessions, leases, nil
}

// readRuns reads, into found, the records of each run of keys under one
// index prefix (one tenant) of which at least half is not in recs yet, as
// one range per run, all in one transaction.
func (r *Registry) readRuns(ctx context.Context, keys, ids []string, recs []*record, rev int64, found map[string]*mvccpb.KeyValue) error {
	type run struct{ from, to, uncached int } // keys[from:to]
	var runs []run
	for i := range keys {
		parent := keys[i][:len(keys[i])-len(ids[i])]
		if i == 0 || parent != keys[i-1][:len(keys[i-1])-len(ids[i-1])] {
			runs = append(runs, run{from: i})
		}
		rn := &runs[len(runs)-1]
		rn.to = i + 1
		if recs[i] == nil {
			rn.uncached++
		}
	}
	runs = slices.DeleteFunc(runs, func(rn run) bool { return rn.to-rn.from < 2 || 2*rn.uncached < rn.to-rn.from })
	if len(runs) == 0 || len(runs) > maxTxnOps {
		return nil // key by key
	}
	resp, err := r.readAt(ctx, rev, func(opts ...clientv3.OpOption) []clientv3.Op {
		ops := make([]clientv3.Op, len(runs))
		for i, rn := range runs {
			n := rn.to - rn.from
			ops[i] = clientv3.OpGet(sessionKey(ids[rn.from]), append(opts, clientv3.WithRange(sessionKey(ids[rn.to-1])+"\x00"),
				clientv3.WithLimit(int64(n+n/denseSlack)))...)
		}
		return ops
	})
	if err != nil {
		return translate("read sessions", err)
	}
	for _, op := range resp.Responses {
		for _, kv := range op.GetResponseRange().Kvs {
			found[strings.TrimPrefix(string(kv.Key), sessionsPrefix)] = kv
		}
	}
	return nil
}

// readKeys reads the records of ids at rev by their keys into found, in
// transactions of at most maxTxnOps reads, recordTxnsInFlight at once.
func (r *Registry) readKeys(ctx context.Context, ids []string, rev int64, found map[string]*mvccpb.KeyValue) error {
	var (
		mu   sync.Mutex
		errs []error
		wg   sync.WaitGroup
		sem  = make(chan struct{}, recordTxnsInFlight)
	)
	for len(ids) > 0 {
		batch := ids[:min(len(ids), maxTxnOps)]
		ids = ids[len(batch):]
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			resp, err := r.readAt(ctx, rev, func(opts ...clientv3.OpOption) []clientv3.Op {
				ops := make([]clientv3.Op, len(batch))
				for i, id := range batch {
					ops[i] = clientv3.OpGet(sessionKey(id), opts...)
				}
				return ops
			})
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
				return
			}
			for _, op := range resp.Responses {
				for _, kv := range op.GetResponseRange().Kvs {
					found[strings.TrimPrefix(string(kv.Key), sessionsPrefix)] = kv
				}
			}
		})
	}
	wg.Wait()
	if len(errs) > 0 {
		return translate("read sessions", errs[0])
	}
	return nil
}

// readAt runs the reads ops builds, in one transaction, at revision rev,
// which an earlier read returned: serializable, so whichever member the
// client picks answers without a linearizable round (the data at a past
// revision is the same everywhere); again linearizable should that member
// not have applied rev yet.
func (r *Registry) readAt(ctx context.Context, rev int64, ops func(opts ...clientv3.OpOption) []clientv3.Op) (*clientv3.TxnResponse, error) {
	resp, err := r.cli.Txn(ctx).Then(ops(clientv3.WithRev(rev), clientv3.WithSerializable())...).Commit()
	if errors.Is(err, rpctypes.ErrFutureRev) {
		resp, err = r.cli.Txn(ctx).Then(ops(clientv3.WithRev(rev))...).Commit()
	}
	return resp, err
}

// scan yields the key-values of [from, end) in key order, read batch at a
// time at one revision: *rev if it is not 0, else that of the first read,
// which it stores in *rev. Reads at a known revision are serializable (see
// readAt). A failed read is yielded as the error, with no key-value, and
// ends the scan.
func (r *Registry) scan(ctx context.Context, from, end string, batch int64, rev *int64) iter.Seq2[*mvccpb.KeyValue, error] {
	return func(yield func(*mvccpb.KeyValue, error) bool) {
		for {
			opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(batch)}
			var resp *clientv3.GetResponse
			var err error
			if *rev == 0 {
				if resp, err = r.cli.Get(ctx, from, opts...); err == nil {
					*rev = resp.Header.Revision
				}
			} else {
				var tr *clientv3.TxnResponse
				tr, err = r.readAt(ctx, *rev, func(more ...clientv3.OpOption) []clientv3.Op {
					return []clientv3.Op{clientv3.OpGet(from, append(opts, more...)...)}
				})
				if err == nil {
					resp = (*clientv3.GetResponse)(tr.Responses[0].GetResponseRange())
				}
			}
			if err != nil {
				yield(nil, err)
				return
			}
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

// scanAll yields every key-value of [from, end) in key order, at one
// revision: *rev if it is not 0, else the latest, which it stores in *rev
// once the last one is read. It reads
// them in one RangeStream call: a ranged read with a limit makes etcd count
// the rest of the range to the end, so reading a range a batch at a time
// (scan) walks it about len/batch/2 times over. An etcd without RangeStream
// (before 3.7) gets scan's batches. A failed read is yielded as the error,
// with no key-value, and ends the scan; so does the consumer stopping,
// which cancels the stream.
func (r *Registry) scanAll(ctx context.Context, from, end string, rev *int64) iter.Seq2[*mvccpb.KeyValue, error] {
	return func(yield func(*mvccpb.KeyValue, error) bool) {
		if !r.noRangeStream.Load() {
			if handled := r.stream(ctx, from, end, rev, yield); handled {
				return
			}
			r.noRangeStream.Store(true)
		}
		for kv, err := range r.scan(ctx, from, end, scanBatch, rev) {
			if !yield(kv, err) {
				return
			}
		}
	}
}

// stream is scanAll over one RangeStream; it reports false, having
// yielded nothing, when etcd does not know the call.
func (r *Registry) stream(ctx context.Context, from, end string, rev *int64, yield func(*mvccpb.KeyValue, error) bool) bool {
	opts := []clientv3.OpOption{clientv3.WithRange(end)}
	if *rev != 0 {
		opts = append(opts, clientv3.WithRev(*rev))
	}
	sctx, cancel := context.WithCancel(ctx)
	ch, err := r.cli.GetStream(sctx, from, opts...)
	if err != nil {
		cancel()
		if status.Code(err) == codes.Unimplemented {
			return false
		}
		yield(nil, err)
		return true
	}
	defer func() {
		cancel()
		for range ch { // the client's reader exits once its last answer is taken
		}
	}()
	yielded := false
	for resp := range ch {
		if err := resp.Err(); err != nil {
			if status.Code(err) == codes.Unimplemented && !yielded {
				return false
			}
			yield(nil, rpctypes.Error(err))
			return true
		}
		for _, kv := range resp.Kvs {
			yielded = true
			if !yield(kv, nil) {
				return true
			}
		}
		if resp.Header != nil { // the last chunk
			*rev = resp.Header.Revision
		}
	}
	return true
}

// The compact form of an index value: attrsMark, then the eight fields of
// indexAttrs in their order, separated by attrsSep. Names, kinds and token
// ids hold no control characters, so neither byte occurs in a field; JSON
// never begins with attrsMark. Every session has five index keys, and the
// form saves about half of each value's 100 bytes of JSON: 25 MB of etcd's
// database per 100,000 sessions.
const (
	attrsMark   = '\x01'
	attrsSep    = '\x1f'
	attrsFields = 8
)

// encodeIndexAttrs returns the value of a session's index keys: the compact
// form, or JSON for a field that holds one of its two marks (validation
// lets none through; the JSON keeps such a value readable all the same).
func encodeIndexAttrs(a indexAttrs) string {
	v := string(attrsMark) + strings.Join([]string{a.Tenant, a.User, a.Module, a.Pool, a.Site, a.Node, string(a.Kind), a.OpenedByToken}, string(attrsSep))
	if strings.Count(v, string(attrsSep)) != attrsFields-1 || strings.IndexByte(v[1:], attrsMark) >= 0 {
		b, _ := json.Marshal(a)
		return string(b)
	}
	return v
}

// decodeIndexAttrs decodes the value of an index key. A listing with a
// filter on the index values decodes every one of the range: the compact
// form is split in place, and so is the flat object of plain strings
// json.Marshal wrote for indexAttrs before it; anything else (an escape in
// a string, a key it does not know) goes to encoding/json.
func decodeIndexAttrs(b []byte) (indexAttrs, error) {
	var a indexAttrs
	if len(b) > 0 && b[0] == attrsMark {
		return a, compactIndexAttrs(b[1:], &a)
	}
	if plainIndexAttrs(b, &a) {
		return a, nil
	}
	a = indexAttrs{}
	err := json.Unmarshal(b, &a)
	return a, err
}

// compactIndexAttrs decodes the fields of the compact form (after its mark),
// with one string for all of them.
func compactIndexAttrs(b []byte, a *indexAttrs) error {
	s := string(b)
	var fields [attrsFields]string
	for i := range attrsFields - 1 {
		f, rest, ok := strings.Cut(s, string(attrsSep))
		if !ok {
			return fmt.Errorf("registry: index value has %d fields, want %d", i+1, attrsFields)
		}
		fields[i], s = f, rest
	}
	if strings.IndexByte(s, attrsSep) >= 0 {
		return fmt.Errorf("registry: index value has more than %d fields", attrsFields)
	}
	fields[attrsFields-1] = s
	*a = indexAttrs{fields[0], fields[1], fields[2], fields[3], fields[4], fields[5], ClientKind(fields[6]), fields[7]}
	return nil
}

// plainIndexAttrs decodes b into a if it is an object of indexAttrs' keys
// whose values are strings without escapes, and reports whether it was.
func plainIndexAttrs(b []byte, a *indexAttrs) bool {
	if len(b) < 2 || b[0] != '{' {
		return false
	}
	if len(b) == 2 {
		return b[1] == '}'
	}
	for i := 1; ; {
		key, j, ok := plainString(b, i)
		if !ok || j >= len(b) || b[j] != ':' {
			return false
		}
		val, k, ok := plainString(b, j+1)
		if !ok || k >= len(b) {
			return false
		}
		switch key {
		case "t":
			a.Tenant = val
		case "u":
			a.User = val
		case "m":
			a.Module = val
		case "p":
			a.Pool = val
		case "s":
			a.Site = val
		case "n":
			a.Node = val
		case "k":
			a.Kind = ClientKind(val)
		case "o":
			a.OpenedByToken = val
		default:
			return false
		}
		switch b[k] {
		case ',':
			i = k + 1
		case '}':
			return k == len(b)-1
		default:
			return false
		}
	}
}

// plainString reads the JSON string that starts at b[i] if it holds no
// escape and no control character, and returns it and the index after its
// closing quote.
func plainString(b []byte, i int) (string, int, bool) {
	if i >= len(b) || b[i] != '"' {
		return "", 0, false
	}
	for j := i + 1; j < len(b); j++ {
		switch c := b[j]; {
		case c == '"':
			return string(b[i+1 : j]), j + 1, true
		case c == '\\' || c < 0x20:
			return "", 0, false
		}
	}
	return "", 0, false
}
