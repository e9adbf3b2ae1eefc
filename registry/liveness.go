package registry

import (
	"container/heap"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/roster-dev/roster/registry/liveness"
)

// etcd renews every lease to its full TTL when a new member becomes leader, and revokes
// the leases that run out together at a few hundred a second: a dead client's session
// could outlive its TTL by another TTL, and a storm of deaths by tens of seconds. So the
// registry ends a session by its own liveness view (the liveness package: every node
// notes the heartbeats it answers and pushes them to the others, no raft write per
// heartbeat) as soon as that view finds it lapsed, and keeps the lease as the backstop
// that finally deletes the keys when the view cannot tell (a live node does not report).

// ByLiveness is the By of a session that Roster's liveness view ended: its TTL ran out
// since the last heartbeat any node answered. (An expiry seen by etcd's lease says
// "lease".)
const ByLiveness = "liveness"

const (
	// lapseTxnsInFlight bounds the end transactions of lapsed sessions in flight, of
	// maxTxnOps operations each: on the duty leader, and on a node acting as backstop
	// (fewer: the duty leader may be ending the same sessions). Larger transactions
	// (Config.MaxTxnOps) are fewer at once, about as many operations in all (at least
	// lapseMinTxnsInFlight on the duty leader, 1 on a backstop): every member applies
	// them one after another, and what waits in its queue delays every linearizable
	// read and lease renewal behind it (with 32 transactions of 1,024 operations in
	// flight the duty's own election lease went unrenewed for 1.5 s in a storm, and
	// the duty moved).
	lapseTxnsInFlight         = 32
	lapseBackstopTxnsInFlight = 4
	lapseMinTxnsInFlight      = 4
	// lapseRetry is when a lapsed session whose end failed is tried again.
	lapseRetry = time.Second
	// maxUnknownBackoff bounds how far the duty spaces the checks of a session whose
	// verdict waits for a node's report.
	maxUnknownBackoff = 1
)

// LeaseSlack is how much longer than its TTL a session's etcd lease lasts on a node
// with a liveness view: the view ends a dead client's session when its TTL runs out,
// and the lease, the backstop, only when the view cannot tell by then. So the two do
// not race. In a storm the slack must also outlast the view's ends: etcd applies each
// lease revocation, whether of a lease with keys or of one the view emptied, as a
// backend commit with an fsync of its own (a bbolt delete commits at once), so
// thousands of leases running out stall etcd's apply loop, and with it every
// linearizable read, for seconds. With 2 s the leases of a storm of 10,000 (TTL 60 s,
// 3 nodes on 2 cores) began to run out while the view was still ending sessions: its
// reads of etcd stalled past outageAfter, it paused as for an outage, and up to 4,235
// of the 10,000 ended by their leases, the last 27 s late. With 6 s it ended all
// 10,000 within 3.4 s of their TTL. It is 7 s because a heartbeat leaves a lease
// renewed less than beatFresh (1 s) ago as it is (leaseOutlivesTTL): the lease still
// outlives the TTL from the last heartbeat by at least 6 s. (With 6 s and heartbeats
// leaving leases renewed up to 3 s ago, the leases of a storm whose sessions had been
// heartbeated soon after their opens began to run out 3 s past the TTL, and the
// storm's p50 / p99 went from 63.3 / 67.8 s to 66.3 / 74.8 s.) Heartbeats, Get and
// List still say when the TTL runs out, not the lease.
const LeaseSlack = 7 * time.Second

// leaseSlack is LeaseSlack in whole seconds on a node with a liveness view, else 0.
func (r *Registry) leaseSlack() int64 {
	if r.cfg.Liveness == nil {
		return 0
	}
	return int64(LeaseSlack / time.Second)
}

// PeerSecret returns the secret the cluster's nodes authenticate their liveness pushes
// with. The first call in the cluster creates it, a random 256-bit value, with a
// create-only transaction; every later call on any node reads the same one. Cancelling
// ctx abandons the call.
func (r *Registry) PeerSecret(ctx context.Context) (string, error) {
	cctx, cancel := r.opCtx(ctx)
	defer cancel()
	secret := randomSecret()
	resp, err := r.cli.Txn(cctx).
		If(clientv3.Compare(clientv3.CreateRevision(peerSecretKey), "=", 0)).
		Then(clientv3.OpPut(peerSecretKey, secret)).
		Else(clientv3.OpGet(peerSecretKey)).
		Commit()
	if err != nil {
		return "", translate("create or read the peer secret", err)
	}
	if resp.Succeeded {
		return secret, nil
	}
	kvs := resp.Responses[0].GetResponseRange().Kvs
	if len(kvs) != 1 || len(kvs[0].Value) == 0 {
		return "", errors.New("registry: the peer secret exists but is empty")
	}
	return string(kvs[0].Value), nil
}

// noteBeat tells the liveness view that this node answered a heartbeat (or an open)
// of session id now.
func (r *Registry) noteBeat(id string) {
	if r.cfg.Liveness != nil {
		r.cfg.Liveness.Note(id)
	}
}

// lapse is a session the liveness view found lapsed, and how long it was silent.
type lapse struct {
	rec    *record
	silent time.Duration
}

// lapsedNow checks, before a heartbeat renews rec's lease, whether the liveness view
// has confirmed that rec's TTL ran out before this heartbeat: every node has reported
// up to then and none answered one. Such a session is ended at once as expired and the
// heartbeat answers so (*EndedError): without a leader change etcd would have refused
// the renewal too, and the liveness duty ends it anyway. It returns nil otherwise, also
// when the view cannot tell.
func (r *Registry) lapsedNow(ctx context.Context, rec *record) error {
	v := r.cfg.Liveness
	if v == nil {
		return nil
	}
	vd := v.Check(rec.ID, time.Duration(rec.TTLSeconds)*time.Second, time.Time{})
	if vd.State != liveness.Lapsed || !r.etcdFresh() {
		return nil
	}
	if _, err := r.endLapsed(ctx, []lapse{{rec, vd.Silent}}, make(chan struct{}, 1)); err != nil {
		return err
	}
	return r.goneNow(ctx, rec) // its tombstone: this end's, or one written meanwhile
}

// lapsedInBatch is lapsedNow for the sessions of a batch heartbeat through connection
// conn (recs, with their errors so far in errs): the lapsed ones are ended together
// and get their end as their error, so they are not renewed.
func (r *Registry) lapsedInBatch(ctx context.Context, conn string, recs []*record, errs []error) {
	v := r.cfg.Liveness
	if v == nil {
		return
	}
	var ls []lapse
	var at []int
	for i, rec := range recs {
		if rec == nil || errs[i] != nil || !usesConnection(&rec.Session, conn) {
			continue
		}
		if vd := v.Check(rec.ID, time.Duration(rec.TTLSeconds)*time.Second, time.Time{}); vd.State == liveness.Lapsed {
			ls, at = append(ls, lapse{rec, vd.Silent}), append(at, i)
		}
	}
	if len(ls) == 0 || !r.etcdFresh() {
		return
	}
	if _, err := r.endLapsed(ctx, ls, make(chan struct{}, txnsInFlight(lapseTxnsInFlight, r.endTxnOps(), lapseMinTxnsInFlight))); err != nil {
		for _, i := range at {
			errs[i] = err
		}
		return
	}
	for k, i := range at {
		errs[i] = r.goneNow(ctx, ls[k].rec)
	}
}

// lapsedEnd is how a session the liveness view found lapsed ends.
func (r *Registry) lapsedEnd(rec *record, silent time.Duration) Ended {
	ttl := time.Duration(rec.TTLSeconds) * time.Second
	return Ended{ID: rec.ID, Reason: EndExpired, By: ByLiveness, At: time.Now().UTC().Truncate(time.Second),
		Message: fmt.Sprintf("no heartbeat reached any node for %s, longer than its TTL of %s (seen by the liveness view of node %s)",
			silent.Round(100*time.Millisecond), ttl, r.cfg.Node)}
}

// endOps are the deletions that end rec, for end and for the liveness view's
// ends alike: its record, its index keys, its seat (freed with the session,
// not after the lease's revocation), its direct connection and its activity.
func endOps(rec *record) []clientv3.Op {
	ops := []clientv3.Op{clientv3.OpDelete(sessionKey(rec.ID))}
	for _, k := range indexKeys(rec) {
		ops = append(ops, clientv3.OpDelete(k))
	}
	if rec.Seat != "" {
		ops = append(ops, clientv3.OpDelete(rec.Seat))
	}
	for _, c := range rec.Connections {
		if c.Kind == ConnDirect {
			ops = append(ops, clientv3.OpDelete(connKey(c.ID)))
		}
	}
	return append(ops, clientv3.OpDelete(activityKey(rec.ID)))
}

// lapseItem is one session's part of an end transaction.
type lapseItem struct {
	rec  *record
	ops  []clientv3.Op
	tomb string // the tombstone's value
}

// endLapsed ends lapsed sessions as expired, many per transaction (at most
// endTxnOps operations and compares each) with as many transactions at once as sem
// has room for: callers that end several sets at the same time share one sem.
// Each session's end is conditional on its record being the same one (its creation
// revision), so a session that logged out or was killed meanwhile is left out: a
// batch whose compare fails is tried again without the sessions that ended. The
// tombstones say expired, by ByLiveness, so events, history and clients see expired.
// The sessions' leases are not revoked: each holds no keys any more and runs out by
// itself within about LeaseSlack (the view ends a session once its TTL ran out since
// its last heartbeat; after an etcd leader change, which renews every lease, within
// its TTL plus LeaseSlack). etcd applies a revocation as a raft entry and a backend
// commit with an fsync: made now, in a storm, it competes with the ends of the
// sessions still lapsing; made after the lease ran out, it costs that for nothing. In
// a storm of 10,000 the revocations, two at a time, mostly came too late: etcd's
// leader applied some 20,000 revocations of leases it no longer had, and revoking
// took a fifth of every node's CPU while the view still had sessions to end. It
// returns how many it ended.
func (r *Registry) endLapsed(ctx context.Context, ls []lapse, sem chan struct{}) (int, error) {
	items := make([]lapseItem, 0, len(ls))
	for _, l := range ls {
		val, _ := json.Marshal(tombstoneOf(l.rec, r.lapsedEnd(l.rec, l.silent)))
		items = append(items, lapseItem{rec: l.rec, ops: endOps(l.rec), tomb: string(val)})
	}
	return r.endItems(ctx, items, sem, nil)
}

// endCond makes a batch end conditional on a key's mod revision (a shutdown request
// unchanged since it was read).
type endCond struct {
	key    string
	modRev int64
	failed atomic.Bool // a transaction found the key changed: every caller stops
}

// endItems ends items as endLapsed does, many per transaction, sem bounding the
// transactions in flight. With cond, every transaction also requires cond's key
// unchanged; once it has changed, endItems (and every other call with the same cond)
// ends no more and returns errCondition with the count of those it ended before. It
// returns how many it ended.
func (r *Registry) endItems(ctx context.Context, items []lapseItem, sem chan struct{}, cond *endCond) (int, error) {
	var mu sync.Mutex
	ended := 0
	var errs []error
	limit := r.endTxnOps()
	if cond != nil {
		limit-- // the condition's compare
	}
	var wg sync.WaitGroup
	for _, b := range lapseBatches(items, limit) {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			if cond != nil && cond.failed.Load() {
				return
			}
			done, err := r.endBatch(ctx, b, cond)
			if errors.Is(err, rpctypes.ErrTooManyOps) {
				// A member with a lower --max-txn-ops than Config.MaxTxnOps said:
				// from now on the batches keep within etcd's default.
				r.endOpsLimit.Store(maxTxnOps)
				done, err = nil, nil
				for _, small := range lapseBatches(b, maxTxnOps-1) {
					d, e := r.endBatch(ctx, small, cond)
					done, err = append(done, d...), errors.Join(err, e)
				}
			}
			for _, it := range done {
				r.forget(it.rec.ID)
			}
			mu.Lock()
			defer mu.Unlock()
			ended += len(done)
			switch {
			case errors.Is(err, errCondition):
				cond.failed.Store(true)
			case err != nil:
				errs = append(errs, err)
			}
		})
	}
	wg.Wait()
	if cond != nil && cond.failed.Load() {
		return ended, errors.Join(append(errs, errCondition)...)
	}
	return ended, errors.Join(errs...)
}

// lapseBatches splits items into transactions of at most limit operations (each
// item's deletions and its tombstone) and limit compares (one an item).
func lapseBatches(items []lapseItem, limit int) [][]lapseItem {
	var batches [][]lapseItem
	var cur []lapseItem
	nops := 0
	for _, it := range items {
		n := len(it.ops) + 1
		if len(cur) > 0 && (nops+n > limit || len(cur) == limit) {
			batches, cur, nops = append(batches, cur), nil, 0
		}
		cur, nops = append(cur, it), nops+n
	}
	if len(cur) > 0 {
		batches = append(batches, cur)
	}
	return batches
}

// endTxnOps is how many operations one end transaction of the liveness view may
// carry: Config.MaxTxnOps, unless a member refused that many (then maxTxnOps).
func (r *Registry) endTxnOps() int {
	if n := r.endOpsLimit.Load(); n > 0 {
		return int(n)
	}
	if r.cfg.MaxTxnOps > 0 {
		return r.cfg.MaxTxnOps
	}
	return maxTxnOps
}

// endBatch ends items in one transaction. When a session's record changed or went
// meanwhile (another node ended it) it tries again without it, so every try but the
// last makes progress. It returns the items it ended.
//
// With cond the transaction also compares cond's key; when that compare is what
// failed, it returns errCondition and ends nothing more.
func (r *Registry) endBatch(ctx context.Context, items []lapseItem, cond *endCond) ([]lapseItem, error) {
	fresh := false
	for len(items) > 0 {
		cctx, cancel := r.opCtx(ctx)
		tl, err := r.tombstoneLease(cctx, fresh)
		if err != nil {
			cancel()
			return nil, err
		}
		var cmps []clientv3.Cmp
		var ops, elses []clientv3.Op
		for _, it := range items {
			cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(sessionKey(it.rec.ID)), "=", it.rec.createRev))
			ops = append(ops, it.ops...)
			ops = append(ops, clientv3.OpPut(tombstoneKey(it.rec.ID), it.tomb, clientv3.WithLease(tl)))
			elses = append(elses, clientv3.OpGet(sessionKey(it.rec.ID), clientv3.WithKeysOnly()))
		}
		if cond != nil {
			cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(cond.key), "=", cond.modRev))
			elses = append(elses, clientv3.OpGet(cond.key, clientv3.WithKeysOnly()))
		}
		resp, err := r.cli.Txn(cctx).If(cmps...).Then(ops...).Else(elses...).Commit()
		cancel()
		if errors.Is(err, rpctypes.ErrLeaseNotFound) && !fresh {
			fresh = true // the shared tombstone lease ran out: take a new one
			continue
		}
		if err != nil {
			return nil, translate("end lapsed sessions", err)
		}
		if resp.Succeeded {
			return items, nil
		}
		if cond != nil {
			if kvs := resp.Responses[len(items)].GetResponseRange().Kvs; len(kvs) != 1 || kvs[0].ModRevision != cond.modRev {
				return nil, errCondition
			}
		}
		var still []lapseItem
		for i, it := range items {
			if kvs := resp.Responses[i].GetResponseRange().Kvs; len(kvs) == 1 && kvs[0].CreateRevision == it.rec.createRev {
				still = append(still, it)
			}
		}
		if len(still) == len(items) {
			return nil, errors.New("registry: end lapsed sessions: the transaction's compare failed, yet every session is unchanged")
		}
		items = still
	}
	return nil, nil
}

// lapseHoldOff bounds how long a backstop leaves a lapsed session to a duty leader
// that is busy ending others (see holdOff): past its TTL, its backstop delay and this,
// the backstop ends it even so, still before its lease (TTL + LeaseSlack) runs out.
const lapseHoldOff = 3500 * time.Millisecond

// holdOff reports whether a backstop (late > 0, its backstop delay) leaves a session
// that has lapsed past late, silent for silent with a TTL of ttl, to the duty leader,
// which ended other lapsed sessions sinceOthers ago: while another node ends lapsed
// sessions within the backstop delay it is at work, only behind (in a storm), and this
// node's ends would collide with its transactions. Once it stops ending any, as when
// it died, this node ends them; and so it does with one session the leader has not
// ended lapseHoldOff after the backstop's turn came, whatever else the leader ends
// (one it cannot end, say).
func holdOff(silent, ttl, late, sinceOthers time.Duration) bool {
	return late > 0 && sinceOthers < late && silent < ttl+late+lapseHoldOff
}

// LapseBackstop is how long after a session lapsed a node that is not the duty leader
// ends it (plus up to a quarter more, so that the nodes do not all try at once): the
// duty leader ends it at once, and the others only when it is still there, as while
// a new duty leader is being elected.
const LapseBackstop = time.Second

// RunLiveness runs as the duty leader's duty until ctx ends: while it runs, this node
// ends every session its liveness view finds lapsed at once, instead of LapseBackstop
// later. Every node with a view (Config.Liveness) follows the sessions and ends the
// lapsed ones (see followLapses), started by Start; the duty only removes the delay.
// Without a view it waits for ctx and does nothing: the leases decide.
func (r *Registry) RunLiveness(ctx context.Context) error {
	if r.cfg.Liveness != nil {
		r.lapseLead.Add(1)
		defer r.lapseLead.Add(-1)
	}
	<-ctx.Done()
	return nil
}

// outageAfter: a gap this long between two successful reads of etcd on this node is
// an outage, whose time does not count against the sessions' TTLs (see
// liveness.View.Outage): while etcd is down no client can keep its session alive, and
// etcd's own lease clock stops too. A shorter gap, such as an etcd leader election,
// costs a live client that heartbeats every third of its TTL nothing.
const outageAfter = 2 * time.Second

// continuity is when this node last read etcd.
type continuity struct {
	mu     sync.Mutex
	lastOK time.Time
}

// probeEtcd reads etcd once (linearizable, at most a second) and reports whether it
// could. A success after a gap longer than outageAfter tells v the gap was an outage.
func (r *Registry) probeEtcd(ctx context.Context, v *liveness.View) bool {
	cctx, cancel := context.WithTimeout(ctx, time.Second)
	_, err := r.cli.Get(cctx, aliveKey, clientv3.WithCountOnly())
	cancel()
	if err != nil {
		return false
	}
	now := time.Now()
	c := &r.etcdSeen
	c.mu.Lock()
	defer c.mu.Unlock()
	if gap := now.Sub(c.lastOK); !c.lastOK.IsZero() && gap > outageAfter {
		v.Outage(c.lastOK, now)
		r.log.Info("liveness: this node could not reach etcd for a while; that time does not count against the sessions' TTLs",
			"from", c.lastOK.UTC(), "for", gap.Round(time.Millisecond))
	}
	c.lastOK = now
	return true
}

// etcdFresh reports whether this node read etcd within outageAfter; until it has
// again, a gap may be an outage the view has not been told of.
func (r *Registry) etcdFresh() bool {
	c := &r.etcdSeen
	c.mu.Lock()
	defer c.mu.Unlock()
	return !c.lastOK.IsZero() && time.Since(c.lastOK) < outageAfter
}

// lapseDelay is how long after a session lapsed this node ends it: 0 on the duty
// leader, else its backstop delay.
func (r *Registry) lapseDelay() time.Duration {
	if r.lapseLead.Load() > 0 {
		return 0
	}
	return time.Duration(r.lapseBackstop.Load())
}

// endLapses ends, as expired (by ByLiveness), every session that the liveness view v
// finds lapsed, until ctx ends: the duty leader within about one push interval of the
// session's TTL running out, every other node LapseBackstop later if it is still
// there. It knows every live session and its TTL from a read of the sessions and a
// watch from just after it, and checks each when its TTL would run out since its
// latest known beat; a session of which no beat is known counts as beaten when this
// node learned of it. What it keeps is a cache of etcd and of the view, so a node that
// takes over needs nothing from the one before.
func (r *Registry) endLapses(ctx context.Context, v *liveness.View) {
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() {
		tick := time.NewTicker(v.Interval())
		defer tick.Stop()
		for {
			r.probeEtcd(ctx, v)
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	})
	t := newLapseTracker()
	for ctx.Err() == nil {
		err := r.followLapses(ctx, v, t)
		if ctx.Err() != nil {
			return
		}
		r.log.Warn("liveness: reading the sessions again", "error", err)
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

// followLapses reads every session into t, then follows the sessions' watch and ends
// the lapsed ones until ctx ends or the watch falls behind a compaction (its error).
// A watch that breaks otherwise resumes from the next revision.
func (r *Registry) followLapses(ctx context.Context, v *liveness.View, t *lapseTracker) error {
	var rev int64
	now := time.Now()
	seen := map[string]bool{}
	for kv, err := range r.scan(ctx, sessionsPrefix, clientv3.GetPrefixRangeEnd(sessionsPrefix), scanBatch, &rev) {
		if err != nil {
			return translate("read the sessions for the liveness view", err)
		}
		if id := t.add(kv, now, true); id != "" {
			seen[id] = true
		}
	}
	t.keepOnly(seen)
	interval := v.Interval()
	next := rev + 1
	for {
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		wch := r.cli.Watch(wctx, sessionsPrefix, clientv3.WithPrefix(), clientv3.WithRev(next))
		err := r.lapseLoop(ctx, v, t, wch, &next, interval)
		cancel()
		if err != nil || ctx.Err() != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(interval):
		}
	}
}

// lapseLoop applies the watch's changes to t and ends the sessions that come due and
// lapsed; it returns nil when the watch ends (to resume it from *next) and an error
// when it fell behind a compaction. The ends run beside the loop (see lapseEnder), so
// the sessions that lapse while earlier ones are being ended are checked and started
// at once; it waits for them before it returns.
func (r *Registry) lapseLoop(ctx context.Context, v *liveness.View, t *lapseTracker, wch clientv3.WatchChan, next *int64, interval time.Duration) error {
	e := newLapseEnder(r.endTxnOps())
	defer e.wait()
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case resp, ok := <-wch:
			if !ok {
				return nil
			}
			if resp.CompactRevision != 0 {
				return fmt.Errorf("the session watch fell behind compaction at revision %d", resp.CompactRevision)
			}
			if resp.Err() != nil {
				return nil
			}
			now := time.Now()
			for _, ev := range resp.Events {
				if ev.Type == clientv3.EventTypeDelete {
					id := strings.TrimPrefix(string(ev.Kv.Key), sessionsPrefix)
					if s := t.sessions[id]; !e.settle(id) && s != nil && s.lapsed {
						t.othersEnded = now // see endDue
					}
					t.remove(id)
				} else {
					t.add(ev.Kv, now, false)
				}
				*next = ev.Kv.ModRevision + 1
			}
		case <-timer.C:
			r.endDue(ctx, v, t, e, interval)
			// At most every quarter interval: sessions that come due together are
			// checked, and ended, together.
			timer.Reset(max(t.wait(interval), interval/4))
		}
	}
}

// lapseEnder runs the liveness duty's passes: each pass ends the sessions one check
// found lapsed, and the passes run at the same time, sharing one bound on the end
// transactions in flight, so a storm's later lapses do not wait for the ends of the
// earlier ones (with one pass after another, a pass of 1,600 sessions took 1.2 s on
// 3 nodes while etcd's CPU was half idle, and everything that lapsed meanwhile
// waited for it). A session is in at most one pass at a time.
type lapseEnder struct {
	lead, backstop chan struct{} // the bound on transactions in flight, by role
	wg             sync.WaitGroup

	mu      sync.Mutex
	pending map[string]bool // the sessions in a pass (true) or tried by one (false)
}

// txnsInFlight is how many end transactions of ops operations may be in flight
// where n of maxTxnOps operations may, at the least (see lapseTxnsInFlight).
func txnsInFlight(n, ops, least int) int {
	return max(n*maxTxnOps/max(ops, 1), least)
}

// newLapseEnder bounds the passes' transactions in flight for transactions of ops
// operations each.
func newLapseEnder(ops int) *lapseEnder {
	return &lapseEnder{
		lead:     make(chan struct{}, txnsInFlight(lapseTxnsInFlight, ops, lapseMinTxnsInFlight)),
		backstop: make(chan struct{}, txnsInFlight(lapseBackstopTxnsInFlight, ops, 1)),
		pending:  map[string]bool{},
	}
}

// busy reports whether session id is in a pass.
func (e *lapseEnder) busy(id string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.pending[id]
}

// settle forgets session id, which was deleted, and reports whether a pass of this
// node tried to end it (the deletion may be its end, or not).
func (e *lapseEnder) settle(id string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	_, tried := e.pending[id]
	delete(e.pending, id)
	return tried
}

// wait waits for every pass.
func (e *lapseEnder) wait() { e.wg.Wait() }

// lapseCandidate is a session a check found lapsed, as the duty knew it then.
type lapseCandidate struct {
	id        string
	ttl       time.Duration
	knownAt   time.Time
	createRev int64
	silent    time.Duration
}

// endDue checks every session that has come due and starts a pass that ends those
// that lapsed (see lapseEnder).
func (r *Registry) endDue(ctx context.Context, v *liveness.View, t *lapseTracker, e *lapseEnder, interval time.Duration) {
	now := time.Now()
	late := r.lapseDelay()
	var cands []lapseCandidate
	for {
		id, s := t.popDue(now)
		if s == nil {
			break
		}
		vd := v.Check(id, s.ttl, s.knownAt)
		switch {
		case vd.State == liveness.Lapsed && vd.Silent < s.ttl+late:
			s.lapsed = true
			t.schedule(id, now.Add(s.ttl+late-vd.Silent)) // a backstop: the duty leader's turn first
		case vd.State == liveness.Lapsed && holdOff(vd.Silent, s.ttl, late, now.Sub(t.othersEnded)):
			s.lapsed = true
			t.schedule(id, now.Add(late/2))
		case vd.State == liveness.Lapsed:
			s.lapsed = true
			if !e.busy(id) {
				cands = append(cands, lapseCandidate{id, s.ttl, s.knownAt, s.createRev, vd.Silent})
			}
			t.schedule(id, now.Add(lapseRetry)) // its deletion removes it; else it is tried again
		case vd.State == liveness.Alive:
			s.unknowns = 0
			t.schedule(id, vd.Next)
		default:
			// A node's report is missing: most often the next push brings it, so
			// look again soon, then less often the longer it lasts (the lease
			// decides meanwhile).
			wait := interval / 4
			if s.unknowns > 0 {
				wait = interval << min(s.unknowns-1, maxUnknownBackoff)
			}
			t.schedule(id, now.Add(wait))
			s.unknowns++
		}
	}
	if len(cands) == 0 {
		return
	}
	e.mu.Lock()
	for _, c := range cands {
		e.pending[c.id] = true
	}
	e.mu.Unlock()
	e.wg.Go(func() {
		defer func() {
			e.mu.Lock()
			defer e.mu.Unlock()
			for _, c := range cands {
				if e.pending[c.id] {
					e.pending[c.id] = false // until its deletion settles it
				}
			}
		}()
		r.endPass(ctx, v, e, cands, late > 0, now)
	})
}

// endPass ends the sessions of cands that are still there as they were and still
// lapsed, with up to the role's bound of transactions in flight (shared with the
// other passes). Its errors are logged: the sessions it did not end are tried again
// at their next check.
func (r *Registry) endPass(ctx context.Context, v *liveness.View, e *lapseEnder, cands []lapseCandidate, backstop bool, began time.Time) {
	// An outage that just ended must be known before anything ends; the probe tells
	// the view of it, and then the verdicts are taken again.
	if !r.probeEtcd(ctx, v) {
		return // they are tried again after lapseRetry
	}
	keys := make([]string, len(cands))
	for i, c := range cands {
		keys[i] = sessionKey(c.id)
	}
	kvs, _, errs := r.getMany(ctx, keys)
	var ls []lapse
	for i, kv := range kvs {
		c := cands[i]
		if errs[i] != nil || kv == nil || v.Check(c.id, c.ttl, c.knownAt).State != liveness.Lapsed {
			continue
		}
		rec, err := decodeRecord(kv)
		if err != nil {
			r.log.Warn("liveness duty: undecodable session record", "key", keys[i], "error", err)
			continue
		}
		if rec.createRev == c.createRev {
			ls = append(ls, lapse{rec, c.silent})
		}
	}
	sem := e.lead
	if backstop {
		// A backstop: the duty leader may be ending the same sessions, in order;
		// another order makes their transactions collide less.
		mrand.Shuffle(len(ls), func(i, j int) { ls[i], ls[j] = ls[j], ls[i] })
		sem = e.backstop
	}
	n, err := r.endLapsed(ctx, ls, sem)
	if err != nil && ctx.Err() == nil {
		r.log.Warn("liveness duty: ending lapsed sessions failed; trying again", "ended", n, "lapsed", len(ls), "error", err)
	} else if n > 0 {
		r.log.Debug("liveness duty: ended lapsed sessions", "ended", n, "took", time.Since(began).Round(time.Millisecond))
	}
}

// tracked is a live session as the liveness duty knows it.
type tracked struct {
	ttl       time.Duration
	createRev int64
	knownAt   time.Time // when the duty learned of it
	unknowns  uint      // verdicts in a row that waited for a node
	lapsed    bool      // a verdict found it lapsed
}

// lapseTracker holds the live sessions and when to check each next, soonest first.
type lapseTracker struct {
	sessions map[string]*tracked
	due      dueHeap
	// othersEnded is when the watch last showed a lapsed session deleted that no pass
	// of this node had tried to end: another node is ending lapsed sessions.
	othersEnded time.Time
}

func newLapseTracker() *lapseTracker {
	return &lapseTracker{sessions: map[string]*tracked{}}
}

// add tracks the session of kv, learned of at now, and returns its id ("" if kv is not
// a session record). A session found by the first read (loaded) is checked at once: the
// view may know that it lapsed already; a new one a TTL after its open.
func (t *lapseTracker) add(kv *mvccpb.KeyValue, now time.Time, loaded bool) string {
	id := strings.TrimPrefix(string(kv.Key), sessionsPrefix)
	if s := t.sessions[id]; s != nil && s.createRev == kv.CreateRevision {
		return id
	}
	var rec struct {
		TTLSeconds int64 `json:"ttl_seconds"`
	}
	if err := json.Unmarshal(kv.Value, &rec); err != nil || rec.TTLSeconds <= 0 {
		return ""
	}
	s := &tracked{ttl: time.Duration(rec.TTLSeconds) * time.Second, createRev: kv.CreateRevision, knownAt: now}
	t.sessions[id] = s
	if loaded {
		t.schedule(id, now)
	} else {
		t.schedule(id, now.Add(s.ttl))
	}
	return id
}

func (t *lapseTracker) remove(id string) { delete(t.sessions, id) }

// keepOnly forgets the sessions not in ids (they ended while the duty did not watch).
func (t *lapseTracker) keepOnly(ids map[string]bool) {
	for id := range t.sessions {
		if !ids[id] {
			delete(t.sessions, id)
		}
	}
}

func (t *lapseTracker) schedule(id string, at time.Time) {
	heap.Push(&t.due, dueItem{at: at, id: id})
}

// popDue returns the next session due by now, or nil. Entries of sessions that ended,
// or that are scheduled again for later, are skipped.
func (t *lapseTracker) popDue(now time.Time) (string, *tracked) {
	for len(t.due) > 0 && !t.due[0].at.After(now) {
		it := heap.Pop(&t.due).(dueItem)
		if s := t.sessions[it.id]; s != nil {
			return it.id, s
		}
	}
	return "", nil
}

// wait is how long until the next session comes due, at most max.
func (t *lapseTracker) wait(most time.Duration) time.Duration {
	if len(t.due) == 0 {
		return most
	}
	return min(max(time.Until(t.due[0].at), time.Millisecond), most)
}

type dueItem struct {
	at time.Time
	id string
}

// dueHeap is a min-heap of dueItems by time (container/heap).
type dueHeap []dueItem

func (h dueHeap) Len() int           { return len(h) }
func (h dueHeap) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h dueHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *dueHeap) Push(x any)        { *h = append(*h, x.(dueItem)) }
func (h *dueHeap) Pop() any {
	old := *h
	it := old[len(old)-1]
	*h = old[:len(old)-1]
	return it
}
