package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/roster-dev/roster/registry"
)

const testID = "0193f2a1b2c3d4e5f60718293a4b5c6d"

// Answers of the fake API, spaced oddly on purpose: -o json must print
// them byte for byte.
const (
	sessionJSON = `{"id":"` + testID + `", "tenant":"default","user":"alice","module":"sales","host":"PC-17","pid":4242,` +
		`"os":"windows","client_kind":"ui","pool":"default","site":"","node":"n1","started_at":"2026-11-21T10:02:00Z",` +
		`"ttl_seconds":1,"expires_in_seconds":1,"labels":{},"opened_by":"admin"}`
	openedJSON = `{"id":"` + testID + `","tenant":"default","user":"alice","module":"sales","host":"PC-17","pid":4242,` +
		`"os":"windows","client_kind":"ui","pool":"default","site":"","node":"n1","started_at":"2026-11-21T10:02:00Z",` +
		`"ttl_seconds":1,"expires_in_seconds":1,"labels":{},"opened_by":"admin","token":"rs1.secret"}`
	session2JSON = `{"id":"0193f2a1b2c3d4e5f60718293a4b5c6e","tenant":"default","user":"bob","module":"crm","host":"",` +
		`"pid":0,"os":"","client_kind":"ui","pool":"default","site":"","node":"n2","started_at":"2026-11-21T10:03:00Z",` +
		`"ttl_seconds":60,"expires_in_seconds":30,"labels":{},"opened_by":"admin"}`
	historyRec1JSON = `{"id":"` + testID + `","tenant":"default","user":"alice","module":"sales","host":"PC-17","pid":4242,` +
		`"os":"windows","client_kind":"ui","pool":"default","site":"","node":"n1","labels":{},"opened_by":"admin",` +
		`"started_at":"2026-11-21T10:02:00Z","ended_at":"2026-11-21T11:00:00Z", "duration_seconds":3480,"reason":"killed",` +
		`"by":"ops","message":"PC crashed","rev":2117}`
	historyRec2JSON = `{"id":"0193f2a1b2c3d4e5f60718293a4b5c6e","tenant":"default","user":"bob","module":"crm","host":"",` +
		`"pid":0,"os":"","client_kind":"ui","pool":"default","site":"","node":"n2","labels":{},"opened_by":"admin",` +
		`"started_at":"2026-11-21T10:03:00Z","ended_at":"2026-11-21T10:04:30Z","duration_seconds":90,"reason":"expired",` +
		`"by":"lease","rev":2001}`
	history1JSON = `{"history": [` + historyRec1JSON + `], "next_cursor": "h1"}`
	history2JSON = `{"history":[` + historyRec2JSON + `],"next_cursor":""}`
	page1JSON    = `{"sessions": [` + sessionJSON + `], "total": 2, "next_cursor": "c1"}`
	page2JSON    = `{"sessions":[` + session2JSON + `],"total":2,"next_cursor":""}`
	tokenJSON    = `{"name":"ops","role":"operator","created_at":"2026-11-21T10:02:00Z","token":"rt1.secret"}`
	membersJSON  = `{"members":[{"name":"n1","site":"dc1","pool":"default","api_url":"http://10.0.0.1:7400",` +
		`"gossip":"alive","etcd_role":"voter","leader":true,"healthy":true,"address":"10.0.0.1:7403",` +
		`"etcd_member_id":"8e9e05c52164694d","peer_url":"http://10.0.0.1:7402"}, ` +
		`{"name":"n2","site":"","pool":"default","api_url":"http://10.0.0.2:7400","gossip":"suspect",` +
		`"etcd_role":"learner","leader":false,"healthy":false}]}`
)

// fakeAPI answers a few API calls with canned JSON and records every request.
type fakeAPI struct {
	*httptest.Server
	mu       sync.Mutex
	requests []string // "METHOD /path?query token"
	killed   bool     // heartbeats answer 410 killed
	// events are the SSE blocks a session's event stream sends after its
	// opening id; the stream then stays open.
	events string
	// snapshot is the body of GET /v1/cluster/snapshot, sent in chunks of
	// chunk bytes (default: all at once) pace apart.
	snapshot []byte
	chunk    int
	pace     time.Duration
}

func newFakeAPI(t *testing.T) *fakeAPI {
	t.Helper()
	f := &fakeAPI{}
	mux := http.NewServeMux()
	answer := func(status int, body string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(status)
			fmt.Fprint(w, body)
		}
	}
	mux.HandleFunc("POST /v1/sessions", answer(http.StatusCreated, openedJSON))
	mux.HandleFunc("GET /v1/sessions/"+testID, answer(http.StatusOK, sessionJSON))
	mux.HandleFunc("GET /v1/sessions/{id}", answer(http.StatusNotFound,
		`{"error":{"code":"not_found","message":"session 0193f2a1b2c3d4e5f60718293a4b5c6f not found"}}`))
	mux.HandleFunc("DELETE /v1/sessions/{id}", answer(http.StatusOK,
		`{"id":"`+testID+`","reason":"closed","by":"admin","at":"2026-11-21T11:00:00Z"}`))
	mux.HandleFunc("POST /v1/sessions/{id}/heartbeat", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		killed := f.killed
		f.mu.Unlock()
		if killed {
			answer(http.StatusGone, `{"error":{"code":"killed","message":"session `+testID+
				` was killed by admin at 2026-11-21T11:00:00Z: PC crashed"}}`)(w, r)
			return
		}
		answer(http.StatusOK, `{"id":"`+testID+`","ttl_seconds":1,"expires_in_seconds":1}`)(w, r)
	})
	mux.HandleFunc("GET /v1/sessions/{id}/events", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		events := f.events
		f.mu.Unlock()
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, "id: 1\n\n"+events)
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	})
	mux.HandleFunc("GET /v1/sessions", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("cursor") == "c1" {
			answer(http.StatusOK, page2JSON)(w, r)
			return
		}
		answer(http.StatusOK, page1JSON)(w, r)
	})
	mux.HandleFunc("GET /v1/history", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("cursor") == "h1" {
			answer(http.StatusOK, history2JSON)(w, r)
			return
		}
		answer(http.StatusOK, history1JSON)(w, r)
	})
	mux.HandleFunc("POST /v1/tokens", answer(http.StatusCreated, tokenJSON))
	mux.HandleFunc("GET /v1/cluster/members", answer(http.StatusOK, membersJSON))
	mux.HandleFunc("GET /v1/cluster/snapshot", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		data, chunk, pace := f.snapshot, f.chunk, f.pace
		f.mu.Unlock()
		if chunk == 0 {
			chunk = len(data)
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		for off := 0; off < len(data); off += chunk {
			w.Write(data[off:min(off+chunk, len(data))])
			w.(http.Flusher).Flush()
			select {
			case <-time.After(pace):
			case <-r.Context().Done():
				return
			}
		}
	})
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		req := r.Method + " " + r.URL.Path
		if r.URL.RawQuery != "" {
			req += "?" + r.URL.RawQuery
		}
		f.requests = append(f.requests, req+" "+strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer "))
		f.mu.Unlock()
		if r.Header.Get("Authorization") == "" {
			answer(http.StatusUnauthorized, `{"error":{"code":"unauthenticated","message":"no bearer token"}}`)(w, r)
			return
		}
		mux.ServeHTTP(w, r)
	}))
	t.Cleanup(f.Close)
	return f
}

func (f *fakeAPI) env() map[string]string {
	return map[string]string{envEndpoints: f.URL, envToken: "rt1.admin"}
}

func (f *fakeAPI) seen() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.requests)
}

func TestJSONOutputIsTheAPIs(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{name: "session get", args: []string{"session", "get", testID, "-o", "json"}, want: sessionJSON},
		{name: "session open", args: []string{"-o", "json", "session", "open", "--user", "alice", "--module", "sales"}, want: openedJSON},
		{name: "one page", args: []string{"session", "list", "--output=json"}, want: page1JSON},
		{name: "token create", args: []string{"token", "create", "--role", "operator", "--name", "ops", "-ojson"}, want: tokenJSON},
		{name: "members", args: []string{"members", "-o", "json"}, want: membersJSON},
		{name: "history", args: []string{"history", "-o", "json"}, want: history1JSON},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeAPI(t)
			code, stdout, stderr := runCLI(t, f.env(), tt.args...)
			if code != exitOK {
				t.Fatalf("exit status %d; stderr:\n%s", code, stderr)
			}
			if stdout != tt.want+"\n" {
				t.Errorf("stdout:\n%s\nwant the API's answer:\n%s", stdout, tt.want)
			}
		})
	}
}

func TestListAll(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{
			name: "json merges the pages",
			args: []string{"session", "list", "--all", "-o", "json"},
			want: `{"sessions":[` + sessionJSON + `,` + session2JSON + `],"total":2,"next_cursor":""}` + "\n",
		},
		{
			name: "table",
			args: []string{"session", "list", "--all"},
			want: "" +
				"ID                                TENANT   USER   MODULE  HOST   POOL     NODE  STARTED               EXPIRES-IN\n" +
				"0193f2a1b2c3d4e5f60718293a4b5c6d  default  alice  sales   PC-17  default  n1    2026-11-21T10:02:00Z  1s\n" +
				"0193f2a1b2c3d4e5f60718293a4b5c6e  default  bob    crm     -      default  n2    2026-11-21T10:03:00Z  30s\n",
		},
		{
			name: "history json merges the pages",
			args: []string{"history", "--all", "-o", "json"},
			want: `{"history":[` + historyRec1JSON + `,` + historyRec2JSON + `],"next_cursor":""}` + "\n",
		},
		{
			name: "history table",
			args: []string{"history", "--all"},
			want: "" +
				"ENDED                 DURATION  REASON   BY     USER   MODULE  HOST   SESSION\n" +
				"2026-11-21T11:00:00Z  58m       killed   ops    alice  sales   PC-17  0193f2a1b2c3d4e5f60718293a4b5c6d\n" +
				"2026-11-21T10:04:30Z  1m30s     expired  lease  bob    crm     -      0193f2a1b2c3d4e5f60718293a4b5c6e\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeAPI(t)
			code, stdout, stderr := runCLI(t, f.env(), tt.args...)
			if code != exitOK {
				t.Fatalf("exit status %d; stderr:\n%s", code, stderr)
			}
			if stdout != tt.want {
				t.Errorf("stdout:\n%s\nwant:\n%s", stdout, tt.want)
			}
			if n := len(f.seen()); n != 2 {
				t.Errorf("%d requests, want 2 pages: %q", n, f.seen())
			}
		})
	}
}

func TestCommandOutput(t *testing.T) {
	tests := []struct {
		name       string
		args       []string
		env        map[string]string // added to the fake's
		wantCode   int
		wantStdout string
		wantStderr []string
		wantCall   string // a request the fake must have seen
	}{
		{
			name: "one page notes the next", args: []string{"session", "list", "--user", "alice", "--limit", "1"},
			wantStdout: "ID", wantStderr: []string{"1 of 2 sessions shown; next page: --cursor c1 (or --all)"},
			wantCall: "GET /v1/sessions?limit=1&user=alice rt1.admin",
		},
		{
			name: "history notes the next page", args: []string{"history", "--user", "alice", "--since", "2026-11-21T10:00:00Z", "--reason", "killed", "--limit", "1"},
			wantStdout: "ENDED", wantStderr: []string{"roster: 1 record shown; next page: --cursor h1 (or --all)"},
			wantCall: "GET /v1/history?limit=1&reason=killed&since=2026-11-21T10%3A00%3A00Z&user=alice rt1.admin",
		},
		{
			name: "heartbeat with the session token", args: []string{"session", "heartbeat", testID, "--session-token", "rs1.s"},
			wantStdout: "session " + testID + " renewed: expires in 1s (ttl 1s)\n",
			wantCall:   "POST /v1/sessions/" + testID + "/heartbeat rs1.s",
		},
		{
			name: "close", args: []string{"session", "close", testID},
			wantStdout: "session " + testID + " closed by admin at 2026-11-21T11:00:00Z\n",
			wantCall:   "DELETE /v1/sessions/" + testID + " rt1.admin",
		},
		{
			name: "open warns that the session expires", args: []string{"session", "open", "--user", "alice", "--module", "sales"},
			wantStdout: "TOKEN       rs1.secret\n",
			wantStderr: []string{"expires in 1s unless heartbeated"},
		},
		{
			name: "token create warns once", args: []string{"token", "create", "--role", "operator", "--name", "ops"},
			wantStdout: "TOKEN    rt1.secret\n", wantStderr: []string{"only time the token is shown"},
		},
		{
			name: "members", args: []string{"members"},
			wantStdout: "" +
				"NAME  SITE  POOL     GOSSIP   ETCD     LEADER  HEALTHY  API\n" +
				"n1    dc1   default  alive    voter    yes     yes      http://10.0.0.1:7400\n" +
				"n2    -     default  suspect  learner  no      no       http://10.0.0.2:7400\n",
			wantCall: "GET /v1/cluster/members rt1.admin",
		},
		{
			name: "API error", args: []string{"session", "get", "0193f2a1b2c3d4e5f60718293a4b5c6f"},
			wantCode: exitError, wantStderr: []string{"roster: not_found: session 0193f2a1b2c3d4e5f60718293a4b5c6f not found\n"},
		},
		{
			name: "no token: a hint", args: []string{"token", "list"}, env: map[string]string{envToken: ""},
			wantCode:   exitError,
			wantStderr: []string{"roster: unauthenticated: no bearer token\nroster: hint: no token was given"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeAPI(t)
			env := f.env()
			for k, v := range tt.env {
				env[k] = v
			}
			code, stdout, stderr := runCLI(t, env, tt.args...)
			checkRun(t, code, stdout, stderr, f.seen(), tt.wantCode, []string{tt.wantStdout}, tt.wantStderr, tt.wantCall)
		})
	}
}

// checkRun checks a command's exit status, that its stdout and stderr contain
// the wanted pieces, and that the fake API saw wantCall (unless empty) among
// the requests seen.
func checkRun(t *testing.T, code int, stdout, stderr string, seen []string, wantCode int, wantStdout, wantStderr []string, wantCall string) {
	t.Helper()
	if code != wantCode {
		t.Fatalf("exit status %d, want %d; stderr:\n%s", code, wantCode, stderr)
	}
	for _, want := range wantStdout {
		if !strings.Contains(stdout, want) {
			t.Errorf("stdout does not contain %q:\n%s", want, stdout)
		}
	}
	for _, want := range wantStderr {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr does not contain %q:\n%s", want, stderr)
		}
	}
	if wantCall != "" && !slices.Contains(seen, wantCall) {
		t.Errorf("the fake did not see %q; it saw %q", wantCall, seen)
	}
}

func TestHold(t *testing.T) {
	deadline := time.Now().Add(3 * time.Second).UTC().Format(time.RFC3339Nano)
	requested := `id: 5
event: shutdown_requested
data: {"rev":5,"type":"shutdown_requested","shutdown":{"id":"0193f2a1b2c3d4e5f60718293a4b5c00","scope":"pool","pool":"blue",` +
		`"deadline":"` + deadline + `","message":"Release 26.4 goes live","requested_by":"ops"},"reason":"Release 26.4 goes live","by":"ops","at":"2026-11-21T11:00:00Z"}

`
	cancelled := `id: 6
event: shutdown_cancelled
data: {"rev":6,"type":"shutdown_cancelled","shutdown":{"id":"0193f2a1b2c3d4e5f60718293a4b5c00","scope":"pool","pool":"blue",` +
		`"deadline":"` + deadline + `","requested_by":"ops"},"by":"boss","at":"2026-11-21T11:00:00Z"}

`
	terminated := `id: 7
event: shutdown
data: {"rev":7,"type":"shutdown","session":{"id":"` + testID + `"},"reason":"Release 26.4 goes live","by":"ops","at":"2026-11-21T11:00:00Z"}

`
	tests := []struct {
		name       string
		killed     bool // the session is killed: heartbeats answer 410
		events     string
		args       []string
		signal     bool // "press Ctrl-C" after the first heartbeat
		wantCode   int
		wantStderr []string // in this order
		wantLogout bool
	}{
		{
			name: "signal logs out", signal: true, wantCode: exitOK,
			wantStderr: []string{"roster: session " + testID + " logged out\n"}, wantLogout: true,
		},
		{
			name: "killed", killed: true, wantCode: exitEnded,
			wantStderr: []string{"session " + testID + " was killed by admin at 2026-11-21T11:00:00Z: PC crashed\n"},
		},
		{
			name: "shutdown warns, counts down, ends terminated", events: requested + terminated, wantCode: exitEnded,
			wantStderr: []string{"roster: SHUTDOWN REQUESTED by ops: Release 26.4 goes live\n",
				"roster: please save and log off; the session is terminated at", "(request 0193f2a1b2c3d4e5f60718293a4b5c00)",
				"shut down by ops at 2026-11-21T11:00:00Z: Release 26.4 goes live\n"},
		},
		{
			name: "close on shutdown", events: requested, args: []string{"--close-on-shutdown"}, wantCode: exitOK,
			wantStderr: []string{"roster: SHUTDOWN REQUESTED by ops", "roster: logging out now, as shutdown request 0193f2a1b2c3d4e5f60718293a4b5c00 asks",
				"roster: session " + testID + " logged out\n"},
			wantLogout: true,
		},
		{
			name: "cancelled", events: requested + cancelled, signal: true, wantCode: exitOK,
			wantStderr: []string{"roster: SHUTDOWN REQUESTED by ops", "roster: shutdown request 0193f2a1b2c3d4e5f60718293a4b5c00 was cancelled by boss; the session goes on\n",
				"logged out\n"},
			wantLogout: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeAPI(t)
			f.mu.Lock()
			f.killed, f.events = tt.killed, tt.events
			f.mu.Unlock()
			ctx, signal := context.WithCancel(context.Background())
			defer signal()
			type result struct {
				code           int
				stdout, stderr string
			}
			done := make(chan result, 1)
			go func() {
				args := append([]string{"session", "open", "--user", "alice", "--module", "sales", "--hold"}, tt.args...)
				code, stdout, stderr := runCLICtx(ctx, t, f.env(), args...)
				done <- result{code, stdout, stderr}
			}()
			if tt.signal {
				// Wait for a heartbeat and the events, then "press Ctrl-C".
				deadline := time.Now().Add(5 * time.Second)
				for !slices.ContainsFunc(f.seen(), func(r string) bool { return strings.Contains(r, "/heartbeat rs1.secret") }) ||
					!slices.ContainsFunc(f.seen(), func(r string) bool { return strings.Contains(r, "/events rs1.secret") }) {
					if time.Now().After(deadline) {
						t.Fatalf("no heartbeat with the session token; requests: %q", f.seen())
					}
					time.Sleep(10 * time.Millisecond)
				}
				time.Sleep(100 * time.Millisecond) // the events are read
				signal()
			}
			var res result
			select {
			case res = <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("roster session open --hold did not return")
			}
			if res.code != tt.wantCode {
				t.Errorf("exit status %d, want %d; stderr:\n%s", res.code, tt.wantCode, res.stderr)
			}
			if !strings.Contains(res.stdout, "TOKEN       rs1.secret") {
				t.Errorf("the session was not printed:\n%s", res.stdout)
			}
			rest, ok := strings.CutPrefix(res.stderr, "roster: holding session "+testID)
			for _, want := range tt.wantStderr {
				_, after, found := strings.Cut(rest, want)
				ok = ok && found
				rest = after
			}
			if !ok || (len(tt.wantStderr) > 0 && !strings.HasSuffix(res.stderr, tt.wantStderr[len(tt.wantStderr)-1])) {
				t.Errorf("stderr:\n%s\nwant it to say it holds, then in order (ending with the last):\n%q", res.stderr, tt.wantStderr)
			}
			logout := slices.Contains(f.seen(), "DELETE /v1/sessions/"+testID+" rs1.secret")
			if logout != tt.wantLogout {
				t.Errorf("logout with the session token sent: %v, want %v", logout, tt.wantLogout)
			}
		})
	}
}

// TestShutdownCountdown: the countdown marks are every minute, every 10 s in
// the last minute and each of the last 5 seconds, also when the timer fires
// a little late.
func TestShutdownCountdown(t *testing.T) {
	var out bytes.Buffer
	now := time.Date(2026, 11, 21, 11, 0, 0, 0, time.UTC)
	w := &shutdownWatch{out: &lockedWriter{w: &out}, pending: map[string]*registry.ShutdownNotice{}}
	w.requested(&registry.ShutdownNotice{ID: "r1", Deadline: now.Add(150 * time.Second), Message: "save", RequestedBy: "ops"})
	var marks []string
	for at := now; ; {
		out.Reset()
		next := w.tick(at)
		if out.Len() > 0 {
			marks = append(marks, strings.TrimSpace(out.String()))
		}
		if next == 0 {
			break
		}
		at = at.Add(next + 30*time.Millisecond) // a timer fires late
	}
	want := []string{"2m", "1m", "50s", "40s", "30s", "20s", "10s", "5s", "4s", "3s", "2s", "1s"}
	if len(marks) != len(want) {
		t.Fatalf("marks %q, want %d of them: %q", marks, len(want), want)
	}
	for i, m := range marks {
		if m != "roster: shutdown in "+want[i]+": save" {
			t.Errorf("mark %d = %q, want shutdown in %s", i, m, want[i])
		}
	}
	if w.tick(now.Add(151*time.Second)) != 0 {
		t.Error("a countdown goes on past its deadline")
	}
}
