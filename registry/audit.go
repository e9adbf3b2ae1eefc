package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// DefaultAuditRetention is how long the audit log keeps a record by
// default: 30 days, like the history.
const DefaultAuditRetention = 30 * 24 * time.Hour

// AuditAction names what an audit record records.
type AuditAction string

// The audit actions.
const (
	AuditLogin           AuditAction = "login"            // a session was opened
	AuditLoginRefused    AuditAction = "login_refused"    // an open was refused; Code says why
	AuditLogout          AuditAction = "logout"           // a session was closed by its client
	AuditKill            AuditAction = "kill"             // a session was killed
	AuditShutdownRequest AuditAction = "shutdown_request" // a shutdown request was made
	AuditShutdownCancel  AuditAction = "shutdown_cancel"  // a shutdown request was cancelled
	AuditPoolDeactivate  AuditAction = "pool_deactivate"
	AuditPoolActivate    AuditAction = "pool_activate"
	AuditUserSet         AuditAction = "user_set" // a user entry, its rights and services, was written
	AuditUserDelete      AuditAction = "user_delete"
	AuditTokenCreate     AuditAction = "token_create"
	AuditTokenRevoke     AuditAction = "token_revoke"
	AuditLicenseSet      AuditAction = "license_set"
	AuditLicenseDelete   AuditAction = "license_delete"
	AuditPolicySet       AuditAction = "policy_set"
	AuditPolicyDelete    AuditAction = "policy_delete"
	AuditAuthFailed      AuditAction = "auth_failed" // a request with missing, unknown or wrong credentials
)

// AuditActions lists every audit action.
var AuditActions = []AuditAction{AuditLogin, AuditLoginRefused, AuditLogout, AuditKill, AuditShutdownRequest,
	AuditShutdownCancel, AuditPoolDeactivate, AuditPoolActivate, AuditUserSet, AuditUserDelete, AuditTokenCreate,
	AuditTokenRevoke, AuditLicenseSet, AuditLicenseDelete, AuditPolicySet, AuditPolicyDelete, AuditAuthFailed}

// AuditRecord is one entry of the audit log. Records are written once and
// never changed; only the retention deletes them.
type AuditRecord struct {
	ID     string      `json:"id"`
	At     time.Time   `json:"at"`
	Action AuditAction `json:"action"`
	// Actor is who did it: an API token's name, or "user:<tenant>/<user>"
	// for a session token. Empty for a failed authentication.
	Actor string `json:"actor,omitempty"`
	// Node is the node that took the request; Remote the address it came
	// from, as that node saw it.
	Node   string `json:"node"`
	Remote string `json:"remote,omitempty"`
	// Tenant, User, Module and Session name the session or the user entry
	// the action was about.
	Tenant  string `json:"tenant,omitempty"`
	User    string `json:"user,omitempty"`
	Module  string `json:"module,omitempty"`
	Session string `json:"session,omitempty"`
	// Target names what else the action was about: a pool, a token's name,
	// a shutdown request's id, a licence or policy ("<tenant>/<module>",
	// "<scope>/<name>").
	Target string `json:"target,omitempty"`
	// Code is a refused login's error code (already_logged_in,
	// no_license_seat, pool_inactive, ...).
	Code string `json:"code,omitempty"`
	// Message is the refusal's or failure's message, a kill's reason, a
	// shutdown request's or an inactive pool's message.
	Message string `json:"message,omitempty"`
	// Details holds what else there is to say: a login's host and pool, a
	// user's rights and services, a token's role, a request's path.
	Details map[string]string `json:"details,omitempty"`
	// Count is how many failed authentications the record stands for: more
	// than 1 for the summary written when failures come faster than
	// authFailRate.
	Count int `json:"count,omitempty"`
}

// AuditFilter selects records of the audit log. Empty fields match
// everything.
type AuditFilter struct {
	Action                               AuditAction
	Actor, Tenant, User, Module, Session string
	Code                                 string
	// Since and Until select the records written at or after Since and
	// before Until.
	Since, Until time.Time
	// Limit is the page size, 1 to MaxListLimit; 0 means DefaultListLimit.
	Limit int
	// Cursor is the NextCursor of the previous page.
	Cursor string
}

// AuditPage is one page of the audit log, newest first.
type AuditPage struct {
	Audit []AuditRecord `json:"audit"`
	// NextCursor continues the listing; empty on the last page.
	NextCursor string `json:"next_cursor"`
}

var codePattern = regexp.MustCompile(`^[a-z][a-z_]{0,31}$`)

func (f *AuditFilter) check() error {
	if f.Action != "" && !isAuditAction(f.Action) {
		names := make([]string, len(AuditActions))
		for i, a := range AuditActions {
			names[i] = string(a)
		}
		return invalid("action", "%q is not an audit action; use one of %s", truncate(string(f.Action), 40), strings.Join(names, ", "))
	}
	if f.Actor != "" {
		if err := checkOptionalText("actor", f.Actor, 200); err != nil {
			return err
		}
	}
	for _, c := range []struct{ field, v string }{{"tenant", f.Tenant}, {"user", f.User}, {"module", f.Module}} {
		if c.v != "" {
			if err := checkName(c.field, c.v); err != nil {
				return err
			}
		}
	}
	if f.Session != "" {
		if err := CheckSessionID(f.Session); err != nil {
			return err
		}
	}
	if f.Code != "" && !codePattern.MatchString(f.Code) {
		return invalid("code", "%q is not an error code; codes are lower-case words such as already_logged_in or no_license_seat", truncate(f.Code, 40))
	}
	return checkLogWindow(f.Since, f.Until, &f.Limit)
}

func isAuditAction(a AuditAction) bool {
	for _, x := range AuditActions {
		if x == a {
			return true
		}
	}
	return false
}

func (f *AuditFilter) match(a *AuditRecord) bool {
	return (f.Action == "" || f.Action == a.Action) && (f.Actor == "" || f.Actor == a.Actor) &&
		(f.Tenant == "" || f.Tenant == a.Tenant) && (f.User == "" || f.User == a.User) &&
		(f.Module == "" || f.Module == a.Module) && (f.Session == "" || f.Session == a.Session) &&
		(f.Code == "" || f.Code == a.Code)
}

// Audit returns one page of the audit log: the records that match f,
// newest first; pass its NextCursor as f.Cursor for the next page. It needs
// an operator or admin. As with History, a filtered page reads at most
// 10,000 records, so only an empty NextCursor ends the listing.
func (r *Registry) Audit(ctx context.Context, p Principal, f AuditFilter) (AuditPage, error) {
	if err := requireRole(p, "read the audit log", RoleOperator, RoleAdmin); err != nil {
		return AuditPage{}, err
	}
	if err := f.check(); err != nil {
		return AuditPage{}, err
	}
	q := logQuery{prefix: auditPrefix, what: "audit log", since: f.Since, until: f.Until, cursor: f.Cursor, limit: f.Limit,
		filtered: f.Action != "" || f.Actor != "" || f.Tenant != "" || f.User != "" || f.Module != "" || f.Session != "" || f.Code != ""}
	recs, next, err := readLogPage(ctx, r, q, f.match)
	if err != nil {
		return AuditPage{}, err
	}
	return AuditPage{Audit: recs, NextCursor: next}, nil
}

// KeepAudit is the audit duty: it deletes the records older than
// AuditRetention now and every HistoryPruneInterval until ctx ends. With
// AuditRetention 0 it deletes the whole audit log once (the nodes write
// none).
func (r *Registry) KeepAudit(ctx context.Context) error {
	if r.cfg.AuditRetention == 0 {
		return r.keepNoLog(ctx, auditPrefix, "audit log")
	}
	r.pruneLog(ctx, auditPrefix, "audit log", r.cfg.AuditRetention, r.cfg.HistoryPruneInterval)
	return nil
}

// remoteKey carries the address a request came from (WithRemote).
type remoteKey struct{}

// WithRemote returns ctx carrying the address a request came from, for the
// audit records the request writes.
func WithRemote(ctx context.Context, addr string) context.Context {
	return context.WithValue(ctx, remoteKey{}, addr)
}

// stamp fills a record's id, time, node and remote address.
func (r *Registry) stamp(ctx context.Context, a *AuditRecord) {
	now := time.Now().UTC()
	a.ID, a.At, a.Node = newSessionID(now), now.Truncate(time.Millisecond), r.cfg.Node
	if addr, ok := ctx.Value(remoteKey{}).(string); ok {
		a.Remote = addr
	}
}

// auditOp is the put of audit record a, to be written in the transaction
// of the change it records, so that no change is without its record; ok is
// false when the node keeps no audit log (AuditRetention 0).
func (r *Registry) auditOp(ctx context.Context, a AuditRecord) (op clientv3.Op, ok bool) {
	if r.cfg.AuditRetention == 0 {
		return clientv3.Op{}, false
	}
	r.stamp(ctx, &a)
	val, _ := json.Marshal(a)
	return clientv3.OpPut(auditKey(a.At.UnixMilli(), a.ID), string(val)), true
}

// withAudit appends the put of audit record a to ops (see auditOp).
func (r *Registry) withAudit(ctx context.Context, ops []clientv3.Op, a AuditRecord) []clientv3.Op {
	if op, ok := r.auditOp(ctx, a); ok {
		return append(ops, op)
	}
	return ops
}

// auditWrite is a record for the audit writer: its put, and where to
// answer whether it is written (nil: nobody waits).
type auditWrite struct {
	op   clientv3.Op
	done chan error
}

const (
	// auditQueue is how many records wait for the audit writer; when it is
	// full, a failed authentication's record is dropped (and counted), a
	// refused login's waits.
	auditQueue = 4096
	// auditBatch is how many records one transaction of the writer puts.
	auditBatch = maxTxnOps
	// authFailRate and authFailBurst bound the failed authentications a
	// node records one by one per second; the rest are counted and summed
	// up in one record a second.
	authFailRate  = 20
	authFailBurst = 100
)

// auditor writes the records that belong to no other transaction (refused
// logins, failed authentications), many per transaction.
type auditor struct {
	q       chan auditWrite
	start   sync.Once // starts the writer at the first record
	running bool      // set by start: the writer runs (or ran until Close)

	mu         sync.Mutex
	tokens     float64 // the failed authentications that may still be recorded one by one
	refilled   time.Time
	suppressed int // failed authentications counted, not recorded, since the last summary
}

// record writes audit record a through the writer and waits until it is
// written or ctx ends. With AuditRetention 0 it does nothing.
func (r *Registry) record(ctx context.Context, a AuditRecord) error {
	op, ok := r.auditOp(ctx, a)
	if !ok {
		return nil
	}
	w := auditWrite{op: op, done: make(chan error, 1)}
	if !r.startAuditWriter() {
		r.putAudit([]auditWrite{w})
		return <-w.done
	}
	select {
	case r.audit.q <- w:
	case <-ctx.Done():
		return ctx.Err()
	case <-r.ctx.Done():
		return errors.New("registry: closed")
	}
	select {
	case err := <-w.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// RecordAuthFailure records a failed authentication: the request's method
// and path, and why it failed (never the credentials). It does not wait for
// the write. Over authFailRate a second (after a burst of authFailBurst) the
// failures are only counted, and one summary record a second says how many.
func (r *Registry) RecordAuthFailure(ctx context.Context, method, path string, cause error) {
	if r.cfg.AuditRetention == 0 {
		return
	}
	r.audit.mu.Lock()
	now := time.Now()
	r.audit.tokens = min(authFailBurst, r.audit.tokens+now.Sub(r.audit.refilled).Seconds()*authFailRate)
	r.audit.refilled = now
	allowed := r.audit.tokens >= 1
	if allowed {
		r.audit.tokens--
	} else {
		r.audit.suppressed++
	}
	r.audit.mu.Unlock()
	if !allowed {
		return
	}
	msg := truncate(strings.TrimPrefix(cause.Error(), "registry: "), 300)
	op, _ := r.auditOp(ctx, AuditRecord{Action: AuditAuthFailed, Message: msg, Count: 1,
		Details: map[string]string{"method": method, "path": truncate(path, 200)}})
	if !r.startAuditWriter() {
		return // closing
	}
	select {
	case r.audit.q <- auditWrite{op: op}:
	default:
		r.audit.mu.Lock()
		r.audit.suppressed++
		r.audit.mu.Unlock()
	}
}

// startAuditWriter starts the audit writer unless it runs; false when the
// registry is closing and no writer runs.
func (r *Registry) startAuditWriter() bool {
	r.audit.start.Do(func() { r.audit.running = r.goTracked(r.writeAudit) })
	return r.audit.running
}

// writeAudit is the audit writer: until the registry closes, it puts the
// queued records, up to auditBatch per transaction, and once a second
// writes the summary of the failed authentications not recorded one by one.
func (r *Registry) writeAudit() {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	batch := make([]auditWrite, 0, auditBatch)
	for {
		batch = batch[:0]
		select {
		case <-r.ctx.Done():
			return
		case w := <-r.audit.q:
			batch = append(batch, w)
		case <-t.C:
			if w, ok := r.authFailSummary(); ok {
				batch = append(batch, w)
			}
		}
	fill:
		for len(batch) < auditBatch {
			select {
			case w := <-r.audit.q:
				batch = append(batch, w)
			default:
				break fill
			}
		}
		if len(batch) > 0 {
			r.putAudit(batch)
		}
	}
}

// authFailSummary takes the count of unrecorded failed authentications and
// makes their summary record; ok is false when there were none.
func (r *Registry) authFailSummary() (auditWrite, bool) {
	r.audit.mu.Lock()
	n := r.audit.suppressed
	r.audit.suppressed = 0
	r.audit.mu.Unlock()
	if n == 0 {
		return auditWrite{}, false
	}
	op, _ := r.auditOp(context.Background(), AuditRecord{Action: AuditAuthFailed, Count: n,
		Message: fmt.Sprintf("%d failed authentications on this node in the last second not recorded one by one (more than %d a second)", n, authFailRate)})
	return auditWrite{op: op}, true
}

// putAudit writes a batch of records in one transaction, trying once more
// on failure: the keys are fixed, so a retry of a write that did land
// writes the same records again and duplicates nothing.
func (r *Registry) putAudit(batch []auditWrite) {
	ops := make([]clientv3.Op, len(batch))
	for i, w := range batch {
		ops[i] = w.op
	}
	var err error
	for attempt := 0; attempt < 2; attempt++ {
		ctx, cancel := context.WithTimeout(r.ctx, r.cfg.RequestTimeout)
		_, err = r.cli.Txn(ctx).Then(ops...).Commit()
		cancel()
		if err == nil || r.ctx.Err() != nil {
			break
		}
	}
	if err != nil {
		err = translate("write audit log", err)
		r.log.Warn("writing audit records failed; they are lost", "records", len(batch), "error", err)
	}
	for _, w := range batch {
		if w.done != nil {
			w.done <- err
		}
	}
}

// auditRefusal records a refused open with its error code. A request the
// registry could not decide (etcd unavailable, the caller gone) is no
// refusal and is not recorded.
func (r *Registry) auditRefusal(ctx context.Context, p Principal, req *OpenRequest, cause error) {
	code, _, ok := Code(cause)
	if !ok || code == "unavailable" || ctx.Err() != nil {
		return
	}
	a := AuditRecord{Action: AuditLoginRefused, Actor: p.By(), Tenant: truncate(req.Tenant, 200), User: truncate(req.User, 200),
		Module: truncate(req.Module, 200), Code: code, Message: truncate(strings.TrimPrefix(cause.Error(), "registry: "), 500)}
	if req.Host != "" || req.Pool != "" {
		a.Details = map[string]string{"host": truncate(req.Host, 200), "pool": truncate(req.Pool, 200)}
	}
	cctx, cancel := r.opCtx(ctx)
	defer cancel()
	if err := r.record(cctx, a); err != nil {
		r.log.Warn("could not record a refused login in the audit log", "tenant", a.Tenant, "user", a.User, "code", code, "error", err)
	}
}

// putAudited puts val at key and audit record a in one transaction.
func (r *Registry) putAudited(ctx context.Context, key, val string, a AuditRecord) error {
	cctx, cancel := r.opCtx(ctx)
	defer cancel()
	_, err := r.cli.Txn(cctx).Then(r.withAudit(ctx, []clientv3.Op{clientv3.OpPut(key, val)}, a)...).Commit()
	return err
}

// deleteAudited deletes key and writes audit record a in one transaction,
// if key exists; found says whether it did.
func (r *Registry) deleteAudited(ctx context.Context, key string, a AuditRecord) (found bool, err error) {
	cctx, cancel := r.opCtx(ctx)
	defer cancel()
	resp, err := r.cli.Txn(cctx).If(clientv3.Compare(clientv3.CreateRevision(key), ">", 0)).
		Then(r.withAudit(ctx, []clientv3.Op{clientv3.OpDelete(key)}, a)...).Commit()
	if err != nil {
		return false, err
	}
	return resp.Succeeded, nil
}
