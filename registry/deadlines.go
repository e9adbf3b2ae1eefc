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

// beatFresh is how recently a lease must have been renewed for a heartbeat to leave
// it as it is (see leaseOutlivesTTL).
const beatFresh = time.Second

// leaseOutlivesTTL reports whether a heartbeat of rec at now may leave its lease as it
// is: on a node with a liveness view (the view, not the lease, ends a session whose
// client stops), when the newest renewal this node has seen of the lease (or its grant
// at the open) was less than beatFresh ago, so that the lease, the backstop, still
// outlives the TTL from this heartbeat by at least LeaseSlack - beatFresh (6 s). The
// view then still ends a dead client's session first, also in a storm (see
// LeaseSlack), and the heartbeat costs no keepalive round trip to the etcd leader.
// That spares etcd the heartbeats that come more often than once a second per session
// through one node (a client that retries, several processes beating one session, a
// benchmark); a client that heartbeats every third of its TTL, as the Go client and
// the CLI do, renews at each heartbeat as before. A node without a view (no slack)
// renews at every heartbeat.
func (r *Registry) leaseOutlivesTTL(rec *record, now time.Time) bool {
	slack := r.leaseSlack()
	if slack == 0 {
		return false
	}
	left, ok := r.deadlines.remaining(rec.LeaseID, now)
	return ok && time.Duration(left)*time.Second >= time.Duration(rec.TTLSeconds+slack)*time.Second-beatFresh
}
