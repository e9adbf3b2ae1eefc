// Package ha runs singleton duties — deadline enforcement, history, clean-up,
// retention — on exactly one node of the cluster at a time, and moves them to
// another node when that one leaves or dies.
//
// Every node runs a Runner with the same duties. The runners campaign in an
// etcd election under Config.Prefix, the way etcd's concurrency.Election does:
// each candidate puts a key on its own lease, and the candidate whose key is
// the oldest leads. The leader runs every duty in its own goroutine with a
// context that ends when the lead ends. Duties keep no state that matters only
// in memory: a new leader reads everything it needs from etcd.
//
// # Failover
//
// A graceful Close stops the duties, waits for them to return, then revokes
// the lease, which deletes the leader key: the next candidate leads at once
// (a few milliseconds).
//
// A node that dies (SIGKILL, power loss, cut off from etcd) stops renewing
// its lease, and the next candidate leads once etcd expires it. That takes
// between TTL minus the renewal interval (TTL/3) and TTL plus half a second
// (etcd's lessor looks for expired leases every 500 ms): 1.3–2.5 s with the
// default TTL of 2 s (measured on one loopback member: 1.9–2.5 s, median
// 2.2 s, over a sweep of crash phases). The TTL cannot be shorter with
// etcd's default timing: etcd raises every lease's TTL to at least 1.5
// election timeouts rounded up to whole seconds, which with its default
// election timeout of 1 s (heartbeat 100 ms) is 2 s, so asking for 1 s gets
// 2 s. With an election timeout of at most 666 ms (say heartbeat 50 ms,
// election 500 ms) a TTL of 1 s holds, and failover takes 0.7–1.5 s
// (measured 1.2–1.5 s). If the dead node was also the etcd leader, etcd
// first elects a new leader (about an election timeout), and the new leader
// renews every lease to its full TTL, which adds both to the failover.
//
// A leader that cannot renew its lease stops its duties by itself before etcd
// can expire the lease: it counts the TTL from the moment it sent the last
// renewal etcd answered, and cancels the duties a quarter TTL before that runs
// out. So two nodes never run the duties at once unless a duty ignores its
// context for longer than that quarter TTL (500 ms by default).
//
// # Example
//
//	r, err := ha.New(ha.Config{Client: cli, Node: "n1", Logger: log},
//		ha.Duty{Name: "deadlines", Run: enforceDeadlines})
//	if err != nil {
//		return err
//	}
//	r.Start(ctx)
//	defer r.Close()
package ha
