package ha

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// session is one election lease and the goroutine that renews it. Unlike
// concurrency.Session, which learns that its lease is gone only up to a
// second after the deadline it counts from the last answer it received, a
// session counts the TTL from when it sent the last renewal etcd answered:
// etcd cannot expire the lease before then. It ends (ctx is cancelled) a
// margin before that moment, so the duties stop before a successor can start.
type session struct {
	id     clientv3.LeaseID
	ttl    time.Duration // as etcd granted it
	margin time.Duration // how long before the earliest expiry the session ends
	ctx    context.Context
	cancel context.CancelCauseFunc
	done   chan struct{} // closed when the renewing goroutine has returned
}

// grant grants a lease of the configured TTL and starts renewing it. The
// session ends when ctx does. Cancelling ctx abandons the grant.
func (r *Runner) grant(ctx context.Context) (*session, error) {
	sent := time.Now()
	gctx, cancel := context.WithTimeout(ctx, requestTimeout)
	resp, err := r.cli.Grant(gctx, int64(r.cfg.TTL/time.Second))
	cancel()
	if err != nil {
		return nil, fmt.Errorf("ha: grant lease: %w", err)
	}
	ttl := time.Duration(resp.TTL) * time.Second
	if ttl != r.cfg.TTL && r.ttlLogged.CompareAndSwap(false, true) {
		r.log.Info("duty election: etcd granted another TTL than configured; failover after a crash takes about the granted TTL",
			"node", r.cfg.Node, "ttl", r.cfg.TTL, "granted-ttl", ttl)
	}
	s := &session{id: resp.ID, ttl: ttl, margin: ttl / 4, done: make(chan struct{})}
	s.ctx, s.cancel = context.WithCancelCause(ctx)
	go s.renew(r.cli, sent.Add(ttl))
	return s, nil
}

// renew renews the lease every third of its TTL until the session ends. It
// ends the session when etcd reports the lease gone, or when no renewal was
// answered until a margin before the earliest moment etcd may expire it.
func (s *session) renew(cli *clientv3.Client, expires time.Time) {
	defer close(s.done)
	interval := s.ttl / 3
	next := expires.Add(-s.ttl + interval)
	timer := time.NewTimer(time.Until(next))
	defer timer.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-timer.C:
		}
		stop := expires.Add(-s.margin)
		if !time.Now().Before(stop) {
			s.cancel(errRenewLate)
			return
		}
		sent := time.Now()
		ctx, cancel := context.WithDeadline(clientv3.WithRequireLeader(s.ctx), stop)
		resp, err := cli.KeepAliveOnce(ctx, s.id)
		cancel()
		switch {
		case err == nil:
			expires = sent.Add(time.Duration(resp.TTL) * time.Second)
			next = sent.Add(interval)
		case errors.Is(err, rpctypes.ErrLeaseNotFound):
			s.cancel(errLeaseExpired)
			return
		case s.ctx.Err() != nil:
			return
		default:
			next = time.Now().Add(renewRetry)
		}
		if stop = expires.Add(-s.margin); stop.Before(next) {
			next = stop
		}
		timer.Reset(time.Until(next))
	}
}

// close ends the session and revokes its lease, which deletes its keys. A
// lease etcd no longer knows counts as revoked. The revocation gets one TTL:
// by then the lease has expired anyway.
func (s *session) close(cli *clientv3.Client) error {
	s.cancel(errClosed)
	<-s.done
	ctx, cancel := context.WithTimeout(context.Background(), s.ttl)
	defer cancel()
	if _, err := cli.Revoke(ctx, s.id); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return fmt.Errorf("ha: revoke lease %x: %w", int64(s.id), err)
	}
	return nil
}

// waitPredecessors blocks until no key under prefix created before rev is
// left: the candidate created at rev is then the oldest, the leader. Each
// candidate waits only for the next older one, so a deletion wakes one
// waiter, not all. Cancelling ctx abandons the wait.
func waitPredecessors(ctx context.Context, cli *clientv3.Client, prefix string, rev int64) error {
	opts := append(clientv3.WithLastCreate(), clientv3.WithMaxCreateRev(rev-1))
	for {
		gctx, cancel := context.WithTimeout(ctx, requestTimeout)
		resp, err := cli.Get(gctx, prefix, opts...)
		cancel()
		if err != nil {
			return fmt.Errorf("ha: read older candidates: %w", err)
		}
		if len(resp.Kvs) == 0 {
			return nil
		}
		older := resp.Kvs[0]
		if err := watchDeleted(ctx, cli, string(older.Key), older.CreateRevision, resp.Header.Revision+1); !errors.Is(err, errKeyDeleted) {
			return err
		}
	}
}

// watchDeleted blocks until key, created at revision created, is deleted at
// revision from or later, and then returns errKeyDeleted. When ctx ends first
// it returns ctx's cause, and when the watch fails an error that wraps
// errWatchEnded. A watch that resumes after a reconnect from a revision
// compacted meanwhile (a leader can lead longer than etcd keeps history)
// reads the key instead and watches on from the present.
func watchDeleted(ctx context.Context, cli *clientv3.Client, key string, created, from int64) error {
	for {
		err := watchDeletedFrom(ctx, cli, key, from)
		if !errors.Is(err, rpctypes.ErrCompacted) {
			return err
		}
		gctx, cancel := context.WithTimeout(ctx, requestTimeout)
		resp, err := cli.Get(gctx, key)
		cancel()
		switch {
		case err != nil:
			return fmt.Errorf("%w: %v", errWatchEnded, err)
		case len(resp.Kvs) == 0 || resp.Kvs[0].CreateRevision != created:
			return errKeyDeleted
		}
		from = resp.Header.Revision + 1
	}
}

func watchDeletedFrom(ctx context.Context, cli *clientv3.Client, key string, from int64) error {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for wr := range cli.Watch(wctx, key, clientv3.WithRev(from), clientv3.WithFilterPut()) {
		if err := wr.Err(); err != nil {
			if errors.Is(err, rpctypes.ErrCompacted) {
				return err
			}
			return fmt.Errorf("%w: %v", errWatchEnded, err)
		}
		for _, ev := range wr.Events {
			if ev.Type == mvccpb.DELETE {
				return errKeyDeleted
			}
		}
	}
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	return errWatchEnded
}
