package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/roster-dev/roster/cluster/clustertest"
	"github.com/roster-dev/roster/registry"
	"github.com/roster-dev/roster/registry/api"
)

var (
	srv        *httptest.Server
	adminToken string
	reg        *registry.Registry
)

// TestMain serves the API from a registry on a real embedded etcd.
func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "roster-api-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	member, err := clustertest.StartIn(context.Background(), dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer member.Close()
	cfg := registry.DefaultConfig()
	cfg.Client, cfg.Node, cfg.MinTTL = member.Client(), "n1", time.Second
	reg, err = registry.New(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer reg.Close()
	if err := reg.Start(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	adminToken = registry.NewAPIToken()
	if _, err := reg.EnsureAdminToken(context.Background(), adminToken); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	srv = httptest.NewServer(api.New(api.Config{Registry: reg, Node: "n1"}))
	code := m.Run()
	srv.Close()
	reg.Close()
	member.Close()
	if code == 0 {
		if err := goleak.Find(goleak.IgnoreCurrent()); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			return 1
		}
	}
	return code
}

type answer struct {
	status int
	body   []byte
}

func (a answer) code() string {
	var e struct {
		Error struct{ Code, Message string } `json:"error"`
	}
	json.Unmarshal(a.body, &e)
	return e.Error.Code
}

func (a answer) message() string {
	var e struct {
		Error struct{ Code, Message string } `json:"error"`
	}
	json.Unmarshal(a.body, &e)
	return e.Error.Message
}

// call sends a request with a raw body (nil for none) and a token.
func call(t testing.TB, method, path, token string, body []byte) answer {
	t.Helper()
	return callAt(t, srv.URL, method, path, token, body)
}

// callAt is call to the API served at base.
func callAt(t testing.TB, base, method, path, token string, body []byte) answer {
	t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, base+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("%s %s: content type %q, body %s", method, path, ct, b)
	}
	return answer{resp.StatusCode, b}
}

func openSession(t testing.TB, user, module string) registry.OpenedSession {
	t.Helper()
	a := call(t, "POST", "/v1/sessions", adminToken, []byte(fmt.Sprintf(`{"user":%q,"module":%q,"host":"PC-17"}`, user, module)))
	if a.status != http.StatusCreated {
		t.Fatalf("open: %d %s", a.status, a.body)
	}
	var s registry.OpenedSession
	if err := json.Unmarshal(a.body, &s); err != nil {
		t.Fatal(err)
	}
	return s
}

func TestHealth(t *testing.T) {
	for _, path := range []string{"/healthz", "/readyz"} {
		a := call(t, "GET", path, "", nil)
		if a.status != 200 || !strings.Contains(string(a.body), `"node":"n1"`) {
			t.Fatalf("%s: %d %s", path, a.status, a.body)
		}
	}
}

func TestSessionLifecycleOverHTTP(t *testing.T) {
	s := openSession(t, "http-alice", "sales")
	if s.Token == "" || s.ExpiresInSeconds != 60 {
		t.Fatalf("opened %+v", s)
	}
	a := call(t, "POST", "/v1/sessions", adminToken, []byte(`{"user":"http-alice","module":"sales","host":"PC-99"}`))
	if a.status != 409 || a.code() != "already_logged_in" ||
		a.message() != fmt.Sprintf("user http-alice is already logged in to module sales on host PC-17 since %s and has no multi-login right", s.StartedAt.Format(time.RFC3339)) {
		t.Fatalf("second login: %d %s", a.status, a.body)
	}
	if a := call(t, "POST", "/v1/sessions/"+s.ID+"/heartbeat", s.Token, nil); a.status != 200 || !strings.Contains(string(a.body), `"expires_in_seconds":60`) {
		t.Fatalf("heartbeat: %d %s", a.status, a.body)
	}
	if a := call(t, "GET", "/v1/sessions/"+s.ID, s.Token, nil); a.status != 200 || strings.Contains(string(a.body), "token") {
		t.Fatalf("get: %d %s (must not show a token)", a.status, a.body)
	}
	if a := call(t, "GET", "/v1/sessions?user=http-alice", adminToken, nil); a.status != 200 || !strings.Contains(string(a.body), `"total":1`) {
		t.Fatalf("list: %d %s", a.status, a.body)
	}
	if a := call(t, "POST", "/v1/sessions/"+s.ID+"/kill", adminToken, []byte(`{"reason":"PC crashed"}`)); a.status != 200 {
		t.Fatalf("kill: %d %s", a.status, a.body)
	}
	a = call(t, "POST", "/v1/sessions/"+s.ID+"/heartbeat", s.Token, nil)
	if a.status != 410 || a.code() != "killed" || !strings.Contains(a.message(), "killed by admin") || !strings.Contains(a.message(), "PC crashed") {
		t.Fatalf("heartbeat after kill: %d %s", a.status, a.body)
	}
	c := openSession(t, "http-bob", "sales")
	if a := call(t, "DELETE", "/v1/sessions/"+c.ID, c.Token, nil); a.status != 200 || !strings.Contains(string(a.body), `"reason":"closed"`) {
		t.Fatalf("logout: %d %s", a.status, a.body)
	}
	if a := call(t, "POST", "/v1/sessions/"+c.ID+"/heartbeat", c.Token, nil); a.status != 410 || a.code() != "closed" {
		t.Fatalf("heartbeat after logout: %d %s", a.status, a.body)
	}
}

func TestAuth(t *testing.T) {
	var client registry.NewToken
	a := call(t, "POST", "/v1/tokens", adminToken, []byte(`{"name":"auth-app","role":"client"}`))
	if a.status != 201 || json.Unmarshal(a.body, &client) != nil || !strings.HasPrefix(client.Token, "rt1.") {
		t.Fatalf("create token: %d %s", a.status, a.body)
	}
	s := openSession(t, "auth-alice", "sales")
	tests := []struct {
		name, method, path, token string
		status                    int
		code                      string
	}{
		{"no token", "GET", "/v1/sessions", "", 401, "unauthenticated"},
		{"unknown token", "GET", "/v1/sessions", "rt1.AAAA", 401, "unauthenticated"},
		{"not a roster token", "GET", "/v1/sessions", "hello", 401, "unauthenticated"},
		{"forged session token of no session", "GET", "/v1/sessions", "rs1." + strings.Repeat("0", 32) + ".x", 401, "unauthenticated"},
		{"forged session token of a live session", "GET", "/v1/sessions", "rs1." + s.ID + ".x", 401, "unauthenticated"},
		{"client may not kill", "POST", "/v1/sessions/" + s.ID + "/kill", client.Token, 403, "permission_denied"},
		{"client may not read others' sessions", "GET", "/v1/sessions/" + s.ID, client.Token, 403, "permission_denied"},
		{"client may not create tokens", "POST", "/v1/tokens", client.Token, 403, "permission_denied"},
		{"session token may not change users", "PUT", "/v1/users/default/x", s.Token, 403, "permission_denied"},
		{"health needs no token", "GET", "/healthz", "", 200, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var body []byte
			if tt.method == "POST" || tt.method == "PUT" {
				switch {
				case strings.HasSuffix(tt.path, "/kill"):
					body = []byte(`{}`)
				case strings.HasPrefix(tt.path, "/v1/users/"):
					body = []byte(`{"rights":[]}`)
				default:
					body = []byte(`{"name":"x","role":"client"}`)
				}
			}
			a := call(t, tt.method, tt.path, tt.token, body)
			if a.status != tt.status || a.code() != tt.code {
				t.Fatalf("%d %s, want %d %s", a.status, a.body, tt.status, tt.code)
			}
		})
	}
	req, _ := http.NewRequest("GET", srv.URL+"/v1/sessions", nil)
	req.Header.Set("Authorization", "Basic "+adminToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 401 {
		t.Fatalf("Basic auth scheme: %d", resp.StatusCode)
	}
}

// TestBadInput: each bad request gets 400 with a message naming the
// field, and writes nothing.
func TestBadInput(t *testing.T) {
	s := openSession(t, "bad-alice", "sales")
	big := append([]byte(`{"user":"u","module":"m","host":"`), bytes.Repeat([]byte("x"), api.MaxBodyBytes)...)
	big = append(big, []byte(`"}`)...)
	tests := []struct {
		name, method, path string
		body               string
		code, mention      string
	}{
		{"unknown field", "POST", "/v1/sessions", `{"user":"u","module":"m","colour":"red"}`, "invalid_json", `"colour"`},
		{"wrong type", "POST", "/v1/sessions", `{"user":"u","module":"m","ttl_seconds":"60"}`, "invalid_json", "ttl_seconds"},
		{"not JSON", "POST", "/v1/sessions", `user=u`, "invalid_json", "not valid JSON"},
		{"trailing data", "POST", "/v1/sessions", `{"user":"u","module":"m"}{}`, "invalid_json", "after the JSON object"},
		{"empty body", "POST", "/v1/sessions", ``, "invalid_json", "empty"},
		{"oversized body", "POST", "/v1/sessions", string(big), "body_too_large", "1048576"},
		{"empty user", "POST", "/v1/sessions", `{"user":"","module":"m"}`, "invalid_argument", "user"},
		{"user too long", "POST", "/v1/sessions", `{"user":"` + strings.Repeat("u", 129) + `","module":"m"}`, "invalid_argument", "user"},
		{"slash in module", "POST", "/v1/sessions", `{"user":"u","module":"a/b"}`, "invalid_argument", "module"},
		{"control char in tenant", "POST", "/v1/sessions", `{"user":"u","module":"m","tenant":"a\u0001"}`, "invalid_argument", "tenant"},
		{"ttl too short", "POST", "/v1/sessions", `{"user":"u","module":"m","ttl_seconds":0.5}`, "invalid_json", "ttl_seconds"},
		{"ttl too long", "POST", "/v1/sessions", `{"user":"u","module":"m","ttl_seconds":999999}`, "invalid_argument", "ttl_seconds"},
		{"bad kind", "POST", "/v1/sessions", `{"user":"u","module":"m","client_kind":"robot"}`, "invalid_argument", "client_kind"},
		{"malformed id", "GET", "/v1/sessions/xyz", ``, "invalid_argument", "id"},
		{"malformed id on kill", "POST", "/v1/sessions/..%2f..%2fetc/kill", `{}`, "invalid_argument", "id"},
		{"kill with unknown field", "POST", "/v1/sessions/" + s.ID + "/kill", `{"reson":"typo"}`, "invalid_json", `"reson"`},
		{"heartbeat with a body", "POST", "/v1/sessions/" + s.ID + "/heartbeat", `{"x":1}`, "invalid_json", `"x"`},
		{"limit not a number", "GET", "/v1/sessions?limit=ten", ``, "invalid_argument", "limit"},
		{"limit too big", "GET", "/v1/sessions?limit=1001", ``, "invalid_argument", "limit"},
		{"malformed cursor", "GET", "/v1/sessions?cursor=%25%25", ``, "invalid_argument", "cursor"},
		{"unknown query parameter", "GET", "/v1/sessions?usr=alice", ``, "invalid_argument", "usr"},
		{"empty filter", "GET", "/v1/sessions?user=", ``, "invalid_argument", "user"},
		{"repeated query parameter", "GET", "/v1/sessions?user=a&user=b", ``, "invalid_argument", "user"},
		{"unknown right", "PUT", "/v1/users/default/bob", `{"rights":["root"]}`, "invalid_argument", "rights"},
		{"bad role", "POST", "/v1/tokens", `{"name":"n","role":"root"}`, "invalid_argument", "role"},
		{"token name with slash", "POST", "/v1/tokens", `{"name":"a/b","role":"client"}`, "invalid_argument", "name"},
		{"history since not RFC 3339", "GET", "/v1/history?since=yesterday", ``, "invalid_argument", `since: "yesterday" is not an RFC 3339 time`},
		{"history until before since", "GET", "/v1/history?since=2026-11-21T10:00:00Z&until=2026-11-21T09:00:00Z", ``, "invalid_argument", "until: "},
		{"history limit 0", "GET", "/v1/history?limit=0", ``, "invalid_argument", "limit"},
		{"history bad reason", "GET", "/v1/history?reason=Killed", ``, "invalid_argument", "reason"},
		{"history bad user", "GET", "/v1/history?user=a%2Fb", ``, "invalid_argument", "user"},
		{"history malformed cursor", "GET", "/v1/history?cursor=xyz", ``, "invalid_argument", "cursor"},
		{"history filter it has not", "GET", "/v1/history?pool=blue", ``, "invalid_argument", "pool"},
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
	// Nothing was written by any of them: bad-alice's session is the only
	// one of its user, and no session of user "u" exists.
	if a := call(t, "GET", "/v1/sessions?user=u", adminToken, nil); !strings.Contains(string(a.body), `"total":0`) {
		t.Fatalf("a bad request wrote a session: %s", a.body)
	}
	if a := call(t, "GET", "/v1/sessions/"+s.ID, adminToken, nil); a.status != 200 {
		t.Fatalf("a bad kill touched the session: %d %s", a.status, a.body)
	}
	if a := call(t, "GET", "/v1/users/default/bob", adminToken, nil); a.status != 404 {
		t.Fatalf("a bad user write left a user: %d %s", a.status, a.body)
	}
}

func TestUnknownEndpoint(t *testing.T) {
	if a := call(t, "GET", "/v2/everything", adminToken, nil); a.status != 404 || a.code() != "not_found" {
		t.Fatalf("%d %s", a.status, a.body)
	}
}
