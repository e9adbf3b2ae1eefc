package registry

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Bounds of the lease pool.
const (
	// poolTTLs bounds the session TTLs that get a pool of their own; the
	// least recently used one gives way to a new one.
	poolTTLs = 4
	// poolLeases is how many leases the pool of one TTL keeps ready.
	poolLeases = 64
	// poolGrants bounds the grants in flight for the pool of one TTL.
	poolGrants = 16
	// poolIdle empties the pool of a TTL no open has used for this long.
	poolIdle = 10 * time.Minute
	// poolPause is how long the pool grants nothing after a grant failed.
	poolPause = time.Second
)

// leasePool keeps leases granted ahead of the opens that will need them, per
// session TTL in use, so that an open takes a lease instead of granting one:
// the grant, a raft write, leaves the login path.
//
// A pooled lease's TTL counts from its grant, so an open renews the lease it
// takes at once (one message on a keepalive stream, sent along with the
// open's transaction) and waits for that renewal before it answers: the
// session lives its full TTL from the open, never less. Under load the pool
// turns over in a fraction of a second, and a lease granted or renewed less
// than half the liveness view's slack ago (see freshFor) needs no renewal:
// its TTL includes the slack, so it still outlives the session's TTL from
// the open by more than half the slack, and the view, not the lease, ends a
// session whose client stops. Such an open saves the keepalive round trip
// to the etcd leader. While in the pool a
// lease is renewed every third of its TTL (keepLeases); one not renewed for
// half its TTL is not handed out. An open that fails without writing gives
// its lease back; one whose transaction may have been written revokes it.
//
// The pool starts with the first open and grants in the background, up to
// poolGrants at once per TTL. Close revokes the leases left in it, best
// effort; any it misses (a grant that was under way) expire by themselves.
type leasePool struct {
	mu       sync.Mutex
	byTTL    map[int64]*ttlLeases
	drop     []clientv3.LeaseID // leases to revoke: over the bounds, or too old
	revoking int                // leases of drop being revoked
	paused   time.Time          // no grants before this
	closed   bool
	wake     chan struct{} // pokes keepLeases
	start    sync.Once
	running  bool // keepLeases runs (or ran until Close)
}

// ttlLeases is the pool of one TTL.
type ttlLeases struct {
	ttl      int64
	free     []pooledLease // the newest last
	granting int
	used     time.Time // the last open that asked
}

// pooledLease is a lease that lives at least its TTL from since: since is
// taken before the grant or renewal that set its expiry was sent.
type pooledLease struct {
	id    clientv3.LeaseID
	since time.Time
}

// usable reports whether a lease of ttl seconds may still be handed out: it
// has at least half its TTL left, which leaves an open's transaction ample
// time to attach keys before the renewal it sends lands.
func (l pooledLease) usable(ttl int64, now time.Time) bool {
	return now.Sub(l.since) < time.Duration(ttl)*time.Second/2
}

// freshFor is how long after its grant or renewal a pooled lease is handed
// out without renewing it: half the lease slack (a node without a liveness
// view has none, and always renews). slack is in seconds.
func freshFor(slack int64) time.Duration {
	return time.Duration(slack) * time.Second / 2
}

// sessionLease is the lease an open puts its session on.
type sessionLease struct {
	pooledLease
	// pooled is set when the lease came from the pool (renewed or fresh).
	pooled bool
	// renewed receives the answer to the renewal sent when the lease was
	// taken from the pool; nil for a lease granted for this open. Until it
	// is answered, the lease lives at least as taken says.
	renewed      chan renewResult
	cancelStream context.CancelFunc
	taken        pooledLease
	// unsure is set when a transaction on the lease failed without an
	// answer: it may have been written, so the lease must not be reused.
	unsure bool
}

// leaseForOpen returns the lease for a session of ttl seconds: one from the
// pool (if pooled is set), fresh or with its renewal under way (see
// sessionFull), or else one granted now. Cancelling ctx abandons the grant.
func (r *Registry) leaseForOpen(ctx context.Context, ttl int64, pooled bool) (*sessionLease, error) {
	if l, ok := r.takeLease(ttl, pooled); ok {
		now := time.Now()
		if now.Sub(l.since) < freshFor(r.leaseSlack()) {
			return &sessionLease{pooledLease: l, pooled: true, taken: l}, nil
		}
		sl := &sessionLease{pooledLease: pooledLease{id: l.id, since: now}, pooled: true, renewed: make(chan renewResult, 1), taken: l}
		cancelStream, err := r.renewer.stream(l.id).send(int64(l.id), sl.renewed)
		if err == nil {
			sl.cancelStream = cancelStream
			return sl, nil
		}
		r.giveBack(ttl, l) // the streams are failing: grant instead
	}
	since := time.Now()
	resp, err := r.cli.Grant(ctx, ttl)
	if err != nil {
		return nil, translate("grant lease", err)
	}
	return &sessionLease{pooledLease: pooledLease{id: resp.ID, since: since}}, nil
}

// sessionFull waits until the session on sl lives its full TTL from the
// open: for a pooled lease taken with a renewal, until that renewal is
// answered (once more if that one failed). An error means the session may
// live less; the caller revokes the lease.
func (r *Registry) sessionFull(ctx context.Context, sl *sessionLease) error {
	if sl.renewed == nil {
		return nil
	}
	res := wait(ctx, sl.renewed, sl.cancelStream)
	if res.err != nil {
		_, res.err = r.renewer.renew(ctx, sl.id)
	}
	if res.err != nil {
		return fmt.Errorf("%w: open session: renew the pooled lease: %v", ErrUnavailable, res.err)
	}
	return nil
}

// releaseLease disposes of the lease of an open that failed with err: back
// to the pool when nothing can be on it, else revoked.
func (r *Registry) releaseLease(ttl int64, sl *sessionLease, err error) {
	if sl.unsure || errors.Is(err, ErrUnavailable) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		r.revoke(sl.id)
		return
	}
	l := sl.pooledLease
	if sl.renewed != nil {
		select {
		case res := <-sl.renewed:
			if res.err != nil {
				r.revoke(sl.id) // most likely gone
				return
			}
		default:
			l = sl.taken // not answered yet: it lives as long as when it was taken
		}
	}
	r.giveBack(ttl, l)
}

// takeLease takes a usable lease of ttl seconds from the pool if take is
// set, and makes sure the pool of ttl exists and is being filled. ok is
// false when it took none (or the registry is closing).
func (r *Registry) takeLease(ttl int64, take bool) (pooledLease, bool) {
	lp := &r.leases
	lp.start.Do(func() {
		lp.wake = make(chan struct{}, 1)
		lp.running = r.goTracked(r.keepLeases)
	})
	lp.mu.Lock()
	defer lp.mu.Unlock()
	if !lp.running || lp.closed {
		return pooledLease{}, false
	}
	now := time.Now()
	p := lp.pool(ttl, now)
	p.used = now
	defer lp.poke()
	for take && len(p.free) > 0 {
		l := p.free[len(p.free)-1]
		p.free = p.free[:len(p.free)-1]
		if l.usable(ttl, now) {
			return l, true
		}
		lp.drop = append(lp.drop, l.id)
	}
	return pooledLease{}, false
}

// pool returns the pool of ttl, adding it (and evicting the least recently
// used one beyond poolTTLs). Callers hold lp.mu.
func (lp *leasePool) pool(ttl int64, now time.Time) *ttlLeases {
	if p := lp.byTTL[ttl]; p != nil {
		return p
	}
	if lp.byTTL == nil {
		lp.byTTL = map[int64]*ttlLeases{}
	}
	if len(lp.byTTL) >= poolTTLs {
		var lru *ttlLeases
		for _, p := range lp.byTTL {
			if lru == nil || p.used.Before(lru.used) {
				lru = p
			}
		}
		lp.evict(lru)
	}
	p := &ttlLeases{ttl: ttl, used: now}
	lp.byTTL[ttl] = p
	return p
}

// evict removes the pool p; its leases are revoked. Callers hold lp.mu.
func (lp *leasePool) evict(p *ttlLeases) {
	delete(lp.byTTL, p.ttl)
	for _, l := range p.free {
		lp.drop = append(lp.drop, l.id)
	}
	p.free = nil
}

func (lp *leasePool) poke() {
	select {
	case lp.wake <- struct{}{}:
	default:
	}
}

// giveBack returns an unused lease to the pool of ttl, or revokes it when
// the pool is full, gone or closed, or the lease too old.
func (r *Registry) giveBack(ttl int64, l pooledLease) {
	lp := &r.leases
	lp.mu.Lock()
	p := lp.byTTL[ttl]
	ok := !lp.closed && p != nil && len(p.free) < poolLeases && l.usable(ttl, time.Now())
	if ok {
		p.free = append(p.free, l)
	}
	lp.mu.Unlock()
	if !ok {
		r.revoke(l.id)
	}
}

// keepLeases tends the pool until the registry closes: it fills each TTL's
// pool, renews the leases in it every third of their TTL over the keepalive
// streams, revokes those dropped, and empties the pools of TTLs unused for
// poolIdle.
func (r *Registry) keepLeases() {
	lp := &r.leases
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		next := r.tendLeases()
		t.Reset(time.Until(next))
		select {
		case <-r.ctx.Done():
			return
		case <-lp.wake:
		case <-t.C:
		}
	}
}

// tendLeases does one round of keepLeases and returns when the next is due.
func (r *Registry) tendLeases() time.Time {
	lp := &r.leases
	type renewal struct {
		ttl int64
		id  clientv3.LeaseID
	}
	var due []renewal
	now := time.Now()
	next := now.Add(time.Minute)
	lp.mu.Lock()
	for _, p := range lp.byTTL {
		if now.Sub(p.used) >= poolIdle {
			lp.evict(p)
			continue
		}
		next = minTime(next, p.used.Add(poolIdle))
		if now.After(lp.paused) {
			for n := min(poolLeases-len(p.free)-p.granting, poolGrants-p.granting); n > 0; n-- {
				p.granting++
				if !r.goTracked(func() { r.grantPooled(p) }) {
					p.granting--
					break
				}
			}
		} else {
			next = minTime(next, lp.paused)
		}
		every := time.Duration(p.ttl) * time.Second / 3
		for _, l := range p.free {
			if now.Sub(l.since) >= every {
				due = append(due, renewal{p.ttl, l.id})
			} else {
				next = minTime(next, l.since.Add(every))
			}
		}
	}
	drop := lp.drop
	lp.drop, lp.revoking = nil, len(drop)
	lp.mu.Unlock()

	for _, id := range drop {
		r.revoke(id)
	}
	lp.mu.Lock()
	lp.revoking = 0
	lp.mu.Unlock()
	if len(due) == 0 {
		return next
	}
	ids := make([]clientv3.LeaseID, len(due))
	for i, d := range due {
		ids[i] = d.id
	}
	sent := time.Now()
	cctx, cancel := r.opCtx(r.ctx)
	res := r.renewer.renewAll(cctx, ids)
	cancel()
	lp.mu.Lock()
	defer lp.mu.Unlock()
	for i, d := range due {
		p := lp.byTTL[d.ttl]
		if p == nil {
			continue
		}
		for j := range p.free {
			if p.free[j].id != d.id {
				continue
			}
			switch {
			case res[i].err == nil:
				p.free[j].since = maxTime(p.free[j].since, sent)
			case errors.Is(res[i].err, errLeaseGone):
				p.free = append(p.free[:j], p.free[j+1:]...)
			}
			break
		}
	}
	// A failed renewal is retried on the next round, a second from now.
	return minTime(next, time.Now().Add(time.Second))
}

// grantPooled grants a lease for the pool p.
func (r *Registry) grantPooled(p *ttlLeases) {
	lp := &r.leases
	cctx, cancel := r.opCtx(r.ctx)
	defer cancel()
	since := time.Now()
	resp, err := r.cli.Grant(cctx, p.ttl)
	lp.mu.Lock()
	defer lp.mu.Unlock()
	p.granting--
	if err != nil {
		if r.ctx.Err() == nil {
			r.log.Debug("grant a pooled lease failed", "ttl", p.ttl, "error", err)
			lp.paused = time.Now().Add(poolPause)
		}
		return
	}
	if lp.byTTL[p.ttl] != p || len(p.free) >= poolLeases {
		lp.drop = append(lp.drop, resp.ID)
		lp.poke()
		return
	}
	p.free = append(p.free, pooledLease{id: resp.ID, since: since})
	lp.poke() // the next round tops the pool up
}

// flushPool empties the pool of ttl, whose leases may have been revoked
// behind its back (an operator, a restore); those still there are revoked.
func (r *Registry) flushPool(ttl int64) {
	lp := &r.leases
	lp.mu.Lock()
	defer lp.mu.Unlock()
	if p := lp.byTTL[ttl]; p != nil {
		lp.evict(p)
		lp.poke()
	}
}

// closeLeasesWait bounds closeLeases. Revoking is a courtesy: a pooled lease holds no
// key and runs out by itself after its TTL. Each revocation is a raft entry, which in a
// storm waits behind thousands of others and without quorum (the whole cluster
// stopping at once) never comes: with RequestTimeout (5 s) as the bound, a node stopped
// with its peers spent 5 s here.
const closeLeasesWait = time.Second

// closeLeases revokes the leases left in the pool, best effort, up to 16 at
// once and within closeLeasesWait; Close calls it once nothing else runs.
func (r *Registry) closeLeases() {
	lp := &r.leases
	lp.mu.Lock()
	lp.closed = true
	ids := lp.drop
	lp.drop = nil
	for _, p := range lp.byTTL {
		for _, l := range p.free {
			ids = append(ids, l.id)
		}
		p.free = nil
	}
	lp.mu.Unlock()
	if len(ids) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.ctx), min(r.cfg.RequestTimeout, closeLeasesWait))
	defer cancel()
	sem := make(chan struct{}, 16)
	var wg sync.WaitGroup
	var left atomic.Int64
	for _, id := range ids {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			left.Add(1)
			continue
		}
		wg.Go(func() {
			defer func() { <-sem }()
			if _, err := r.cli.Revoke(ctx, id); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
				left.Add(1)
			}
		})
	}
	wg.Wait()
	if n := left.Load(); n > 0 {
		r.log.Info("closing: pooled leases not revoked; they run out by themselves", "leases", n, "pooled", len(ids))
	}
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
