package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// MaxBatchSessions bounds the sessions of one batch heartbeat.
const MaxBatchSessions = 10_000

// BatchHeartbeatRequest is the body of POST /v1/heartbeats: an application
// server renews its shared connection and the sessions opened through it.
type BatchHeartbeatRequest struct {
	Connection string   `json:"connection"`
	Sessions   []string `json:"sessions"`
	// Active lists the sessions (each also in Sessions) whose users did
	// something since the last heartbeat.
	Active []string `json:"active,omitempty"`
}

// BatchHeartbeat is the outcome of a batch heartbeat.
type BatchHeartbeat struct {
	Connection ConnectionRenewal
	// Sessions holds one result per requested session, in request order.
	Sessions []SessionRenewal
}

// ConnectionRenewal is the renewed shared connection of a batch heartbeat.
type ConnectionRenewal struct {
	ID               string `json:"id"`
	TTLSeconds       int64  `json:"ttl_seconds"`
	ExpiresInSeconds int64  `json:"expires_in_seconds"`
}

// SessionRenewal is one session's result in a batch heartbeat: renewed (Err
// nil) or why not. Err matches the sentinels as a single heartbeat's error
// would: *EndedError (killed, expired, …), ErrSessionNotFound,
// ErrPermissionDenied (not opened through the connection), ErrUnavailable.
type SessionRenewal struct {
	ID               string
	ExpiresInSeconds int64
	Shutdown         *ShutdownNotice
	Err              error
}

// BatchHeartbeatAnswer is the answer to POST /v1/heartbeats.
type BatchHeartbeatAnswer struct {
	Connection ConnectionRenewal `json:"connection"`
	// Results holds one result per requested session, in request order.
	Results []BatchResult `json:"results"`
	Renewed int           `json:"renewed"`
	Failed  int           `json:"failed"`
}

// BatchResult is one session's result in a BatchHeartbeatAnswer: renewed
// (ExpiresInSeconds, and Shutdown when a shutdown request covers it), or the
// error a single heartbeat of it would have answered.
type BatchResult struct {
	ID               string          `json:"id"`
	ExpiresInSeconds int64           `json:"expires_in_seconds,omitempty"`
	Shutdown         *ShutdownNotice `json:"shutdown,omitempty"`
	Error            *BatchError     `json:"error,omitempty"`
}

// BatchError is a session's error in a batch heartbeat: the code and message
// a single heartbeat would have answered (e.g. killed, not_found).
type BatchError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// checkBatch validates a batch heartbeat's body.
func checkBatch(req *BatchHeartbeatRequest) error {
	if err := CheckConnectionID("connection", req.Connection); err != nil {
		return err
	}
	if len(req.Sessions) > MaxBatchSessions {
		return invalid("sessions", "has %d ids; at most %d are allowed per call: split the batch", len(req.Sessions), MaxBatchSessions)
	}
	seen := make(map[string]bool, len(req.Sessions))
	for i, id := range req.Sessions {
		field := fmt.Sprintf("sessions[%d]", i)
		if !idPattern.MatchString(id) {
			return invalid(field, "%q is not a session id (32 lowercase hex characters)", truncate(id, 40))
		}
		if seen[id] {
			return invalid(field, "names session %s a second time; name each once", id)
		}
		seen[id] = true
	}
	for i, id := range req.Active {
		if !seen[id] {
			return invalid(fmt.Sprintf("active[%d]", i), "session %q is not in sessions; an active session must be heartbeated too: list it in sessions", truncate(id, 40))
		}
	}
	if len(req.Active) > len(req.Sessions) {
		return invalid("active", "names %d sessions but sessions has %d; name each once", len(req.Active), len(req.Sessions))
	}
	return nil
}

// HeartbeatBatch renews a shared connection and up to MaxBatchSessions
// sessions opened through it in one call, with a result per session. Only
// the token that registered the connection (or an admin) may. A connection
// that is not live fails the whole call with *ConnectionGoneError. The
// renewals ride the node's long-lived keepalive streams, pipelined (see
// renewAll): no stream is opened per session and nothing is written to
// etcd, except the activity of the sessions in req.Active (see
// noteActivity). Cancelling ctx abandons the call.
func (r *Registry) HeartbeatBatch(ctx context.Context, p Principal, req BatchHeartbeatRequest) (BatchHeartbeat, error) {
	if err := requireRole(p, "send batch heartbeats", RoleClient, RoleAdmin); err != nil {
		return BatchHeartbeat{}, err
	}
	if err := checkBatch(&req); err != nil {
		return BatchHeartbeat{}, err
	}
	cctx, cancel := r.opCtx(ctx)
	resp, err := r.cli.Get(cctx, connKey(req.Connection))
	cancel()
	if err != nil {
		return BatchHeartbeat{}, translate("read connection", err)
	}
	if len(resp.Kvs) == 0 {
		return BatchHeartbeat{}, r.connectionGone(ctx, req.Connection)
	}
	cr, err := decodeConn(resp.Kvs[0])
	if err != nil {
		return BatchHeartbeat{}, err
	}
	if cr.Kind != ConnShared {
		return BatchHeartbeat{}, invalid("connection", "%s is the direct connection of session %s; it lives on its session's heartbeats (POST /v1/sessions/%s/heartbeat)", cr.ID, cr.Session, cr.Session)
	}
	if p.Role != RoleAdmin && p.TokenID != cr.OwnerToken {
		return BatchHeartbeat{}, denied("%s may not heartbeat connection %s: only the token that registered it (%s) or an admin may", p.describe(), cr.ID, cr.Owner)
	}

	recs, errs := r.lookupMany(ctx, cr.ID, req.Sessions)
	r.lapsedInBatch(ctx, cr.ID, recs, errs)
	leases := []clientv3.LeaseID{clientv3.LeaseID(cr.LeaseID)}
	var which, fresh []int // the sessions to renew, and those whose lease needs none (leaseOutlivesTTL)
	now := time.Now()
	for i, rec := range recs {
		if rec == nil || errs[i] != nil {
			continue
		}
		if !usesConnection(&rec.Session, cr.ID) {
			errs[i] = denied("session %s was not opened through connection %s, so its heartbeats are not the connection's to send", rec.ID, cr.ID)
			continue
		}
		if r.leaseOutlivesTTL(rec, now) {
			fresh = append(fresh, i)
			continue
		}
		leases = append(leases, clientv3.LeaseID(rec.LeaseID))
		which = append(which, i)
	}
	rctx, cancel := r.opCtx(ctx)
	res := r.renewer.renewAll(rctx, leases)
	cancel()
	if errors.Is(res[0].err, errLeaseGone) {
		return BatchHeartbeat{}, r.connectionGone(ctx, cr.ID)
	}
	if res[0].err != nil {
		return BatchHeartbeat{}, res[0].err
	}
	out := BatchHeartbeat{
		Connection: ConnectionRenewal{ID: cr.ID, TTLSeconds: cr.TTLSeconds, ExpiresInSeconds: res[0].ttl},
		Sessions:   make([]SessionRenewal, len(req.Sessions)),
	}
	active := make(map[string]bool, len(req.Active))
	for _, id := range req.Active {
		active[id] = true
	}
	var touched []*record
	renewed := res[1:]
	for _, i := range fresh {
		renewed = append(renewed, renewResult{ttl: recs[i].TTLSeconds})
	}
	for j, i := range append(which, fresh...) {
		rec, rr := recs[i], renewed[j]
		switch {
		case rr.err == nil:
			r.noteBeat(rec.ID)
			out.Sessions[i].ExpiresInSeconds, out.Sessions[i].Shutdown = min(rr.ttl, rec.TTLSeconds), r.pendingFor(rec)
			if active[rec.ID] {
				touched = append(touched, rec)
			}
		case errors.Is(rr.err, errLeaseGone):
			r.forget(rec.ID)
			errs[i] = r.goneNow(ctx, rec)
		default:
			errs[i] = rr.err
		}
	}
	r.noteActivity(ctx, touched)
	for i, id := range req.Sessions {
		out.Sessions[i].ID, out.Sessions[i].Err = id, errs[i]
	}
	return out, nil
}

func usesConnection(s *Session, conn string) bool {
	return slices.ContainsFunc(s.Connections, func(c ConnectionRef) bool { return c.ID == conn })
}

// lookupMany reads the sessions ids for a batch heartbeat through connection
// conn: each from the cache, else in transactions of maxTxnOps linearizable
// reads. For a session not found it gives the error a single heartbeat
// would: *EndedError from its tombstone when the session used conn
// (ErrPermissionDenied when it did not), else ErrSessionNotFound.
func (r *Registry) lookupMany(ctx context.Context, conn string, ids []string) ([]*record, []error) {
	recs := make([]*record, len(ids))
	errs := make([]error, len(ids))
	var missing []string
	var at []int
	for i, id := range ids {
		if recs[i] = r.cached(id); recs[i] == nil {
			missing, at = append(missing, sessionKey(id)), append(at, i)
		}
	}
	kvs, revs, kerrs := r.getMany(ctx, missing)
	var gone []string
	var goneAt []int
	var rev int64
	for k, i := range at {
		switch {
		case kerrs[k] != nil:
			errs[i] = kerrs[k]
		case kvs[k] == nil:
			gone, goneAt, rev = append(gone, tombstoneKey(ids[i])), append(goneAt, i), max(rev, revs[k])
		default:
			rec, err := decodeRecord(kvs[k])
			if err != nil {
				errs[i] = err
				continue
			}
			r.remember(rec, revs[k])
			recs[i] = rec
		}
	}
	if len(gone) == 0 {
		return recs, errs
	}
	tombs, _, terrs := r.getMany(ctx, gone)
	var again []string
	var againAt []int
	for k := range gone {
		if terrs[k] == nil && tombs[k] == nil {
			again, againAt = append(again, gone[k]), append(againAt, k)
		}
	}
	// A lease that ran out just now has deleted the keys, and the session
	// watch writes the "expired" tombstone right after (see lookup).
	if len(again) > 0 && r.waitWatched(ctx, rev) {
		more, _, merrs := r.getMany(ctx, again)
		for j, k := range againAt {
			tombs[k], terrs[k] = more[j], merrs[j]
		}
	}
	for k, i := range goneAt {
		switch {
		case terrs[k] != nil:
			errs[i] = terrs[k]
		case tombs[k] == nil:
			errs[i] = sessionNotFound(ids[i])
		default:
			var t tombstone
			if err := json.Unmarshal(tombs[k].Value, &t); err != nil {
				errs[i] = fmt.Errorf("registry: decode tombstone %q: %w", ids[i], err)
			} else if t.Session == nil || !usesConnection(t.Session, conn) {
				errs[i] = denied("session %s was not opened through connection %s, so its heartbeats are not the connection's to send", ids[i], conn)
			} else {
				errs[i] = &EndedError{Ended: t.Ended}
			}
		}
	}
	return recs, errs
}

// getMany reads keys in transactions of maxTxnOps reads, up to 4 at once.
// kvs[i] is nil for a key that does not exist; revs[i] is the revision its
// read was made at, errs[i] the error of a read that failed.
func (r *Registry) getMany(ctx context.Context, keys []string) (kvs []*mvccpb.KeyValue, revs []int64, errs []error) {
	kvs, revs, errs = make([]*mvccpb.KeyValue, len(keys)), make([]int64, len(keys)), make([]error, len(keys))
	sem := make(chan struct{}, 4)
	var wg sync.WaitGroup
	for from := 0; from < len(keys); from += maxTxnOps {
		to := min(from+maxTxnOps, len(keys))
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			ops := make([]clientv3.Op, 0, to-from)
			for _, k := range keys[from:to] {
				ops = append(ops, clientv3.OpGet(k))
			}
			cctx, cancel := r.opCtx(ctx)
			defer cancel()
			resp, err := r.cli.Txn(cctx).Then(ops...).Commit()
			for j := from; j < to; j++ {
				if err != nil {
					errs[j] = translate("read sessions", err)
					continue
				}
				revs[j] = resp.Header.Revision
				if got := resp.Responses[j-from].GetResponseRange().Kvs; len(got) == 1 {
					kvs[j] = got[0]
				}
			}
		})
	}
	wg.Wait()
	return kvs, revs, errs
}
