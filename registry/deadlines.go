package registry

import (
	"sync"
	"time"
)

// leaseDeadlines is what this node knows of when its sessions' leases run
// out, without asking etcd: for each lease, the deadline of the newest
// renewal the node has seen (the open, every renewal its keepalive streams
// answered, a TimeToLive it asked for). A listing takes expires_in_seconds
// from it instead of asking etcd for each lease's TTL (one TimeToLive RPC
// per session, a thousand per page).
//
// A deadline seen is a lower bound: the lease lives at least until then
// unless the session is ended, for a later renewal through another node
// or a new etcd leader only pushes it further. It is display only: etcd's
// leases stay the only TTL clock, nothing here ends a session.
type leaseDeadlines struct {
	mu    sync.Mutex
	at    map[int64]time.Time // lease id → deadline seen
	swept time.Time
}

// deadlineSweep is how often note drops the deadlines that have passed (a
// lease past its deadline is gone, or renewed where this node did not see it).
const deadlineSweep = 30 * time.Second

// note records that lease was renewed at now to ttl seconds (as a
// keepalive or TimeToLive answer says); an earlier deadline is kept if it
// is later.
func (d *leaseDeadlines) note(lease, ttl int64, now time.Time) {
	if ttl <= 0 {
		return
	}
	at := now.Add(time.Duration(ttl) * time.Second)
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.at == nil {
		d.at, d.swept = map[int64]time.Time{}, now
	}
	if cur, ok := d.at[lease]; !ok || at.After(cur) {
		d.at[lease] = at
	}
	if now.Sub(d.swept) >= deadlineSweep {
		d.swept = now
		for id, at := range d.at {
			if !at.After(now) {
				delete(d.at, id)
			}
		}
	}
}

// remaining returns the whole seconds left until lease's deadline as seen
// at now, and false when this node has seen no renewal of it whose
// deadline is still ahead.
func (d *leaseDeadlines) remaining(lease int64, now time.Time) (int64, bool) {
	d.mu.Lock()
	at, ok := d.at[lease]
	d.mu.Unlock()
	if !ok || !at.After(now) {
		return 0, false
	}
	return int64(at.Sub(now) / time.Second), true
}

// fillSeenExpiry sets ExpiresInSeconds of the sessions of a listing from
// what this node has seen of their leases (see leaseDeadlines), asking
// etcd nothing: the seconds to the deadline of the newest renewal seen, or
// the session's full TTL when the node has seen none that is still
// running (its client renews through another node). A lease granted
// longer than the TTL (see leaseSlack) outlasts the session's TTL by that
// much, which is taken off.
func (r *Registry) fillSeenExpiry(ss []Session, leases []int64) {
	now := time.Now()
	slack := r.leaseSlack()
	for i := range ss {
		if left, ok := r.deadlines.remaining(leases[i], now); ok {
			ss[i].ExpiresInSeconds = min(max(left-slack, 0), ss[i].TTLSeconds)
		} else {
			ss[i].ExpiresInSeconds = ss[i].TTLSeconds
		}
	}
}

// leaseOutlivesTTL reports whether a heartbeat of rec at now may leave its lease as it
// is: on a node with a liveness view (the view, not the lease, ends a session whose
// client stops), when the newest renewal this node has seen of the lease (or its grant
// at the open) still has at least the session's TTL plus half the slack to run. That
// is the rule of a fresh pooled lease (freshFor): a lease granted or renewed less than
// half the slack ago. The lease, the backstop, then outlives the TTL from this
// heartbeat by more than half the slack, so the view still ends the session first,
// and the heartbeat costs no keepalive round trip to the etcd leader: a client that
// beats every second renews its lease about every 3 s, not every second. A node
// without a view (no slack) renews at every heartbeat.
func (r *Registry) leaseOutlivesTTL(rec *record, now time.Time) bool {
	slack := r.leaseSlack()
	if slack == 0 {
		return false
	}
	left, ok := r.deadlines.remaining(rec.LeaseID, now)
	return ok && time.Duration(left)*time.Second >= time.Duration(rec.TTLSeconds+slack)*time.Second-freshFor(slack)
}
