package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/roster-dev/roster/registry"
	"github.com/roster-dev/roster/registry/api"
	"github.com/roster-dev/roster/registry/client"
)

// nextEvent waits up to 15 s for the stream's next event.
func nextEvent(t *testing.T, ch <-chan registry.Event, errOf func() error) registry.Event {
	t.Helper()
	select {
	case e, ok := <-ch:
		if !ok {
			t.Fatalf("the stream ended (err %v) while an event was expected", errOf())
		}
		return e
	case <-time.After(15 * time.Second):
		t.Fatal("no event within 15 s")
	}
	panic("unreachable")
}

func waitClosed(t *testing.T, ch <-chan registry.Event) {
	t.Helper()
	select {
	case e, ok := <-ch:
		if ok {
			t.Fatalf("event %+v after the end", e)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the channel was not closed within 5 s")
	}
}

// gate answers 503 until opened, then passes requests to h; it records the
// Last-Event-ID of every event request it passes.
type gate struct {
	h http.Handler

	mu      sync.Mutex
	open    bool
	lastIDs []string
}

func (g *gate) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	g.mu.Lock()
	open := g.open
	if open {
		g.lastIDs = append(g.lastIDs, r.Header.Get("Last-Event-ID"))
	}
	g.mu.Unlock()
	if !open {
		writeError(w, http.StatusServiceUnavailable, "unavailable", "gate closed")
		return
	}
	g.h.ServeHTTP(w, r)
}

func (g *gate) set(open bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.open = open
}

func (g *gate) seen() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]string(nil), g.lastIDs...)
}

// TestRealEventsResumeOnAnotherNode: two nodes (registries with their own
// API) on the same etcd. The stream's node goes away; while the other
// cannot serve yet, sessions open and end; the stream resumes there with
// Last-Event-ID and gets each missed event exactly once, then live ones.
func TestRealEventsResumeOnAnotherNode(t *testing.T) {
	n, err := sharedNode()
	if err != nil {
		t.Fatal(err)
	}
	cfg := registry.DefaultConfig()
	cfg.Client, cfg.Node, cfg.MinTTL = n.member.Client(), "n2", time.Second
	r2, err := registry.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	if err := r2.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	a := httptest.NewServer(api.New(api.Config{Registry: n.Registry, Node: "n1"}))
	defer a.Close()
	g := &gate{h: api.New(api.Config{Registry: r2, Node: "n2"})}
	b := httptest.NewServer(g)
	defer b.Close()

	c, err := client.New(client.Config{Endpoints: []string{a.URL, b.URL}, Token: n.AdminToken})
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseIdleConnections()
	ctx := context.Background()
	module := unique("evfo")
	st, err := c.Events(ctx, registry.EventFilter{Module: module}, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	admin := registry.AdminPrincipal("admin")
	open := func(user string) string {
		o, err := n.Registry.Open(ctx, admin, registry.OpenRequest{User: user, Module: module})
		if err != nil {
			t.Fatal(err)
		}
		return o.ID
	}
	s1 := open("fo-1")
	first := nextEvent(t, st.Events(), st.Err)
	if first.Type != registry.EventOpened || first.Session.ID != s1 || st.LastEventID() != first.Rev {
		t.Fatalf("first event %+v, last id %d", first, st.LastEventID())
	}

	// Node a goes away; b answers 503 meanwhile, so these are missed.
	a.Listener.Close()
	a.CloseClientConnections()
	s2 := open("fo-2")
	if _, err := n.Registry.Kill(ctx, admin, s1, "moved"); err != nil {
		t.Fatal(err)
	}
	s3 := open("fo-3")
	g.set(true)

	want := []struct {
		typ registry.EventType
		id  string
	}{{registry.EventOpened, s2}, {registry.EventKilled, s1}, {registry.EventOpened, s3}}
	last := first.Rev
	for i, w := range want {
		e := nextEvent(t, st.Events(), st.Err)
		if e.Type != w.typ || e.Session.ID != w.id || e.Rev <= last {
			t.Fatalf("missed event %d: %s %s rev %d, want %s %s after rev %d", i, e.Type, e.Session.ID, e.Rev, w.typ, w.id, last)
		}
		last = e.Rev
	}
	if ids := g.seen(); len(ids) == 0 || ids[0] != strconv.FormatInt(first.Rev, 10) {
		t.Fatalf("node b was asked with Last-Event-ID %q, want %d first", ids, first.Rev)
	}
	s4 := open("fo-4") // no duplicate comes before the next live event
	if e := nextEvent(t, st.Events(), st.Err); e.Type != registry.EventOpened || e.Session.ID != s4 {
		t.Fatalf("live event after the resume: %+v", e)
	}
	if c.Endpoint() != b.URL {
		t.Fatalf("the client's endpoint is %s, want %s", c.Endpoint(), b.URL)
	}
	st.Close()
	waitClosed(t, st.Events())
	if st.Err() != nil {
		t.Fatalf("Err after Close: %v", st.Err())
	}
}

// TestRealSessionEventsEnd: a session's stream delivers its expiry and
// ends; resumed after the end it answers the *EndedError; another
// session's token is refused.
func TestRealSessionEventsEnd(t *testing.T) {
	c, _ := realClient(t)
	ctx := context.Background()
	raw, err := c.Do(ctx, "POST", "/v1/sessions", nil, registry.OpenRequest{User: unique("ev-exp"), Module: "sales", TTLSeconds: 1})
	if err != nil {
		t.Fatal(err)
	}
	var o registry.OpenedSession
	if err := json.Unmarshal(raw, &o); err != nil {
		t.Fatal(err)
	}
	st, err := c.SessionEvents(ctx, o.ID, o.Token, 0)
	if err != nil {
		t.Fatal(err)
	}
	e := nextEvent(t, st.Events(), st.Err)
	if e.Type != registry.EventExpired || e.Session.ID != o.ID || e.By != "lease" {
		t.Fatalf("end event %+v", e)
	}
	waitClosed(t, st.Events())
	if st.Err() != nil {
		t.Fatalf("Err after the end: %v", st.Err())
	}

	_, err = c.SessionEvents(ctx, o.ID, o.Token, e.Rev)
	var ended *client.EndedError
	if !errors.Is(err, client.ErrExpired) || !errors.As(err, &ended) || ended.ID != o.ID {
		t.Fatalf("resume after the end: %v", err)
	}
	other, err := c.OpenSession(ctx, registry.OpenRequest{User: unique("ev-other"), Module: "sales"})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close(ctx)
	live, err := c.OpenSession(ctx, registry.OpenRequest{User: unique("ev-live"), Module: "sales"})
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close(ctx)
	if _, err := c.SessionEvents(ctx, live.ID(), other.Token(), 0); !errors.Is(err, client.ErrPermissionDenied) {
		t.Fatalf("another session's token: %v", err)
	}
	if _, err := c.WithToken(other.Token()).Events(ctx, registry.EventFilter{}, 0); !errors.Is(err, client.ErrPermissionDenied) {
		t.Fatalf("a session token on all events: %v", err)
	}
}

// TestRealSessionHandleEndsOnKill: a held session whose events are
// watched ends at once when killed, long before its next heartbeat.
func TestRealSessionHandleEndsOnKill(t *testing.T) {
	c, _ := realClient(t)
	ctx := context.Background()
	s, err := c.OpenSession(ctx, registry.OpenRequest{User: unique("ev-handle"), Module: "sales", TTLSeconds: 60}) // heartbeats every 20 s
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(ctx)
	ch := s.Events()
	if s.Events() != ch {
		t.Fatal("Events returned another channel")
	}
	time.Sleep(200 * time.Millisecond) // let the stream connect (if not, it finds the end at once)
	killed := time.Now()
	if _, err := c.Kill(ctx, s.ID(), "PC crashed"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the handle did not end within 5 s of the kill")
	}
	took := time.Since(killed)
	var ended *client.EndedError
	if !errors.Is(s.Err(), client.ErrKilled) || !errors.As(s.Err(), &ended) || ended.Message != "PC crashed" || ended.By != "admin" {
		t.Fatalf("Err = %v", s.Err())
	}
	e := nextEvent(t, ch, s.Err)
	if e.Type != registry.EventKilled || e.Reason != "PC crashed" {
		t.Fatalf("event %+v", e)
	}
	waitClosed(t, ch)
	if err := s.Close(ctx); err != nil {
		t.Fatalf("Close after the kill: %v", err)
	}
	t.Logf("the handle ended %s after the kill", took)
}

// TestSessionEventsClosedByClose: Close closes the channel.
func TestSessionEventsClosedByClose(t *testing.T) {
	c, _ := realClient(t)
	ctx := context.Background()
	s, err := c.OpenSession(ctx, registry.OpenRequest{User: unique("ev-close"), Module: "sales"})
	if err != nil {
		t.Fatal(err)
	}
	ch := s.Events()
	if err := s.Close(ctx); err != nil {
		t.Fatal(err)
	}
	waitClosed(t, ch)
	if !errors.Is(s.Err(), client.ErrClosed) {
		t.Fatalf("Err = %v", s.Err())
	}
	waitClosed(t, s.Events())
}

// sseNode serves scripted event streams: each connection gets the next
// script, then the connection closes. It records each Last-Event-ID.
type sseNode struct {
	*httptest.Server
	mu      sync.Mutex
	scripts []string
	lastIDs []string
}

func newSSENode(t *testing.T, scripts ...string) *sseNode {
	n := &sseNode{scripts: scripts}
	n.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.mu.Lock()
		n.lastIDs = append(n.lastIDs, r.Header.Get("Last-Event-ID"))
		if len(n.scripts) == 0 {
			n.mu.Unlock()
			<-r.Context().Done() // the last connection stays open
			return
		}
		script := n.scripts[0]
		n.scripts = n.scripts[1:]
		n.mu.Unlock()
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write([]byte(script))
	}))
	t.Cleanup(n.Close)
	return n
}

func sseEvent(rev int64, typ registry.EventType, id string) string {
	return fmt.Sprintf("id: %d\nevent: %s\ndata: {\"rev\":%d,\"type\":%q,\"session\":{\"id\":%q},\"at\":\"2026-11-21T10:00:00Z\"}\n\n", rev, typ, rev, typ, id)
}

// TestEventStreamParsing: the client reads bare ids, comments and events,
// drops an event it already has, resumes after the newest id it saw, and
// takes a resync even when its revision is older.
func TestEventStreamParsing(t *testing.T) {
	node := newSSENode(t,
		"id: 5\n\n: keepalive\n\n"+sseEvent(6, registry.EventOpened, "a")+"id: 9\r\n\r\n",
		"id: 9\n\n"+sseEvent(6, registry.EventOpened, "a")+sseEvent(10, registry.EventKilled, "a"),
		"id: 10\n\n"+sseEvent(3, registry.EventResync, "")+sseEvent(4, registry.EventOpened, "b"),
	)
	c := newClient(t, node.URL)
	st, err := c.Events(context.Background(), registry.EventFilter{}, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	want := []struct {
		rev int64
		typ registry.EventType
	}{{6, registry.EventOpened}, {10, registry.EventKilled}, {3, registry.EventResync}, {4, registry.EventOpened}}
	for _, w := range want {
		if e := nextEvent(t, st.Events(), st.Err); e.Rev != w.rev || e.Type != w.typ {
			t.Fatalf("event %+v, want %d %s", e, w.rev, w.typ)
		}
	}
	eventually(t, "the fourth connection", func() bool { node.mu.Lock(); defer node.mu.Unlock(); return len(node.lastIDs) == 4 })
	node.mu.Lock()
	got := fmt.Sprint(node.lastIDs)
	node.mu.Unlock()
	if got != "[ 9 10 4]" {
		t.Fatalf("Last-Event-IDs %s, want [ 9 10 4]", got)
	}
	if _, err := c.Events(context.Background(), registry.EventFilter{SessionID: "x"}, 0); err == nil {
		t.Fatal("Events sent a session id")
	}
}

// TestEventStreamSharedRevision: events that share a revision carry the SSE id only on
// the last; a stream that breaks between them resumes before the revision, and the
// client delivers each of its events once.
func TestEventStreamSharedRevision(t *testing.T) {
	noID := func(rev int64, typ registry.EventType, id string) string {
		return strings.TrimPrefix(sseEvent(rev, typ, id), fmt.Sprintf("id: %d\n", rev))
	}
	node := newSSENode(t,
		"id: 5\n\n"+sseEvent(6, registry.EventOpened, "a")+noID(7, registry.EventExpired, "b"),
		"id: 6\n\n"+noID(7, registry.EventExpired, "b")+noID(7, registry.EventExpired, "c")+sseEvent(7, registry.EventExpired, "d")+sseEvent(8, registry.EventOpened, "e"),
	)
	c := newClient(t, node.URL)
	st, err := c.Events(context.Background(), registry.EventFilter{}, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for _, want := range []string{"6 a", "7 b", "7 c", "7 d", "8 e"} {
		if e := nextEvent(t, st.Events(), st.Err); fmt.Sprintf("%d %s", e.Rev, e.Session.ID) != want {
			t.Fatalf("event %d %s, want %s", e.Rev, e.Session.ID, want)
		}
	}
	eventually(t, "the third connection", func() bool { node.mu.Lock(); defer node.mu.Unlock(); return len(node.lastIDs) == 3 })
	node.mu.Lock()
	got := fmt.Sprint(node.lastIDs)
	node.mu.Unlock()
	if got != "[ 6 8]" {
		t.Fatalf("Last-Event-IDs %s, want [ 6 8]", got)
	}
}

// TestEventStreamNotAStream: an answer that does not start with an id is
// refused at once.
func TestEventStreamNotAStream(t *testing.T) {
	node := newSSENode(t, "event: opened\ndata: {}\n\n")
	c := newClient(t, node.URL)
	if _, err := c.Events(context.Background(), registry.EventFilter{}, 0); err == nil {
		t.Fatal("no error for a stream without its opening id")
	}
}

// unique returns prefix with a suffix of its own, so a test can run again
// against the same node.
func unique(prefix string) string {
	return fmt.Sprintf("%s-%d", prefix, time.Now().UnixNano())
}
