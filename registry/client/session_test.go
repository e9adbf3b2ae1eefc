package client_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/roster-dev/roster/registry"
	"github.com/roster-dev/roster/registry/client"
)

// hookLog records what a WithHeartbeatHook saw.
type hookLog struct {
	mu   sync.Mutex
	oks  int
	errs []error
}

func (h *hookLog) hook(_ registry.HeartbeatResult, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err == nil {
		h.oks++
	} else {
		h.errs = append(h.errs, err)
	}
}

func (h *hookLog) counts() (oks, errs int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.oks, len(h.errs)
}

// openShort opens a session with a 1 s TTL (a heartbeat every 333 ms).
func openShort(t *testing.T, c *client.Client, h *hookLog) *client.Session {
	t.Helper()
	return openTTL(t, c, h, 1)
}

func openTTL(t *testing.T, c *client.Client, h *hookLog, ttl int64) *client.Session {
	t.Helper()
	var opts []client.SessionOption
	if h != nil {
		opts = append(opts, client.WithHeartbeatHook(h.hook))
	}
	s, err := c.OpenSession(context.Background(), registry.OpenRequest{User: "alice", Module: "sales", TTLSeconds: ttl}, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close(context.Background()) })
	return s
}

func waitDone(t *testing.T, s *client.Session) {
	t.Helper()
	select {
	case <-s.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("session did not end within 5 s")
	}
}

func TestSessionHeartbeatsWithItsToken(t *testing.T) {
	node := newFakeNode(t)
	c := newClient(t, node.URL)
	var h hookLog
	s := openShort(t, c, &h)

	if !strings.HasPrefix(s.Token(), "rs1.") || s.ID() == "" || s.Info().User != "alice" {
		t.Fatalf("session handle: id %q token %q info %+v", s.ID(), s.Token(), s.Info())
	}
	eventually(t, "three heartbeats", func() bool { oks, _ := h.counts(); return oks >= 3 })
	_, auths, _ := node.snapshot()
	for _, a := range auths {
		if a != "Bearer "+s.Token() {
			t.Fatalf("heartbeat sent with %q, want the session token", a)
		}
	}
	if s.Err() != nil {
		t.Fatalf("Err() = %v while alive", s.Err())
	}
	select {
	case <-s.Done():
		t.Fatal("Done closed while alive")
	default:
	}
}

func TestSessionEnds(t *testing.T) {
	tests := []struct {
		name      string
		end       func(t *testing.T, node *fakeNode, c *client.Client, id string)
		wantIs    error
		wantInErr string
	}{
		{
			name: "killed: 410",
			end: func(t *testing.T, _ *fakeNode, c *client.Client, id string) {
				if _, err := c.Kill(context.Background(), id, "PC crashed"); err != nil {
					t.Fatal(err)
				}
			},
			wantIs: client.ErrKilled, wantInErr: "was killed by admin at 2026-11-21T11:00:00Z: PC crashed",
		},
		{
			name: "closed elsewhere: 410",
			end: func(t *testing.T, _ *fakeNode, c *client.Client, id string) {
				if _, err := c.CloseSession(context.Background(), id, ""); err != nil {
					t.Fatal(err)
				}
			},
			wantIs: client.ErrClosed,
		},
		{
			name:   "lease ran out: 410 expired",
			end:    func(_ *testing.T, node *fakeNode, _ *client.Client, id string) { node.expire(id) },
			wantIs: client.ErrExpired,
		},
		{
			name: "tombstone gone: 404",
			end: func(_ *testing.T, node *fakeNode, _ *client.Client, id string) {
				node.set(func(f *fakeNode) { f.forget = true })
				node.expire(id)
			},
			wantIs: client.ErrExpired, wantInErr: "no longer known",
		},
		{
			name: "no node answers until the TTL runs out",
			end: func(_ *testing.T, node *fakeNode, _ *client.Client, _ string) {
				node.set(func(f *fakeNode) { f.fail = -1 })
			},
			wantIs: client.ErrExpired, wantInErr: "no heartbeat reached the registry",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			node := newFakeNode(t)
			c := newClient(t, node.URL)
			var h hookLog
			s := openShort(t, c, &h)
			tt.end(t, node, c, s.ID())
			waitDone(t, s)

			err := s.Err()
			if !errors.Is(err, tt.wantIs) {
				t.Fatalf("Err() = %v, want it to match %v", err, tt.wantIs)
			}
			ended, ok := errors.AsType[*client.EndedError](err)
			if !ok || ended.ID != s.ID() {
				t.Fatalf("Err() = %#v, want an *EndedError for %s", err, s.ID())
			}
			if !strings.Contains(err.Error(), tt.wantInErr) {
				t.Errorf("Err() = %q, want it to contain %q", err, tt.wantInErr)
			}
			if _, errs := h.counts(); errs == 0 {
				t.Error("the hook saw no failed heartbeat")
			}
			// Close after the end sends no logout and reports nothing to do.
			before := node.count("DELETE /v1/sessions/" + s.ID())
			if err := s.Close(context.Background()); err != nil {
				t.Errorf("Close after the end = %v, want nil", err)
			}
			if node.count("DELETE /v1/sessions/"+s.ID()) != before {
				t.Error("Close sent a logout for a session that had ended")
			}
			if !errors.Is(s.Err(), tt.wantIs) {
				t.Errorf("Close changed Err() to %v", s.Err())
			}
		})
	}
}

func TestSessionRetriesTransientFailures(t *testing.T) {
	node := newFakeNode(t)
	c := newClient(t, deadEndpoint(t), node.URL)
	var h hookLog
	s := openTTL(t, c, &h, 3)

	// Two 503s in a row, retried after 200 ms and 400 ms, fit well in the 3 s TTL.
	node.set(func(f *fakeNode) { f.fail = 2 })
	eventually(t, "recovery after two failed heartbeats", func() bool {
		oks, errs := h.counts()
		return errs >= 2 && oks >= 1
	})
	if s.Err() != nil {
		t.Fatalf("session ended after transient failures: %v", s.Err())
	}
}

func TestSessionClose(t *testing.T) {
	node := newFakeNode(t)
	c := newClient(t, node.URL)
	s := openShort(t, c, nil)
	id := s.ID()

	var wg sync.WaitGroup
	errs := make([]error, 3)
	for i := range errs {
		wg.Go(func() { errs[i] = s.Close(context.Background()) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("Close #%d = %v", i, err)
		}
	}
	if n := node.count("DELETE /v1/sessions/" + id); n != 1 {
		t.Errorf("%d logouts sent, want 1", n)
	}
	if err := s.Err(); err != client.ErrClosed {
		t.Errorf("Err() = %v, want ErrClosed", err)
	}
	select {
	case <-s.Done():
	default:
		t.Error("Done not closed after Close")
	}
	// No heartbeat goes out after Close.
	beats, _, _ := node.snapshot()
	if _, err := c.Get(context.Background(), id); !errors.Is(err, client.ErrClosed) {
		t.Errorf("Get after Close = %v, want the tombstone (closed)", err)
	}
	if after, _, _ := node.snapshot(); after != beats {
		t.Error("a heartbeat was sent after Close")
	}
}

func TestCloseReportsUndeliveredLogout(t *testing.T) {
	node := newFakeNode(t)
	c := newClient(t, node.URL)
	s := openShort(t, c, nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := s.Close(ctx)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Close(cancelled ctx) = %v, want context.Canceled", err)
	}
	if s.Err() != client.ErrClosed {
		t.Errorf("Err() = %v, want ErrClosed", s.Err())
	}
	if err2 := s.Close(context.Background()); err2 != err {
		t.Errorf("second Close = %v, want the first result %v", err2, err)
	}
}

func TestOpenRefused(t *testing.T) {
	node := newFakeNode(t)
	cfg := client.Config{Endpoints: []string{node.URL}, Token: "rt1.admin"}
	req := registry.OpenRequest{User: "alice", Module: "sales"}
	s, err := client.Open(context.Background(), cfg, req)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(context.Background())
	_, err = client.Open(context.Background(), cfg, req)
	if !errors.Is(err, client.ErrAlreadyLoggedIn) {
		t.Fatalf("second Open = %v, want ErrAlreadyLoggedIn", err)
	}
}

func TestAttach(t *testing.T) {
	tests := []struct {
		name    string
		s       registry.OpenedSession
		wantErr string
	}{
		{name: "no id", s: registry.OpenedSession{Session: registry.Session{TTLSeconds: 1}}, wantErr: "no id"},
		{name: "no ttl", s: registry.OpenedSession{Session: registry.Session{ID: "a"}}, wantErr: "ttl_seconds"},
	}
	c := newClient(t, client.DefaultEndpoint)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := c.Attach(tt.s); err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Attach = %v, want error containing %q", err, tt.wantErr)
			}
		})
	}
}
