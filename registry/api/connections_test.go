package api_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/roster-dev/roster/registry"
)

// TestConnectionsOverHTTP: a shared connection, a session through it refused
// for a missing service and opened once the user has it, a batch heartbeat
// with a per-session result, and a logout after the connection's death that
// warns.
func TestConnectionsOverHTTP(t *testing.T) {
	var app registry.NewToken
	if a := call(t, "POST", "/v1/tokens", adminToken, []byte(`{"name":"http-app","role":"client"}`)); a.status != 201 || json.Unmarshal(a.body, &app) != nil {
		t.Fatalf("token: %d %s", a.status, a.body)
	}
	a := call(t, "POST", "/v1/connections", app.Token, []byte(`{"service":"http-web","host":"app-1","pid":7,"parameters":{"db":"prod"},"ttl_seconds":60,"service_timeout_seconds":300}`))
	var conn registry.Connection
	if a.status != 201 || json.Unmarshal(a.body, &conn) != nil || conn.Kind != registry.ConnShared || conn.Owner != "http-app" || conn.State != "live" {
		t.Fatalf("register: %d %s", a.status, a.body)
	}
	open := fmt.Sprintf(`{"user":"http-carol","module":"sales","connections":[%q]}`, conn.ID)
	a = call(t, "POST", "/v1/sessions", app.Token, []byte(open))
	if a.status != 403 || a.code() != "service_not_allowed" || !strings.Contains(a.message(), "user http-carol of tenant default may not use service http-web") {
		t.Fatalf("open without the service: %d %s", a.status, a.body)
	}
	if a := call(t, "PUT", "/v1/users/default/http-carol", adminToken, []byte(`{"rights":[],"services":["http-web"]}`)); a.status != 200 || !strings.Contains(string(a.body), `"services":["http-web"]`) {
		t.Fatalf("put user: %d %s", a.status, a.body)
	}
	a = call(t, "POST", "/v1/sessions", app.Token, []byte(open))
	var s registry.OpenedSession
	if a.status != 201 || json.Unmarshal(a.body, &s) != nil || !strings.Contains(string(a.body), `"connections":[{"id":"`+conn.ID+`","kind":"shared","service":"http-web","service_timeout_seconds":300}]`) {
		t.Fatalf("open: %d %s", a.status, a.body)
	}
	gone := openSession(t, "http-dave", "sales") // not through the connection
	body := fmt.Sprintf(`{"connection":%q,"sessions":[%q,%q],"active":[%q]}`, conn.ID, s.ID, gone.ID, s.ID)
	a = call(t, "POST", "/v1/heartbeats", app.Token, []byte(body))
	want := `{"connection":{"id":"` + conn.ID + `","ttl_seconds":60,"expires_in_seconds":60},"results":[{"id":"` + s.ID + `","expires_in_seconds":60},` +
		`{"id":"` + gone.ID + `","error":{"code":"permission_denied","message":"session ` + gone.ID + ` was not opened through connection ` + conn.ID +
		`, so its heartbeats are not the connection's to send"}}],"renewed":1,"failed":1}` + "\n"
	if a.status != 200 || string(a.body) != want {
		t.Fatalf("batch heartbeat: %d\n%s\nwant\n%s", a.status, a.body, want)
	}
	if a := call(t, "GET", "/v1/connections?service=http-web", adminToken, nil); a.status != 200 || !strings.Contains(string(a.body), `"sessions":1`) {
		t.Fatalf("list: %d %s", a.status, a.body)
	}
	if a := call(t, "GET", "/v1/sessions?connection="+conn.ID, adminToken, nil); a.status != 200 || !strings.Contains(string(a.body), `"total":1`) {
		t.Fatalf("sessions of the connection: %d %s", a.status, a.body)
	}
	if a := call(t, "DELETE", "/v1/connections/"+conn.ID, app.Token, nil); a.status != 200 || !strings.Contains(string(a.body), `"state":"dead"`) ||
		!strings.Contains(string(a.body), `"ended_by":"http-app"`) {
		t.Fatalf("delete: %d %s", a.status, a.body)
	}
	a = call(t, "POST", "/v1/heartbeats", app.Token, []byte(body))
	if a.status != 409 || a.code() != "connection_gone" || !strings.Contains(a.message(), "it was deleted by http-app") {
		t.Fatalf("batch heartbeat of the dead connection: %d %s", a.status, a.body)
	}
	a = call(t, "DELETE", "/v1/sessions/"+s.ID, app.Token, nil)
	if a.status != 200 || !strings.Contains(string(a.body), `"warning":"shared connection `+conn.ID+` (service http-web) died at`) {
		t.Fatalf("logout before the service timeout ran out: %d %s", a.status, a.body)
	}
	if a := call(t, "POST", "/v1/cleanup", adminToken, []byte(`{"dry_run":true}`)); a.status != 200 || !strings.Contains(string(a.body), `"dry_run":true`) {
		t.Fatalf("clean-up: %d %s", a.status, a.body)
	}
	if a := call(t, "PUT", "/v1/policies/module/http-sales", adminToken, []byte(`{"idle_timeout_seconds":1800}`)); a.status != 200 || !strings.Contains(string(a.body), `"scope":"module","name":"http-sales","idle_timeout_seconds":1800`) {
		t.Fatalf("put policy: %d %s", a.status, a.body)
	}
	if a := call(t, "DELETE", "/v1/policies/module/http-sales", adminToken, nil); a.status != 200 {
		t.Fatalf("delete policy: %d %s", a.status, a.body)
	}
	if a := call(t, "GET", "/v1/policies/module/http-sales", adminToken, nil); a.status != 404 || a.code() != "not_found" {
		t.Fatalf("deleted policy: %d %s", a.status, a.body)
	}
	d := call(t, "POST", "/v1/sessions", adminToken, []byte(`{"user":"http-carol","module":"crm","connection":{"service":"http-web"}}`))
	var ds registry.OpenedSession
	if d.status != 201 || json.Unmarshal(d.body, &ds) != nil {
		t.Fatalf("open with a direct connection: %d %s", d.status, d.body)
	}
	if a := call(t, "DELETE", "/v1/connections/"+ds.Connections[0].ID, adminToken, nil); a.status != 409 || a.code() != "direct_connection" {
		t.Fatalf("delete of a direct connection: %d %s", a.status, a.body)
	}
	if a := call(t, "POST", "/v1/sessions/"+ds.ID+"/heartbeat", ds.Token, []byte(`{"active":true}`)); a.status != 200 {
		t.Fatalf("active heartbeat: %d %s", a.status, a.body)
	}
}

// TestConnectionBadInput: each new field and query parameter is checked by
// name, and a bad request writes nothing.
func TestConnectionBadInput(t *testing.T) {
	id := strings.Repeat("ab", 16)
	tests := []struct {
		name, method, path, body string
		code, mention            string
	}{
		{"register with an unknown field", "POST", "/v1/connections", `{"service":"web","timeout":5}`, "invalid_json", `"timeout"`},
		{"register without service", "POST", "/v1/connections", `{"host":"h"}`, "invalid_argument", "service"},
		{"register a direct one", "POST", "/v1/connections", `{"kind":"direct","service":"web"}`, "invalid_argument", "kind"},
		{"parameters too many", "POST", "/v1/connections", `{"service":"web","parameters":{` + params(33) + `}}`, "invalid_argument", "parameters: has 33 entries"},
		{"service timeout not a number", "POST", "/v1/connections", `{"service":"web","service_timeout_seconds":"5m"}`, "invalid_json", "service_timeout_seconds"},
		{"service timeout too long", "POST", "/v1/connections", `{"service":"web","service_timeout_seconds":90000}`, "invalid_argument", "service_timeout_seconds"},
		{"list by a bad kind", "GET", "/v1/connections?kind=pooled", ``, "invalid_argument", "kind"},
		{"list by a bad state", "GET", "/v1/connections?state=zombie", ``, "invalid_argument", "state"},
		{"list by an unknown parameter", "GET", "/v1/connections?colour=red", ``, "invalid_argument", "colour"},
		{"list by an empty service", "GET", "/v1/connections?service=", ``, "invalid_argument", "service"},
		{"get a malformed id", "GET", "/v1/connections/xyz", ``, "invalid_argument", "id"},
		{"get with a query", "GET", "/v1/connections/" + id + "?x=1", ``, "invalid_argument", "x"},
		{"sessions by a malformed connection", "GET", "/v1/sessions?connection=xyz", ``, "invalid_argument", "connection"},
		{"open with a bad direct connection", "POST", "/v1/sessions", `{"user":"u","module":"m","connection":{"service":"a/b"}}`, "invalid_argument", "connection.service"},
		{"open with an unknown connection field", "POST", "/v1/sessions", `{"user":"u","module":"m","connection":{"service":"s","service_timeout_seconds":5}}`, "invalid_json", "service_timeout_seconds"},
		{"open with a malformed shared id", "POST", "/v1/sessions", `{"user":"u","module":"m","connections":["x"]}`, "invalid_argument", "connections[0]"},
		{"heartbeat with active not a bool", "POST", "/v1/sessions/" + id + "/heartbeat", `{"active":"yes"}`, "invalid_json", "active"},
		{"batch without connection", "POST", "/v1/heartbeats", `{"sessions":[]}`, "invalid_argument", "connection"},
		{"batch with a malformed session", "POST", "/v1/heartbeats", `{"connection":"` + id + `","sessions":["x"]}`, "invalid_argument", "sessions[0]"},
		{"batch with an unknown field", "POST", "/v1/heartbeats", `{"connection":"` + id + `","session":[]}`, "invalid_json", `"session"`},
		{"policy of a bad scope", "PUT", "/v1/policies/pool/blue", `{"idle_timeout_seconds":60}`, "invalid_argument", "scope"},
		{"policy with nothing set", "PUT", "/v1/policies/tenant/acme", `{}`, "invalid_argument", "set at least one"},
		{"policy with a negative timeout", "PUT", "/v1/policies/tenant/acme", `{"idle_timeout_seconds":-5}`, "invalid_argument", "idle_timeout_seconds"},
		{"policies with a query", "GET", "/v1/policies?tenant=acme", ``, "invalid_argument", "tenant"},
		{"clean-up with an unknown field", "POST", "/v1/cleanup", `{"dryrun":true}`, "invalid_json", `"dryrun"`},
		{"clean-up with a query", "POST", "/v1/cleanup?now=1", ``, "invalid_argument", "now"},
		{"user with a bad service", "PUT", "/v1/users/default/bob", `{"rights":[],"services":["a/b"]}`, "invalid_argument", "services[0]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var body []byte
			if tt.method != "GET" {
				body = []byte(tt.body)
			}
			a := call(t, tt.method, tt.path, adminToken, body)
			if a.status != 400 || a.code() != tt.code || !strings.Contains(a.message(), tt.mention) {
				t.Fatalf("%d %s; want 400 %s mentioning %q", a.status, a.body, tt.code, tt.mention)
			}
		})
	}
	if a := call(t, "GET", "/v1/connections?service=web", adminToken, nil); a.status != 200 || string(a.body) != `{"connections":[]}`+"\n" {
		t.Fatalf("a bad request registered a connection: %s", a.body)
	}
	if a := call(t, "GET", "/v1/policies/tenant/acme", adminToken, nil); a.status != 404 {
		t.Fatalf("a bad policy was stored: %d %s", a.status, a.body)
	}
}

func params(n int) string {
	var parts []string
	for i := range n {
		parts = append(parts, fmt.Sprintf(`"k%d":"v"`, i))
	}
	return strings.Join(parts, ",")
}
