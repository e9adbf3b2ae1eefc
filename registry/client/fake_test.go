package client_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/roster-dev/roster/cluster/clustertest/loopback"
	"github.com/roster-dev/roster/registry"
)

// fakeNode is a stand-in for a Roster node that implements just enough of
// docs/api.md (sessions, tombstones, the single-login rule) to test the
// client's own logic. It is not a model of the server.
type fakeNode struct {
	*httptest.Server

	mu       sync.Mutex
	seq      int
	live     map[string]*registry.OpenedSession
	ended    map[string]registry.Ended // tombstones
	forget   bool                      // answer 404 instead of 410 for ended sessions
	fail     int                       // answer 503 to this many heartbeats; < 0: all of them
	beats    int                       // successful heartbeats
	auths    []string                  // Authorization header of every heartbeat
	requests []string                  // "METHOD /path" of every request
}

func startFakeNode() *fakeNode {
	f := &fakeNode{live: map[string]*registry.OpenedSession{}, ended: map[string]registry.Ended{}}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/sessions", f.open)
	mux.HandleFunc("POST /v1/sessions/{id}/heartbeat", f.heartbeat)
	mux.HandleFunc("DELETE /v1/sessions/{id}", f.end(registry.EndClosed))
	mux.HandleFunc("POST /v1/sessions/{id}/kill", f.end(registry.EndKilled))
	mux.HandleFunc("GET /v1/sessions/{id}", f.get)
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.requests = append(f.requests, r.Method+" "+r.URL.Path)
		f.mu.Unlock()
		mux.ServeHTTP(w, r)
	}))
	return f
}

func newFakeNode(t *testing.T) *fakeNode {
	t.Helper()
	f := startFakeNode()
	t.Cleanup(f.Close)
	return f
}

func (f *fakeNode) open(w http.ResponseWriter, r *http.Request) {
	var req registry.OpenRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, "invalid_json", err.Error())
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, s := range f.live {
		if s.User == req.User && s.Module == req.Module {
			writeError(w, http.StatusConflict, "already_logged_in", fmt.Sprintf(
				"user %s is already logged in to module %s on host %s since %s and has no multi-login right",
				s.User, s.Module, s.Host, s.StartedAt.Format(time.RFC3339)))
			return
		}
	}
	f.seq++
	id := fmt.Sprintf("%032x", f.seq)
	ttl := req.TTLSeconds
	if ttl == 0 {
		ttl = 60
	}
	s := &registry.OpenedSession{
		Session: registry.Session{
			ID: id, Tenant: "default", User: req.User, Module: req.Module, Host: req.Host,
			ClientKind: registry.KindUI, Pool: "default", Node: "n1",
			StartedAt: time.Date(2026, 11, 21, 10, 2, 0, 0, time.UTC), TTLSeconds: ttl, ExpiresInSeconds: ttl,
			Labels: map[string]string{}, OpenedBy: "admin",
		},
		Token: "rs1." + id,
	}
	f.live[id] = s
	writeJSON(w, http.StatusCreated, s)
}

func (f *fakeNode) heartbeat(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.auths = append(f.auths, r.Header.Get("Authorization"))
	if f.fail != 0 {
		f.fail--
		writeError(w, http.StatusServiceUnavailable, "unavailable", "node n1 cannot reach etcd; try another node")
		return
	}
	s, ok := f.lookup(w, r.PathValue("id"))
	if !ok {
		return
	}
	f.beats++
	writeJSON(w, http.StatusOK, registry.HeartbeatResult{ID: s.ID, TTLSeconds: s.TTLSeconds, ExpiresInSeconds: s.TTLSeconds})
}

func (f *fakeNode) get(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if s, ok := f.lookup(w, r.PathValue("id")); ok {
		writeJSON(w, http.StatusOK, s.Session)
	}
}

func (f *fakeNode) end(reason registry.EndReason) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			Reason string `json:"reason"`
		}
		if reason == registry.EndKilled {
			if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
				writeError(w, http.StatusBadRequest, "invalid_json", err.Error())
				return
			}
		}
		f.mu.Lock()
		defer f.mu.Unlock()
		s, ok := f.lookup(w, r.PathValue("id"))
		if !ok {
			return
		}
		e := registry.Ended{ID: s.ID, Reason: reason, By: "admin", Message: body.Reason,
			At: time.Date(2026, 11, 21, 11, 0, 0, 0, time.UTC)}
		delete(f.live, s.ID)
		f.ended[s.ID] = e
		writeJSON(w, http.StatusOK, e)
	}
}

// lookup finds a live session or answers 410 (tombstone) or 404. Call with f.mu held.
func (f *fakeNode) lookup(w http.ResponseWriter, id string) (*registry.OpenedSession, bool) {
	if s, ok := f.live[id]; ok {
		return s, true
	}
	if e, ok := f.ended[id]; ok && !f.forget {
		msg := fmt.Sprintf("session %s was %s by %s at %s", id, e.Reason, e.By, e.At.Format(time.RFC3339))
		if e.Message != "" {
			msg += ": " + e.Message
		}
		writeError(w, http.StatusGone, string(e.Reason), msg)
		return nil, false
	}
	writeError(w, http.StatusNotFound, "not_found", "no session "+id)
	return nil, false
}

// expire ends a session as its lease running out would.
func (f *fakeNode) expire(id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.live, id)
	f.ended[id] = registry.Ended{ID: id, Reason: registry.EndExpired, By: "lease", At: time.Now().UTC()}
}

func (f *fakeNode) set(fn func(f *fakeNode)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

func (f *fakeNode) snapshot() (beats int, auths, requests []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.beats, append([]string(nil), f.auths...), append([]string(nil), f.requests...)
}

func (f *fakeNode) count(request string) int {
	_, _, reqs := f.snapshot()
	n := 0
	for _, r := range reqs {
		if r == request {
			n++
		}
	}
	return n
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, map[string]any{"error": map[string]string{"code": code, "message": msg}})
}

// deadEndpoint returns the URL of a port nothing listens on: dialling it is refused.
func deadEndpoint(t *testing.T) string {
	t.Helper()
	return "http://" + loopback.MustAddr(t)
}

// eofEndpoint returns a server that reads each request and then drops the
// connection without answering: the request reached it, the answer is EOF.
func eofEndpoint(t *testing.T) (url string, hits func() int) {
	t.Helper()
	var mu sync.Mutex
	n := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		n++
		mu.Unlock()
		conn, _, err := w.(http.Hijacker).Hijack()
		if err == nil {
			conn.Close()
		}
	}))
	t.Cleanup(srv.Close)
	return srv.URL, func() int { mu.Lock(); defer mu.Unlock(); return n }
}

// statusEndpoint returns a server that answers every request with status and body.
func statusEndpoint(t *testing.T, status int, body string) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(body, "{") {
			w.Header().Set("Content-Type", "application/json")
		}
		w.WriteHeader(status)
		_, _ = w.Write([]byte(body))
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// eventually polls cond every 10 ms until it holds or 5 s have passed.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
