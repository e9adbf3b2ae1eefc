package client

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/roster-dev/roster/registry"
)

// Heartbeat retry pacing after a failed heartbeat.
const (
	minRetryBackoff = 200 * time.Millisecond
	maxRetryBackoff = 5 * time.Second
)

// SessionOption tunes a Session.
type SessionOption func(*sessionOptions)

type sessionOptions struct {
	hook func(registry.HeartbeatResult, error)
}

// WithHeartbeatHook makes the Session call hook after every heartbeat
// attempt: with the result and a nil error on success, with the error on a
// failure (the Session retries transient failures until the session would
// have expired). hook runs on the heartbeat goroutine, so it must return
// quickly; it is not called again once Close has returned.
func WithHeartbeatHook(hook func(registry.HeartbeatResult, error)) SessionOption {
	return func(o *sessionOptions) { o.hook = hook }
}

// Session is an open session that is kept alive by a background goroutine
// until Close or until the session ends. It heartbeats every third of the
// session's TTL with the session's own token. A heartbeat that fails for a
// transient reason (no node reachable, 503, another 5xx) is retried, with
// backoff and on the next endpoint, until the moment the session would have
// expired; then the session ends with an *EndedError of reason expired. A 410
// answer ends it with the *EndedError the registry gave (killed, expired or
// closed), a 404 with an *EndedError of reason expired, and any other error
// answer (a revoked token: 401, 403) with that *APIError.
//
// All methods are safe to call concurrently.
type Session struct {
	c          *Client
	info       registry.Session
	token      string
	opts       sessionOptions
	ownsClient bool

	stop     context.CancelFunc
	loopDone chan struct{} // closed when the heartbeat goroutine returns
	done     chan struct{} // closed when the session has ended

	mu  sync.Mutex
	err error // why the session ended; set once, before done is closed

	active atomic.Bool // MarkActive was called since the last heartbeat

	// The event stream, started by the first call of Events.
	evMu     sync.Mutex
	events   chan registry.Event
	evCtx    context.Context
	evStop   context.CancelFunc
	evWG     sync.WaitGroup
	evClosed bool // Close has stopped the stream; Events starts none

	closeOnce sync.Once
	closeErr  error
}

// Attach starts heartbeating a session that is already open, e.g. one
// opened with Do so that the caller has the API's raw answer, or one whose
// token was handed over by another process. s.Token authorizes the
// heartbeats and the logout; empty uses the client's token. The first
// heartbeat is due after a third of s.ExpiresInSeconds.
func (c *Client) Attach(s registry.OpenedSession, opts ...SessionOption) (*Session, error) {
	return c.attach(s, time.Now(), opts)
}

// attach builds the Session and starts its goroutine. sent is when the
// session's expiry was last reset: the time the open request was sent.
func (c *Client) attach(s registry.OpenedSession, sent time.Time, opts []SessionOption) (*Session, error) {
	if s.ID == "" {
		return nil, errors.New("client: attach: the session has no id")
	}
	if s.TTLSeconds <= 0 {
		return nil, fmt.Errorf("client: attach session %s: ttl_seconds is %d, want > 0", s.ID, s.TTLSeconds)
	}
	expiresIn := s.ExpiresInSeconds
	if expiresIn <= 0 || expiresIn > s.TTLSeconds {
		expiresIn = s.TTLSeconds
	}
	ctx, stop := context.WithCancel(context.Background())
	sess := &Session{
		c:        c,
		info:     s.Session,
		token:    s.Token,
		stop:     stop,
		loopDone: make(chan struct{}),
		done:     make(chan struct{}),
	}
	for _, o := range opts {
		o(&sess.opts)
	}
	sess.info.Labels = maps.Clone(s.Labels)
	sess.evCtx, sess.evStop = context.WithCancel(context.Background())
	expiry := time.Duration(expiresIn) * time.Second
	go sess.run(ctx, sent.Add(expiry), expiry/3, time.Duration(s.TTLSeconds)*time.Second/3)
	return sess, nil
}

// ID returns the session's id.
func (s *Session) ID() string { return s.info.ID }

// Info returns the session as the open answered it (without its token).
func (s *Session) Info() registry.Session {
	info := s.info
	info.Labels = maps.Clone(s.info.Labels)
	return info
}

// Token returns the session's token ("rs1.…"), which authorizes heartbeats,
// logout and killing the same user's other sessions.
func (s *Session) Token() string { return s.token }

// MarkActive records that the session's user did something: the next
// heartbeat carries "active": true, which idle clean-up counts from. Call it
// as often as convenient (on every user action); it costs nothing until the
// heartbeat.
func (s *Session) MarkActive() { s.active.Store(true) }

// Done returns a channel that is closed when the session has ended: by
// Close, or because the heartbeats learned that it ended (Err says why).
func (s *Session) Done() <-chan struct{} { return s.done }

// Err returns nil while the session is alive, then why it ended: ErrClosed
// after Close, or an *EndedError (errors.Is matches ErrKilled, ErrExpired or
// ErrClosed) or another error when it ended on its own.
func (s *Session) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Close ends the session. In order it
//  1. stops the heartbeats and the event stream (Events' channel is closed
//     without the logout's event) and waits for their goroutines to return;
//  2. unless the session has already ended, logs it out with
//     DELETE /v1/sessions/{id}, bounded by ctx;
//  3. marks the session ended (Err returns ErrClosed, or how it ended if the
//     logout found it already gone) and closes Done;
//  4. closes idle connections if the Session made its own Client (Open).
//
// Close returns nil when the session is gone, whoever ended it. If the logout
// could not be delivered (ctx done, no node reachable) Close returns that
// error; the session then expires when its TTL runs out. Close is
// idempotent: later calls wait for the first and return its result.
func (s *Session) Close(ctx context.Context) error {
	s.closeOnce.Do(func() { s.closeErr = s.close(ctx) })
	return s.closeErr
}

func (s *Session) close(ctx context.Context) error {
	s.stop()
	<-s.loopDone
	s.evMu.Lock()
	s.evClosed = true
	s.evMu.Unlock()
	s.evStop()
	s.evWG.Wait()
	if s.ownsClient {
		defer s.c.CloseIdleConnections()
	}
	if s.Err() != nil {
		return nil
	}
	_, err := s.c.CloseSession(ctx, s.info.ID, s.token)
	if err == nil {
		s.end(ErrClosed)
		return nil
	}
	if end := s.endOf(err); end != nil {
		s.end(end)
		return nil
	}
	s.end(ErrClosed)
	return fmt.Errorf("client: log out session %s: %w (it expires when its TTL runs out)", s.info.ID, err)
}

// end records why the session ended and closes Done; only the first call counts.
func (s *Session) end(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return
	}
	s.err = err
	close(s.done)
}

// run is the heartbeat goroutine. deadline is when the session expires if
// no heartbeat gets through; wait is the delay until the first heartbeat.
func (s *Session) run(ctx context.Context, deadline time.Time, wait, interval time.Duration) {
	defer close(s.loopDone)
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		res, next, err := s.beat(ctx, deadline, interval)
		if ctx.Err() != nil {
			return // Close is under way and decides how the session ended
		}
		if err != nil {
			s.c.log.Debug("session ended", "session-id", s.info.ID, "err", err)
			s.end(err)
			return
		}
		deadline = next
		if res.TTLSeconds > 0 {
			interval = time.Duration(res.TTLSeconds) * time.Second / 3
		}
		timer.Reset(interval)
	}
}

// beat sends one heartbeat, retrying transient failures until deadline. It
// returns the answer and the new deadline, or the error that ends the session.
func (s *Session) beat(ctx context.Context, deadline time.Time, interval time.Duration) (registry.HeartbeatResult, time.Time, error) {
	backoff := minRetryBackoff
	attemptTimeout := max(interval/2, time.Second)
	active := s.active.Swap(false)
	for attempt := 1; ; attempt++ {
		sent := time.Now()
		actx, cancel := context.WithDeadline(ctx, deadline)
		res, err := s.c.heartbeat(actx, s.info.ID, s.token, active, attemptTimeout)
		cancel()
		if ctx.Err() != nil {
			return res, deadline, ctx.Err()
		}
		if s.opts.hook != nil {
			s.opts.hook(res, err)
		}
		if err == nil {
			expiresIn := res.ExpiresInSeconds
			if expiresIn <= 0 {
				expiresIn = res.TTLSeconds
			}
			return res, sent.Add(time.Duration(expiresIn) * time.Second), nil
		}
		if end := s.endOf(err); end != nil {
			return res, deadline, end
		}
		if _, ok := errors.AsType[*APIError](err); ok && !errors.Is(err, ErrUnavailable) && !isServerError(err) {
			return res, deadline, err // 401, 403, 400: retrying cannot help
		}
		now := time.Now()
		if !now.Before(deadline) {
			return res, deadline, &EndedError{
				ID:      s.info.ID,
				Reason:  registry.EndExpired,
				At:      deadline,
				Message: fmt.Sprintf("no heartbeat reached the registry before the TTL ran out (%d attempts; last error: %v)", attempt, err),
			}
		}
		s.c.log.Debug("heartbeat failed; retrying", "session-id", s.info.ID, "attempt", attempt, "err", err)
		t := time.NewTimer(min(backoff, deadline.Sub(now)))
		select {
		case <-ctx.Done():
			t.Stop()
			return res, deadline, ctx.Err()
		case <-t.C:
		}
		backoff = min(2*backoff, maxRetryBackoff, max(interval, minRetryBackoff))
	}
}

// endOf returns the error that says the session has ended if err is one: an
// *EndedError (410), or an *EndedError of reason expired for a 404 (the
// tombstone is gone too). It returns nil for every other error.
func (s *Session) endOf(err error) error {
	if e, ok := errors.AsType[*EndedError](err); ok {
		return e
	}
	if ae, ok := errors.AsType[*APIError](err); ok && ae.Status == http.StatusNotFound {
		return &EndedError{
			ID:      s.info.ID,
			Reason:  registry.EndExpired,
			Message: fmt.Sprintf("session %s is no longer known to the registry: it ended and its tombstone is gone (%v)", s.info.ID, ae),
			apiErr:  ae,
		}
	}
	return nil
}

func isServerError(err error) bool {
	ae, ok := errors.AsType[*APIError](err)
	return ok && ae.Status >= 500
}

// sessionEventBuffer is how many events Session.Events holds for a slow
// reader; a session has few (its end, and shutdown notices).
const sessionEventBuffer = 16

// Events returns a channel of the session's events. Its first call starts
// a stream of them (Client.SessionEvents with the session's token, from
// that moment on), which reconnects to other endpoints as an EventStream
// does. From then on the handle ends as soon as the stream reports the
// session's end, instead of at its next heartbeat: Done is closed and Err
// returns the *EndedError (errors.Is matches ErrKilled, ErrExpired, ...),
// whether or not the channel is read. The end event is the channel's last;
// Close also closes it, after stopping the stream, so the logout of Close
// itself is not on it. The channel holds 16 events for a slow reader; past
// that the stream waits for it. Every call returns the same channel.
func (s *Session) Events() <-chan registry.Event {
	s.evMu.Lock()
	defer s.evMu.Unlock()
	if s.events != nil {
		return s.events
	}
	s.events = make(chan registry.Event, sessionEventBuffer)
	if s.evClosed {
		close(s.events)
		return s.events
	}
	s.evWG.Add(1)
	go func() {
		defer s.evWG.Done()
		defer close(s.events)
		s.watch(s.evCtx)
	}()
	return s.events
}

// watch opens the session's event stream, retrying while no node can
// serve it, and forwards its events until the session's end or ctx ends.
func (s *Session) watch(ctx context.Context) {
	backoff := minRetryBackoff
	for {
		st, err := s.c.SessionEvents(ctx, s.info.ID, s.token, 0)
		if err == nil {
			s.forward(ctx, st)
			return
		}
		if ctx.Err() != nil {
			return
		}
		if end := s.endOf(err); end != nil {
			s.endNow(end)
			return
		}
		if _, ok := errors.AsType[*APIError](err); ok && !errors.Is(err, ErrUnavailable) && !isServerError(err) {
			s.c.log.Debug("cannot watch the session's events", "session-id", s.info.ID, "err", err)
			return // 401, 403: the heartbeats say what became of the session
		}
		s.c.log.Debug("session event stream failed; retrying", "session-id", s.info.ID, "err", err)
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(2*backoff, maxRetryBackoff)
	}
}

// forward passes the stream's events on, ending the handle at the
// session's end.
func (s *Session) forward(ctx context.Context, st *EventStream) {
	defer st.Close()
	for e := range st.Events() {
		if e.Type.IsEnd() {
			s.endNow(&EndedError{ID: s.info.ID, Reason: registry.EndReason(e.Type), By: e.By, Message: e.Reason, At: e.At})
		}
		select {
		case s.events <- e:
		case <-ctx.Done():
			return
		}
	}
	if end := s.endOf(st.Err()); end != nil {
		s.endNow(end)
	}
}

// endNow ends the handle with err and stops its heartbeats.
func (s *Session) endNow(err error) {
	s.c.log.Debug("session ended", "session-id", s.info.ID, "err", err)
	s.end(err)
	s.stop()
}
