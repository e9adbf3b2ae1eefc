package registry

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// record is a session as stored under its key.
type record struct {
	Session
	LeaseID   int64  `json:"lease_id"`
	TokenHash string `json:"token_hash"`
	// OpenedByToken is the id of the API token that opened the session:
	// ownership goes by it, not by the token's (reusable) name.
	OpenedByToken string `json:"opened_by_token"`
	// Seat is the key of the licence seat the session holds, if its module has a licence.
	Seat string `json:"seat,omitempty"`

	createRev int64 // from etcd, not stored
}

// storedRecord is a record as etcd holds it: without expires_in_seconds,
// which a session shows as its node works it out, never as stored (the
// field, always 0 there, was 23 bytes of every record). Its own field
// hides the session's, and 0 is left out.
type storedRecord struct {
	*record
	ExpiresInSeconds int64 `json:"expires_in_seconds,omitempty"`
}

// tombstone is how a session ended, kept for TombstoneTTL; it keeps the
// owner facts so the session's own token still authenticates to learn it,
// and the session as it was (and the revision that created it) for the
// session's end event. Tombstones written before events lack the last two.
type tombstone struct {
	Ended
	Tenant        string   `json:"tenant"`
	User          string   `json:"user"`
	OpenedByToken string   `json:"opened_by_token"`
	TokenHash     string   `json:"token_hash"`
	Session       *Session `json:"session,omitempty"`
	SessionRev    int64    `json:"session_rev,omitempty"`
}

// tombstoneOf is the tombstone of a session that ended as how says.
func tombstoneOf(rec *record, how Ended) tombstone {
	s := rec.Session
	s.ExpiresInSeconds = 0
	return tombstone{Ended: how, Tenant: rec.Tenant, User: rec.User, OpenedByToken: rec.OpenedByToken,
		TokenHash: rec.TokenHash, Session: &s, SessionRev: rec.createRev}
}

// owner is what authorization needs to know of a live or ended session.
type owner struct {
	ID, Tenant, User, OpenedByToken, TokenHash string
}

func ownerOf(rec *record, tomb *tombstone) owner {
	if rec != nil {
		return owner{rec.ID, rec.Tenant, rec.User, rec.OpenedByToken, rec.TokenHash}
	}
	return owner{tomb.ID, tomb.Tenant, tomb.User, tomb.OpenedByToken, tomb.TokenHash}
}

// indexAttrs is the value of every index key: enough to filter a listing
// without reading the session records. It is stored in the compact form
// encodeIndexAttrs writes; values written as JSON (by nodes before it) are
// read as well.
type indexAttrs struct {
	Tenant        string     `json:"t"`
	User          string     `json:"u"`
	Module        string     `json:"m"`
	Pool          string     `json:"p"`
	Site          string     `json:"s,omitempty"`
	Node          string     `json:"n"`
	Kind          ClientKind `json:"k"`
	OpenedByToken string     `json:"o"`
}

// newSessionID returns 32 hex characters: 48 bits of Unix milliseconds (so
// ids sort by start time) and 80 random bits.
func newSessionID(now time.Time) string {
	var b [16]byte
	ms := uint64(now.UnixMilli())
	for i := 5; i >= 0; i-- {
		b[i] = byte(ms)
		ms >>= 8
	}
	if _, err := rand.Read(b[6:]); err != nil {
		panic("registry: crypto/rand failed: " + err.Error())
	}
	return hex.EncodeToString(b[:])
}

// normalize validates an open request and fills its defaults.
func (r *Registry) normalize(req *OpenRequest) error {
	if req.Tenant == "" {
		req.Tenant = DefaultTenant
	}
	if req.Pool == "" {
		req.Pool = r.cfg.Pool
	}
	if req.ClientKind == "" {
		req.ClientKind = KindUI
	}
	for _, c := range []struct{ field, v string }{{"user", req.User}, {"module", req.Module}, {"tenant", req.Tenant}, {"pool", req.Pool}} {
		if err := checkName(c.field, c.v); err != nil {
			return err
		}
	}
	if err := checkOptionalText("host", req.Host, MaxTextBytes); err != nil {
		return err
	}
	if err := checkOptionalText("os", req.OS, MaxTextBytes); err != nil {
		return err
	}
	if req.PID < 0 {
		return invalid("pid", "must not be negative (got %d)", req.PID)
	}
	if err := checkKind(req.ClientKind); err != nil {
		return err
	}
	if req.TTLSeconds == 0 {
		req.TTLSeconds = int64(r.cfg.DefaultTTL / time.Second)
	}
	minTTL, maxTTL := int64(r.cfg.MinTTL/time.Second), int64(r.cfg.MaxTTL/time.Second)
	if req.TTLSeconds < minTTL || req.TTLSeconds > maxTTL {
		return invalid("ttl_seconds", "%d is out of range; it must be between %d and %d seconds (omit it for the default %d)", req.TTLSeconds, minTTL, maxTTL, int64(r.cfg.DefaultTTL/time.Second))
	}
	if err := checkLabels(req.Labels); err != nil {
		return err
	}
	return normalizeConnections(req)
}

// Open logs a user in. The session record and its index keys are written
// in one transaction on a lease of its own; unless the user holds the
// multi-login right, the transaction succeeds only when the user has no
// session in the module, so of concurrent logins exactly one wins and the
// others get an *AlreadyLoggedInError. The same transaction creates the
// direct connection, if any, and compares that the shared connections named
// are live; every connection's service must be among the user's services
// (*ServiceNotAllowedError), a shared one must be live (*ConnectionGoneError)
// and registered by p's token unless p is an admin. Cancelling ctx abandons
// the open; a lease granted for it then expires by itself.
//
// The session's lease comes from the node's lease pool when it has one
// (see leasePool), renewed so that the session lives its full TTL from the
// open; the user entry and the licence come from the node's copy of them
// (see rightsCache), checked by the transaction.
//
// The audit log records the login in the open's transaction, and a refusal
// (with its error code) in a write of its own before Open returns.
func (r *Registry) Open(ctx context.Context, p Principal, req OpenRequest) (OpenedSession, error) {
	opened, err := r.open(ctx, p, &req)
	err = r.refusedOrRevoked(ctx, p, err)
	if err != nil {
		r.auditRefusal(ctx, p, &req, err)
	}
	return opened, err
}

func (r *Registry) open(ctx context.Context, p Principal, reqp *OpenRequest) (OpenedSession, error) {
	if err := requireRole(p, "open sessions", RoleClient, RoleAdmin); err != nil {
		return OpenedSession{}, err
	}
	if err := r.normalize(reqp); err != nil {
		return OpenedSession{}, err
	}
	req := *reqp
	cctx, cancel := r.opCtx(ctx)
	defer cancel()
	leaseTTL := req.TTLSeconds + r.leaseSlack() // the pools are per lease TTL
	lease, err := r.leaseForOpen(cctx, leaseTTL, true)
	if err != nil {
		return OpenedSession{}, err
	}
	opened, err := r.openOnLease(cctx, p, req, lease)
	if errors.Is(err, rpctypes.ErrLeaseNotFound) && lease.pooled {
		// A pooled lease was revoked behind the pool's back: so may be the
		// others. Start the pool of this TTL afresh and grant one now.
		r.flushPool(leaseTTL)
		if lease, err = r.leaseForOpen(cctx, leaseTTL, false); err != nil {
			return OpenedSession{}, err
		}
		opened, err = r.openOnLease(cctx, p, req, lease)
	}
	if err == nil {
		if err = r.sessionFull(cctx, lease); err != nil {
			lease.unsure = true // the session is on it: revoking it ends the session
		}
	}
	if err != nil {
		r.releaseLease(leaseTTL, lease, err)
		return OpenedSession{}, err
	}
	r.noteBeat(opened.ID) // an open counts as a heartbeat
	return opened, nil
}

func (r *Registry) openOnLease(ctx context.Context, p Principal, req OpenRequest, sl *sessionLease) (OpenedSession, error) {
	lease := sl.id
	now := time.Now().UTC()
	id := newSessionID(now)
	token := newSessionToken(id)
	labels := req.Labels
	if labels == nil {
		labels = map[string]string{}
	}
	rec := record{
		Session: Session{
			ID: id, Tenant: req.Tenant, User: req.User, Module: req.Module, Host: req.Host, PID: req.PID,
			OS: req.OS, ClientKind: req.ClientKind, Pool: req.Pool, Site: r.cfg.Site, Node: r.cfg.Node,
			StartedAt: now.Truncate(time.Second), TTLSeconds: req.TTLSeconds, Labels: labels, OpenedBy: p.Name,
		},
		LeaseID:       int64(lease),
		TokenHash:     hashToken(token),
		OpenedByToken: p.TokenID,
	}
	attrs := encodeIndexAttrs(indexAttrs{rec.Tenant, rec.User, rec.Module, rec.Pool, rec.Site, rec.Node, rec.ClientKind, rec.OpenedByToken})
	held := userModulePrefix(rec.Tenant, rec.User, rec.Module)
	directID := ""
	if req.Connection != nil {
		directID = newSessionID(now)
	}

	// The rights and services are read first and the transaction compares
	// the user entry's revision, so a right or service revoked meanwhile is
	// never used; on such a race it reads them again. A licence seat taken
	// by a concurrent open is no such race: it picks another seat. The
	// shared connections named are read with them and compared unchanged,
	// so none can die between the check and the write.
	var seatsHeld []*mvccpb.KeyValue // read by a failed attempt at seatsRev, for the next
	var seatsRev int64
	for attempt, fresh := 0, false; attempt < 5; fresh = true {
		// Responses: 0 the user, 1 the licence, 2… the shared connections.
		// The first attempt plans from the node's copy if it can; a refusal
		// is never decided on the copy alone.
		user, userRev, reads, cached, err := r.rightsFor(ctx, &rec, &req, fresh)
		if err != nil {
			return OpenedSession{}, err
		}
		conns, err := r.planConnections(ctx, p, &rec, &req, user, reads, 2, directID)
		if err != nil && cached {
			continue
		}
		if err != nil {
			return OpenedSession{}, err
		}
		rec.Connections = conns.refs
		seat, err := r.planSeat(ctx, &rec, reads, 1, seatsHeld, seatsRev)
		if err != nil && cached {
			continue
		}
		if err != nil {
			return OpenedSession{}, err
		}
		rec.Seat = seat.key
		val, err := json.Marshal(storedRecord{record: &rec})
		if err != nil {
			return OpenedSession{}, fmt.Errorf("registry: encode session: %w", err)
		}
		puts := []clientv3.Op{clientv3.OpPut(sessionKey(id), string(val), clientv3.WithLease(lease))}
		for _, k := range indexKeys(&rec) {
			puts = append(puts, clientv3.OpPut(k, attrs, clientv3.WithLease(lease)))
		}
		if seat.key != "" {
			puts = append(puts, seat.put)
		}
		puts = append(puts, conns.puts...)
		puts = r.withAudit(ctx, puts, AuditRecord{Action: AuditLogin, Actor: p.By(), Tenant: rec.Tenant, User: rec.User,
			Module: rec.Module, Session: id, Details: map[string]string{"host": rec.Host, "pool": rec.Pool}})
		cmps := append([]clientv3.Cmp{
			clientv3.Compare(clientv3.ModRevision(userKey(rec.Tenant, rec.User)), "=", userRev),
			clientv3.Compare(clientv3.Version(poolKey(rec.Pool)), "=", 0),    // the pool is active
			clientv3.Compare(clientv3.Version(maintKey(rec.Tenant)), "=", 0), // no "all" shutdown pending
		}, seat.cmps...)
		cmps = append(cmps, conns.cmps...)
		if !user.has(RightMultiLogin) {
			cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(held), "=", 0).WithPrefix())
		}
		elses := []clientv3.Op{clientv3.OpGet(held, clientv3.WithPrefix(), clientv3.WithLimit(1)), clientv3.OpGet(userKey(rec.Tenant, rec.User)),
			clientv3.OpGet(poolKey(rec.Pool)), clientv3.OpGet(maintKey(rec.Tenant))}
		for _, c := range req.Connections {
			elses = append(elses, clientv3.OpGet(connKey(c), clientv3.WithKeysOnly()))
		}
		tokenAt := -1
		if p.tokenRev != 0 { // the API token as the node's copy had it (AuthenticateFromCopy)
			cmps = append(cmps, p.tokenCmps()...)
			tokenAt, elses = len(elses), append(elses, clientv3.OpGet(tokenHashKey(p.tokenHash), clientv3.WithKeysOnly()))
		}
		if seat.key != "" {
			elses = append(elses, seatElse(&rec)) // the last: see below
		}
		resp, err := r.cli.Txn(ctx).If(cmps...).Then(puts...).Else(elses...).Commit()
		if err != nil {
			sl.unsure = true
			return OpenedSession{}, translate("open session", err)
		}
		if resp.Succeeded {
			rec.createRev = resp.Header.Revision
			r.remember(&rec, resp.Header.Revision)
			rec.ExpiresInSeconds = rec.TTLSeconds
			r.deadlines.note(rec.LeaseID, rec.TTLSeconds+r.leaseSlack(), sl.since)
			return OpenedSession{Session: rec.Session, Token: token}, nil
		}
		if tokenAt >= 0 {
			if kvs := resp.Responses[tokenAt].GetResponseRange().Kvs; len(kvs) == 0 || kvs[0].ModRevision != p.tokenRev {
				return OpenedSession{}, revokedToken()
			}
		}
		holders := resp.Responses[0].GetResponseRange().Kvs
		users := resp.Responses[1].GetResponseRange().Kvs
		if pool := resp.Responses[2].GetResponseRange().Kvs; len(pool) == 1 {
			return OpenedSession{}, r.poolInactive(ctx, rec.Pool, pool[0].Value)
		}
		if maint := resp.Responses[3].GetResponseRange().Kvs; len(maint) == 1 {
			return OpenedSession{}, maintenance(maint[0].Value)
		}
		currentRev := int64(0)
		if len(users) == 1 {
			currentRev = users[0].ModRevision
		}
		if currentRev != userRev {
			attempt++
			continue // the user's rights changed under us: decide again
		}
		if connChanged(resp, 4) {
			attempt++
			continue // a shared connection died under us: the next read says which
		}
		if len(holders) == 1 && !user.has(RightMultiLogin) {
			err := r.alreadyLoggedIn(ctx, rec.Tenant, rec.User, rec.Module, string(holders[0].Key))
			if err == nil {
				attempt++
				continue // the holder ended meanwhile: try again
			}
			return OpenedSession{}, err
		}
		// Only the licence or its seats can have changed: plan the seat again
		// from the seats held now (bounded by ctx), after a pause that
		// spreads the contenders.
		if seat.key != "" {
			seatsHeld, seatsRev = resp.Responses[len(resp.Responses)-1].GetResponseRange().Kvs, resp.Header.Revision
			if seatsHeld == nil {
				seatsHeld = []*mvccpb.KeyValue{}
			}
		}
		select {
		case <-ctx.Done():
			return OpenedSession{}, translate("open session", ctx.Err())
		case <-time.After(time.Duration(mrand.IntN(2000)) * time.Microsecond):
		}
	}
	return OpenedSession{}, fmt.Errorf("%w: open session: the user entry of %s/%s kept changing; try again", ErrUnavailable, rec.Tenant, rec.User)
}

// alreadyLoggedIn describes the session that holds a module; nil when it
// has ended since the transaction saw it.
func (r *Registry) alreadyLoggedIn(ctx context.Context, tenant, user, module, indexKey string) error {
	e := &AlreadyLoggedInError{Tenant: tenant, User: user, Module: module}
	e.SessionID = indexKey[len(userModulePrefix(tenant, user, module)):]
	rec, _, err := r.lookup(ctx, e.SessionID)
	switch {
	case err != nil && errors.Is(err, ErrUnavailable):
		return err
	case err != nil || rec == nil:
		return nil
	}
	e.Host, e.Since = rec.Host, rec.StartedAt
	return e
}

// revoke drops a lease, best effort: a lease that is not revoked expires.
func (r *Registry) revoke(lease clientv3.LeaseID) {
	ctx, cancel := context.WithTimeout(r.ctx, r.cfg.RequestTimeout)
	defer cancel()
	if _, err := r.cli.Revoke(ctx, lease); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		r.log.Warn("revoke lease failed; it will expire by itself", "lease-id", fmt.Sprintf("%x", int64(lease)), "error", err)
	}
}

// lookup reads a session, or else its tombstone. It tries this member's
// copy first and falls back to a linearizable read, so a session opened
// through another node a moment ago is found.
func (r *Registry) lookup(ctx context.Context, id string) (*record, *tombstone, error) {
	if rec := r.cached(id); rec != nil {
		return rec, nil, nil
	}
	cctx, cancel := r.opCtx(ctx)
	defer cancel()
	resp, err := r.cli.Get(cctx, sessionKey(id), clientv3.WithSerializable())
	if err == nil && len(resp.Kvs) == 0 {
		resp, err = r.cli.Get(cctx, sessionKey(id))
	}
	if err != nil {
		return nil, nil, translate("read session", err)
	}
	if len(resp.Kvs) == 1 {
		rec, err := decodeRecord(resp.Kvs[0])
		if err == nil {
			r.remember(rec, resp.Header.Revision)
		}
		return rec, nil, err
	}
	tomb, err := r.readTombstone(cctx, id)
	if err == nil && tomb == nil && r.waitWatched(cctx, resp.Header.Revision) {
		// A lease that ran out just now has deleted the keys, and the
		// watch writes the "expired" tombstone right after: once the
		// watch has passed this read, the tombstone is there if any is.
		tomb, err = r.readTombstone(cctx, id)
	}
	if err != nil {
		return nil, nil, err
	}
	if tomb == nil {
		return nil, nil, sessionNotFound(id)
	}
	return nil, tomb, nil
}

func decodeRecord(kv *mvccpb.KeyValue) (*record, error) {
	var rec record
	if err := json.Unmarshal(kv.Value, &rec); err != nil {
		return nil, fmt.Errorf("registry: decode session %q: %w", kv.Key, err)
	}
	rec.createRev = kv.CreateRevision
	return &rec, nil
}

func (r *Registry) readTombstone(ctx context.Context, id string) (*tombstone, error) {
	resp, err := r.cli.Get(ctx, tombstoneKey(id))
	if err != nil {
		return nil, translate("read tombstone", err)
	}
	if len(resp.Kvs) == 0 {
		return nil, nil
	}
	var t tombstone
	if err := json.Unmarshal(resp.Kvs[0].Value, &t); err != nil {
		return nil, fmt.Errorf("registry: decode tombstone %q: %w", id, err)
	}
	return &t, nil
}

// resolve looks a session up for principal p and checks p may do what
// with it; allowed decides. A session that ended answers *EndedError (to
// those allowed to know).
func (r *Registry) resolve(ctx context.Context, p Principal, id, what string, allowed func(owner) error) (*record, error) {
	if err := CheckSessionID(id); err != nil {
		return nil, err
	}
	rec, tomb, err := r.lookup(ctx, id)
	if err != nil {
		return nil, err
	}
	if err := allowed(ownerOf(rec, tomb)); err != nil {
		return nil, err
	}
	if tomb != nil {
		return nil, &EndedError{Ended: tomb.Ended}
	}
	return rec, nil
}

// mayActOn: heartbeat and log out. The session's own token, the client
// token that opened it, or an admin.
func (p Principal) mayActOn(what string) func(owner) error {
	return func(o owner) error {
		switch {
		case p.isSession() && p.SessionID == o.ID:
			return nil
		case !p.isSession() && p.Role == RoleAdmin:
			return nil
		case !p.isSession() && p.Role == RoleClient && p.TokenID == o.OpenedByToken:
			return nil
		}
		return denied("%s may not %s session %s: only its own session token, the client token that opened it, or an admin may", p.describe(), what, o.ID)
	}
}

// mayRead: admins and operators, the client token that opened it, and any
// live session of the same user.
func (p Principal) mayRead(o owner) error {
	switch {
	case !p.isSession() && (p.Role == RoleAdmin || p.Role == RoleOperator):
		return nil
	case !p.isSession() && p.Role == RoleClient && p.TokenID == o.OpenedByToken:
		return nil
	case p.isSession() && p.SessionID == o.ID:
		return nil
	case p.isSession() && !p.ended && p.Tenant == o.Tenant && p.User == o.User:
		return nil
	}
	return denied("%s may not read session %s", p.describe(), o.ID)
}

// Heartbeat renews a session's lease to its full TTL over a long-lived
// keepalive stream (no raft write). A session that has ended answers
// *EndedError; one never known answers ErrSessionNotFound.
func (r *Registry) Heartbeat(ctx context.Context, p Principal, id string) (HeartbeatResult, error) {
	return r.HeartbeatWith(ctx, p, id, HeartbeatRequest{})
}

// HeartbeatWith is Heartbeat with the heartbeat's body: with req.Active it
// also records that the session's user did something, for idle clean-up
// (see noteActivity: at most one etcd write per tenth of the idle timeout).
func (r *Registry) HeartbeatWith(ctx context.Context, p Principal, id string, req HeartbeatRequest) (HeartbeatResult, error) {
	rec, err := r.resolve(ctx, p, id, "heartbeat", p.mayActOn("heartbeat"))
	if err != nil {
		return HeartbeatResult{}, err
	}
	if err := r.lapsedNow(ctx, rec); err != nil {
		return HeartbeatResult{}, err
	}
	ttl := rec.TTLSeconds
	if !r.leaseOutlivesTTL(rec, time.Now()) {
		cctx, cancel := r.opCtx(ctx)
		defer cancel()
		ttl, err = r.renewer.renew(cctx, clientv3.LeaseID(rec.LeaseID))
		if errors.Is(err, errLeaseGone) {
			r.forget(rec.ID)
			return HeartbeatResult{}, r.goneNow(ctx, rec)
		}
		if err != nil {
			return HeartbeatResult{}, err
		}
	}
	r.noteBeat(rec.ID)
	if req.Active {
		r.noteActivity(ctx, []*record{rec})
	}
	return HeartbeatResult{ID: id, TTLSeconds: rec.TTLSeconds, ExpiresInSeconds: min(ttl, rec.TTLSeconds), Shutdown: r.pendingFor(rec)}, nil
}

// goneNow explains a session whose lease has just been found gone: its
// tombstone if one is written yet, else expiry.
func (r *Registry) goneNow(ctx context.Context, rec *record) error {
	cctx, cancel := r.opCtx(ctx)
	defer cancel()
	if tomb, err := r.readTombstone(cctx, rec.ID); err == nil && tomb != nil {
		return &EndedError{Ended: tomb.Ended}
	}
	return &EndedError{Ended: Ended{ID: rec.ID, Reason: EndExpired, By: "lease", At: time.Now().UTC().Truncate(time.Second)}}
}

// Get returns a live session with its remaining TTL.
func (r *Registry) Get(ctx context.Context, p Principal, id string) (Session, error) {
	rec, err := r.resolve(ctx, p, id, "read", p.mayRead)
	if err != nil {
		return Session{}, err
	}
	s := []Session{rec.Session}
	r.fillExpiry(ctx, s, []int64{rec.LeaseID})
	return s[0], nil
}

// Logout logs a session out: its keys go and its tombstone says "closed",
// in one transaction; then its lease is revoked. For a principal from
// AuthenticateFromCopy the transaction checks the API token too, and a
// revoked token closes nothing and learns nothing (ErrUnauthenticated).
func (r *Registry) Logout(ctx context.Context, p Principal, id string) (Ended, error) {
	ended, err := r.logout(ctx, p, id)
	return ended, r.refusedOrRevoked(ctx, p, err)
}

func (r *Registry) logout(ctx context.Context, p Principal, id string) (Ended, error) {
	rec, err := r.resolve(ctx, p, id, "close", p.mayActOn("close"))
	if err != nil {
		return Ended{}, err
	}
	return r.endWarned(ctx, rec, Ended{ID: id, Reason: EndClosed, By: p.By()}, p.tokenCmps()...)
}

// Kill cuts a session. Admins and operators may kill any session; a user
// (by a session token) may kill their own other sessions, and with the
// interrupt-sessions right any session of their tenant. For a principal
// from AuthenticateFromCopy the end's transaction checks the API token too,
// and a revoked token kills nothing and learns nothing (ErrUnauthenticated).
func (r *Registry) Kill(ctx context.Context, p Principal, id, reason string) (Ended, error) {
	ended, err := r.kill(ctx, p, id, reason)
	return ended, r.refusedOrRevoked(ctx, p, err)
}

func (r *Registry) kill(ctx context.Context, p Principal, id, reason string) (Ended, error) {
	if err := checkOptionalText("reason", reason, MaxReasonBytes); err != nil {
		return Ended{}, err
	}
	if p.ended {
		return Ended{}, fmt.Errorf("%w: the session token of %s belongs to a session that has ended", ErrUnauthenticated, p.SessionID)
	}
	rec, err := r.resolve(ctx, p, id, "kill", func(o owner) error { return r.mayKill(ctx, p, o) })
	if err != nil {
		return Ended{}, err
	}
	return r.endWarned(ctx, rec, Ended{ID: id, Reason: EndKilled, By: p.By(), Message: reason}, p.tokenCmps()...)
}

// endWarned is end for a logout or kill: the answer warns when the session
// worked through a shared connection that has died and whose service timeout
// is still running, so that clean-up would have left it alone until then.
// The only extra compares are those of the caller's API token (tokenCmps):
// a failed one means the token is revoked.
func (r *Registry) endWarned(ctx context.Context, rec *record, how Ended, tokenCmps ...clientv3.Cmp) (Ended, error) {
	ended, err := r.end(ctx, rec, how, tokenCmps...)
	if errors.Is(err, errCondition) {
		return Ended{}, revokedToken()
	}
	if err == nil {
		ended.Warning = r.deadConnWarning(ctx, rec)
	}
	return ended, err
}

func (r *Registry) mayKill(ctx context.Context, p Principal, o owner) error {
	if !p.isSession() {
		if p.Role == RoleAdmin || p.Role == RoleOperator {
			return nil
		}
		return denied("%s may not kill sessions: it needs role operator or admin (a client token may close the sessions it opened)", p.describe())
	}
	if p.Tenant != o.Tenant {
		return denied("user %s/%s may not kill session %s of tenant %s", p.Tenant, p.User, o.ID, o.Tenant)
	}
	if p.User == o.User {
		return nil // cutting one's own hung session from another module
	}
	u, _, _, err := r.readUser(ctx, p.Tenant, p.User)
	if err != nil {
		return err
	}
	if u.has(RightInterruptSessions) {
		return nil
	}
	return denied("user %s may not kill session %s of user %s: it needs the %s right", p.User, o.ID, o.User, RightInterruptSessions)
}

// end deletes a session's keys and writes its tombstone in one
// transaction, then revokes the lease. If the session ended meanwhile,
// it answers how.
//
// Extra compares make the end conditional on more than the session: if one
// fails while the session is still there, end returns errCondition.
func (r *Registry) end(ctx context.Context, rec *record, how Ended, extra ...clientv3.Cmp) (Ended, error) {
	how.At = time.Now().UTC().Truncate(time.Second)
	val, _ := json.Marshal(tombstoneOf(rec, how))
	ops := endOps(rec)
	switch how.Reason { // the ends a person asked for; the history has them all
	case EndClosed:
		ops = r.withAudit(ctx, ops, AuditRecord{Action: AuditLogout, Actor: how.By, Tenant: rec.Tenant, User: rec.User, Module: rec.Module, Session: rec.ID})
	case EndKilled:
		ops = r.withAudit(ctx, ops, AuditRecord{Action: AuditKill, Actor: how.By, Tenant: rec.Tenant, User: rec.User, Module: rec.Module,
			Session: rec.ID, Message: how.Message})
	}
	cctx, cancel := r.opCtx(ctx)
	defer cancel()
	var resp *clientv3.TxnResponse
	for attempt := 0; ; attempt++ {
		tl, err := r.tombstoneLease(cctx, attempt > 0)
		if err != nil {
			return Ended{}, err
		}
		resp, err = r.cli.Txn(cctx).
			If(append([]clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(sessionKey(rec.ID)), "=", rec.createRev)}, extra...)...).
			Then(append(ops, clientv3.OpPut(tombstoneKey(rec.ID), string(val), clientv3.WithLease(tl)))...).
			Commit()
		if errors.Is(err, rpctypes.ErrLeaseNotFound) && attempt == 0 {
			continue // the shared tombstone lease ran out: take a new one
		}
		if err != nil {
			return Ended{}, translate("end session", err)
		}
		break
	}
	if !resp.Succeeded && len(extra) > 0 {
		if cur, err := r.cli.Get(cctx, sessionKey(rec.ID), clientv3.WithKeysOnly()); err == nil &&
			len(cur.Kvs) == 1 && cur.Kvs[0].CreateRevision == rec.createRev {
			return Ended{}, errCondition
		}
	}
	r.forget(rec.ID)
	if !resp.Succeeded {
		return Ended{}, r.goneNow(ctx, rec)
	}
	// The session's keys are gone: the answer need not wait for the lease.
	if lease := clientv3.LeaseID(rec.LeaseID); !r.goTracked(func() { r.revoke(lease) }) {
		r.revoke(lease)
	}
	return how, nil
}

// tombstoneLease returns a lease shared by the tombstones written within a
// minute; it lives TombstoneTTL plus that minute.
func (r *Registry) tombstoneLease(ctx context.Context, fresh bool) (clientv3.LeaseID, error) {
	r.tombMu.Lock()
	defer r.tombMu.Unlock()
	if !fresh && r.tombLease != 0 && time.Since(r.tombLeaseFrom) < time.Minute {
		return r.tombLease, nil
	}
	resp, err := r.cli.Grant(ctx, int64((r.cfg.TombstoneTTL+time.Minute)/time.Second))
	if err != nil {
		return 0, translate("grant tombstone lease", err)
	}
	r.tombLease, r.tombLeaseFrom = resp.ID, time.Now()
	return resp.ID, nil
}

// fillExpiry sets ExpiresInSeconds from each session's lease, asking etcd
// for up to 16 leases at once; this node notes each answer (see
// leaseDeadlines).
func (r *Registry) fillExpiry(ctx context.Context, ss []Session, leases []int64) {
	sem := make(chan struct{}, 16)
	done := make(chan struct{}, len(ss))
	for i := range ss {
		sem <- struct{}{}
		go func(i int) {
			defer func() { <-sem; done <- struct{}{} }()
			cctx, cancel := r.opCtx(ctx)
			defer cancel()
			asked := time.Now()
			resp, err := r.cli.TimeToLive(cctx, clientv3.LeaseID(leases[i]))
			if err == nil && resp.TTL > 0 {
				// A lease granted longer than the TTL (see leaseSlack) outlasts it by that much.
				ss[i].ExpiresInSeconds = max(resp.TTL-max(resp.GrantedTTL-ss[i].TTLSeconds, 0), 0)
				r.deadlines.note(leases[i], resp.TTL, asked)
			}
		}(i)
	}
	for range ss {
		<-done
	}
}
