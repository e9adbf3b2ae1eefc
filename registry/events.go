package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/metadata"
)

// EventType says what happened to a session.
type EventType string

// The event types. An ended session's event type is its end reason (see
// EndReason), so a new reason becomes a new event type without a mapping.
const (
	EventOpened  EventType = "opened"  // the session was opened
	EventClosed  EventType = "closed"  // its client logged it out
	EventKilled  EventType = "killed"  // an operator or a user cut it
	EventExpired EventType = "expired" // its lease ran out
	// EventShutdown: the session was ended by a shutdown of its pool or node.
	EventShutdown EventType = "shutdown"
	// EventResync: the stream could not resume where asked (that history is
	// compacted, or the revision is not of this cluster). Events in between
	// are lost: re-read the sessions you follow. Its Rev is the revision the
	// stream continues after.
	EventResync EventType = "resync"
)

// IsEnd reports whether t is the end of a session: closed, killed, expired
// or shutdown. A session stream ends after it.
func (t EventType) IsEnd() bool {
	switch t {
	case EventClosed, EventKilled, EventExpired, EventShutdown:
		return true
	}
	return false
}

// Event is one thing that happened to a session, as an event stream delivers it.
type Event struct {
	// Rev is the etcd revision of the change; events of a stream have
	// increasing revisions, and it is the SSE id of the event.
	Rev  int64     `json:"rev"`
	Type EventType `json:"type"`
	// Session is the session as recorded: when opened, or for an ended one
	// as it was before the end (ExpiresInSeconds is then 0). A resync event
	// has none.
	Session Session `json:"session,omitzero"`
	// Reason is the message given with the end: the kill reason, or why a
	// session expired while the cluster was down.
	Reason string `json:"reason,omitempty"`
	// By names who ended the session: a token name, "user:<tenant>/<user>",
	// or "lease" for expiry.
	By string `json:"by,omitempty"`
	// At is when the session was opened (to the second) or ended; for
	// resync, when the stream resynchronized.
	At time.Time `json:"at"`
}

// EventFilter selects the events of a stream. Empty fields match everything.
type EventFilter struct {
	Tenant, Pool, Module string
	// SessionID makes the stream a session stream: the events of one
	// session, ending after its end (see Registry.Events).
	SessionID string
}

func (f EventFilter) check() error {
	for _, c := range []struct{ field, v string }{{"tenant", f.Tenant}, {"pool", f.Pool}, {"module", f.Module}} {
		if c.v != "" {
			if err := checkName(c.field, c.v); err != nil {
				return err
			}
		}
	}
	if f.SessionID == "" {
		return nil
	}
	if f.Tenant != "" || f.Pool != "" || f.Module != "" {
		return invalid("session_id", "a session's stream takes no other filter")
	}
	return CheckSessionID(f.SessionID)
}

func (f EventFilter) match(s *Session) bool {
	return (f.Tenant == "" || f.Tenant == s.Tenant) && (f.Pool == "" || f.Pool == s.Pool) &&
		(f.Module == "" || f.Module == s.Module) && (f.SessionID == "" || f.SessionID == s.ID)
}

// EventStream is a running stream of events; Registry.Events returns it.
type EventStream struct {
	ch       chan Event
	start    int64
	progress atomic.Int64
	cancel   context.CancelFunc

	mu  sync.Mutex
	err error
}

// Events returns the stream's channel. It is unbuffered, so a slow reader
// slows the stream down instead of losing events, and it is closed when
// the stream ends; Err then says why.
func (s *EventStream) Events() <-chan Event { return s.ch }

// Start returns the revision the stream begins after: every event but a
// resync has a greater Rev. A client that has received nothing yet
// resumes after it.
func (s *EventStream) Start() int64 { return s.start }

// Progress returns a revision up to which every event of the stream has
// been received from Events: a client that received everything so far
// resumes after it without missing an event. It moves past the last event
// when etcd reports that nothing more has happened (a progress
// notification, about every ten minutes), so a quiet filtered stream does
// not fall behind etcd's compaction.
func (s *EventStream) Progress() int64 { return s.progress.Load() }

// Err returns why the stream ended, once Events is closed: nil when its
// context ended or a session stream delivered its session's end, an error
// matching ErrUnavailable when the watch failed (the node lost the etcd
// leader, or the registry is closing). It is nil while the stream runs.
func (s *EventStream) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Close stops the stream, as cancelling its context does. Safe to call twice.
func (s *EventStream) Close() { s.cancel() }

func (s *EventStream) send(ctx context.Context, e Event) bool {
	select {
	case s.ch <- e:
		return true
	case <-ctx.Done():
		return false
	}
}

// eventsStreamKey puts the event watches on a gRPC stream of their own, apart
// from the expiry watch, whose progress requests are answered only when
// every watch of its stream has caught up.
const eventsStreamKey = "roster-watch"

// Events streams the events that match f from etcd revision fromRev on (0:
// from now on, that is after Start). Events are derived from one watch of
// the session records and tombstones, in revision order: a session record's
// creation is "opened"; a tombstone's creation is the session's end, whose
// type is its reason (closed, killed, expired or shutdown). Logout and kill
// write the tombstone in the transaction that deletes the session; for an
// expiry, the expiry watch of the first node to see the deletion writes it
// once (see recordExpiry). So every ended session has exactly one end event,
// whatever deleted it.
//
// Who may watch what: admin and operator API tokens everything; a client API
// token the sessions it opened (as List); a session token only its own
// session (f.SessionID). Anything else is ErrPermissionDenied.
//
// If fromRev is compacted, or later than the cluster's revision (a revision
// of another history), the first event is a resync event and the stream
// continues after its Rev.
//
// With f.SessionID set the stream follows one session and does not need
// etcd's history: it answers from the session's current record or
// tombstone, then watches the tombstone's key. An unknown session is
// ErrSessionNotFound. A session that has ended gives its end event at once
// (and its opened event first if fromRev is not after it) and the stream
// ends; if fromRev is after its end, Events returns its *EndedError instead,
// since nothing more will happen to it. A live session gives its opened
// event if fromRev is not after it, then its end when it comes, then the
// stream ends. Such a stream never resyncs, except for a fromRev of
// another history.
//
// Errors of the setup (permission, filter, session not found, etcd
// unreachable) are returned at once; later failures end the stream (see
// EventStream.Err). The stream runs until ctx ends, Close is called, the
// registry closes or the watch fails; the registry waits for it on Close.
func (r *Registry) Events(ctx context.Context, p Principal, f EventFilter, fromRev int64) (*EventStream, error) {
	if err := f.check(); err != nil {
		return nil, err
	}
	if fromRev < 0 {
		return nil, invalid("from_rev", "%d must not be negative", fromRev)
	}
	switch {
	case p.isSession() && f.SessionID != p.SessionID:
		return nil, denied("%s may watch only the events of its own session", p.describe())
	case !p.isSession() && p.Role != RoleAdmin && p.Role != RoleOperator && p.Role != RoleClient:
		return nil, denied("%s may not watch events", p.describe())
	}
	if r.ctx.Err() != nil {
		return nil, fmt.Errorf("%w: the registry is closed", ErrUnavailable)
	}
	sctx, cancel := context.WithCancel(ctx)
	stopOnClose := context.AfterFunc(r.ctx, cancel)
	s := &EventStream{ch: make(chan Event), cancel: cancel}
	var run func(context.Context) error
	var err error
	if f.SessionID != "" {
		run, err = r.sessionStream(sctx, s, p, f, fromRev)
	} else {
		run, err = r.allStream(sctx, s, p, f, fromRev)
	}
	if err == nil && !r.goStream(func() {
		defer stopOnClose()
		defer cancel()
		err := run(sctx)
		if err == nil && r.ctx.Err() != nil && ctx.Err() == nil {
			err = fmt.Errorf("%w: the registry is closing", ErrUnavailable)
		}
		s.mu.Lock()
		s.err = err
		s.mu.Unlock()
		close(s.ch)
	}) {
		err = fmt.Errorf("%w: the registry is closed", ErrUnavailable)
	}
	if err != nil {
		stopOnClose()
		cancel()
		return nil, err
	}
	return s, nil
}

// goStream runs f on a goroutine that Close waits for, unless the registry
// is closing; it reports whether f runs.
func (r *Registry) goStream(f func()) bool {
	r.streamsMu.Lock()
	defer r.streamsMu.Unlock()
	if r.closing {
		return false
	}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		f()
	}()
	return true
}

// watchCtx is the context of an event watch: it fails the watch when its
// member loses the etcd leader, so clients move to a node that has one.
func watchCtx(ctx context.Context) context.Context {
	return clientv3.WithRequireLeader(metadata.AppendToOutgoingContext(ctx, eventsStreamKey, "events"))
}

// currentRev reads the cluster's revision (linearizably).
func (r *Registry) currentRev(ctx context.Context) (int64, error) {
	cctx, cancel := r.opCtx(ctx)
	defer cancel()
	resp, err := r.cli.Get(cctx, aliveKey, clientv3.WithCountOnly())
	if err != nil {
		return 0, translate("read the revision", err)
	}
	return resp.Header.Revision, nil
}

func resyncEvent(rev int64) Event {
	return Event{Rev: rev, Type: EventResync, At: time.Now().UTC().Truncate(time.Second)}
}

// allStream sets up a stream of every session's events and returns its loop.
func (r *Registry) allStream(ctx context.Context, s *EventStream, p Principal, f EventFilter, fromRev int64) (func(context.Context) error, error) {
	head, err := r.currentRev(ctx)
	if err != nil {
		return nil, err
	}
	resync := false
	switch {
	case fromRev == 0:
		fromRev = head + 1
	case fromRev > head+1:
		resync, fromRev = true, head+1
	}
	s.start = fromRev - 1
	s.progress.Store(s.start)
	from, to := eventRange()
	return func(ctx context.Context) error {
		if resync && !s.send(ctx, resyncEvent(head)) {
			return nil
		}
		next := fromRev
		for {
			wctx, cancel := context.WithCancel(watchCtx(ctx))
			wch := r.cli.Watch(wctx, from, clientv3.WithRange(to), clientv3.WithRev(next),
				clientv3.WithFilterDelete(), clientv3.WithProgressNotify())
			end, err := r.pump(ctx, s, wch, &next, false, func(ev *clientv3.Event) (Event, bool) { return r.eventOf(ev, p, f) })
			cancel()
			if err != nil || end != watchCompacted {
				return err
			}
			head, err := r.currentRev(ctx)
			if err != nil {
				return err
			}
			if !s.send(ctx, resyncEvent(head)) {
				return nil
			}
			s.progress.Store(head)
			next = head + 1
		}
	}, nil
}

// watchEnd is how one watch of an event stream ended.
type watchEnd int

const (
	watchStopped   watchEnd = iota // ctx ended, or a session stream delivered its end
	watchCompacted                 // the revision to resume from is compacted
)

// pump delivers the events of one watch until it ends; next is kept at the
// revision to resume from. convert turns a watch event into a stream
// event, or drops it. A session stream (untilEnd) stops after an end
// event. An error says the watch failed.
func (r *Registry) pump(ctx context.Context, s *EventStream, wch clientv3.WatchChan, next *int64, untilEnd bool, convert func(*clientv3.Event) (Event, bool)) (watchEnd, error) {
	for resp := range wch {
		switch {
		case resp.CompactRevision != 0:
			return watchCompacted, nil
		case resp.Err() != nil:
			return watchStopped, translate("watch events", resp.Err())
		case resp.IsProgressNotify():
			if resp.Header.Revision >= *next {
				*next = resp.Header.Revision + 1
				s.progress.Store(resp.Header.Revision)
			}
			continue
		}
		for _, ev := range resp.Events {
			e, ok := convert(ev)
			if ok && !s.send(ctx, e) {
				return watchStopped, nil
			}
			*next = ev.Kv.ModRevision + 1
			if ok && untilEnd && e.Type.IsEnd() {
				return watchStopped, nil
			}
		}
		s.progress.Store(*next - 1)
	}
	if ctx.Err() != nil {
		return watchStopped, nil
	}
	return watchStopped, fmt.Errorf("%w: the event watch closed", ErrUnavailable)
}

// eventOf turns a watch event into the stream event p may see and f
// selects; anything else is dropped.
func (r *Registry) eventOf(ev *clientv3.Event, p Principal, f EventFilter) (Event, bool) {
	kv := ev.Kv
	if ev.Type != mvccpb.PUT || kv.CreateRevision != kv.ModRevision {
		return Event{}, false // records and tombstones are written once; anything else is no event
	}
	var e Event
	var o owner
	switch key := string(kv.Key); {
	case strings.HasPrefix(key, sessionsPrefix):
		rec, err := decodeRecord(kv)
		if err != nil {
			r.log.Warn("undecodable session record in an event stream", "key", key, "error", err)
			return Event{}, false
		}
		e, o = openedEvent(rec), ownerOf(rec, nil)
	case strings.HasPrefix(key, tombstonesPrefix):
		tomb, err := decodeTombstone(kv.Value)
		if err != nil {
			r.log.Warn("undecodable tombstone in an event stream", "key", key, "error", err)
			return Event{}, false
		}
		e, o = tomb.event(kv.ModRevision), ownerOf(nil, tomb)
	default:
		return Event{}, false // the tokens between the two prefixes
	}
	if !f.match(&e.Session) || p.mayWatch(o) != nil {
		return Event{}, false
	}
	return e, true
}

// mayWatch: admins and operators, the client token that opened it, the
// session's own token.
// That is mayRead without the user's other sessions: a session token watches only its
// own session.
func (p Principal) mayWatch(o owner) error {
	if (!p.isSession() || p.SessionID == o.ID) && p.mayRead(o) == nil {
		return nil
	}
	return denied("%s may not watch session %s: only its own session token, the client token that opened it, an operator or an admin may", p.describe(), o.ID)
}

func openedEvent(rec *record) Event {
	s := rec.Session
	s.ExpiresInSeconds = s.TTLSeconds
	return Event{Rev: rec.createRev, Type: EventOpened, Session: s, At: s.StartedAt}
}

// event is the end event of the tombstone created at revision rev.
func (t *tombstone) event(rev int64) Event {
	s := Session{ID: t.ID, Tenant: t.Tenant, User: t.User} // a tombstone written before events kept no session
	if t.Session != nil {
		s = *t.Session
	}
	return Event{Rev: rev, Type: EventType(t.Reason), Session: s, Reason: t.Message, By: t.By, At: t.At}
}

// opened is the opened event of an ended session, if its
// tombstone kept enough to rebuild it.
func (t *tombstone) opened() (Event, bool) {
	if t.Session == nil || t.SessionRev == 0 {
		return Event{}, false
	}
	s := *t.Session
	s.ExpiresInSeconds = s.TTLSeconds
	return Event{Rev: t.SessionRev, Type: EventOpened, Session: s, At: s.StartedAt}, true
}

func decodeTombstone(v []byte) (*tombstone, error) {
	var t tombstone
	if err := json.Unmarshal(v, &t); err != nil {
		return nil, fmt.Errorf("registry: decode tombstone: %w", err)
	}
	return &t, nil
}

// sessionState is a session as one read sees it: its record or its
// tombstone (created at tombRev), at revision rev.
type sessionState struct {
	rec     *record
	tomb    *tombstone
	tombRev int64
	rev     int64
}

// readSession reads a session's record and tombstone in one linearizable
// read. A session whose lease ran out a moment ago has neither until the
// expiry watch writes its tombstone, so then it waits for the watch to pass
// the read and reads the tombstone again.
func (r *Registry) readSession(ctx context.Context, id string) (sessionState, error) {
	cctx, cancel := r.opCtx(ctx)
	defer cancel()
	resp, err := r.cli.Txn(cctx).Then(clientv3.OpGet(sessionKey(id)), clientv3.OpGet(tombstoneKey(id))).Commit()
	if err != nil {
		return sessionState{}, translate("read session", err)
	}
	st := sessionState{rev: resp.Header.Revision}
	recs, tombs := resp.Responses[0].GetResponseRange().Kvs, resp.Responses[1].GetResponseRange().Kvs
	if len(recs) == 0 && len(tombs) == 0 && r.waitWatched(cctx, st.rev) {
		again, err := r.cli.Get(cctx, tombstoneKey(id))
		if err != nil {
			return sessionState{}, translate("read tombstone", err)
		}
		tombs = again.Kvs
	}
	switch {
	case len(recs) == 1:
		if st.rec, err = decodeRecord(recs[0]); err != nil {
			return sessionState{}, err
		}
	case len(tombs) == 1:
		if st.tomb, err = decodeTombstone(tombs[0].Value); err != nil {
			return sessionState{}, err
		}
		st.tombRev = tombs[0].CreateRevision
	default:
		return sessionState{}, sessionNotFound(id)
	}
	return st, nil
}

// sessionStream sets up the stream of one session (see Events) and returns
// its loop.
func (r *Registry) sessionStream(ctx context.Context, s *EventStream, p Principal, f EventFilter, fromRev int64) (func(context.Context) error, error) {
	st, err := r.readSession(ctx, f.SessionID)
	if err != nil {
		return nil, err
	}
	if err := p.mayWatch(ownerOf(st.rec, st.tomb)); err != nil {
		return nil, err
	}
	var pre []Event
	if fromRev > st.rev+1 {
		pre, fromRev = append(pre, resyncEvent(st.rev)), 0
	}
	switch {
	case fromRev > 0:
		s.start = fromRev - 1
	case st.tomb != nil:
		s.start = st.tombRev - 1 // its end event comes at once
	default:
		s.start = st.rev
	}
	s.progress.Store(s.start)
	if st.tomb != nil {
		if fromRev > st.tombRev {
			return nil, &EndedError{Ended: st.tomb.Ended}
		}
		if o, ok := st.tomb.opened(); ok && fromRev > 0 && o.Rev >= fromRev {
			pre = append(pre, o)
		}
		pre = append(pre, st.tomb.event(st.tombRev))
	} else if o := openedEvent(st.rec); fromRev > 0 && o.Rev >= fromRev {
		pre = append(pre, o)
	}
	return func(ctx context.Context) error {
		for _, e := range pre {
			if !s.send(ctx, e) || e.Type.IsEnd() {
				return nil
			}
		}
		// Only the tombstone's creation is left to come.
		next := st.rev + 1
		for {
			wctx, cancel := context.WithCancel(watchCtx(ctx))
			wch := r.cli.Watch(wctx, tombstoneKey(f.SessionID), clientv3.WithRev(next), clientv3.WithFilterDelete())
			end, err := r.pump(ctx, s, wch, &next, true, func(ev *clientv3.Event) (Event, bool) { return r.eventOf(ev, p, f) })
			cancel()
			if err != nil || end != watchCompacted {
				return err
			}
			// The watch fell behind a compaction: the tombstone, if it came
			// meanwhile, is still there.
			st, err := r.readSession(ctx, f.SessionID)
			if errors.Is(err, ErrSessionNotFound) {
				return nil // ended so long ago that even its tombstone is gone
			}
			if err != nil {
				return err
			}
			if st.tomb != nil {
				s.send(ctx, st.tomb.event(st.tombRev))
				return nil
			}
			next = st.rev + 1
		}
	}, nil
}
