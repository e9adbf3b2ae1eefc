package registry_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/roster-dev/roster/registry"
)

// TestOpenBadInput: every bad field is refused with an error naming it,
// and nothing is written.
func TestOpenBadInput(t *testing.T) {
	r := newRegistry(t)
	ctx := context.Background()
	ok := registry.OpenRequest{User: "alice", Module: "sales"}
	with := func(change func(*registry.OpenRequest)) registry.OpenRequest {
		req := ok
		change(&req)
		return req
	}
	long := strings.Repeat("x", 129)
	tests := []struct {
		name  string
		req   registry.OpenRequest
		field string
	}{
		{"no user", with(func(q *registry.OpenRequest) { q.User = "" }), "user"},
		{"no module", with(func(q *registry.OpenRequest) { q.Module = "" }), "module"},
		{"user too long", with(func(q *registry.OpenRequest) { q.User = long }), "user"},
		{"user with slash", with(func(q *registry.OpenRequest) { q.User = "al/ice" }), "user"},
		{"user is dot-dot", with(func(q *registry.OpenRequest) { q.User = ".." }), "user"},
		{"module with newline", with(func(q *registry.OpenRequest) { q.Module = "sa\nles" }), "module"},
		{"tenant with NUL", with(func(q *registry.OpenRequest) { q.Tenant = "a\x00b" }), "tenant"},
		{"tenant invalid UTF-8", with(func(q *registry.OpenRequest) { q.Tenant = "a\xffb" }), "tenant"},
		{"pool with zero-width space", with(func(q *registry.OpenRequest) { q.Pool = "blue\u200b" }), "pool"},
		{"host too long", with(func(q *registry.OpenRequest) { q.Host = long }), "host"},
		{"host with control", with(func(q *registry.OpenRequest) { q.Host = "PC\x07" }), "host"},
		{"os too long", with(func(q *registry.OpenRequest) { q.OS = long }), "os"},
		{"negative pid", with(func(q *registry.OpenRequest) { q.PID = -1 }), "pid"},
		{"unknown kind", with(func(q *registry.OpenRequest) { q.ClientKind = "robot" }), "client_kind"},
		{"ttl below min", with(func(q *registry.OpenRequest) { q.TTLSeconds = -5 }), "ttl_seconds"},
		{"ttl above max", with(func(q *registry.OpenRequest) { q.TTLSeconds = 86401 }), "ttl_seconds"},
		{"too many labels", with(func(q *registry.OpenRequest) {
			q.Labels = map[string]string{}
			for _, k := range strings.Split("a b c d e f g h i j k l m n o p q", " ") {
				q.Labels[k] = "v"
			}
		}), "labels"},
		{"label key with space", with(func(q *registry.OpenRequest) { q.Labels = map[string]string{"a b": "v"} }), "labels"},
		{"empty label key", with(func(q *registry.OpenRequest) { q.Labels = map[string]string{"": "v"} }), "labels"},
		{"label value too long", with(func(q *registry.OpenRequest) { q.Labels = map[string]string{"k": strings.Repeat("v", 257)} }), "labels[k]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := r.Open(ctx, admin, tt.req)
			var fe *registry.FieldError
			if !errors.As(err, &fe) || fe.Field != tt.field || !errors.Is(err, registry.ErrInvalidArgument) {
				t.Fatalf("err = %v, want a FieldError on %q", err, tt.field)
			}
		})
	}
	// Nothing but the node's alive beacon and the refusals' audit records may be there.
	resp, err := etcd.Client().Get(ctx, "/roster/v1/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range resp.Kvs {
		if string(kv.Key) != "/roster/v1/alive" && !strings.HasPrefix(string(kv.Key), auditPrefix) {
			t.Errorf("a bad open left key %s", kv.Key)
		}
	}
	if recs := auditLog(t, r, registry.AuditFilter{Action: registry.AuditLoginRefused, Code: "invalid_argument"}); len(recs) != len(tests) {
		t.Errorf("%d refusals recorded with code invalid_argument, want %d", len(recs), len(tests))
	}
	if n := leaseCount(t); n != 0 {
		t.Fatalf("bad opens left %d leases", n)
	}
	// The longest allowed values pass.
	open(t, r, admin, with(func(q *registry.OpenRequest) {
		q.User, q.Host, q.TTLSeconds = strings.Repeat("ü", 64), strings.Repeat("h", 128), 86400
	}))
}

func TestBadIDsAndFilters(t *testing.T) {
	r := newRegistry(t)
	ctx := context.Background()
	for _, id := range []string{"", "abc", strings.Repeat("A", 32), strings.Repeat("g", 32), "../../../etc/passwd", strings.Repeat("a", 33)} {
		t.Run("id "+id, func(t *testing.T) {
			for name, call := range map[string]func() error{
				"get":       func() error { _, err := r.Get(ctx, admin, id); return err },
				"heartbeat": func() error { _, err := r.Heartbeat(ctx, admin, id); return err },
				"logout":    func() error { _, err := r.Logout(ctx, admin, id); return err },
				"kill":      func() error { _, err := r.Kill(ctx, admin, id, ""); return err },
			} {
				var fe *registry.FieldError
				if err := call(); !errors.As(err, &fe) || fe.Field != "id" {
					t.Errorf("%s: %v, want an id error", name, err)
				}
			}
		})
	}
	filters := []struct {
		name  string
		f     registry.ListFilter
		field string
	}{
		{"limit too big", registry.ListFilter{Limit: 1001}, "limit"},
		{"negative limit", registry.ListFilter{Limit: -1}, "limit"},
		{"cursor not base64", registry.ListFilter{Cursor: "!!!"}, "cursor"},
		{"cursor outside the index", registry.ListFilter{Cursor: "c2Vzc2lvbnMv"}, "cursor"},
		{"user with slash", registry.ListFilter{User: "a/b"}, "user"},
		{"unknown kind", registry.ListFilter{ClientKind: "robot"}, "client_kind"},
	}
	for _, tt := range filters {
		t.Run(tt.name, func(t *testing.T) {
			_, err := r.List(ctx, admin, tt.f)
			var fe *registry.FieldError
			if !errors.As(err, &fe) || fe.Field != tt.field {
				t.Fatalf("err = %v, want a FieldError on %q", err, tt.field)
			}
		})
	}
	s := open(t, r, admin, registry.OpenRequest{User: "u", Module: "m"})
	if _, err := r.Kill(ctx, admin, s.ID, strings.Repeat("r", 1025)); err == nil {
		t.Fatal("an over-long kill reason was accepted")
	}
	if _, err := r.Get(ctx, admin, s.ID); err != nil {
		t.Fatalf("a refused kill ended the session: %v", err)
	}
}
