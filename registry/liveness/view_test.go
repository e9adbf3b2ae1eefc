package liveness_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/roster-dev/roster/registry/liveness"
)

func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// serve answers pushes to v the way the HTTP API does.
func serve(v *liveness.View) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(http.MaxBytesReader(w, r.Body, liveness.MaxPushBytes))
		rep, err := v.Receive(strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer "), body)
		switch {
		case errors.Is(err, liveness.ErrUnauthenticated):
			http.Error(w, err.Error(), http.StatusUnauthorized)
		case err != nil:
			http.Error(w, err.Error(), http.StatusBadRequest)
		default:
			json.NewEncoder(w).Encode(rep)
		}
	})
}

// mesh is a few views that push to each other over real HTTP on loopback.
type mesh struct {
	mu      sync.Mutex
	views   map[string]*liveness.View
	servers map[string]*httptest.Server
	urls    map[string]string
	gone    map[string]bool
}

// newMesh starts views named names; extra lists nodes gossip shows alive that run no
// view (they never report).
func newMesh(t *testing.T, names []string, extra ...string) *mesh {
	t.Helper()
	m := &mesh{views: map[string]*liveness.View{}, servers: map[string]*httptest.Server{}, urls: map[string]string{}, gone: map[string]bool{}}
	for _, name := range names {
		cfg := liveness.DefaultConfig()
		cfg.Node, cfg.Interval = name, 20*time.Millisecond
		cfg.Peers = m.peers
		v, err := liveness.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		srv := httptest.NewServer(serve(v))
		t.Cleanup(srv.Close)
		t.Cleanup(v.Close)
		m.views[name], m.urls[name], m.servers[name] = v, srv.URL, srv
	}
	for _, name := range extra {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, "no view here", http.StatusNotFound)
		}))
		t.Cleanup(srv.Close)
		m.urls[name] = srv.URL
	}
	for _, v := range m.views {
		v.Start("s3cret")
	}
	return m
}

func (m *mesh) peers() []liveness.Peer {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []liveness.Peer
	for name, url := range m.urls {
		out = append(out, liveness.Peer{Name: name, URL: url, Gone: m.gone[name]})
	}
	return out
}

func (m *mesh) setGone(name string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.gone[name] = true
}

// until polls f until it returns true; it fails the test after within.
func until(t *testing.T, within time.Duration, what string, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !f() {
		if time.Now().After(deadline) {
			t.Fatalf("%s did not happen within %s", what, within)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

const (
	id1 = "0193f2a1b2c3d4e5f60718293a4b5c6d"
	id2 = "0193f2a1b2c3d4e5f60718293a4b5c6e"
)

// TestLapseSeenAcrossNodes: beats noted on b keep a session alive in a's view; when they
// stop, a finds it lapsed, and a session beaten only through c stays alive.
func TestLapseSeenAcrossNodes(t *testing.T) {
	m := newMesh(t, []string{"a", "b", "c"})
	a, b, c := m.views["a"], m.views["b"], m.views["c"]
	const ttl = 300 * time.Millisecond
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c.Note(id2)
			select {
			case <-stop:
				return
			case <-time.After(ttl / 3):
			}
		}
	})
	defer wg.Wait()
	defer close(stop)

	b.Note(id1)
	until(t, 5*time.Second, "a knowing b's beat", func() bool { return a.Check(id1, ttl, time.Time{}).State != liveness.Unknown })
	until(t, 5*time.Second, "a finding the session lapsed", func() bool { return a.Check(id1, ttl, time.Time{}).State == liveness.Lapsed })
	v := a.Check(id1, ttl, time.Time{})
	if v.Silent < ttl {
		t.Errorf("lapsed after %s of silence, less than the TTL %s", v.Silent, ttl)
	}
	for range 10 {
		if got := a.Check(id2, ttl, time.Time{}); got.State == liveness.Lapsed {
			t.Fatalf("a session beaten through c every TTL/3 lapsed in a's view: %+v", got)
		}
		time.Sleep(ttl / 2)
	}
}

// TestSilentNodeHoldsVerdicts: a node gossip shows alive that does not report keeps
// every session from lapsing; once gossip says it is gone, sessions lapse.
func TestSilentNodeHoldsVerdicts(t *testing.T) {
	m := newMesh(t, []string{"a", "b"}, "mute")
	a, b := m.views["a"], m.views["b"]
	const ttl = 200 * time.Millisecond
	b.Note(id1)
	until(t, 5*time.Second, "a knowing b's beat", func() bool { return a.Check(id1, time.Hour, time.Time{}).State == liveness.Alive })
	time.Sleep(4 * ttl)
	got := a.Check(id1, ttl, time.Time{})
	if got.State != liveness.Unknown || got.Waiting != "mute" {
		t.Fatalf("verdict with a silent live node = %+v, want unknown waiting for mute", got)
	}
	m.setGone("mute")
	until(t, 5*time.Second, "the session lapsing once mute is gone", func() bool { return a.Check(id1, ttl, time.Time{}).State == liveness.Lapsed })
}

// TestKnownAt: a session of which no beat is known is judged from when the caller
// learned of it, and not at all without that time.
func TestKnownAt(t *testing.T) {
	m := newMesh(t, []string{"a"})
	a := m.views["a"]
	const ttl = 100 * time.Millisecond
	if got := a.Check(id1, ttl, time.Time{}); got.State != liveness.Unknown {
		t.Fatalf("no beat, no knownAt: %+v, want unknown", got)
	}
	known := time.Now()
	if got := a.Check(id1, ttl, known); got.State != liveness.Alive {
		t.Fatalf("no beat, known just now: %+v, want alive", got)
	}
	until(t, 5*time.Second, "lapse a TTL after knownAt", func() bool { return a.Check(id1, ttl, known).State == liveness.Lapsed })
	if got := a.Check(id1, time.Hour, known); got.State != liveness.Alive {
		t.Fatalf("TTL 1h: %+v, want alive", got)
	}
}

// TestOutagePausesTTL: the time this node could not reach etcd does not count against
// a session's TTL.
func TestOutagePausesTTL(t *testing.T) {
	m := newMesh(t, []string{"a"})
	a := m.views["a"]
	a.Note(id1)
	noted := time.Now()
	const ttl = 300 * time.Millisecond
	a.Outage(noted.Add(100*time.Millisecond), noted.Add(600*time.Millisecond))
	until(t, 5*time.Second, "the lapse", func() bool { return a.Check(id1, ttl, time.Time{}).State == liveness.Lapsed })
	if since := time.Since(noted); since < ttl+500*time.Millisecond {
		t.Fatalf("lapsed %s after the beat, less than the TTL %s plus the 500ms outage", since, ttl)
	}
}

// TestSilentThenBackCountsFromItsReturn: a node that stopped reporting for longer than
// a second and comes back as a new process may have answered heartbeats it never
// reported, so the others count every session as beaten when they hear from it again.
func TestSilentThenBackCountsFromItsReturn(t *testing.T) {
	m := newMesh(t, []string{"a", "b"})
	a, b := m.views["a"], m.views["b"]
	const ttl = 300 * time.Millisecond
	b.Note(id1)
	until(t, 5*time.Second, "a knowing b's beat", func() bool { return a.Check(id1, time.Hour, time.Time{}).State == liveness.Alive })
	b.Close() // silent, but gossip still shows it alive and its API answers
	time.Sleep(1500 * time.Millisecond)
	if got := a.Check(id1, ttl, time.Time{}); got.State != liveness.Unknown || got.Waiting != "b" {
		t.Fatalf("verdict while b is silent = %+v, want unknown waiting for b", got)
	}
	b2 := restart(t, m, "b")
	back := time.Now()
	b2.Start("s3cret")
	until(t, 5*time.Second, "the session lapsing", func() bool { return a.Check(id1, ttl, time.Time{}).State == liveness.Lapsed })
	if since := time.Since(back); since < ttl {
		t.Fatalf("lapsed %s after b came back, less than a TTL (%s)", since, ttl)
	}
}

// TestRefusingNodeNoLongerCounts: a node whose API refuses connections answers no
// heartbeats, so the view stops waiting for it at once, although gossip still shows
// it alive.
func TestRefusingNodeNoLongerCounts(t *testing.T) {
	m := newMesh(t, []string{"a", "b"})
	a, b := m.views["a"], m.views["b"]
	const ttl = 300 * time.Millisecond
	a.Note(id1)
	until(t, 5*time.Second, "a's view complete", func() bool { return a.Check(id1, time.Nanosecond, time.Time{}).State == liveness.Lapsed })
	a.Note(id1)
	b.Close()
	m.servers["b"].Close() // nothing listens on b's address any more
	until(t, 5*time.Second, "the session lapsing", func() bool { return a.Check(id1, ttl, time.Time{}).State == liveness.Lapsed })
}

// restart replaces the view of node name with a new process of it, not started.
func restart(t *testing.T, m *mesh, name string) *liveness.View {
	t.Helper()
	cfg := liveness.DefaultConfig()
	cfg.Node, cfg.Interval, cfg.Peers = name, 20*time.Millisecond, m.peers
	v, err := liveness.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(serve(v))
	t.Cleanup(srv.Close)
	t.Cleanup(v.Close)
	m.mu.Lock()
	m.urls[name], m.views[name], m.servers[name] = srv.URL, v, srv
	m.mu.Unlock()
	return v
}

func TestReceiveRefusals(t *testing.T) {
	cfg := liveness.DefaultConfig()
	cfg.Node = "a"
	v, err := liveness.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if _, err := v.Receive("s3cret", nil); !errors.Is(err, liveness.ErrNotStarted) {
		t.Fatalf("before Start: %v, want ErrNotStarted", err)
	}
	v.Start("s3cret")
	for _, tc := range []struct {
		name   string
		secret string
		body   []byte
		want   error
	}{
		{"wrong secret", "guess", []byte("RLV1"), liveness.ErrUnauthenticated},
		{"no secret", "", []byte("RLV1"), liveness.ErrUnauthenticated},
		{"not a push", "s3cret", []byte(`{"beats":[]}`), liveness.ErrInvalidPush},
		{"truncated", "s3cret", []byte("RLV1\x00\x01"), liveness.ErrInvalidPush},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := v.Receive(tc.secret, tc.body); !errors.Is(err, tc.want) {
				t.Fatalf("Receive = %v, want %v", err, tc.want)
			}
		})
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  liveness.Config
		ok   bool
	}{
		{"defaults", liveness.Config{Node: "n1"}, true},
		{"no node", liveness.Config{}, false},
		{"interval too short", liveness.Config{Node: "n1", Interval: time.Millisecond}, false},
		{"interval too long", liveness.Config{Node: "n1", Interval: time.Minute}, false},
		{"forget too short", liveness.Config{Node: "n1", Forget: time.Second}, false},
		{"negative timeout", liveness.Config{Node: "n1", Timeout: -time.Second}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.cfg.Validate(); (err == nil) != tc.ok {
				t.Fatalf("Validate = %v, want ok %v", err, tc.ok)
			}
		})
	}
}
