package registry

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
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
	// EventIdle: clean-up ended the session because its user was idle past
	// its policy's idle timeout.
	EventIdle EventType = "idle"
	// EventCleanup: clean-up ended the session: its shared connection died
	// and the service timeout ran out, or it outlived its policy's max lifetime.
	EventCleanup EventType = "cleanup"
	// EventShutdownRequested: a shutdown request covers the session (on a
	// session stream) or was made (on the feed); Event.Shutdown says which,
	// with its deadline and message.
	EventShutdownRequested EventType = "shutdown_requested"
	// EventShutdownCancelled: that request was cancelled; nothing will be
	// terminated. By names who cancelled it.
	EventShutdownCancelled EventType = "shutdown_cancelled"
	// EventResync: the stream could not resume where asked (that history is
	// compacted, or the revision is not of this cluster). Events in between
	// are lost: re-read the sessions you follow. Its Rev is the revision the
	// stream continues after.
	EventResync EventType = "resync"
)

// IsEnd reports whether t is the end of a session: closed, killed, expired,
// shutdown, idle or cleanup. A session stream ends after it.
func (t EventType) IsEnd() bool {
	switch t {
	case EventClosed, EventKilled, EventExpired, EventShutdown, EventIdle, EventCleanup:
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
	// Shutdown is the request of a shutdown_requested or shutdown_cancelled
	// event.
	Shutdown *ShutdownNotice `json:"shutdown,omitempty"`
	// Reason is the message given with the end: the kill reason, the
	// shutdown request's message, or why a session expired while the
	// cluster was down.
	Reason string `json:"reason,omitempty"`
	// By names who ended the session: a token name, "user:<tenant>/<user>",
	// or for expiry "liveness" (Roster's liveness view) or "lease" (the etcd
	// lease); of a shutdown_cancelled event, who cancelled.
	By string `json:"by,omitempty"`
	// At is when the session was opened (to the second) or ended, when the
	// shutdown request was made or cancelled; for resync, when the stream
	// resynchronized.
	At time.Time `json:"at"`
	// More says that the stream's next event has the same revision: the ends
	// of sessions that Roster's liveness view ended in one transaction share
	// it. An HTTP stream gives an event its SSE id only once every event of
	// its revision is sent, so that a stream resumed after that id misses
	// none of them. It is not part of the JSON.
	More bool `json:"-"`
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
// the session records, shutdown requests and tombstones, in revision
// order: a session record's creation is "opened"; a tombstone's creation is
// the session's end, whose type is its reason (closed, killed, expired or
// shutdown); a shutdown request's creation is "shutdown_requested" and its
// cancellation "shutdown_cancelled". Logout and kill write the tombstone in
// the transaction that deletes the session; for an expiry, the expiry
// watch of the first node to see the deletion writes it once (see
// recordExpiry). So every ended session has exactly one end event,
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
// etcd's history: it answers from one read of the session's record or
// tombstone and the shutdown requests, then watches the tombstone's key and
// the requests. Its events are the session's opening, shutdown_requested
// and shutdown_cancelled for each request that covers it, and its end. An
// unknown session is ErrSessionNotFound. A stream from now on (fromRev 0)
// of a live session begins with the pending requests that cover it (its
// Start is then just before the oldest of them), so a client that connects
// late still learns them; of an ended session it gives the end event at
// once. With a fromRev it gives every event from fromRev on; if fromRev is
// after the session's end, Events returns its *EndedError instead, since
// nothing more will happen to it. The stream ends after the end event. It
// never resyncs, except for a fromRev of another history.
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
	if err == nil && !r.goTracked(func() {
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

// goTracked runs f (an event stream, a revocation) on a goroutine that Close waits for, unless the registry
// is closing; it reports whether f runs.
func (r *Registry) goTracked(f func()) bool {
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
			end, err := r.pump(ctx, s, wch, &next, func(ev *clientv3.Event) (Event, bool) { return r.eventOf(ev, p, f) })
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

// pump delivers the events of the feed's watch until it ends; next is kept
// at the revision to resume from. convert turns a watch event into a
// stream event, or drops it. An error says the watch failed.
func (r *Registry) pump(ctx context.Context, s *EventStream, wch clientv3.WatchChan, next *int64, convert func(*clientv3.Event) (Event, bool)) (watchEnd, error) {
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
		// The watch never splits a revision between responses, so the events
		// of one revision that the stream sends are all here: each but the
		// last says More.
		var out []Event
		for _, ev := range resp.Events {
			if e, ok := convert(ev); ok {
				if n := len(out); n > 0 && out[n-1].Rev == e.Rev {
					out[n-1].More = true
				}
				out = append(out, e)
			}
		}
		for _, e := range out {
			if !s.send(ctx, e) {
				return watchStopped, nil
			}
		}
		if n := len(resp.Events); n > 0 {
			*next = resp.Events[n-1].Kv.ModRevision + 1
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
	if ev.Type != mvccpb.PUT {
		return Event{}, false
	}
	var e Event
	var o owner
	switch key := string(kv.Key); {
	case kv.CreateRevision != kv.ModRevision && !strings.HasPrefix(key, shutdownsPrefix):
		return Event{}, false // records and tombstones are written once; anything else is no event
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
	case strings.HasPrefix(key, shutdownsPrefix):
		return r.shutdownEvent(kv, p, f)
	default:
		return Event{}, false // the tokens between the prefixes
	}
	if !f.match(&e.Session) || p.mayWatch(o) != nil {
		return Event{}, false
	}
	return e, true
}

// shutdownEvent turns a change of a shutdown request into a feed event: its
// creation is shutdown_requested, its cancellation shutdown_cancelled. A
// request matches a filter's tenant and pool where it has one (a pool's
// spans tenants, a tenant's spans pools); the module filter does not apply.
// Client tokens see the requests for tenants and pools; those for one
// session only admins and operators see, on the feed (the session's own
// stream has them).
func (r *Registry) shutdownEvent(kv *mvccpb.KeyValue, p Principal, f EventFilter) (Event, bool) {
	s, err := decodeShutdown(kv)
	if err != nil {
		r.log.Warn("undecodable shutdown request in an event stream", "key", string(kv.Key), "error", err)
		return Event{}, false
	}
	e, ok := s.event(kv.ModRevision)
	switch {
	case !ok,
		f.Tenant != "" && s.Tenant != "" && f.Tenant != s.Tenant,
		f.Pool != "" && s.Pool != "" && f.Pool != s.Pool,
		s.Scope == ScopeSession && p.Role != RoleAdmin && p.Role != RoleOperator:
		return Event{}, false
	}
	return e, true
}

// requested is the shutdown_requested event of s.
func (s *storedShutdown) requested() Event {
	return Event{Rev: s.createRev, Type: EventShutdownRequested, Shutdown: s.notice(), Reason: s.Message, By: s.RequestedBy, At: s.CreatedAt}
}

// event is the event of the change of s made at revision rev: its creation
// or its cancellation. A request is written pending, and cancelled or done
// once; only a done request is written again (by a second enforcer adding
// to its count), which is no event.
func (s *storedShutdown) event(rev int64) (Event, bool) {
	switch {
	case rev == s.createRev && s.State == ShutdownPending:
		return s.requested(), true
	case rev != s.createRev && s.State == ShutdownCancelled:
		e := Event{Rev: rev, Type: EventShutdownCancelled, Shutdown: s.notice(), By: s.By, At: s.CreatedAt}
		if s.FinishedAt != nil {
			e.At = *s.FinishedAt
		}
		return e, true
	}
	return Event{}, false
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
// tombstone (created at tombRev), and every shutdown request, at revision
// rev.
type sessionState struct {
	rec       *record
	tomb      *tombstone
	tombRev   int64
	rev       int64
	shutdowns []storedShutdown
}

// session returns the session as recorded and the revision it was opened
// at; nil for an ended session whose tombstone kept no session.
func (st *sessionState) session() (*Session, int64) {
	switch {
	case st.rec != nil:
		return &st.rec.Session, st.rec.createRev
	case st.tomb.Session != nil:
		return st.tomb.Session, st.tomb.SessionRev
	}
	return nil, 0
}

// readSession reads a session's record and tombstone, and the shutdown
// requests, in one linearizable read. A session whose lease ran out a
// moment ago has neither record nor tombstone until the expiry watch
// writes the tombstone, so then it waits for the watch to pass the read and
// reads the tombstone again.
func (r *Registry) readSession(ctx context.Context, id string) (sessionState, error) {
	cctx, cancel := r.opCtx(ctx)
	defer cancel()
	resp, err := r.cli.Txn(cctx).Then(clientv3.OpGet(sessionKey(id)), clientv3.OpGet(tombstoneKey(id)),
		clientv3.OpGet(shutdownsPrefix, clientv3.WithPrefix())).Commit()
	if err != nil {
		return sessionState{}, translate("read session", err)
	}
	st := sessionState{rev: resp.Header.Revision}
	recs, tombs := resp.Responses[0].GetResponseRange().Kvs, resp.Responses[1].GetResponseRange().Kvs
	if st.shutdowns, err = decodeShutdowns(resp.Responses[2].GetResponseRange().Kvs); err != nil {
		return sessionState{}, err
	}
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

// events returns the session's events that st shows at revision from or
// later, in revision order, up to its end: its opening, the creation and
// cancellation of each shutdown request that covered it while it was
// open, its end.
func (st *sessionState) events(from int64) []Event {
	var out []Event
	if st.rec != nil {
		out = append(out, openedEvent(st.rec))
	} else if o, ok := st.tomb.opened(); ok {
		out = append(out, o)
	}
	if sess, openRev := st.session(); sess != nil {
		for i := range st.shutdowns {
			sh := &st.shutdowns[i]
			if !sh.covers(sess) || (sh.State != ShutdownPending && sh.modRev < openRev) {
				continue // finished before the session opened
			}
			out = append(out, sh.requested())
			if e, ok := sh.event(sh.modRev); ok && e.Type == EventShutdownCancelled {
				out = append(out, e)
			}
		}
	}
	if st.tomb != nil {
		out = append(out, st.tomb.event(st.tombRev))
	}
	slices.SortStableFunc(out, func(a, b Event) int { return cmp.Compare(a.Rev, b.Rev) })
	kept := out[:0]
	for _, e := range out {
		if e.Rev >= from {
			kept = append(kept, e)
		}
		if e.Type.IsEnd() {
			break
		}
	}
	return kept
}

// sessionStream sets up the stream of one session (see Events) and returns
// its loop. It needs no etcd history: it starts from what one read shows
// (sessionState.events), then watches the session's tombstone and the
// shutdown requests.
func (r *Registry) sessionStream(ctx context.Context, s *EventStream, p Principal, f EventFilter, fromRev int64) (func(context.Context) error, error) {
	st, err := r.readSession(ctx, f.SessionID)
	if err != nil {
		return nil, err
	}
	if err := p.mayWatch(ownerOf(st.rec, st.tomb)); err != nil {
		return nil, err
	}
	resync := fromRev > st.rev+1
	if resync {
		fromRev = 0
	}
	sess, _ := st.session()
	switch {
	case st.tomb != nil && fromRev > st.tombRev:
		return nil, &EndedError{Ended: st.tomb.Ended}
	case fromRev > 0:
	case st.tomb != nil:
		fromRev = st.tombRev // its end event comes at once
	default:
		// A new stream begins with the pending requests that cover the
		// session, so a client that connects late still learns them.
		fromRev = st.rev + 1
		for _, sh := range st.shutdowns {
			if sh.State == ShutdownPending && sh.covers(sess) {
				fromRev = min(fromRev, sh.createRev)
			}
		}
	}
	s.start = fromRev - 1
	s.progress.Store(s.start)
	pre := st.events(fromRev)
	if resync {
		pre = append([]Event{resyncEvent(s.start)}, pre...)
	}
	return func(ctx context.Context) error {
		sent := s.start
		for _, e := range pre {
			if !s.send(ctx, e) || e.Type.IsEnd() {
				return nil
			}
			sent = e.Rev
		}
		next := st.rev + 1
		for {
			wctx, cancel := context.WithCancel(watchCtx(ctx))
			tch := r.cli.Watch(wctx, tombstoneKey(f.SessionID), clientv3.WithRev(next), clientv3.WithFilterDelete())
			sch := r.cli.Watch(wctx, shutdownsPrefix, clientv3.WithPrefix(), clientv3.WithRev(next), clientv3.WithFilterDelete())
			end, err := r.pumpSession(ctx, s, tch, sch, &sent, func(ev *clientv3.Event) []Event {
				if strings.HasPrefix(string(ev.Kv.Key), shutdownsPrefix) {
					sh, err := decodeShutdown(ev.Kv)
					if err != nil || sess == nil || !sh.covers(sess) {
						return nil
					}
					e, ok := sh.event(ev.Kv.ModRevision)
					return one(e, ok)
				}
				e, ok := r.eventOf(ev, p, f)
				if !ok || e.Type != EventShutdown {
					return one(e, ok)
				}
				// The request's own watch may not have delivered it yet:
				// its shutdown_requested comes first all the same.
				return append(r.requestOf(ctx, ev.Kv.Value, ev.Kv.ModRevision, sent), e)
			})
			cancel()
			if err != nil || end != watchCompacted {
				return err
			}
			// A watch fell behind a compaction: read what happened
			// meanwhile instead.
			st, err := r.readSession(ctx, f.SessionID)
			if errors.Is(err, ErrSessionNotFound) {
				return nil // ended so long ago that even its tombstone is gone
			}
			if err != nil {
				return err
			}
			for _, e := range st.events(sent + 1) {
				if !s.send(ctx, e) || e.Type.IsEnd() {
					return nil
				}
				sent = e.Rev
			}
			next = st.rev + 1
		}
	}, nil
}

// pumpSession delivers the events of a session stream's two watches, the
// tombstone's and the shutdown requests', until the session's end; sent
// is kept at the last revision delivered. Each watch delivers in revision
// order; an event of one that is not after what the other delivered can
// only be a shutdown event overtaken by the end, and the end ends the
// stream.
func (r *Registry) pumpSession(ctx context.Context, s *EventStream, tch, sch clientv3.WatchChan, sent *int64, convert func(*clientv3.Event) []Event) (watchEnd, error) {
	for {
		var resp clientv3.WatchResponse
		var ok bool
		select {
		case resp, ok = <-tch:
		case resp, ok = <-sch:
		}
		switch {
		case !ok && ctx.Err() != nil:
			return watchStopped, nil
		case !ok:
			return watchStopped, fmt.Errorf("%w: the event watch closed", ErrUnavailable)
		case resp.CompactRevision != 0:
			return watchCompacted, nil
		case resp.Err() != nil:
			return watchStopped, translate("watch events", resp.Err())
		}
		for _, ev := range resp.Events {
			for _, e := range convert(ev) {
				if e.Rev <= *sent {
					continue
				}
				if !s.send(ctx, e) || e.Type.IsEnd() {
					return watchStopped, nil
				}
				*sent = e.Rev
				s.progress.Store(e.Rev)
			}
		}
	}
}

func one(e Event, ok bool) []Event {
	if !ok {
		return nil
	}
	return []Event{e}
}

// requestOf returns the shutdown_requested event of the request that
// terminated a session, whose tombstone tomb was written at revision rev,
// if it is after sent; it reads the request as of rev.
func (r *Registry) requestOf(ctx context.Context, tomb []byte, rev, sent int64) []Event {
	t, err := decodeTombstone(tomb)
	if err != nil || t.ShutdownID == "" {
		return nil
	}
	cctx, cancel := r.opCtx(ctx)
	defer cancel()
	resp, err := r.cli.Get(cctx, shutdownKey(t.ShutdownID), clientv3.WithRev(rev))
	if err != nil || len(resp.Kvs) == 0 {
		return nil // compacted or gone: the end event carries the message
	}
	sh, err := decodeShutdown(resp.Kvs[0])
	if err != nil || sh.createRev <= sent {
		return nil
	}
	return []Event{sh.requested()}
}
