package registry

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// CleanupRequest is the optional body of POST /v1/cleanup.
type CleanupRequest struct {
	// DryRun reports what a round would end and skip, and ends nothing.
	DryRun bool `json:"dry_run,omitempty"`
}

// CleanupReport says what one clean-up round ended and what it skipped, and why.
type CleanupReport struct {
	At      time.Time     `json:"at"`
	DryRun  bool          `json:"dry_run,omitempty"`
	Ended   []CleanupItem `json:"ended"`
	Skipped []CleanupItem `json:"skipped"`
}

// CleanupItem is one session a clean-up round ended or skipped.
type CleanupItem struct {
	Session string `json:"session"`
	Tenant  string `json:"tenant"`
	User    string `json:"user"`
	Module  string `json:"module"`
	// Reason is the end reason it was (or, skipped, would have been) ended with.
	Reason EndReason `json:"reason"`
	// Why says which rule applies, with its facts; of a skipped one, also why
	// it was left alone.
	Why string `json:"why"`
}

// verdict is what the rules say about one session in a round.
type verdict struct {
	reason EndReason // the first rule that ends it; "" when none does
	why    string
	skip   string // a rule that would end it later, or cannot
	cmps   []clientv3.Cmp
}

// Cleanup runs one clean-up round now (operators and admins) and reports what
// it ended and what it skipped, and why; with req.DryRun it ends nothing. The
// rules:
//
//   - A session that uses a shared connection that died is ended, with reason
//     cleanup, once the connection's service timeout has run out since its
//     death; until then it is skipped (a logout or kill may end it, and warns).
//   - A session older than the max lifetime of its module's or tenant's policy
//     is ended with reason cleanup.
//   - A session whose user did nothing (no heartbeat with active) for longer
//     than the idle timeout of its policy is ended with reason idle.
//   - A session with a direct connection is never ended by clean-up: its
//     client holds it. It is skipped, naming the rule; only a kill ends it.
//
// Each end is a conditional transaction: a session that logged out meanwhile
// is left out, and an idle one whose activity was recorded after the read is
// skipped. Rounds on several nodes at once are harmless.
func (r *Registry) Cleanup(ctx context.Context, p Principal, req CleanupRequest) (CleanupReport, error) {
	if err := requireRole(p, "run clean-up", RoleOperator, RoleAdmin); err != nil {
		return CleanupReport{}, err
	}
	return r.cleanupRound(ctx, p.By(), req.DryRun, true)
}

// unseenEvery is how many rounds of the clean-up duty pass between two that
// also look for connections whose death went unrecorded (see deadConnRule),
// which reads every connection's key and index key.
const unseenEvery = 30

// RunCleanup runs as the duty leader's duty until ctx ends: a clean-up round
// every CleanupInterval. It keeps nothing in memory between rounds: each
// reads what it needs from etcd, so a new duty leader goes on where the old
// one stopped. It logs what it ended (nothing while nothing needs ending).
func (r *Registry) RunCleanup(ctx context.Context) error {
	t := time.NewTicker(r.cfg.CleanupInterval)
	defer t.Stop()
	for round := 0; ; round++ {
		rep, err := r.cleanupRound(ctx, "cleanup", false, round%unseenEvery == 0)
		switch {
		case err != nil && ctx.Err() == nil:
			r.log.Warn("clean-up round failed; retrying", "error", err)
		case len(rep.Ended) > 0:
			r.log.Info("clean-up ended sessions", "ended", len(rep.Ended), "skipped", len(rep.Skipped))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// cleanupRound applies the clean-up rules once; by names who ends the
// sessions. With unseen it also looks for dead connections whose death no
// node recorded.
func (r *Registry) cleanupRound(ctx context.Context, by string, dryRun, unseen bool) (CleanupReport, error) {
	now := time.Now().UTC()
	rep := CleanupReport{At: now.Truncate(time.Second), DryRun: dryRun, Ended: []CleanupItem{}, Skipped: []CleanupItem{}}
	cctx, cancel := r.opCtx(ctx)
	defer cancel()
	resp, err := r.cli.Txn(cctx).Then(
		clientv3.OpGet(connTombsPrefix, clientv3.WithPrefix()),
		clientv3.OpGet(policiesPrefix, clientv3.WithPrefix()),
	).Commit()
	if err != nil {
		return rep, translate("read for clean-up", err)
	}
	rev := resp.Header.Revision
	verdicts := map[string]*verdict{}
	get := func(id string) *verdict {
		if verdicts[id] == nil {
			verdicts[id] = &verdict{}
		}
		return verdicts[id]
	}
	if err := r.deadConnRule(ctx, resp.Responses[0].GetResponseRange().Kvs, rev, now, dryRun, unseen, get); err != nil {
		return rep, err
	}
	pols, err := decodePolicies(resp.Responses[1].GetResponseRange().Kvs)
	if err != nil {
		return rep, err
	}
	if ps := newPolicySet(pols); !ps.empty() {
		if err := r.policyRules(ctx, ps, rev, now, get); err != nil {
			return rep, err
		}
	}
	if len(verdicts) == 0 {
		return rep, nil
	}
	ids := make([]string, 0, len(verdicts))
	for id := range verdicts {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	keys := make([]string, len(ids))
	for i, id := range ids {
		keys[i] = sessionKey(id)
	}
	kvs, revs, errs := r.getMany(ctx, keys)
	var mu sync.Mutex
	var failed []error
	sem := make(chan struct{}, 16)
	var wg sync.WaitGroup
	for i, id := range ids {
		v := verdicts[id]
		if errs[i] != nil {
			failed = append(failed, errs[i])
			continue
		}
		if kvs[i] == nil {
			continue // it ended meanwhile
		}
		rec, err := decodeRecord(kvs[i])
		if err != nil {
			failed = append(failed, err)
			continue
		}
		r.remember(rec, revs[i])
		item := CleanupItem{Session: id, Tenant: rec.Tenant, User: rec.User, Module: rec.Module, Reason: v.reason, Why: v.why}
		if v.reason == "" {
			item.Reason, item.Why = EndCleanup, v.skip
			rep.Skipped = append(rep.Skipped, item)
			continue
		}
		if d := directConn(rec); d != nil {
			item.Why += fmt.Sprintf("; but it is held by its live direct connection %s (service %s): the client holds the session, so clean-up leaves it alone and only a kill ends it (roster session kill %s)", d.ID, d.Service, id)
			rep.Skipped = append(rep.Skipped, item)
			continue
		}
		if dryRun {
			rep.Ended = append(rep.Ended, item)
			continue
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			_, err := r.end(ctx, rec, Ended{ID: id, Reason: item.Reason, By: by, Message: item.Why}, v.cmps...)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				rep.Ended = append(rep.Ended, item)
			case errors.Is(err, errCondition):
				item.Why += "; but its user was active meanwhile, so it stays"
				rep.Skipped = append(rep.Skipped, item)
			case errors.Is(err, ErrSessionEnded), errors.Is(err, ErrSessionNotFound):
			default:
				failed = append(failed, err)
			}
		})
	}
	wg.Wait()
	byID := func(a, b CleanupItem) int { return strings.Compare(a.Session, b.Session) }
	slices.SortFunc(rep.Ended, byID)
	slices.SortFunc(rep.Skipped, byID)
	if !dryRun && len(rep.Ended) > 0 {
		r.log.Debug("clean-up round", "ended", len(rep.Ended), "skipped", len(rep.Skipped), "by", by)
	}
	return rep, errors.Join(failed...)
}

func directConn(rec *record) *ConnectionRef {
	for i, c := range rec.Connections {
		if c.Kind == ConnDirect {
			return &rec.Connections[i]
		}
	}
	return nil
}

// deadConnRule judges the sessions of dead shared connections: those of
// each connection whose death is recorded (tombs), read from the connection
// index at the round's revision. With unseen it also reads every connection's
// key and every index key: a connection that has sessions but is neither
// live nor known dead died unseen (the watch fell behind a compaction, or
// its record of death expired while no clean-up ran), and its death is
// recorded now, so its service timeout runs from now.
func (r *Registry) deadConnRule(ctx context.Context, tombs []*mvccpb.KeyValue, rev int64, now time.Time, dryRun, unseen bool, get func(string) *verdict) error {
	dead := map[string]*connTomb{}
	var ops []clientv3.Op
	for _, kv := range tombs {
		t, err := decodeConnTomb(kv)
		if err != nil {
			return err
		}
		dead[t.ID] = t
		ops = append(ops, clientv3.OpGet(connSessionsPrefix(t.ID), clientv3.WithPrefix(), clientv3.WithKeysOnly(), clientv3.WithRev(rev)))
	}
	var live map[string]bool
	if unseen {
		live = map[string]bool{}
		ops = append(ops, clientv3.OpGet(connsPrefix, clientv3.WithPrefix(), clientv3.WithKeysOnly(), clientv3.WithRev(rev)),
			clientv3.OpGet(ixConnPrefix, clientv3.WithPrefix(), clientv3.WithKeysOnly(), clientv3.WithRev(rev)))
	}
	nTombs := len(dead)
	results := make([][]*mvccpb.KeyValue, len(ops))
	for from := 0; from < len(ops); from += maxTxnOps {
		cctx, cancel := r.opCtx(ctx)
		resp, err := r.cli.Txn(cctx).Then(ops[from:min(from+maxTxnOps, len(ops))]...).Commit()
		cancel()
		if err != nil {
			return translate("read connections for clean-up", err)
		}
		for k, op := range resp.Responses {
			results[from+k] = op.GetResponseRange().Kvs
		}
	}
	var index []*mvccpb.KeyValue // of dead connections, and of unseen ones
	for _, kvs := range results[:nTombs] {
		index = append(index, kvs...)
	}
	if unseen {
		for _, kv := range results[nTombs] {
			live[strings.TrimPrefix(string(kv.Key), connsPrefix)] = true
		}
		for _, kv := range results[nTombs+1] {
			conn, _, _ := strings.Cut(strings.TrimPrefix(string(kv.Key), ixConnPrefix), "/")
			if !live[conn] && dead[conn] == nil {
				index = append(index, kv)
			}
		}
	}
	unseenConns := map[string][]string{} // connection -> its sessions
	for _, kv := range index {
		conn, id, _ := strings.Cut(strings.TrimPrefix(string(kv.Key), ixConnPrefix), "/")
		t := dead[conn]
		if t == nil {
			unseenConns[conn] = append(unseenConns[conn], id)
			continue
		}
		v := get(id)
		if until := t.cleanupAt(); now.Before(until) {
			v.skip = fmt.Sprintf("its shared connection %s (service %s) died at %s; its service timeout of %s runs until %s",
				conn, t.Service, t.DiedAt.Format(time.RFC3339), time.Duration(t.ServiceTimeoutSeconds)*time.Second, until.Format(time.RFC3339))
			continue
		}
		if v.reason == "" {
			v.reason, v.why = EndCleanup, fmt.Sprintf("its shared connection %s (service %s on host %s) died at %s and the service timeout of %s ran out at %s",
				conn, t.Service, t.Host, t.DiedAt.Format(time.RFC3339), time.Duration(t.ServiceTimeoutSeconds)*time.Second, t.cleanupAt().Format(time.RFC3339))
		}
	}
	for conn, ids := range unseenConns {
		rec, _, err := r.lookup(ctx, ids[0])
		if err != nil || rec == nil {
			continue
		}
		var ref *ConnectionRef
		for i := range rec.Connections {
			if rec.Connections[i].ID == conn {
				ref = &rec.Connections[i]
			}
		}
		if ref == nil || ref.Kind != ConnShared {
			continue // a direct connection ends with its session: never unseen
		}
		// What the sessions' records keep of it; its opener is, but for an
		// admin, its owner.
		t := &connTomb{Connection: Connection{ID: conn, Kind: ConnShared, Service: ref.Service, ServiceTimeoutSeconds: ref.ServiceTimeoutSeconds,
			Parameters: map[string]string{}, Owner: rec.OpenedBy}, DiedAt: now}
		if !dryRun {
			if _, err := r.writeConnTomb(ctx, &connRecord{Connection: t.Connection, OwnerToken: rec.OpenedByToken}, "cleanup"); err != nil {
				return err
			}
			r.log.Warn("found sessions of a shared connection whose death no node recorded; its service timeout runs from now", "connection-id", conn)
		}
		for _, id := range ids {
			get(id).skip = fmt.Sprintf("its shared connection %s (service %s) is gone and its death was not recorded; its service timeout of %s runs from now, until %s",
				conn, ref.Service, time.Duration(ref.ServiceTimeoutSeconds)*time.Second, t.cleanupAt().Format(time.RFC3339))
		}
	}
	return nil
}

// policyRules judges every session under a policy: max lifetime, then idle
// timeout. It reads the module index (keys only: module, tenant and id, whose
// first 48 bits are the opening time) and the recorded activity at the
// round's revision; session records are read only for the sessions it judges.
func (r *Registry) policyRules(ctx context.Context, ps policySet, rev int64, now time.Time, get func(string) *verdict) error {
	cctx, cancel := r.opCtx(ctx)
	defer cancel()
	resp, err := r.cli.Txn(cctx).Then(
		clientv3.OpGet(ixModulePrefix, clientv3.WithPrefix(), clientv3.WithKeysOnly(), clientv3.WithRev(rev)),
		clientv3.OpGet(activityPrefix, clientv3.WithPrefix(), clientv3.WithRev(rev)),
	).Commit()
	if err != nil {
		return translate("read sessions for clean-up", err)
	}
	type act struct {
		at     time.Time
		modRev int64
	}
	acts := map[string]act{}
	for _, kv := range resp.Responses[1].GetResponseRange().Kvs {
		ms, err := strconv.ParseInt(string(kv.Value), 10, 64)
		if err == nil {
			acts[strings.TrimPrefix(string(kv.Key), activityPrefix)] = act{time.UnixMilli(ms), kv.ModRevision}
		}
	}
	for _, kv := range resp.Responses[0].GetResponseRange().Kvs {
		// ix/m/<module>/<tenant>/<id>
		parts := strings.Split(strings.TrimPrefix(string(kv.Key), ixModulePrefix), "/")
		if len(parts) != 3 {
			continue
		}
		module, tenant, id := parts[0], parts[1], parts[2]
		idle, maxLife := ps.effective(tenant, module)
		if idle.d == 0 && maxLife.d == 0 {
			continue
		}
		started, ok := idTime(id)
		if !ok {
			continue
		}
		if maxLife.d > 0 && now.Sub(started) >= maxLife.d {
			if v := get(id); v.reason == "" {
				v.reason, v.why = EndCleanup, fmt.Sprintf("it was opened at %s, longer ago than the max lifetime of %s (policy of %s)",
					started.UTC().Format(time.RFC3339), maxLife.d, maxLife.from)
			}
			continue
		}
		if idle.d == 0 {
			continue
		}
		a := acts[id]
		since, what := started, "opened at "+started.UTC().Format(time.RFC3339)
		if a.at.After(since) {
			since, what = a.at, "last active at "+a.at.UTC().Format(time.RFC3339)
		}
		if idle.setAt.After(since) {
			since, what = idle.setAt, "idle since the policy was set at "+idle.setAt.UTC().Format(time.RFC3339)
		}
		// Activity is written at most once a tenth of the timeout, so the user
		// may have been active up to a tenth after the time read.
		if now.Sub(since) < idle.d+idle.d/activityGrain {
			continue
		}
		if v := get(id); v.reason == "" {
			v.reason, v.why = EndIdle, fmt.Sprintf("no activity for %s (%s), longer than the idle timeout of %s (policy of %s)",
				now.Sub(since).Round(time.Second), what, idle.d, idle.from)
			v.cmps = []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(activityKey(id)), "=", a.modRev)}
		}
	}
	return nil
}
