package registry

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"strconv"
	"sync"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// errLeaseGone is what a renewal answers when the lease no longer exists.
var errLeaseGone = errors.New("registry: lease not found")

// renewer renews leases on demand over a few long-lived LeaseKeepAlive
// streams: one heartbeat costs one message on an open stream, not a new
// stream (clientv3's KeepAliveOnce opens one per call) and not a raft write.
// A lease always maps to the same stream, and the server answers a stream's
// requests in order, so the answers for one lease arrive in the order asked.
type renewer struct {
	ctx     context.Context
	cli     *clientv3.Client
	streams []*renewStream
	leader  *leaderConns
}

// waiter waits for the answer to a renewal sent at sent.
type waiter struct {
	ch   chan renewResult
	sent time.Time
}

type renewResult struct {
	ttl int64
	err error
}

type renewStream struct {
	ctx    context.Context
	cli    *clientv3.Client
	leader *leaderConns

	mu      sync.Mutex
	stream  pb.Lease_LeaseKeepAliveClient
	cancel  context.CancelFunc
	waiters map[int64][]waiter
	wg      sync.WaitGroup
	seen    *leaseDeadlines // told of every renewal answered; nil: none
	opened  time.Time       // when stream was opened
}

func newRenewer(ctx context.Context, cli *clientv3.Client, n int) *renewer {
	r := &renewer{ctx: ctx, cli: cli, leader: &leaderConns{cli: cli}}
	for i := 0; i < n; i++ {
		r.streams = append(r.streams, &renewStream{ctx: ctx, cli: cli, leader: r.leader, waiters: map[int64][]waiter{}})
	}
	return r
}

// renew resets a lease to its full TTL and returns that TTL in seconds. It
// returns errLeaseGone when the lease does not exist. Cancelling ctx
// abandons the wait; the renewal may still happen. When ctx's deadline
// passes the stream is taken to be stuck (etcd answers a stream's
// renewals in order, and a renewal of a lease that has expired but is
// not revoked yet waits for the revocation), so it is cancelled: its
// other waiters fail as unavailable and the next renewal opens a new one.
func (r *renewer) renew(ctx context.Context, id clientv3.LeaseID) (int64, error) {
	ch := make(chan renewResult, 1)
	cancelStream, err := r.stream(id).send(int64(id), ch)
	if err != nil {
		return 0, err
	}
	res := wait(ctx, ch, cancelStream)
	return res.ttl, res.err
}

// stream is the stream that carries the renewals of lease id.
func (r *renewer) stream(id clientv3.LeaseID) *renewStream {
	h := fnv.New32a()
	h.Write([]byte(strconv.FormatInt(int64(id), 16)))
	return r.streams[int(h.Sum32()%uint32(len(r.streams)))]
}

// wait waits for the answer on ch; when ctx's deadline passes first, it
// cancels the stream (see renew).
func wait(ctx context.Context, ch chan renewResult, cancelStream context.CancelFunc) renewResult {
	select {
	case res := <-ch:
		return res
	case <-ctx.Done():
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			cancelStream()
			return renewResult{err: fmt.Errorf("%w: lease renewal got no answer in time", ErrUnavailable)}
		}
		return renewResult{err: ctx.Err()}
	}
}

// renewWindow bounds the renewals renewAll keeps in flight: enough to keep
// the streams busy, few enough that the requests and answers waiting on a
// stream stay far below gRPC's flow-control window (a Send blocked on flow
// control holds the stream's lock, which its receiver needs to hand the
// answers out).
const renewWindow = 1024

// renewAll renews many leases at once and returns each one's result, in the
// order of ids; a lease may appear once. The renewals ride the same
// long-lived streams as renew, pipelined: up to renewWindow are in flight,
// and each answer that arrives lets the next request go. Cancelling ctx
// abandons the waits as in renew; the leases not yet asked for get its error.
func (r *renewer) renewAll(ctx context.Context, ids []clientv3.LeaseID) []renewResult {
	out := make([]renewResult, len(ids))
	type inflight struct {
		i      int
		ch     chan renewResult
		cancel context.CancelFunc
	}
	window := make(chan inflight, renewWindow)
	collected := make(chan struct{})
	go func() {
		defer close(collected)
		for f := range window {
			out[f.i] = wait(ctx, f.ch, f.cancel)
		}
	}()
	for i, id := range ids {
		ch := make(chan renewResult, 1)
		cancelStream := context.CancelFunc(func() {})
		if err := ctx.Err(); err != nil {
			ch <- renewResult{err: translate("renew lease", err)}
		} else if c, err := r.stream(id).send(int64(id), ch); err != nil {
			ch <- renewResult{err: err}
		} else {
			cancelStream = c
		}
		window <- inflight{i, ch, cancelStream}
	}
	close(window)
	<-collected
	return out
}

// tell makes the streams note every renewal answered in d (see
// leaseDeadlines). Call it before the first renewal.
func (r *renewer) tell(d *leaseDeadlines) {
	for _, s := range r.streams {
		s.seen = d
	}
}

func (r *renewer) close() {
	for _, s := range r.streams {
		s.mu.Lock()
		if s.cancel != nil {
			s.cancel()
		}
		s.mu.Unlock()
		s.wg.Wait()
	}
	r.leader.close()
}

// send queues a waiter and sends the request, opening the stream if
// needed. It returns the cancel function of the stream it used, which is
// safe to call without s.mu (a Send blocked on flow control holds it).
func (s *renewStream) send(id int64, ch chan renewResult) (context.CancelFunc, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.ctx.Err(); err != nil {
		return nil, err
	}
	if s.stream != nil && len(s.waiters) == 0 && time.Since(s.opened) >= leaderRecheck {
		// Idle and old: reopen it, on the leader's member if the leader
		// moved (see leaderConns); nobody waits for an answer on it.
		s.cancel()
		s.stream, s.cancel = nil, nil
	}
	if s.stream == nil {
		ctx, cancel := context.WithCancel(clientv3.WithRequireLeader(s.ctx))
		conn, toLeader := s.leader.conn(ctx)
		st, err := pb.NewLeaseClient(conn).LeaseKeepAlive(ctx)
		if err != nil && toLeader {
			s.leader.avoidLeader() // unreachable from here: use the client's own member
			st, err = pb.NewLeaseClient(s.cli.ActiveConnection()).LeaseKeepAlive(ctx)
		}
		if err != nil {
			cancel()
			return nil, streamErr("open keepalive stream", err)
		}
		s.stream, s.cancel, s.opened = st, cancel, time.Now()
		s.wg.Add(1)
		go s.receive(st)
	}
	s.waiters[id] = append(s.waiters[id], waiter{ch, time.Now()})
	if err := s.stream.Send(&pb.LeaseKeepAliveRequest{ID: id}); err != nil {
		err = streamErr("send keepalive", err)
		s.failLocked(s.stream, err)
		return nil, err
	}
	return s.cancel, nil
}

// receive hands each answer to the oldest waiter of its lease until the
// stream breaks; then every waiter gets the error and the next send opens a
// new stream.
func (s *renewStream) receive(st pb.Lease_LeaseKeepAliveClient) {
	defer s.wg.Done()
	for {
		resp, err := st.Recv()
		if err != nil {
			s.mu.Lock()
			s.failLocked(st, streamErr("keepalive stream", err))
			s.mu.Unlock()
			return
		}
		res := renewResult{ttl: resp.TTL}
		if resp.TTL <= 0 {
			res = renewResult{err: errLeaseGone}
		}
		s.mu.Lock()
		if s.stream != st {
			s.mu.Unlock()
			return // replaced: its waiters were failed, this answer is stale
		}
		q := s.waiters[resp.ID]
		if len(q) > 0 {
			if s.seen != nil {
				// The leader renewed the lease after the request was sent, so
				// its deadline is at least the send time plus the TTL.
				s.seen.note(resp.ID, resp.TTL, q[0].sent)
			}
			q[0].ch <- res
			if len(q) == 1 {
				delete(s.waiters, resp.ID)
			} else {
				s.waiters[resp.ID] = q[1:]
			}
		}
		s.mu.Unlock()
	}
}

// failLocked ends stream st (if it is still the current one) and fails its
// waiters. Callers hold s.mu.
func (s *renewStream) failLocked(st pb.Lease_LeaseKeepAliveClient, err error) {
	if s.stream != st {
		return
	}
	s.cancel()
	s.stream, s.cancel = nil, nil
	s.leader.forget()
	for id, q := range s.waiters {
		for _, w := range q {
			w.ch <- renewResult{err: err}
		}
		delete(s.waiters, id)
	}
}

// streamErr reports a broken keepalive stream as etcd being unavailable
// (a 503 the client retries elsewhere), whatever gRPC said.
func streamErr(op string, err error) error {
	return fmt.Errorf("%w: %s: %v", ErrUnavailable, op, err)
}

func isUnavailable(err error) bool {
	if st, ok := status.FromError(err); ok {
		switch st.Code() {
		case codes.Unavailable, codes.DeadlineExceeded:
			return true
		}
	}
	return false
}
