package api_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/roster-dev/roster/registry"
	"github.com/roster-dev/roster/registry/api"
)

// sse is an open event stream.
type sse struct {
	resp *http.Response
	br   *bufio.Reader
}

// block is one SSE block: its fields, and its comments.
type block struct {
	id, event, data string
	comments        []string
}

// openSSE starts GET path at base with token and, unless empty, Last-Event-ID.
// It returns the answer when it is not a stream.
func openSSE(t *testing.T, base, path, token, lastID string) (*sse, answer) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, "GET", base+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Accept", "text/event-stream")
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		defer cancel()
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return nil, answer{resp.StatusCode, b}
	}
	t.Cleanup(func() { cancel(); resp.Body.Close() })
	if ct, cc := resp.Header.Get("Content-Type"), resp.Header.Get("Cache-Control"); ct != "text/event-stream" || cc != "no-store" {
		t.Fatalf("stream headers: Content-Type %q, Cache-Control %q", ct, cc)
	}
	return &sse{resp: resp, br: bufio.NewReader(resp.Body)}, answer{status: resp.StatusCode}
}

// next reads one block; io.EOF when the stream has ended.
func (s *sse) next(t *testing.T) (block, error) {
	t.Helper()
	type result struct {
		b   block
		err error
	}
	done := make(chan result, 1)
	go func() {
		var b block
		for {
			line, err := s.br.ReadString('\n')
			if err != nil {
				done <- result{b, err}
				return
			}
			line = strings.TrimSuffix(line, "\n")
			switch {
			case line == "":
				done <- result{b, nil}
				return
			case strings.HasPrefix(line, ":"):
				b.comments = append(b.comments, strings.TrimSpace(line[1:]))
			default:
				k, v, _ := strings.Cut(line, ": ")
				switch k {
				case "id":
					b.id = v
				case "event":
					b.event = v
				case "data":
					b.data = v
				default:
					done <- result{b, errors.New("unknown field in " + strconv.Quote(line))}
					return
				}
			}
		}
	}()
	select {
	case r := <-done:
		return r.b, r.err
	case <-time.After(15 * time.Second):
		t.Fatal("no SSE block within 15 s")
	}
	panic("unreachable")
}

// nextEvent reads blocks until an event and decodes it; bare ids and
// keepalives are skipped.
func (s *sse) nextEvent(t *testing.T) (block, registry.Event) {
	t.Helper()
	for {
		b, err := s.next(t)
		if err != nil {
			t.Fatalf("stream: %v", err)
		}
		if b.event == "" {
			continue
		}
		var e registry.Event
		if err := json.Unmarshal([]byte(b.data), &e); err != nil {
			t.Fatalf("data %q: %v", b.data, err)
		}
		if b.id != strconv.FormatInt(e.Rev, 10) || b.event != string(e.Type) {
			t.Fatalf("block id %q event %q, data %s", b.id, b.event, b.data)
		}
		return b, e
	}
}

func kill(t *testing.T, id, reason string) {
	t.Helper()
	if a := call(t, "POST", "/v1/sessions/"+id+"/kill", adminToken, []byte(`{"reason":"`+reason+`"}`)); a.status != 200 {
		t.Fatalf("kill: %d %s", a.status, a.body)
	}
}

// TestEventsOverSSE: the SSE format of /v1/events, its first bare id, a
// filter, and a resume by Last-Event-ID and by since.
func TestEventsOverSSE(t *testing.T) {
	module := unique("sse-m")
	s, a := openSSE(t, srv.URL, "/v1/events?module="+module, adminToken, "")
	if s == nil {
		t.Fatalf("stream: %d %s", a.status, a.body)
	}
	first, err := s.next(t)
	if err != nil || first.id == "" || first.event != "" || first.data != "" {
		t.Fatalf("first block %+v, %v: want a bare id", first, err)
	}
	openSession(t, unique("sse-other"), "sse-n") // filtered out
	o := openSession(t, unique("sse-alice"), module)
	kill(t, o.ID, "PC crashed")
	_, opened := s.nextEvent(t)
	_, killed := s.nextEvent(t)
	if opened.Type != registry.EventOpened || opened.Session.ID != o.ID || opened.Session.Host != "PC-17" {
		t.Fatalf("opened: %+v", opened)
	}
	if killed.Type != registry.EventKilled || killed.Session.ID != o.ID || killed.Reason != "PC crashed" || killed.By != "admin" || killed.Rev <= opened.Rev {
		t.Fatalf("killed: %+v", killed)
	}
	for _, resume := range []struct{ name, query, header string }{
		{"Last-Event-ID", "", strconv.FormatInt(opened.Rev, 10)},
		{"since", "&since=" + strconv.FormatInt(opened.Rev, 10), ""},
		{"header wins", "&since=1", strconv.FormatInt(opened.Rev, 10)},
	} {
		t.Run(resume.name, func(t *testing.T) {
			r, a := openSSE(t, srv.URL, "/v1/events?module="+module+resume.query, adminToken, resume.header)
			if r == nil {
				t.Fatalf("resume: %d %s", a.status, a.body)
			}
			if _, e := r.nextEvent(t); e.Rev != killed.Rev || e.Type != registry.EventKilled {
				t.Fatalf("first event after %d: %+v", opened.Rev, e)
			}
		})
	}
}

// TestSessionEventsOverSSE: an ended session's stream sends its end and
// closes; refusals are JSON errors.
func TestSessionEventsOverSSE(t *testing.T) {
	o := openSession(t, unique("sse-bob"), "sales")
	other := openSession(t, unique("sse-carol"), "sales")
	path := "/v1/sessions/" + o.ID + "/events"

	live, a := openSSE(t, srv.URL, path, o.Token, "")
	if live == nil {
		t.Fatalf("live stream: %d %s", a.status, a.body)
	}
	kill(t, o.ID, "done")
	for _, s := range []*sse{live, func() *sse { s, _ := openSSE(t, srv.URL, path, o.Token, ""); return s }()} {
		if s == nil {
			t.Fatal("no stream for the ended session")
		}
		if _, e := s.nextEvent(t); e.Type != registry.EventKilled || e.Reason != "done" || e.Session.ID != o.ID {
			t.Fatalf("end event: %+v", e)
		}
		if b, err := s.next(t); err != io.EOF {
			t.Fatalf("after the end: %+v, %v; want the stream closed", b, err)
		}
	}

	_, end := func() (block, registry.Event) {
		s, _ := openSSE(t, srv.URL, path, adminToken, "")
		return s.nextEvent(t)
	}()
	tests := []struct {
		name, path, token, lastID string
		status                    int
		code                      string
	}{
		{"another session's token", path, other.Token, "", 403, "permission_denied"},
		{"session token on all events", "/v1/events", other.Token, "", 403, "permission_denied"},
		{"after its end", path, adminToken, strconv.FormatInt(end.Rev, 10), 410, "killed"},
		{"bad Last-Event-ID", path, adminToken, "x", 400, "invalid_argument"},
		{"bad since", path + "?since=-1", adminToken, "", 400, "invalid_argument"},
		{"unknown parameter", path + "?module=sales", adminToken, "", 400, "invalid_argument"},
		{"unknown session", "/v1/sessions/0123456789abcdef0123456789abcdef/events", adminToken, "", 404, "not_found"},
		{"no token", path, "", "", 401, "unauthenticated"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, a := openSSE(t, srv.URL, tt.path, tt.token, tt.lastID)
			if s != nil || a.status != tt.status || a.code() != tt.code {
				t.Fatalf("got %d %s, want %d %s", a.status, a.body, tt.status, tt.code)
			}
		})
	}
}

// TestEventsKeepAliveAndTimeouts: an idle stream sends keepalives and
// outlives the server's read and write timeouts.
func TestEventsKeepAliveAndTimeouts(t *testing.T) {
	ts := httptest.NewUnstartedServer(api.New(api.Config{Registry: reg, Node: "n1", EventKeepAlive: 50 * time.Millisecond}))
	ts.Config.ReadTimeout, ts.Config.WriteTimeout = 200*time.Millisecond, 200*time.Millisecond
	ts.Start()
	t.Cleanup(ts.Close)
	s, a := openSSE(t, ts.URL, "/v1/events", adminToken, "")
	if s == nil {
		t.Fatalf("stream: %d %s", a.status, a.body)
	}
	begin := time.Now()
	keepalives := 0
	for time.Since(begin) < time.Second {
		b, err := s.next(t)
		if err != nil {
			t.Fatalf("after %s and %d keepalives: %v", time.Since(begin), keepalives, err)
		}
		for _, c := range b.comments {
			if c == "keepalive" {
				keepalives++
			}
		}
	}
	if keepalives < 5 {
		t.Fatalf("%d keepalives in a second at 50 ms", keepalives)
	}
	o := openSession(t, unique("sse-late"), "sales")
	if _, e := s.nextEvent(t); e.Session.ID != o.ID {
		t.Fatalf("event after the timeouts: %+v", e)
	}
}

// TestEventsEndOnShutdown: http.Server.Shutdown ends the streams instead
// of waiting for them.
func TestEventsEndOnShutdown(t *testing.T) {
	ts := httptest.NewServer(api.New(api.Config{Registry: reg, Node: "n1"}))
	t.Cleanup(ts.Close)
	s, a := openSSE(t, ts.URL, "/v1/events", adminToken, "")
	if s == nil {
		t.Fatalf("stream: %d %s", a.status, a.body)
	}
	if _, err := s.next(t); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	begin := time.Now()
	if err := ts.Config.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown after %s: %v", time.Since(begin), err)
	}
	if _, err := s.next(t); err != io.EOF {
		t.Fatalf("stream after Shutdown: %v", err)
	}
}

// unique returns prefix with a suffix of its own, so a test can run again
// against the same registry.
func unique(prefix string) string {
	return fmt.Sprintf("%s-%d", prefix, time.Now().UnixNano())
}
