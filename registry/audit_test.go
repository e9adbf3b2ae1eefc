package registry_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/roster-dev/roster/registry"
)

const auditPrefix = "/roster/v1/audit/"

// auditLog reads every page of the audit log that f selects.
func auditLog(t *testing.T, r *registry.Registry, f registry.AuditFilter) []registry.AuditRecord {
	t.Helper()
	return followPages(t, func(cursor string) ([]registry.AuditRecord, string, error) {
		f.Cursor = cursor
		page, err := r.Audit(context.Background(), admin, f)
		return page.Audit, page.NextCursor, err
	})
}

// byAction counts records per action.
func byAction(recs []registry.AuditRecord) map[registry.AuditAction]int {
	n := map[registry.AuditAction]int{}
	for _, a := range recs {
		n[a.Action]++
	}
	return n
}

// only returns the records of one action.
func only(recs []registry.AuditRecord, action registry.AuditAction) []registry.AuditRecord {
	var out []registry.AuditRecord
	for _, a := range recs {
		if a.Action == action {
			out = append(out, a)
		}
	}
	return out
}

// TestAuditRecordsEveryAction drives every audited action once and checks
// the log holds exactly one record of each, with who did it and what it was
// about, newest first, each key written once.
func TestAuditRecordsEveryAction(t *testing.T) {
	r := newRegistry(t)
	ctx := context.Background()
	_, app := token(t, r, "app", registry.RoleClient)
	_, ops := token(t, r, "ops", registry.RoleOperator)
	if _, err := r.PutUser(ctx, admin, "default", "alice", registry.UserSpec{Rights: []registry.Right{registry.RightInterruptSessions}, Services: []string{"gui"}}); err != nil {
		t.Fatal(err)
	}
	s := open(t, r, app, registry.OpenRequest{User: "alice", Module: "sales", Host: "pc-17"})
	_, err := r.Open(ctx, app, registry.OpenRequest{User: "alice", Module: "sales", Host: "pc-18"})
	if !errors.Is(err, registry.ErrAlreadyLoggedIn) {
		t.Fatalf("second login: %v", err)
	}
	if _, err := r.Kill(ctx, ops, s.ID, "hung since Friday"); err != nil {
		t.Fatal(err)
	}
	s2 := open(t, r, app, registry.OpenRequest{User: "alice", Module: "sales"})
	if _, err := r.Logout(ctx, sessionPrincipal(t, r, s2), s2.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := r.DeactivatePool(ctx, ops, "blue", "upgrade at 18:00"); err != nil {
		t.Fatal(err)
	}
	g := int64(300)
	sd, err := r.RequestShutdown(ctx, ops, registry.ShutdownRequest{Scope: registry.ScopePool, Pool: "blue", GraceSeconds: &g, Message: "save your work"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.CancelShutdown(ctx, admin, sd.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := r.ActivatePool(ctx, ops, "blue"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.SetLicense(ctx, admin, "default", "bi", registry.LicenseSpec{Seats: 5}); err != nil {
		t.Fatal(err)
	}
	if err := r.DeleteLicense(ctx, admin, "default", "bi"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.SetPolicy(ctx, admin, registry.PolicyModule, "sales", registry.PolicySpec{IdleTimeoutSeconds: 600}); err != nil {
		t.Fatal(err)
	}
	if err := r.DeletePolicy(ctx, admin, registry.PolicyModule, "sales"); err != nil {
		t.Fatal(err)
	}
	if err := r.DeleteUser(ctx, admin, "default", "alice"); err != nil {
		t.Fatal(err)
	}
	if err := r.DeleteToken(ctx, admin, "app"); err != nil {
		t.Fatal(err)
	}
	// Changes that fail change nothing and record nothing.
	if err := r.DeleteUser(ctx, admin, "default", "alice"); !errors.Is(err, registry.ErrUserNotFound) {
		t.Fatalf("second delete: %v", err)
	}
	if err := r.DeleteLicense(ctx, admin, "default", "bi"); !errors.Is(err, registry.ErrLicenseNotFound) {
		t.Fatalf("second licence delete: %v", err)
	}
	r.RecordAuthFailure(registry.WithRemote(ctx, "127.0.0.9"), "GET", "/v1/sessions", fmt.Errorf("%w: unknown or revoked API token", registry.ErrUnauthenticated))

	var recs []registry.AuditRecord
	eventually(t, 5*time.Second, "the failed authentication's record", func() bool {
		recs = auditLog(t, r, registry.AuditFilter{})
		return byAction(recs)[registry.AuditAuthFailed] == 1
	})
	want := map[registry.AuditAction]int{}
	for _, a := range registry.AuditActions {
		want[a] = 1
	}
	want[registry.AuditTokenCreate] = 2 // app and ops
	want[registry.AuditLogin] = 2
	if got := byAction(recs); !mapsEqual(got, want) {
		t.Fatalf("records per action = %v, want %v", got, want)
	}
	for i := 1; i < len(recs); i++ {
		if recs[i].At.After(recs[i-1].At) {
			t.Fatalf("record %d (%s at %s) is newer than record %d (%s at %s): not newest first", i, recs[i].Action, recs[i].At, i-1, recs[i-1].Action, recs[i-1].At)
		}
	}
	check := func(action registry.AuditAction, ok func(a registry.AuditRecord) bool) {
		t.Helper()
		for _, a := range only(recs, action) {
			if a.Node != "n1" || a.ID == "" || a.At.IsZero() || !ok(a) {
				t.Errorf("%s record: %+v", action, a)
			}
		}
	}
	login := only(recs, registry.AuditLogin)
	check(registry.AuditLogin, func(a registry.AuditRecord) bool {
		return a.Actor == "app" && a.Tenant == "default" && a.User == "alice" && a.Module == "sales" && (a.Session == s.ID || a.Session == s2.ID)
	})
	if login[1].Session != s.ID || login[1].Details["host"] != "pc-17" || login[1].Details["pool"] != "default" {
		t.Errorf("first login: %+v", login[1])
	}
	check(registry.AuditLoginRefused, func(a registry.AuditRecord) bool {
		return a.Actor == "app" && a.User == "alice" && a.Module == "sales" && a.Code == "already_logged_in" &&
			strings.Contains(a.Message, "already logged in to module sales on host pc-17") && a.Details["host"] == "pc-18"
	})
	check(registry.AuditKill, func(a registry.AuditRecord) bool {
		return a.Actor == "ops" && a.Session == s.ID && a.User == "alice" && a.Message == "hung since Friday"
	})
	check(registry.AuditLogout, func(a registry.AuditRecord) bool { return a.Actor == "user:default/alice" && a.Session == s2.ID })
	check(registry.AuditPoolDeactivate, func(a registry.AuditRecord) bool {
		return a.Actor == "ops" && a.Target == "blue" && a.Message == "upgrade at 18:00"
	})
	check(registry.AuditPoolActivate, func(a registry.AuditRecord) bool { return a.Actor == "ops" && a.Target == "blue" })
	check(registry.AuditShutdownRequest, func(a registry.AuditRecord) bool {
		return a.Actor == "ops" && a.Target == sd.ID && a.Details["scope"] == "pool" && a.Details["pool"] == "blue" && a.Message == "save your work"
	})
	check(registry.AuditShutdownCancel, func(a registry.AuditRecord) bool { return a.Actor == "admin" && a.Target == sd.ID })
	check(registry.AuditUserSet, func(a registry.AuditRecord) bool {
		return a.Actor == "admin" && a.User == "alice" && a.Details["rights"] == "interrupt-sessions" && a.Details["services"] == "gui"
	})
	check(registry.AuditUserDelete, func(a registry.AuditRecord) bool { return a.User == "alice" })
	check(registry.AuditTokenCreate, func(a registry.AuditRecord) bool {
		return a.Actor == "admin" && (a.Target == "app" && a.Details["role"] == "client" || a.Target == "ops" && a.Details["role"] == "operator")
	})
	check(registry.AuditTokenRevoke, func(a registry.AuditRecord) bool { return a.Target == "app" && a.Details["role"] == "client" })
	check(registry.AuditLicenseSet, func(a registry.AuditRecord) bool { return a.Target == "default/bi" && a.Details["seats"] == "5" })
	check(registry.AuditLicenseDelete, func(a registry.AuditRecord) bool { return a.Target == "default/bi" })
	check(registry.AuditPolicySet, func(a registry.AuditRecord) bool {
		return a.Target == "module/sales" && a.Details["idle_timeout_seconds"] == "600"
	})
	check(registry.AuditPolicyDelete, func(a registry.AuditRecord) bool { return a.Target == "module/sales" })
	check(registry.AuditAuthFailed, func(a registry.AuditRecord) bool {
		return a.Actor == "" && a.Remote == "127.0.0.9" && a.Count == 1 && a.Details["path"] == "/v1/sessions" &&
			strings.Contains(a.Message, "unknown or revoked API token")
	})

	// Append-only: every record's key was written once.
	resp, err := etcd.Client().Get(ctx, auditPrefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != len(recs) {
		t.Fatalf("%d keys, %d records listed", len(resp.Kvs), len(recs))
	}
	for _, kv := range resp.Kvs {
		if kv.Version != 1 {
			t.Errorf("audit key %s was written %d times", kv.Key, kv.Version)
		}
	}
}

func mapsEqual[K comparable](a, b map[K]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// TestAuditRacedLogins: 50 simultaneous logins of one user into one module
// through two nodes: one login and 49 refusals with code already_logged_in
// are recorded, each refusal by the node that refused it.
func TestAuditRacedLogins(t *testing.T) {
	r1 := newRegistry(t)
	r2 := newRegistry(t, func(c *registry.Config) { c.Node = "n2" })
	ctx := context.Background()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var won []string
	refused := map[string]int{}
	for i := range 50 {
		r := []*registry.Registry{r1, r2}[i%2]
		wg.Go(func() {
			s, err := r.Open(ctx, admin, registry.OpenRequest{User: "bob", Module: "fi", Host: fmt.Sprintf("pc-%d", i)})
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				won = append(won, s.ID)
			case errors.Is(err, registry.ErrAlreadyLoggedIn):
				refused[[]string{"n1", "n2"}[i%2]]++
			default:
				t.Errorf("open %d: %v", i, err)
			}
		})
	}
	wg.Wait()
	if len(won) != 1 {
		t.Fatalf("%d logins won, want 1", len(won))
	}
	recs := auditLog(t, r1, registry.AuditFilter{User: "bob"})
	if got := byAction(recs); got[registry.AuditLogin] != 1 || got[registry.AuditLoginRefused] != 49 || len(got) != 2 {
		t.Fatalf("records = %v, want 1 login and 49 login_refused", got)
	}
	if l := only(recs, registry.AuditLogin)[0]; l.Session != won[0] {
		t.Fatalf("login record names session %s, the winner is %s", l.Session, won[0])
	}
	perNode := map[string]int{}
	for _, a := range only(recs, registry.AuditLoginRefused) {
		if a.Code != "already_logged_in" {
			t.Errorf("refusal code %q", a.Code)
		}
		perNode[a.Node]++
	}
	if !mapsEqual(perNode, refused) {
		t.Fatalf("refusals recorded per node %v, refused per node %v", perNode, refused)
	}
}

// TestAuditRefusalCodes: each kind of refused login is recorded with its
// code; an open refused before it reaches the rules (a malformed request)
// is recorded too.
func TestAuditRefusalCodes(t *testing.T) {
	r := newRegistry(t)
	ctx := context.Background()
	if _, err := r.SetLicense(ctx, admin, "default", "bi", registry.LicenseSpec{Seats: 0}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.DeactivatePool(ctx, admin, "blue", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := r.PutUser(ctx, admin, "default", "carol", registry.UserSpec{Services: []string{"gui"}}); err != nil {
		t.Fatal(err)
	}
	_, ops := token(t, r, "ops", registry.RoleOperator)
	cases := []struct {
		req  registry.OpenRequest
		p    registry.Principal
		code string
	}{
		{registry.OpenRequest{User: "dave", Module: "bi"}, admin, "no_license_seat"},
		{registry.OpenRequest{User: "dave", Module: "sales", Pool: "blue"}, admin, "pool_inactive"},
		{registry.OpenRequest{User: "carol", Module: "sales", Connection: &registry.DirectConnection{Service: "odbc"}}, admin, "service_not_allowed"},
		{registry.OpenRequest{User: "dave/x", Module: "sales"}, admin, "invalid_argument"},
		{registry.OpenRequest{User: "dave", Module: "sales"}, ops, "permission_denied"},
	}
	for _, c := range cases {
		if _, err := r.Open(ctx, c.p, c.req); err == nil {
			t.Fatalf("open %+v succeeded", c.req)
		}
	}
	for _, c := range cases {
		recs := auditLog(t, r, registry.AuditFilter{Action: registry.AuditLoginRefused, Code: c.code})
		if len(recs) != 1 || recs[0].User != c.req.User || recs[0].Actor != c.p.By() {
			t.Errorf("refusals with code %s: %+v, want one of user %s by %s", c.code, recs, c.req.User, c.p.By())
		}
	}
	if n := len(auditLog(t, r, registry.AuditFilter{Action: registry.AuditLogin})); n != 0 {
		t.Fatalf("%d logins recorded, want none", n)
	}
}

// TestAuditQuery: filters, time bounds, paging, who may read, bad filters.
func TestAuditQuery(t *testing.T) {
	r := newRegistry(t)
	ctx := context.Background()
	var ids []string
	for i := range 7 {
		s := open(t, r, admin, registry.OpenRequest{Tenant: []string{"t1", "t2"}[i%2], User: fmt.Sprintf("u%d", i%3), Module: fmt.Sprintf("m%d", i)})
		ids = append(ids, s.ID)
	}
	mid := time.Now()
	time.Sleep(5 * time.Millisecond)
	for _, id := range ids[:3] {
		if _, err := r.Kill(ctx, admin, id, ""); err != nil {
			t.Fatal(err)
		}
	}
	all := auditLog(t, r, registry.AuditFilter{})
	if len(all) != 10 {
		t.Fatalf("%d records, want 7 logins and 3 kills", len(all))
	}
	// Pages of 3 hold the same records in the same order.
	var paged []registry.AuditRecord
	f := registry.AuditFilter{Limit: 3}
	pages := 0
	for {
		page, err := r.Audit(ctx, admin, f)
		if err != nil {
			t.Fatal(err)
		}
		if len(page.Audit) > 3 {
			t.Fatalf("page of %d records, limit 3", len(page.Audit))
		}
		paged, pages = append(paged, page.Audit...), pages+1
		if page.NextCursor == "" {
			break
		}
		f.Cursor = page.NextCursor
	}
	if pages != 4 || !slices.EqualFunc(paged, all, func(a, b registry.AuditRecord) bool { return a.ID == b.ID }) {
		t.Fatalf("%d pages of 3 gave %d records, not the 10 of one listing in order", pages, len(paged))
	}
	for _, c := range []struct {
		name string
		f    registry.AuditFilter
		want int
	}{
		{"action", registry.AuditFilter{Action: registry.AuditKill}, 3},
		{"tenant", registry.AuditFilter{Tenant: "t1"}, 4 + 2}, // logins 0,2,4,6; kills of 0 and 2
		{"user", registry.AuditFilter{User: "u0", Action: registry.AuditLogin}, 3},
		{"session", registry.AuditFilter{Session: ids[0]}, 2},
		{"actor", registry.AuditFilter{Actor: "admin"}, 10},
		{"actor none", registry.AuditFilter{Actor: "ops"}, 0},
		{"since", registry.AuditFilter{Since: mid}, 3},
		{"until", registry.AuditFilter{Until: mid}, 7},
	} {
		if got := auditLog(t, r, c.f); len(got) != c.want {
			t.Errorf("%s: %d records, want %d", c.name, len(got), c.want)
		}
	}
	_, client := token(t, r, "app", registry.RoleClient)
	if _, err := r.Audit(ctx, client, registry.AuditFilter{}); !errors.Is(err, registry.ErrPermissionDenied) {
		t.Fatalf("client token reading the audit log: %v", err)
	}
	_, ops := token(t, r, "ops", registry.RoleOperator)
	if _, err := r.Audit(ctx, ops, registry.AuditFilter{}); err != nil {
		t.Fatalf("operator reading the audit log: %v", err)
	}
	for _, c := range []struct {
		f       registry.AuditFilter
		problem string
	}{
		{registry.AuditFilter{Action: "logon"}, `action: "logon" is not an audit action`},
		{registry.AuditFilter{Code: "Already Logged In"}, "code: "},
		{registry.AuditFilter{Session: "xyz"}, "session"},
		{registry.AuditFilter{User: "a/b"}, "user: must not contain '/'"},
		{registry.AuditFilter{Limit: 1001}, "limit: 1001 is out of range"},
		{registry.AuditFilter{Since: mid, Until: mid}, "until: "},
		{registry.AuditFilter{Cursor: "!!"}, "cursor: is malformed"},
	} {
		_, err := r.Audit(ctx, admin, c.f)
		if !errors.Is(err, registry.ErrInvalidArgument) || !strings.Contains(err.Error(), c.problem) {
			t.Errorf("Audit(%+v) = %v, want invalid argument with %q", c.f, err, c.problem)
		}
	}
}

// TestAuditAuthFailureRate: a flood of failed authentications is recorded
// one by one up to the burst, and the rest counted in summary records, so
// the counts add up exactly.
func TestAuditAuthFailureRate(t *testing.T) {
	r := newRegistry(t)
	ctx := registry.WithRemote(context.Background(), "127.0.0.7")
	const n = 600
	for range n {
		r.RecordAuthFailure(ctx, "POST", "/v1/sessions", fmt.Errorf("%w: wrong session token", registry.ErrUnauthenticated))
	}
	var recs []registry.AuditRecord
	eventually(t, 10*time.Second, "every failure counted", func() bool {
		recs = auditLog(t, r, registry.AuditFilter{Action: registry.AuditAuthFailed})
		total := 0
		for _, a := range recs {
			total += a.Count
		}
		return total == n
	})
	single, summaries := 0, 0
	for _, a := range recs {
		if a.Count == 1 {
			single++
		} else {
			summaries++
		}
	}
	if single > 150 || summaries == 0 {
		t.Fatalf("%d single records and %d summaries for %d failures at once; want the burst (100, plus the refill) one by one and the rest summed up", single, summaries, n)
	}
}

// TestAuditRetention: the audit duty prunes records older than the
// retention; with retention 0 nothing is written and the duty deletes the
// log.
func TestAuditRetention(t *testing.T) {
	r := newRegistry(t, func(c *registry.Config) {
		c.AuditRetention = 2 * time.Second
		c.HistoryPruneInterval = 200 * time.Millisecond
	})
	ctx := context.Background()
	open(t, r, admin, registry.OpenRequest{User: "alice", Module: "sales"})
	if n := len(auditLog(t, r, registry.AuditFilter{})); n != 1 {
		t.Fatalf("%d records, want the login", n)
	}
	dctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.KeepAudit(dctx) }()
	eventually(t, 10*time.Second, "the login's record pruned", func() bool { return len(auditLog(t, r, registry.AuditFilter{})) == 0 })
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	open(t, r, admin, registry.OpenRequest{User: "bob", Module: "sales"})
	none := newRegistry(t, func(c *registry.Config) { c.AuditRetention = 0; c.Node = "n0" }) // wipes etcd
	open(t, r, admin, registry.OpenRequest{User: "bob", Module: "sales"})
	dctx, stop = context.WithCancel(ctx)
	go func() { done <- none.KeepAudit(dctx) }()
	defer func() { stop(); <-done }()
	eventually(t, 5*time.Second, "the audit log deleted", func() bool { return len(auditLog(t, none, registry.AuditFilter{})) == 0 })
	s := open(t, none, admin, registry.OpenRequest{User: "carol", Module: "sales"})
	if _, err := none.Kill(ctx, admin, s.ID, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := none.Open(ctx, admin, registry.OpenRequest{User: "x/y"}); err == nil {
		t.Fatal("a malformed open succeeded")
	}
	none.RecordAuthFailure(ctx, "GET", "/v1/sessions", registry.ErrUnauthenticated)
	time.Sleep(1500 * time.Millisecond) // the writer flushes within a second
	if recs := auditLog(t, none, registry.AuditFilter{}); len(recs) != 0 {
		t.Fatalf("retention 0 recorded %d records: %+v", len(recs), recs)
	}
}
