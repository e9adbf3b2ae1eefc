package registry

import (
	"context"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
)

const (
	// leaderRecheck is how long what the renewer found out about the etcd
	// leader holds; an idle keepalive stream older than this is reopened,
	// on the leader's member if it moved.
	leaderRecheck = 10 * time.Second
	// leaderAvoid is how long the renewer uses the client's own member after
	// a stream to the leader's member could not be opened.
	leaderAvoid = time.Minute
)

// leaderConns gives the renewer's keepalive streams a connection to the
// etcd leader's member. etcd renews leases only on its leader: a follower
// forwards every renewal it receives to the leader as an HTTP request of its
// own, which costs both members several times what the renewal costs. A
// stream to the leader skips that. A stream to a member that is not (or no
// longer) the leader still works, forwarded: so the renewer falls back to the
// client's own connection whenever the leader cannot be found or reached,
// and after a leader change a stream moves to the new leader once it is idle
// (see renewStream.send).
type leaderConns struct {
	cli *clientv3.Client
	// lookup, when set, finds the leader's client URL instead of find's
	// requests (see Config.LeaderURL).
	lookup func(context.Context) string

	mu    sync.Mutex
	url   string    // the leader's client URL; "" to find out
	at    time.Time // when url was found out
	avoid time.Time // no streams to the leader before this
	conns map[string]*grpc.ClientConn
}

// conn returns the connection a new keepalive stream should use, and whether
// it leads to the leader's member: that one when the leader can be found
// within ctx (and a second), else the client's own. Callers may hold a
// renewStream's lock: it asks etcd at most once per leaderRecheck.
func (l *leaderConns) conn(ctx context.Context) (*grpc.ClientConn, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	if now.Before(l.avoid) {
		return l.cli.ActiveConnection(), false
	}
	if l.url == "" || now.Sub(l.at) >= leaderRecheck {
		l.url, l.at = l.find(ctx), now
	}
	if l.url == "" {
		return l.cli.ActiveConnection(), false
	}
	c := l.conns[l.url]
	if c == nil {
		var err error
		if c, err = l.cli.Dial(l.url); err != nil {
			l.url = ""
			return l.cli.ActiveConnection(), false
		}
		if l.conns == nil {
			l.conns = map[string]*grpc.ClientConn{}
		}
		l.conns[l.url] = c
	}
	if !ready(ctx, c) {
		l.url, l.avoid = "", now.Add(leaderAvoid)
		return l.cli.ActiveConnection(), false
	}
	return c, true
}

// ready waits up to a second (and within ctx) for c to be connected; a
// connection that failed is not.
func ready(ctx context.Context, c *grpc.ClientConn) bool {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	c.Connect()
	for st := c.GetState(); st != connectivity.Ready; st = c.GetState() {
		if st == connectivity.Shutdown || st == connectivity.TransientFailure || !c.WaitForStateChange(ctx, st) {
			return false
		}
	}
	return true
}

// forget makes the next stream find out who leads (a stream failed).
func (l *leaderConns) forget() {
	l.mu.Lock()
	l.url = ""
	l.mu.Unlock()
}

// avoidLeader sends new streams to the client's own member for leaderAvoid:
// the leader's could not be reached.
func (l *leaderConns) avoidLeader() {
	l.mu.Lock()
	l.url, l.avoid = "", time.Now().Add(leaderAvoid)
	l.mu.Unlock()
}

// find asks etcd who leads and returns the leader's first client URL; ""
// when that fails.
func (l *leaderConns) find(ctx context.Context) string {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if l.lookup != nil {
		return l.lookup(ctx)
	}
	eps := l.cli.Endpoints()
	if len(eps) == 0 {
		return ""
	}
	st, err := l.cli.Status(ctx, eps[0])
	if err != nil || st.Leader == 0 {
		return ""
	}
	ms, err := l.cli.MemberList(ctx)
	if err != nil {
		return ""
	}
	for _, m := range ms.Members {
		if m.ID == st.Leader && len(m.ClientURLs) > 0 {
			return m.ClientURLs[0]
		}
	}
	return ""
}

// close closes the connections it dialled; the streams on them must be
// closed already.
func (l *leaderConns) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range l.conns {
		c.Close()
	}
	l.conns = nil
}
