package client

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/roster-dev/roster/registry"
)

// maxEventLine bounds one line of an event stream; an event is a few KiB.
const maxEventLine = 1 << 20

// EventStream is a stream of session events read from a node's
// Server-Sent Events (GET /v1/events or GET /v1/sessions/{id}/events, see
// docs/api.md). It is owned by one goroutine that reads the stream and,
// when the connection breaks or the node goes away, reconnects — to the
// next endpoint first — with the Last-Event-ID of the last event received,
// so no event is missed and none is delivered twice. Reconnections are
// retried with backoff for as long as the stream's context lives; a
// reconnection refused for good (401, 403, 404, 410) ends the stream.
//
// Its methods are safe to call concurrently.
type EventStream struct {
	c       *Client
	r       call
	session bool // a session's stream: it ends after the session's end event

	ch     chan registry.Event
	cancel context.CancelFunc
	done   chan struct{}

	mu     sync.Mutex
	last   int64 // the id to resume after
	err    error
	closed bool
	// The events delivered of revision partialRev, which has more to come:
	// several events share a revision (sessions ended in one transaction)
	// and only its last carries the id, so a resumed stream sends them again.
	partialRev int64
	partial    map[string]bool
}

// Events streams the events of every session that f selects (its Tenant,
// Pool and Module; SessionID is for SessionEvents) after revision since,
// the Rev of the last event the caller has; 0 starts from now. It needs an
// admin or operator token, or a client token, which sees the sessions it
// opened.
//
// The first connection is made before Events returns: its refusals (403,
// 400, no node reachable) are returned as the other calls return them, and
// every change made after Events returns is in the stream. ctx bounds the
// whole stream, not only its start: cancelling it (or Close) ends it.
func (c *Client) Events(ctx context.Context, f registry.EventFilter, since int64) (*EventStream, error) {
	if f.SessionID != "" {
		return nil, errors.New("client: Events: EventFilter.SessionID cannot be sent; use SessionEvents for one session's events")
	}
	q := url.Values{}
	for _, kv := range [][2]string{{"tenant", f.Tenant}, {"pool", f.Pool}, {"module", f.Module}} {
		if kv[1] != "" {
			q.Set(kv[0], kv[1])
		}
	}
	return c.startEvents(ctx, c.get("/v1/events", q), false, since)
}

// SessionEvents streams the events of session id after revision since (0:
// from now on). token authorizes it: the session's own token, or "" for
// the client's token (the client token that opened the session, an
// operator or an admin token). A session that has already ended gives its
// end event at once. The stream ends after the session's end event, with
// a nil Err; a since at or after that end gives the *EndedError instead.
// ctx bounds the whole stream, as for Events.
func (c *Client) SessionEvents(ctx context.Context, id, token string, since int64) (*EventStream, error) {
	p, err := sessionPath(id, "/events")
	if err != nil {
		return nil, err
	}
	s, err := c.startEvents(ctx, call{method: http.MethodGet, path: p, token: c.pick(token), idempotent: true}, true, since)
	return s, withID(id, err)
}

func (c *Client) startEvents(ctx context.Context, r call, session bool, since int64) (*EventStream, error) {
	if since < 0 {
		return nil, fmt.Errorf("client: events: since %d is negative", since)
	}
	sctx, cancel := context.WithCancel(ctx)
	s := &EventStream{c: c, r: r, session: session, ch: make(chan registry.Event), cancel: cancel, done: make(chan struct{}), last: since}
	conn, idx, err := s.connect(sctx, int(c.cur.Load()))
	if err == nil {
		// The bare id that opens every stream: where to resume if the
		// connection breaks before the first event.
		_, _, err = s.read(sctx, conn, true)
		if err != nil {
			conn.close()
			err = fmt.Errorf("client: %s %s at %s: %w", r.method, r.path, c.endpoints[idx], err)
		}
	}
	if err != nil {
		cancel()
		return nil, err
	}
	go s.run(sctx, conn, idx)
	return s, nil
}

// Events returns the stream's channel. It is unbuffered: the stream waits
// for the reader. It is closed when the stream ends; Err then says why.
func (s *EventStream) Events() <-chan registry.Event { return s.ch }

// LastEventID returns the revision the stream would resume after: the Rev
// of the last event delivered, or a later revision up to which the node
// reported nothing that matched.
func (s *EventStream) LastEventID() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last
}

// Err returns nil while the stream runs. Once Events is closed it returns
// nil if Close ended the stream or a session stream delivered its
// session's end, the context's error if the context ended, and otherwise
// the answer that refused a reconnection (an *APIError, or an *EndedError).
func (s *EventStream) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Close ends the stream and waits for its goroutine; the channel is then
// closed. Safe to call twice.
func (s *EventStream) Close() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.cancel()
	<-s.done
}

// run reads the stream and reconnects until it ends; it owns the channel.
func (s *EventStream) run(ctx context.Context, conn *sseConn, idx int) {
	defer close(s.done)
	var err error
	for {
		var ended bool
		ended, err = s.consume(ctx, conn)
		conn.close()
		if ended || ctx.Err() != nil {
			err = nil
			break
		}
		s.c.log.Debug("event stream broke; resuming on the next endpoint", "endpoint", s.c.endpoints[idx], "path", s.r.path, "last-event-id", s.LastEventID(), "err", err)
		if conn, idx, err = s.reconnect(ctx, idx+1); err != nil {
			break
		}
	}
	s.mu.Lock()
	switch {
	case s.closed:
		s.err = nil
	case ctx.Err() != nil:
		s.err = ctx.Err()
	default:
		s.err = err
	}
	s.mu.Unlock()
	close(s.ch)
}

// consume delivers the events of one connection until it ends. It reports
// whether the stream is over: a session stream delivered the session's end.
func (s *EventStream) consume(ctx context.Context, conn *sseConn) (bool, error) {
	for {
		e, ok, err := s.read(ctx, conn, false)
		if err != nil {
			return false, err
		}
		if !ok {
			continue
		}
		select {
		case s.ch <- e:
		case <-ctx.Done():
			return false, ctx.Err()
		}
		if s.session && e.Type.IsEnd() {
			return true, nil
		}
	}
}

// read reads one block of the stream. It returns an event to deliver, or
// ok false for a block without one (a bare id, a keepalive, an event
// already delivered). bareID says the block must be a bare id: the one
// that opens every stream.
func (s *EventStream) read(ctx context.Context, conn *sseConn, bareID bool) (registry.Event, bool, error) {
	var id, typ string
	var data []byte
	hasData := false
	fields := 0
	for {
		line, err := conn.line()
		if err != nil {
			return registry.Event{}, false, err
		}
		if len(line) == 0 {
			if fields == 0 {
				continue // a keepalive's end, or stray blank lines
			}
			break
		}
		if line[0] == ':' {
			continue // a comment: the keepalive
		}
		fields++
		name, value, _ := bytes.Cut(line, []byte(":"))
		value = bytes.TrimPrefix(value, []byte(" "))
		switch string(name) {
		case "id":
			id = string(value)
		case "event":
			typ = string(value)
		case "data":
			if hasData {
				data = append(data, '\n')
			}
			hasData = true
			data = append(data, value...)
		}
	}
	if bareID && (id == "" || hasData) {
		return registry.Event{}, false, errors.New("the answer is not a Roster event stream: it does not start with an id")
	}
	if !hasData {
		if n, err := strconv.ParseInt(id, 10, 64); err == nil && n >= 0 {
			s.mu.Lock()
			s.last = max(s.last, n)
			s.mu.Unlock()
		}
		return registry.Event{}, false, nil
	}
	var e registry.Event
	if err := json.Unmarshal(data, &e); err != nil {
		return registry.Event{}, false, fmt.Errorf("undecodable %s event %s: %w", typ, id, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if e.Type == registry.EventResync {
		s.last, s.partialRev, s.partial = e.Rev, 0, nil // it may move back: the node's history is another
		return e, true, nil
	}
	key := eventKey(&e)
	if e.Rev <= s.last || (e.Rev == s.partialRev && s.partial[key]) {
		return registry.Event{}, false, nil // delivered before the reconnection
	}
	if id == "" { // more of its revision follow
		if e.Rev != s.partialRev {
			s.partialRev, s.partial = e.Rev, map[string]bool{}
		}
		s.partial[key] = true
		return e, true, nil
	}
	s.last, s.partialRev, s.partial = e.Rev, 0, nil
	return e, true, nil
}

// eventKey tells the events of one revision apart.
func eventKey(e *registry.Event) string {
	k := string(e.Type) + " " + e.Session.ID
	if e.Shutdown != nil {
		k += " " + e.Shutdown.ID
	}
	return k
}

// connect opens the stream on the endpoints once round, from index first;
// it moves on after connection failures and 503 answers, as Client.do
// does. It returns the connection and its endpoint's index.
func (s *EventStream) connect(ctx context.Context, first int) (*sseConn, int, error) {
	var conn *sseConn
	idx, err := s.c.round(first, s.r.method, s.r.path, func(ep string) (bool, bool, error) {
		c, err := s.dial(ctx, ep)
		if err == nil {
			conn = c
			return true, false, nil
		}
		apiErr, isAPIErr := errors.AsType[*APIError](err) // also behind an *EndedError
		switch {
		case ctx.Err() != nil:
			return false, false, fmt.Errorf("client: %s %s: %w", s.r.method, s.r.path, ctx.Err())
		case isAPIErr && apiErr.Status != http.StatusServiceUnavailable:
			return false, false, err // the answer
		case !isAPIErr && !isTransient(err) && !errors.Is(err, errStalled):
			return false, false, fmt.Errorf("client: %s %s at %s: %w", s.r.method, s.r.path, ep, err)
		}
		return false, true, err
	})
	return conn, idx, err
}

// reconnect opens the stream again, from endpoint index first, retrying
// with backoff while no node can serve it or nodes answer 5xx. Any other
// refusal ends the stream.
func (s *EventStream) reconnect(ctx context.Context, first int) (*sseConn, int, error) {
	backoff := minRetryBackoff
	for attempt := 1; ; attempt++ {
		conn, idx, err := s.connect(ctx, first)
		if err == nil {
			return conn, idx, nil
		}
		if ctx.Err() != nil || !(errors.Is(err, ErrUnavailable) || isServerError(err)) {
			return nil, idx, err
		}
		s.c.log.Debug("event stream cannot resume yet; retrying", "path", s.r.path, "attempt", attempt, "err", err)
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, idx, ctx.Err()
		case <-t.C:
		}
		backoff = min(2*backoff, maxRetryBackoff)
		first = idx + 1
	}
}

// sseConn is one connection of an event stream. The HTTP client's Timeout,
// if set, bounds the wait for the answer and every silence within it: a
// node sends a keepalive every 15 s, so a longer silence is a dead
// connection.
type sseConn struct {
	body   io.ReadCloser
	lines  *bufio.Scanner
	ctx    context.Context
	cancel context.CancelCauseFunc
	feed   func()
	idle   time.Duration
	timer  *time.Timer
}

// dial sends the stream's request to ep, with Last-Event-ID when the
// stream has one. A non-200 answer comes back as an *APIError or *EndedError.
func (s *EventStream) dial(ctx context.Context, ep string) (*sseConn, error) {
	hc := *s.c.hc
	conn := &sseConn{idle: hc.Timeout, feed: func() {}}
	hc.Timeout = 0 // it would cut the stream; idle bounds silences instead
	conn.ctx, conn.cancel = context.WithCancelCause(ctx)
	if conn.idle > 0 {
		conn.timer = time.AfterFunc(conn.idle, func() { conn.cancel(errStalled) })
		conn.feed = func() { conn.timer.Reset(conn.idle) }
	}
	req, err := newRequest(conn.ctx, ep, s.r, nil)
	if err != nil {
		conn.close()
		return nil, err
	}
	req.Header.Set("Accept", "text/event-stream, application/json")
	if last := s.LastEventID(); last > 0 {
		req.Header.Set("Last-Event-ID", strconv.FormatInt(last, 10))
	}
	resp, err := hc.Do(req)
	if err != nil {
		err = conn.stalled(err)
		conn.close()
		return nil, err
	}
	conn.body = resp.Body
	conn.feed()
	if resp.StatusCode != http.StatusOK {
		data, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
		conn.close()
		if err != nil {
			return nil, conn.stalled(err)
		}
		return nil, decodeError(resp.StatusCode, data)
	}
	conn.lines = bufio.NewScanner(resp.Body)
	conn.lines.Buffer(make([]byte, 0, 4096), maxEventLine)
	return conn, nil
}

// line returns the next line, without its line break.
func (c *sseConn) line() ([]byte, error) {
	if !c.lines.Scan() {
		err := c.lines.Err()
		if err == nil {
			err = io.EOF
		}
		return nil, c.stalled(err)
	}
	c.feed()
	return c.lines.Bytes(), nil
}

// stalled names a silence that the watchdog cut.
func (c *sseConn) stalled(err error) error {
	if errors.Is(context.Cause(c.ctx), errStalled) {
		return fmt.Errorf("no data for %s: %w", c.idle, errStalled)
	}
	return err
}

func (c *sseConn) close() {
	if c.timer != nil {
		c.timer.Stop()
	}
	c.cancel(nil)
	if c.body != nil {
		c.body.Close()
	}
}
