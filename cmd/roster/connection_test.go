package main

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
)

const (
	connID    = "0193f2a1b2c3d4e5f60718293a4b5c70"
	directID  = "0193f2a1b2c3d4e5f60718293a4b5c71"
	bobID     = "0193f2a1b2c3d4e5f60718293a4b5c72"
	cleanJSON = `{"at":"2026-11-21T11:00:00Z",` +
		`"ended":[{"session":"` + bobID + `","tenant":"default","user":"bob","module":"sales","reason":"cleanup",` +
		`"why":"its shared connection ` + connID + ` (service web on host app-1) died at 2026-11-21T10:40:00Z and the service timeout of 10m0s ran out at 2026-11-21T10:50:00Z"}],` +
		`"skipped":[{"session":"` + testID + `","tenant":"default","user":"alice","module":"sales","reason":"cleanup",` +
		`"why":"it was opened at 2026-11-21T02:00:00Z, longer ago than the max lifetime of 8h0m0s (policy of module sales); but it is held by its live direct connection ` + directID +
		` (service erp-ui): the client holds the session, so clean-up leaves it alone and only a kill ends it (roster session kill ` + testID + `)"}]}`
	connsJSON = `{"connections":[` +
		`{"id":"` + directID + `","kind":"direct","service":"erp-ui","host":"PC-17","pid":4242,"os":"windows","parameters":{},"ttl_seconds":60,` +
		`"session":"` + testID + `","node":"n1","created_at":"2026-11-21T10:02:00Z","owner":"admin","state":"live","sessions":1},` +
		`{"id":"` + connID + `","kind":"shared","service":"web","host":"app-1","pid":7,"os":"linux","parameters":{"db":"prod"},"ttl_seconds":60,` +
		`"service_timeout_seconds":600,"node":"n1","created_at":"2026-11-21T10:02:00Z","owner":"appserver-1","state":"dead","sessions":3,` +
		`"died_at":"2026-11-21T10:40:00Z","ended_by":"lease","cleanup_at":"2026-11-21T10:50:00Z"}]}`
	userJSON   = `{"tenant":"default","user":"alice","rights":[],"services":["erp-ui","web"],"updated_at":"2026-11-21T10:02:00Z"}`
	policyJSON = `{"scope":"module","name":"sales","idle_timeout_seconds":1800,"max_lifetime_seconds":28800,"set_by":"admin","set_at":"2026-11-21T10:02:00Z"}`
	closedWarn = `{"id":"` + testID + `","reason":"closed","by":"admin","at":"2026-11-21T11:00:00Z",` +
		`"warning":"shared connection ` + connID + ` (service web) died at 2026-11-21T10:58:00Z and its service timeout runs until 2026-11-21T11:08:00Z (8m0s from now): until then clean-up leaves its sessions alone, in case the client comes back"}`
)

// connFake answers the connection, policy, clean-up and user calls with
// canned JSON and records each request with its body.
type connFake struct {
	*httptest.Server
	mu       sync.Mutex
	requests []string // "METHOD /path?query body"
}

func newConnFake(t *testing.T) *connFake {
	t.Helper()
	f := &connFake{}
	mux := http.NewServeMux()
	answer := func(status int, body string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(status)
			fmt.Fprint(w, body)
		}
	}
	mux.HandleFunc("POST /v1/cleanup", answer(200, cleanJSON))
	mux.HandleFunc("GET /v1/connections", answer(200, connsJSON))
	mux.HandleFunc("DELETE /v1/connections/{id}", answer(409, `{"error":{"code":"direct_connection","message":"connection `+directID+
		` is the direct connection of session `+testID+` and lives and dies with it; to end it, kill the session (roster session kill `+testID+`)"}}`))
	mux.HandleFunc("PUT /v1/users/{tenant}/{user}", answer(200, userJSON))
	mux.HandleFunc("PUT /v1/policies/{scope}/{name}", answer(200, policyJSON))
	mux.HandleFunc("DELETE /v1/sessions/{id}", answer(200, closedWarn))
	mux.HandleFunc("POST /v1/sessions/{id}/heartbeat", answer(200, `{"id":"`+testID+`","ttl_seconds":60,"expires_in_seconds":60}`))
	mux.HandleFunc("GET /v1/sessions", answer(200, `{"sessions":[],"total":0,"next_cursor":""}`))
	mux.HandleFunc("GET /v1/licenses", answer(200, `{"licenses":[]}`))
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		req := r.Method + " " + r.URL.Path
		if r.URL.RawQuery != "" {
			req += "?" + r.URL.RawQuery
		}
		f.mu.Lock()
		f.requests = append(f.requests, strings.TrimSpace(req+" "+string(body)))
		f.mu.Unlock()
		mux.ServeHTTP(w, r)
	}))
	t.Cleanup(f.Close)
	return f
}

func (f *connFake) seen() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.requests)
}

func TestConnectionCommands(t *testing.T) {
	tests := []struct {
		name       string
		args       []string
		wantCode   int
		wantStdout []string
		wantStderr []string
		wantCall   string // a request (with its body) the fake must have seen
	}{
		{
			name: "cleanup prints what it ended and skipped, and why", args: []string{"cleanup"},
			wantStdout: []string{
				"ended 1 session:\nSESSION",
				bobID + "  default  bob   sales   cleanup  its shared connection " + connID + " (service web on host app-1) died at",
				"skipped 1 session:\n",
				testID + "  default  alice  sales   cleanup  it was opened at 2026-11-21T02:00:00Z",
				"but it is held by its live direct connection " + directID + " (service erp-ui): the client holds the session, so clean-up leaves it alone and only a kill ends it",
			},
			wantCall: "POST /v1/cleanup {}",
		},
		{
			name: "cleanup dry run", args: []string{"cleanup", "--dry-run"},
			wantStdout: []string{"ended 1 session:"}, wantCall: `POST /v1/cleanup {"dry_run":true}`,
		},
		{
			name: "close warns while the service timeout runs", args: []string{"session", "close", testID},
			wantStdout: []string{"session " + testID + " closed by admin at 2026-11-21T11:00:00Z\n"},
			wantStderr: []string{"roster: warning: shared connection " + connID + " (service web) died at 2026-11-21T10:58:00Z and its service timeout runs until 2026-11-21T11:08:00Z"},
		},
		{
			name: "connection list", args: []string{"connection", "list", "--state", "dead"},
			wantStdout: []string{
				"ID                                KIND    SERVICE  HOST   PID   STATE  SESSIONS  EXPIRES-IN  CLEANUP-AT            OWNER\n",
				directID + "  direct  erp-ui   PC-17  4242  live   1         -           -                     admin\n",
				connID + "  shared  web      app-1  7     dead   3         -           2026-11-21T10:50:00Z  appserver-1\n",
			},
			wantCall: "GET /v1/connections?state=dead",
		},
		{
			name: "delete of a direct connection", args: []string{"connection", "delete", directID}, wantCode: exitError,
			wantStderr: []string{"roster: direct_connection: connection " + directID + " is the direct connection of session " + testID},
		},
		{
			name: "user set with services", args: []string{"user", "set", "alice", "--service", "web", "--service", "erp-ui,web"},
			wantStdout: []string{"TENANT   USER   RIGHTS  SERVICES    UPDATED\ndefault  alice  -       erp-ui,web  2026-11-21T10:02:00Z\n"},
			wantCall:   `PUT /v1/users/default/alice {"rights":[],"services":["web","erp-ui"]}`,
		},
		{
			name: "policy set", args: []string{"policy", "set", "--module", "sales", "--idle-timeout", "30m", "--max-lifetime", "8h"},
			wantStdout: []string{"SCOPE   NAME   IDLE-TIMEOUT  MAX-LIFETIME  SET-BY  SET-AT\nmodule  sales  30m           8h            admin   2026-11-21T10:02:00Z\n"},
			wantCall:   `PUT /v1/policies/module/sales {"idle_timeout_seconds":1800,"max_lifetime_seconds":28800}`,
		},
		{
			name: "active heartbeat", args: []string{"session", "heartbeat", testID, "--active"},
			wantStdout: []string{"renewed"}, wantCall: "POST /v1/sessions/" + testID + `/heartbeat {"active":true}`,
		},
		{
			name: "sessions of a connection", args: []string{"session", "list", "--connection", connID},
			wantStdout: []string{"ID"}, wantCall: "GET /v1/sessions?connection=" + connID,
		},
		{
			name: "license commands are reachable", args: []string{"license", "list"},
			wantStdout: []string{"TENANT  MODULE  SEATS  IN-USE  HOLDERS\n"}, wantCall: "GET /v1/licenses",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newConnFake(t)
			code, stdout, stderr := runCLI(t, map[string]string{envEndpoints: f.URL, envToken: "rt1.admin"}, tt.args...)
			checkRun(t, code, stdout, stderr, f.seen(), tt.wantCode, tt.wantStdout, tt.wantStderr, tt.wantCall)
		})
	}
}

// TestConnectionCommandLineErrors: bad flags of the new commands fail before
// any call, naming the flag.
func TestConnectionCommandLineErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"policy without scope", []string{"policy", "set", "--idle-timeout", "30m"}, "give --module M or --tenant T"},
		{"policy with both scopes", []string{"policy", "set", "--module", "m", "--tenant", "t", "--idle-timeout", "30m"}, "give --module or --tenant, not both"},
		{"policy without limits", []string{"policy", "set", "--module", "m"}, "give --idle-timeout, --max-lifetime or both"},
		{"policy with a fraction of a second", []string{"policy", "set", "--module", "m", "--idle-timeout", "1500ms"}, "--idle-timeout 1.5s: must be 0 or a positive whole number of seconds"},
		{"policy with a negative lifetime", []string{"policy", "set", "--tenant", "t", "--max-lifetime", "-1h"}, "--max-lifetime -1h0m0s"},
		{"policy with a slash", []string{"policy", "get", "--tenant", "a/b"}, `--tenant "a/b": want a tenant name without '/'`},
		{"connection get of a bad id", []string{"connection", "get", "app-1"}, `ID: "app-1" is not a connection id`},
		{"connection list of a bad kind", []string{"connection", "list", "--kind", "pooled"}, `--kind "pooled": want direct or shared`},
		{"connection list of a bad state", []string{"connection", "list", "--state", "zombie"}, `--state "zombie": want live or dead`},
		{"open through a bad connection id", []string{"session", "open", "--user", "a", "--module", "m", "--connection", "x"}, `--connection: "x" is not a connection id`},
		{"open with an empty service", []string{"session", "open", "--user", "a", "--module", "m", "--service", ""}, `--service "": want a service name`},
		{"list by a bad connection id", []string{"session", "list", "--connection", "x"}, `--connection: "x" is not a connection id`},
		{"user set with a bad service", []string{"user", "set", "alice", "--service", "a/b"}, `--service "a/b": want a service name without '/'`},
		{"cleanup with an argument", []string{"cleanup", "now"}, "cleanup takes no arguments, got 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := runCLI(t, nil, tt.args...)
			if code != exitUsage || stdout != "" || !strings.Contains(stderr, tt.want) {
				t.Fatalf("exit %d, stdout %q, stderr:\n%s\nwant exit 2 and %q", code, stdout, stderr, tt.want)
			}
		})
	}
}

func TestConnectionHelp(t *testing.T) {
	code, stdout, _ := runCLI(t, nil, "help")
	for _, want := range []string{"Licences:\n  license set MODULE", "Connections and clean-up:\n  connection list", "policy set", "cleanup  "} {
		if code != exitOK || !strings.Contains(stdout, want) {
			t.Errorf("roster help does not list %q:\n%s", want, stdout)
		}
	}
	code, stdout, _ = runCLI(t, nil, "cleanup", "--help")
	if code != exitOK || !strings.Contains(stdout, "never ended by clean-up") || !strings.Contains(stdout, "--dry-run") {
		t.Errorf("cleanup --help:\n%s", stdout)
	}
}
