package registry

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Shutdown scopes and states.
const (
	ScopeSession = "session" // one session
	ScopeAll     = "all"     // every session of a tenant; new logins there are refused meanwhile
	ScopePool    = "pool"    // every session of a pool

	ShutdownPending   = "pending"
	ShutdownDone      = "done"
	ShutdownCancelled = "cancelled"

	// DefaultGraceSeconds is the grace of a request that names none: proALPHA's five minutes.
	DefaultGraceSeconds = 300
	// MaxGraceSeconds bounds the grace of a request.
	MaxGraceSeconds = 7 * 24 * 3600
)

// EndShutdown ends a session still open at its shutdown request's deadline.
const EndShutdown EndReason = "shutdown"

// ShutdownRequest is the body of POST /v1/shutdowns.
type ShutdownRequest struct {
	Scope   string `json:"scope"`             // ScopeSession, ScopeAll or ScopePool
	Session string `json:"session,omitempty"` // the session, for ScopeSession
	Tenant  string `json:"tenant,omitempty"`  // the tenant, for ScopeAll (default "default")
	Pool    string `json:"pool,omitempty"`    // the pool, for ScopePool
	// GraceSeconds is the time the clients get to save and log off; nil means
	// DefaultGraceSeconds. 0 terminates at once.
	GraceSeconds *int64 `json:"grace_seconds,omitempty"`
	Message      string `json:"message,omitempty"` // shown to every client in scope
}

// Shutdown is a stored shutdown request and how it went.
type Shutdown struct {
	ID           string    `json:"id"`
	Scope        string    `json:"scope"`
	Session      string    `json:"session,omitempty"`
	Tenant       string    `json:"tenant,omitempty"`
	Pool         string    `json:"pool,omitempty"`
	Message      string    `json:"message,omitempty"`
	RequestedBy  string    `json:"requested_by"`
	GraceSeconds int64     `json:"grace_seconds"`
	CreatedAt    time.Time `json:"created_at"`
	Deadline     time.Time `json:"deadline"`
	State        string    `json:"state"` // ShutdownPending, ShutdownDone or ShutdownCancelled
	// InScope is the number of sessions in scope when the request was made; Open, of a
	// pending request, how many are still open; Terminated, of a done one, how many were
	// still open at the deadline and were ended with reason shutdown.
	InScope    int        `json:"in_scope"`
	Open       int        `json:"open,omitempty"`
	Terminated int        `json:"terminated"`
	FinishedAt *time.Time `json:"finished_at,omitempty"`
	By         string     `json:"finished_by,omitempty"` // who cancelled it, or the node that enforced it
}

// ShutdownNotice tells a client in scope of a pending shutdown request what is coming;
// heartbeats and the shutdown events of event streams carry it.
type ShutdownNotice struct {
	ID          string    `json:"id"`
	Scope       string    `json:"scope"`
	Session     string    `json:"session,omitempty"`
	Tenant      string    `json:"tenant,omitempty"`
	Pool        string    `json:"pool,omitempty"`
	Deadline    time.Time `json:"deadline"`
	Message     string    `json:"message,omitempty"`
	RequestedBy string    `json:"requested_by"`
}

func (s *Shutdown) notice() *ShutdownNotice {
	return &ShutdownNotice{ID: s.ID, Scope: s.Scope, Session: s.Session, Tenant: s.Tenant, Pool: s.Pool,
		Deadline: s.Deadline, Message: s.Message, RequestedBy: s.RequestedBy}
}

// covers reports whether the request s reaches session rec.
func (s *Shutdown) covers(rec *Session) bool {
	switch s.Scope {
	case ScopeSession:
		return s.Session == rec.ID
	case ScopeAll:
		return s.Tenant == rec.Tenant
	case ScopePool:
		return s.Pool == rec.Pool
	}
	return false
}

// scopePrefix is the index prefix that lists the sessions in scope of s.
func (s *Shutdown) scopePrefix() string {
	switch s.Scope {
	case ScopeAll:
		return ixTenantPrefix + s.Tenant + "/"
	case ScopePool:
		return ixPoolPrefix + s.Pool + "/"
	}
	return sessionKey(s.Session) // one key, no prefix
}

// RequestShutdown stores a shutdown request with an absolute deadline. Clients in scope
// learn it from their event streams and heartbeats; sessions that close themselves
// before the deadline end as closed, the others are terminated at the deadline by the
// duty leader (EnforceShutdowns). During an "all" request new logins into the tenant are
// refused with ErrMaintenance.
func (r *Registry) RequestShutdown(ctx context.Context, p Principal, req ShutdownRequest) (Shutdown, error) {
	if err := requireRole(p, "request shutdowns", RoleOperator, RoleAdmin); err != nil {
		return Shutdown{}, err
	}
	s, err := r.newShutdown(ctx, p, req)
	if err != nil {
		return Shutdown{}, err
	}
	cctx, cancel := r.opCtx(ctx)
	defer cancel()
	count := clientv3.OpGet(s.scopePrefix(), clientv3.WithPrefix(), clientv3.WithCountOnly())
	if s.Scope == ScopeSession {
		count = clientv3.OpGet(s.scopePrefix(), clientv3.WithCountOnly())
	}
	cresp, err := r.cli.Txn(cctx).Then(count).Commit()
	if err != nil {
		return Shutdown{}, translate("count sessions in scope", err)
	}
	s.InScope = int(cresp.Responses[0].GetResponseRange().Count)
	s.Open = s.InScope
	val, _ := json.Marshal(s)
	ops := []clientv3.Op{clientv3.OpPut(shutdownKey(s.ID), string(val))}
	if s.Scope == ScopeAll {
		ops = append(ops, clientv3.OpPut(maintKey(s.Tenant), string(val)))
	}
	ops = r.withAudit(ctx, ops, s.auditRecord(AuditShutdownRequest, s.RequestedBy))
	if _, err := r.cli.Txn(cctx).Then(ops...).Commit(); err != nil {
		return Shutdown{}, translate("store shutdown request", err)
	}
	r.log.Info("shutdown requested", "id", s.ID, "scope", s.Scope, "target", s.target(), "deadline", s.Deadline, "by", s.RequestedBy, "in-scope", s.InScope)
	return s, nil
}

// newShutdown validates req and fills a pending Shutdown.
func (r *Registry) newShutdown(ctx context.Context, p Principal, req ShutdownRequest) (Shutdown, error) {
	now := time.Now().UTC().Truncate(time.Second)
	s := Shutdown{ID: newSessionID(now), Scope: req.Scope, Message: req.Message, RequestedBy: p.By(), CreatedAt: now,
		State: ShutdownPending, GraceSeconds: DefaultGraceSeconds}
	if req.GraceSeconds != nil {
		s.GraceSeconds = *req.GraceSeconds
	}
	if s.GraceSeconds < 0 || s.GraceSeconds > MaxGraceSeconds {
		return s, invalid("grace_seconds", "is %d; give 0 (at once) to %d (a week)", s.GraceSeconds, MaxGraceSeconds)
	}
	if err := checkOptionalText("message", req.Message, MaxReasonBytes); err != nil {
		return s, err
	}
	if err := checkText("message", req.Message, false); err != nil {
		return s, err
	}
	s.Deadline = now.Add(time.Duration(s.GraceSeconds) * time.Second)
	extra := func(field, v string) error {
		if v != "" {
			return invalid(field, "is not used with scope %s; drop it", s.Scope)
		}
		return nil
	}
	switch req.Scope {
	case ScopeSession:
		if err := CheckSessionID(req.Session); err != nil {
			return s, err
		}
		if err := errors.Join(extra("tenant", req.Tenant), extra("pool", req.Pool)); err != nil {
			return s, err
		}
		rec, _, err := r.lookup(ctx, req.Session)
		if err != nil {
			return s, err
		}
		if rec == nil {
			return s, sessionNotFound(req.Session)
		}
		s.Session, s.Tenant, s.Pool = rec.ID, rec.Tenant, rec.Pool
	case ScopeAll:
		s.Tenant = req.Tenant
		if s.Tenant == "" {
			s.Tenant = DefaultTenant
		}
		if err := errors.Join(checkName("tenant", s.Tenant), extra("session", req.Session), extra("pool", req.Pool)); err != nil {
			return s, err
		}
	case ScopePool:
		s.Pool = req.Pool
		if err := errors.Join(checkName("pool", req.Pool), extra("session", req.Session), extra("tenant", req.Tenant)); err != nil {
			return s, err
		}
	case "":
		return s, invalid("scope", "is required: session, all or pool")
	default:
		return s, invalid("scope", "is %q; want session, all or pool", req.Scope)
	}
	return s, nil
}

// auditRecord is the audit record of a request or cancellation of s by actor.
func (s *Shutdown) auditRecord(action AuditAction, actor string) AuditRecord {
	return AuditRecord{Action: action, Actor: actor, Target: s.ID, Tenant: s.Tenant, Session: s.Session, Message: s.Message,
		Details: map[string]string{"scope": string(s.Scope), "pool": s.Pool, "deadline": s.Deadline.UTC().Format(time.RFC3339)}}
}

// target names what s reaches, for logs.
func (s *Shutdown) target() string {
	switch s.Scope {
	case ScopeSession:
		return "session " + s.Session
	case ScopeAll:
		return "tenant " + s.Tenant
	}
	return "pool " + s.Pool
}

// Shutdowns lists the shutdown requests, newest first; a pending one says how many
// sessions in its scope are still open.
func (r *Registry) Shutdowns(ctx context.Context, p Principal) ([]Shutdown, error) {
	if err := requireRole(p, "list shutdowns", RoleOperator, RoleAdmin); err != nil {
		return nil, err
	}
	all, err := r.readShutdowns(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]Shutdown, len(all))
	for i := range all {
		out[i] = all[i].Shutdown
		if out[i].State == ShutdownPending {
			if out[i].Open, err = r.openInScope(ctx, &out[i]); err != nil {
				return nil, err
			}
		}
	}
	return out, nil
}

// Shutdown returns one shutdown request.
func (r *Registry) Shutdown(ctx context.Context, p Principal, id string) (Shutdown, error) {
	all, err := r.Shutdowns(ctx, p)
	if err != nil {
		return Shutdown{}, err
	}
	for _, s := range all {
		if s.ID == id {
			return s, nil
		}
	}
	return Shutdown{}, &notFoundError{sentinel: ErrShutdownNotFound, msg: "no shutdown request " + id}
}

// storedShutdown is a shutdown request with the revisions of its key.
type storedShutdown struct {
	Shutdown
	createRev, modRev int64
}

// readShutdowns reads every shutdown request, newest first.
func (r *Registry) readShutdowns(ctx context.Context) ([]storedShutdown, error) {
	all, _, err := r.readShutdownsAt(ctx)
	return all, err
}

// readShutdownsAt is readShutdowns that also returns the revision of the read.
func (r *Registry) readShutdownsAt(ctx context.Context) ([]storedShutdown, int64, error) {
	cctx, cancel := r.opCtx(ctx)
	defer cancel()
	resp, err := r.cli.Get(cctx, shutdownsPrefix, clientv3.WithPrefix())
	if err != nil {
		return nil, 0, translate("read shutdown requests", err)
	}
	all, err := decodeShutdowns(resp.Kvs)
	return all, resp.Header.Revision, err
}

// decodeShutdowns decodes the shutdown requests read from etcd, newest first.
func decodeShutdowns(kvs []*mvccpb.KeyValue) ([]storedShutdown, error) {
	out := make([]storedShutdown, 0, len(kvs))
	for i := len(kvs) - 1; i >= 0; i-- { // ids sort by time
		s, err := decodeShutdown(kvs[i])
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

func decodeShutdown(kv *mvccpb.KeyValue) (storedShutdown, error) {
	s := storedShutdown{createRev: kv.CreateRevision, modRev: kv.ModRevision}
	if err := json.Unmarshal(kv.Value, &s.Shutdown); err != nil {
		return s, fmt.Errorf("registry: decode shutdown request %s: %w", kv.Key, err)
	}
	return s, nil
}

// openInScope counts the sessions in scope of s that are open now.
func (r *Registry) openInScope(ctx context.Context, s *Shutdown) (int, error) {
	ids, _, err := r.idsInScope(ctx, s)
	return len(ids), err
}

// idsInScope lists the ids of the open sessions in scope of s, and the revision
// it read them at.
func (r *Registry) idsInScope(ctx context.Context, s *Shutdown) ([]string, int64, error) {
	cctx, cancel := r.opCtx(ctx)
	defer cancel()
	if s.Scope == ScopeSession {
		resp, err := r.cli.Get(cctx, sessionKey(s.Session), clientv3.WithCountOnly())
		if err != nil {
			return nil, 0, translate("read session", err)
		}
		if resp.Count == 0 {
			return nil, resp.Header.Revision, nil
		}
		return []string{s.Session}, resp.Header.Revision, nil
	}
	resp, err := r.cli.Get(cctx, s.scopePrefix(), clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, 0, translate("list sessions in scope", err)
	}
	ids := make([]string, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		k := string(kv.Key)
		ids = append(ids, k[strings.LastIndexByte(k, '/')+1:])
	}
	return ids, resp.Header.Revision, nil
}

// CancelShutdown cancels a pending shutdown request: nothing is terminated, and new
// logins are accepted again.
func (r *Registry) CancelShutdown(ctx context.Context, p Principal, id string) (Shutdown, error) {
	if err := requireRole(p, "cancel shutdowns", RoleOperator, RoleAdmin); err != nil {
		return Shutdown{}, err
	}
	if err := CheckSessionID(id); err != nil {
		return Shutdown{}, invalid("id", "is not a shutdown request id (32 hex digits)")
	}
	return r.finish(ctx, id, func(s *Shutdown) error {
		if s.State != ShutdownPending {
			return fmt.Errorf("%w: shutdown request %s is %s already", ErrShutdownFinished, id, s.State)
		}
		s.State, s.By = ShutdownCancelled, p.By()
		return nil
	})
}

// finish moves shutdown request id out of pending with change, in one transaction that
// also ends the tenant's maintenance; it retries when the request changed meanwhile.
func (r *Registry) finish(ctx context.Context, id string, change func(*Shutdown) error) (Shutdown, error) {
	cctx, cancel := r.opCtx(ctx)
	defer cancel()
	for range 5 {
		resp, err := r.cli.Get(cctx, shutdownKey(id))
		if err != nil {
			return Shutdown{}, translate("read shutdown request", err)
		}
		if len(resp.Kvs) == 0 {
			return Shutdown{}, &notFoundError{sentinel: ErrShutdownNotFound, msg: "no shutdown request " + id}
		}
		var s Shutdown
		if err := json.Unmarshal(resp.Kvs[0].Value, &s); err != nil {
			return Shutdown{}, fmt.Errorf("registry: decode shutdown request %s: %w", id, err)
		}
		if err := change(&s); err != nil {
			return s, err
		}
		if s.FinishedAt == nil {
			now := time.Now().UTC().Truncate(time.Second)
			s.FinishedAt = &now
		}
		s.Open = 0
		val, _ := json.Marshal(s)
		ops := []clientv3.Op{clientv3.OpPut(shutdownKey(id), string(val))}
		if s.State == ShutdownCancelled {
			ops = r.withAudit(ctx, ops, s.auditRecord(AuditShutdownCancel, s.By))
		}
		var cmps []clientv3.Cmp
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(shutdownKey(id)), "=", resp.Kvs[0].ModRevision))
		tresp, err := r.cli.Txn(cctx).If(cmps...).Then(ops...).Commit()
		if err != nil {
			return Shutdown{}, translate("finish shutdown request", err)
		}
		if !tresp.Succeeded {
			continue
		}
		if s.Scope == ScopeAll {
			r.endMaintenance(cctx, &s)
		}
		r.log.Info("shutdown request "+s.State, "id", s.ID, "target", s.target(), "terminated", s.Terminated, "by", s.By)
		return s, nil
	}
	return Shutdown{}, fmt.Errorf("%w: shutdown request %s kept changing; try again", ErrUnavailable, id)
}

// endMaintenance removes the tenant's maintenance mark if s set it (a newer "all"
// request may have replaced it).
func (r *Registry) endMaintenance(ctx context.Context, s *Shutdown) {
	resp, err := r.cli.Get(ctx, maintKey(s.Tenant))
	if err != nil || len(resp.Kvs) == 0 {
		return
	}
	var m Shutdown
	if json.Unmarshal(resp.Kvs[0].Value, &m) != nil || m.ID != s.ID {
		return
	}
	r.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(maintKey(s.Tenant)), "=", resp.Kvs[0].ModRevision)).
		Then(clientv3.OpDelete(maintKey(s.Tenant))).Commit()
}

// maintenance builds the refusal of an open into a tenant under an "all" shutdown
// request, whose stored request is val.
func maintenance(val []byte) error {
	var s Shutdown
	_ = json.Unmarshal(val, &s)
	return &MaintenanceError{Tenant: s.Tenant, Deadline: s.Deadline, Message: s.Message, ID: s.ID}
}

// EnforceShutdowns runs as the duty leader's duty until ctx ends: it terminates, with
// reason shutdown, every session still open in scope of a pending request whose deadline
// has come, and marks the request done. It keeps nothing that matters in memory: each
// round reads the requests from etcd, so a new duty leader enforces overdue deadlines at
// once. It wakes at the next deadline, when a request changes, and every second.
//
// Every node also enforces a request left pending BackstopDelay after its deadline (see
// backstopShutdowns), so a deadline holds while a new duty leader is being elected;
// while it sees the request's sessions being ended it holds off (see backstopHeld).
func (r *Registry) EnforceShutdowns(ctx context.Context) error {
	wch := r.cli.Watch(clientv3.WithRequireLeader(ctx), shutdownsPrefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	var pruned time.Time
	for {
		next, err := r.enforceDue(ctx, 0)
		if err != nil && ctx.Err() == nil {
			r.log.Warn("enforcing shutdown deadlines failed; retrying", "error", err)
		}
		if time.Since(pruned) > min(time.Minute, r.cfg.ShutdownRetention/2) {
			r.pruneShutdowns(ctx, time.Now().Add(-r.cfg.ShutdownRetention))
			pruned = time.Now()
		}
		if !r.sleepUntil(ctx, next, wch) {
			return nil
		}
	}
}

// pruneShutdowns deletes the requests that finished before cutoff.
func (r *Registry) pruneShutdowns(ctx context.Context, cutoff time.Time) {
	all, err := r.readShutdowns(ctx)
	if err != nil {
		return // the next round tries again
	}
	for _, s := range all {
		if s.State == ShutdownPending || s.FinishedAt == nil || !s.FinishedAt.Before(cutoff) {
			continue
		}
		cctx, cancel := r.opCtx(ctx)
		_, err := r.cli.Txn(cctx).If(clientv3.Compare(clientv3.ModRevision(shutdownKey(s.ID)), "=", s.modRev)).
			Then(clientv3.OpDelete(shutdownKey(s.ID))).Commit()
		cancel()
		if err != nil {
			return
		}
		r.log.Debug("finished shutdown request deleted", "id", s.ID, "finished", *s.FinishedAt)
	}
}

// BackstopDelay is how long after a deadline every node enforces a request the duty
// leader has not finished, unless it sees the request's sessions being ended (see
// backstopHeld: then up to backstopMaxHold later).
const BackstopDelay = time.Second

// backstopShutdowns runs on every node until ctx ends: a pending request that is still
// pending BackstopDelay after its deadline (up to a quarter of it more, and later while
// its sessions are being ended: see backstopHeld) is enforced by this node. Several enforcers
// are harmless: a session is ended once, and each counts only what it ended.
func (r *Registry) backstopShutdowns(ctx context.Context) {
	for {
		var next time.Time
		r.shutMu.RLock()
		for _, s := range r.pending {
			if next.IsZero() || s.Deadline.Before(next) {
				next = s.Deadline
			}
		}
		changed := r.pendingChanged
		r.shutMu.RUnlock()
		if !next.IsZero() {
			// Up to a quarter second more, so the nodes do not all start at once.
			next = next.Add(BackstopDelay + time.Duration(mrand.Int64N(int64(BackstopDelay/4))))
			if !time.Now().Before(next) {
				due, err := r.enforceDue(ctx, BackstopDelay)
				if err != nil && ctx.Err() == nil {
					r.log.Warn("enforcing an overdue shutdown deadline failed; retrying", "error", err)
				}
				next = time.Now().Add(time.Second) // the cache catches up meanwhile
				if !due.IsZero() && due.Before(next) {
					next = due // a request held off (see backstopHeld)
				}
			}
		}
		wait := time.Hour
		if !next.IsZero() {
			wait = time.Until(next)
		}
		t := time.NewTimer(max(wait, 0))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-changed:
		case <-t.C:
		}
		t.Stop()
	}
}

// sleepUntil waits until next (at most a second; zero means a second), a change on
// wch, or the end of ctx; it reports false when ctx ended.
func (r *Registry) sleepUntil(ctx context.Context, next time.Time, wch clientv3.WatchChan) bool {
	wait := time.Second
	if d := time.Until(next); !next.IsZero() && d < wait {
		wait = max(d, 0)
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-wch:
	case <-t.C:
	}
	return true
}

// enforceDue enforces every pending request whose deadline passed at least late ago,
// and returns the next such moment (zero when none is pending).
func (r *Registry) enforceDue(ctx context.Context, late time.Duration) (time.Time, error) {
	all, err := r.readShutdowns(ctx)
	if err != nil {
		return time.Time{}, err
	}
	var next time.Time
	var errs []error
	for i := range all {
		s := &all[i]
		if s.State != ShutdownPending {
			continue
		}
		due := s.Deadline.Add(late)
		if late > 0 { // a backstop: it may be held off
			if held := r.backstopHeld(&s.Shutdown, late); held.After(due) {
				due = held
			}
		}
		if time.Now().Before(due) {
			if next.IsZero() || due.Before(next) {
				next = due
			}
			continue
		}
		if err := r.enforce(ctx, s, late > 0); err != nil {
			errs = append(errs, err)
		}
	}
	return next, errors.Join(errs...)
}

// A backstop holds off while the request's sessions are being ended: from the last end
// this node saw, it waits backstopQuiet, and at most until backstopMaxHold after its
// own turn. Without it, every node's backstop read the sessions in scope 1 s after a
// deadline and sent transactions that could only fail, each ending sessions another
// node had ended already: with 10,000 sessions in scope, on 3 nodes on this 2-core
// machine, that work competed with the duty leader's ends, which finished 2.3-3.1 s
// after the deadline instead of 1.8-2.2 s (see docs/performance.md).
const (
	backstopQuiet   = 500 * time.Millisecond
	backstopMaxHold = 10 * time.Second
)

// backstopHeld returns when a backstop whose turn comes late after the deadline of
// s may enforce it, given the ends of s this node's session watch has seen.
func (r *Registry) backstopHeld(s *Shutdown, late time.Duration) time.Time {
	r.shutMu.RLock()
	seen := r.shutEnds[s.ID]
	r.shutMu.RUnlock()
	if seen.IsZero() {
		return time.Time{}
	}
	if until, limit := seen.Add(backstopQuiet), s.Deadline.Add(late+backstopMaxHold); until.Before(limit) {
		return until
	}
	return s.Deadline.Add(late + backstopMaxHold)
}

// noteShutdownEnds records that sessions ended now by the pending shutdown requests
// ids (see backstopHeld).
func (r *Registry) noteShutdownEnds(ids []string) {
	if len(ids) == 0 {
		return
	}
	now := time.Now()
	r.shutMu.Lock()
	defer r.shutMu.Unlock()
	for _, id := range ids {
		if _, ok := r.pending[id]; ok {
			if r.shutEnds == nil {
				r.shutEnds = map[string]time.Time{}
			}
			r.shutEnds[id] = now
		}
	}
}

// tombstoneShutdownID returns the shutdown request a tombstone's value names
// (Ended.ShutdownID), without decoding the rest of it. Only the Ended fields, which
// come before "tenant", are searched: a message cannot fake the field (quotes within
// a JSON string are escaped), and the session's attributes, which come later, are not
// looked at.
func tombstoneShutdownID(val []byte) string {
	const field = `"shutdown_id":"`
	end := bytes.Index(val, []byte(`,"tenant":`))
	if end < 0 {
		return ""
	}
	i := bytes.Index(val[:end], []byte(field))
	if i < 0 {
		return ""
	}
	rest := val[i+len(field):]
	j := bytes.IndexByte(rest, '"')
	if j < 0 {
		return ""
	}
	return string(rest[:j])
}

// enforce terminates the sessions left in scope of the pending request s and marks it
// done. If another node marked it done first, the sessions this one ended are added
// to its count, so the count is exact however many nodes enforced it. A node that
// found sessions in scope but ended none (another node was ending them) leaves the
// marking to that node, so the request does not show done with a count of 0 meanwhile;
// if that node died, the next round finds the scope empty and marks it. A pass that
// fails part-way (a read or a transaction timed out) is tried again, up to
// enforceAttempts in all, so the sessions it did end are counted with the rest; when
// every attempt fails, their count is lost (and logged) and the next round ends what
// is left. backstop says this node is a backstop (fewer transactions at once).
func (r *Registry) enforce(ctx context.Context, s *storedShutdown, backstop bool) error {
	var n, found int
	var err error
	for attempt := 1; ; attempt++ {
		var ended int
		ended, found, err = r.terminateInScope(ctx, s, backstop)
		n += ended
		if err == nil || attempt == enforceAttempts || ctx.Err() != nil {
			break
		}
	}
	if err != nil {
		if n > 0 {
			r.log.Warn("shutdown deadline: sessions ended but not counted in the request", "id", s.ID, "ended", n, "error", err)
		}
		return err
	}
	if n == 0 && found > 0 {
		return nil
	}
	_, err = r.finish(ctx, s.ID, func(cur *Shutdown) error {
		switch {
		case cur.State == ShutdownPending:
			cur.State, cur.Terminated, cur.By = ShutdownDone, n, "node:"+r.cfg.Node
			return nil
		case cur.State == ShutdownDone && n > 0:
			cur.Terminated += n
			return nil
		}
		return fmt.Errorf("%w: shutdown request %s is %s already", ErrShutdownFinished, s.ID, cur.State)
	})
	if errors.Is(err, ErrShutdownFinished) {
		return nil
	}
	return err
}

// enforceAttempts bounds the passes of one enforce (see enforce).
const enforceAttempts = 3

// terminateInScope ends every open session in scope of s with reason shutdown and
// returns how many it ended and how many it found open. It ends them as the liveness
// view ends lapsed sessions, many per transaction and a few transactions at once (one
// transaction per session, 16 at a time, ended 5,000 sessions 14 s after the deadline
// on 3 nodes on this 2-core machine; see docs/performance.md). Each transaction is
// conditional on the request being unchanged since it was read, so nothing is ended
// after the request was cancelled, and once another node has marked it done this one
// stops. The sessions' leases are not revoked: their keys are gone, a heartbeat finds
// the session ended, and a revocation per session (an fsync on every member) would
// hold up the ends still to come; the leases run out by themselves.
func (r *Registry) terminateInScope(ctx context.Context, s *storedShutdown, backstop bool) (int, int, error) {
	ids, rev, err := r.idsInScope(ctx, &s.Shutdown)
	if err != nil {
		return 0, 0, err
	}
	at := time.Now().UTC().Truncate(time.Second)
	item := func(rec *record) lapseItem {
		how := Ended{ID: rec.ID, Reason: EndShutdown, By: s.RequestedBy, Message: s.Message, ShutdownID: s.ID, At: at}
		val, _ := json.Marshal(tombstoneOf(rec, how))
		return lapseItem{rec: rec, ops: endOps(rec), tomb: string(val)}
	}
	var cachedItems []lapseItem
	var missing []string
	for _, id := range ids {
		if rec := r.cached(id); rec != nil {
			cachedItems = append(cachedItems, item(rec))
		} else {
			missing = append(missing, id)
		}
	}
	// The sessions in this node's cache are ended while the others' records are
	// read, at the scope's revision, many per transaction (one that has ended since
	// is left out).
	cond := &endCond{key: shutdownKey(s.ID), modRev: s.modRev}
	inFlight := txnsInFlight(lapseTxnsInFlight, r.endTxnOps(), lapseMinTxnsInFlight)
	if backstop {
		inFlight = txnsInFlight(lapseBackstopTxnsInFlight, r.endTxnOps(), 1)
	}
	sem := make(chan struct{}, inFlight)
	var fromCache int
	var cacheErr error
	var wg sync.WaitGroup
	wg.Go(func() { fromCache, cacheErr = r.endItems(ctx, cachedItems, sem, cond) })
	var ended int
	var errs []error
	if len(missing) > 0 {
		found := make(map[string]*mvccpb.KeyValue, len(missing))
		if err := r.readKeys(ctx, missing, rev, found); err != nil {
			errs = append(errs, err)
		}
		var read []lapseItem
		for _, id := range missing {
			if kv := found[id]; kv != nil {
				rec, err := decodeRecord(kv)
				if err != nil {
					errs = append(errs, err)
					continue
				}
				read = append(read, item(rec))
			}
		}
		ended, err = r.endItems(ctx, read, sem, cond)
		errs = append(errs, err)
	}
	wg.Wait()
	ended += fromCache
	errs = append(errs, cacheErr)
	for i, err := range errs {
		if errors.Is(err, errCondition) {
			errs[i] = nil
		}
	}
	if len(ids) > 0 {
		r.log.Info("shutdown deadline reached", "id", s.ID, "target", s.target(), "terminated", ended, "late", time.Since(s.Deadline).Round(time.Millisecond))
	}
	return ended, len(ids), errors.Join(errs...)
}

// pendingFor returns the notice of the first pending request (by deadline) that covers
// rec, from the node's cache of requests.
func (r *Registry) pendingFor(rec *record) *ShutdownNotice {
	r.shutMu.RLock()
	defer r.shutMu.RUnlock()
	var best *Shutdown
	for _, s := range r.pending {
		if s.covers(&rec.Session) && (best == nil || s.Deadline.Before(best.Deadline)) {
			best = s
		}
	}
	if best == nil {
		return nil
	}
	return best.notice()
}

// watchShutdowns keeps the node's cache of pending shutdown requests, which heartbeats
// and backstopShutdowns read, until ctx ends.
func (r *Registry) watchShutdowns(ctx context.Context) {
	for ctx.Err() == nil {
		all, rev, err := r.readShutdownsAt(ctx)
		if err != nil {
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
			continue
		}
		r.setPending(all)
		// Watch from just after the read, so a change made meanwhile is not
		// missed; on any watch error (a compaction too), read again.
		wch := r.cli.Watch(clientv3.WithRequireLeader(ctx), shutdownsPrefix, clientv3.WithPrefix(), clientv3.WithKeysOnly(), clientv3.WithRev(rev+1))
		for range wch {
			if all, err := r.readShutdowns(ctx); err == nil {
				r.setPending(all)
			}
		}
	}
}

func (r *Registry) setPending(all []storedShutdown) {
	pending := map[string]*Shutdown{}
	for i := range all {
		if all[i].State == ShutdownPending {
			pending[all[i].ID] = &all[i].Shutdown
		}
	}
	r.shutMu.Lock()
	r.pending = pending
	for id := range r.shutEnds {
		if _, ok := pending[id]; !ok {
			delete(r.shutEnds, id)
		}
	}
	close(r.pendingChanged)
	r.pendingChanged = make(chan struct{})
	r.shutMu.Unlock()
}
