package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/roster-dev/roster/registry"
)

// etcdCallTimeout bounds one raw etcd call of the baseline.
const etcdCallTimeout = 30 * time.Second

// rawEtcd does the baseline's work directly on the cluster's etcd: the
// same workloads with the same concurrency, written under a prefix of
// its own (rawPrefix) that no Roster node reads, and removed at the end.
type rawEtcd struct {
	eps  []string
	clis []*clientv3.Client // clis[k] talks to eps[k] alone
	// prefix holds every key the run writes: /roster-bench/<run id>/.
	prefix string
	ttl    int64
	// record and attrs are the values a raw open writes: as large as a
	// session record and its index entries.
	record, attrs string
}

// rawPrefix is where raw baselines write, outside Roster's key space.
const rawPrefix = "/roster-bench/"

// dialEtcd connects to each endpoint alone and checks that it answers.
func dialEtcd(ctx context.Context, eps []string, runID string, ttl int64) (*rawEtcd, error) {
	r := &rawEtcd{eps: eps, prefix: rawPrefix + runID + "/", ttl: ttl}
	for _, ep := range eps {
		cli, err := clientv3.New(clientv3.Config{
			Endpoints:   []string{ep},
			DialTimeout: 5 * time.Second,
			Logger:      zap.NewNop(),
		})
		if err != nil {
			r.close()
			return nil, fmt.Errorf("--etcd-endpoints: %s: %w", ep, err)
		}
		r.clis = append(r.clis, cli)
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err = cli.Status(sctx, ep)
		cancel()
		if err != nil {
			r.close()
			return nil, fmt.Errorf("--etcd-endpoints: %s does not answer as an etcd member: %w (give the client URLs of the cluster's etcd members, each node's --etcd-listen)", ep, err)
		}
	}
	r.record, r.attrs = sessionSizedValues()
	return r, nil
}

// sessionSizedValues returns a value shaped and sized like a session
// record (the session, its lease, its token's hash) and one like an index
// entry's attributes.
func sessionSizedValues() (string, string) {
	rec := struct {
		registry.Session
		LeaseID       int64  `json:"lease_id"`
		TokenHash     string `json:"token_hash"`
		OpenedByToken string `json:"opened_by_token"`
		// hides the session's, as Roster's stored record does
		ExpiresInSeconds int64 `json:"expires_in_seconds,omitempty"`
	}{
		Session: registry.Session{
			ID: strings.Repeat("0", 32), Tenant: registry.DefaultTenant, User: "bench-000000-000000", Module: "bench",
			Host: benchHost, PID: 4242, OS: "linux", ClientKind: registry.KindUI, Pool: "default", Site: "site-1", Node: "node-1",
			StartedAt: time.Date(2026, 11, 21, 10, 2, 0, 0, time.UTC), TTLSeconds: 60, Labels: map[string]string{}, OpenedBy: "admin",
		},
		LeaseID: 7587869213468493000, TokenHash: strings.Repeat("f", 64), OpenedByToken: strings.Repeat("e", 16),
	}
	data, _ := json.Marshal(rec)
	// The index values in the form Roster writes them: a mark byte, then
	// the fields with a separator byte between them.
	attrs := "\x01" + strings.Join([]string{registry.DefaultTenant, "bench-000000-000000", "bench", "default", "site-1", "node-1", "ui", strings.Repeat("e", 16)}, "\x1f")
	return string(data), attrs
}

func (r *rawEtcd) close() {
	for _, c := range r.clis {
		c.Close()
	}
}

// cli returns the client of worker or item k: spread over the endpoints.
func (r *rawEtcd) cli(k int) *clientv3.Client { return r.clis[k%len(r.clis)] }

func callCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, etcdCallTimeout)
}

// rawTransient reports whether err, from a raw etcd call, may pass if the
// call is tried again: etcd unavailable (a request timed out, the leader
// changed or is lost), overloaded, the call's own time limit, or no answer.
// A refused compare or a bad request is not.
func rawTransient(err error) bool {
	switch etcdErrorCode(err) {
	case "etcd_unavailable", "etcd_resource_exhausted", "etcd_deadline_exceeded", codeTimeout, codeTransport:
		return true
	}
	return false
}

// rawSetup runs fn, one raw etcd call of a baseline's set-up, trying it
// again after a transient error (trySetup), as openSetup does for Roster's
// side. fn must be safe to repeat: plain puts are; a grant whose answer
// was lost leaves a lease that runs out after its TTL.
func rawSetup(ctx context.Context, tried *atomic.Int64, fn func() error) error {
	return trySetup(ctx, tried, rawTransient, func(int) error { return fn() })
}

// open does what a Roster open does to etcd, minus Roster's reads: grant a
// lease, then one Txn that checks the user holds nothing in the module
// (the single-login compare on the user's prefix) and puts a
// session-sized record and five index entries on the lease.
func (r *rawEtcd) open(ctx context.Context, k int, user, module string) (clientv3.LeaseID, error) {
	cli := r.cli(k)
	ctx, cancel := callCtx(ctx)
	defer cancel()
	l, err := cli.Grant(ctx, r.ttl)
	if err != nil {
		return 0, err
	}
	id := randomHex(16)
	userPrefix := r.prefix + "ix/u/" + user + "/" + module + "/"
	lease := clientv3.WithLease(l.ID)
	resp, err := cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(userPrefix), "=", 0).WithPrefix()).
		Then(
			clientv3.OpPut(r.prefix+"sessions/"+id, r.record, lease),
			clientv3.OpPut(r.prefix+"ix/t/"+id, r.attrs, lease),
			clientv3.OpPut(userPrefix+id, r.attrs, lease),
			clientv3.OpPut(r.prefix+"ix/m/"+module+"/"+id, r.attrs, lease),
			clientv3.OpPut(r.prefix+"ix/p/"+id, r.attrs, lease),
			clientv3.OpPut(r.prefix+"ix/o/"+id, r.attrs, lease),
		).Commit()
	if err == nil && !resp.Succeeded {
		err = &codeError{codeConflict, "user " + user + " already holds a key in " + module}
	}
	if err != nil {
		r.revoke(context.WithoutCancel(ctx), k, l.ID)
		return 0, err
	}
	return l.ID, nil
}

// grantKey grants a lease and puts one session-sized value at key on it:
// what kill-latency and expiry watch.
func (r *rawEtcd) grantKey(ctx context.Context, k int, key string) (clientv3.LeaseID, error) {
	cli := r.cli(k)
	ctx, cancel := callCtx(ctx)
	defer cancel()
	l, err := cli.Grant(ctx, r.ttl)
	if err != nil {
		return 0, err
	}
	if _, err := cli.Put(ctx, key, r.record, clientv3.WithLease(l.ID)); err != nil {
		r.revoke(context.WithoutCancel(ctx), k, l.ID)
		return 0, err
	}
	return l.ID, nil
}

// grant grants a bare lease.
func (r *rawEtcd) grant(ctx context.Context, k int) (clientv3.LeaseID, error) {
	ctx, cancel := callCtx(ctx)
	defer cancel()
	l, err := r.cli(k).Grant(ctx, r.ttl)
	if err != nil {
		return 0, err
	}
	return l.ID, nil
}

// revoke revokes a lease through the client of k.
func (r *rawEtcd) revoke(ctx context.Context, k int, id clientv3.LeaseID) error {
	ctx, cancel := callCtx(ctx)
	defer cancel()
	_, err := r.cli(k).Revoke(ctx, id)
	return err
}

// putRecords writes n session-sized values under prefix+"list/<i mod
// 10>/<i>" on one lease, 100 to a Txn (below etcd's default limit of 128
// operations): what list reads. It returns the lease.
func (r *rawEtcd) putRecords(ctx context.Context, b *bench, n int) (clientv3.LeaseID, error) {
	lease, err := r.grant(ctx, 0)
	if err != nil {
		return 0, err
	}
	const perTxn = 100
	err = b.parallel(ctx, "raw etcd: writing list records", (n+perTxn-1)/perTxn, 8, func(ctx context.Context, t int) error {
		var ops []clientv3.Op
		for i := t * perTxn; i < min(n, (t+1)*perTxn); i++ {
			ops = append(ops, clientv3.OpPut(r.listKey(i), r.record, clientv3.WithLease(lease)))
		}
		return rawSetup(ctx, &b.setupRetries, func() error {
			ctx, cancel := callCtx(ctx)
			defer cancel()
			_, err := r.cli(t).Txn(ctx).Then(ops...).Commit()
			return err
		})
	})
	return lease, err
}

// listPrefix is where putRecords writes; listFiltered is the part of it
// that the filtered listing reads (a tenth).
func (r *rawEtcd) listPrefix() string   { return r.prefix + "list/" }
func (r *rawEtcd) listFiltered() string { return r.listPrefix() + "0/" }

func (r *rawEtcd) listKey(i int) string {
	return fmt.Sprintf("%s%d/%010d", r.listPrefix(), i%10, i)
}

// page reads up to limit keys of the range [from, end) at one revision,
// as a listing page does, and returns where the next page starts ("" after
// the last).
func (r *rawEtcd) page(ctx context.Context, k int, from, end string, limit int) (string, error) {
	ctx, cancel := callCtx(ctx)
	defer cancel()
	resp, err := r.cli(k).Get(ctx, from, clientv3.WithRange(end), clientv3.WithLimit(int64(limit)))
	if err != nil {
		return "", err
	}
	if !resp.More || len(resp.Kvs) == 0 {
		return "", nil
	}
	return string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00", nil
}

// cleanup deletes everything under the run's prefix.
func (r *rawEtcd) cleanup(ctx context.Context) error {
	ctx, cancel := callCtx(ctx)
	defer cancel()
	_, err := r.clis[0].Delete(ctx, r.prefix, clientv3.WithPrefix())
	return err
}

// keepAliveStream is one long-lived LeaseKeepAlive stream, as Roster's
// nodes keep them: each renewal is one message on it, with no new stream
// per renewal (which clientv3's KeepAliveOnce would open). clientv3's
// Lease.KeepAlive keeps streams like this one but sends each lease's
// renewal on its own timer (every third of the TTL), so it cannot be
// driven at the rate of a load; this sends renewals as fast as they are
// answered.
type keepAliveStream struct {
	s      pb.Lease_LeaseKeepAliveClient
	cancel context.CancelFunc
}

// openKeepAlive opens a stream through the client of k; it lives until
// close or until ctx ends.
func (r *rawEtcd) openKeepAlive(ctx context.Context, k int) (*keepAliveStream, error) {
	ctx, cancel := context.WithCancel(ctx)
	s, err := pb.NewLeaseClient(r.cli(k).ActiveConnection()).LeaseKeepAlive(ctx)
	if err != nil {
		cancel()
		return nil, err
	}
	return &keepAliveStream{s: s, cancel: cancel}, nil
}

func (k *keepAliveStream) close() { k.cancel() }

// renew renews one lease and waits for its answer. A lease that is gone
// answers TTL 0: lease_not_found.
func (k *keepAliveStream) renew(id clientv3.LeaseID) error {
	if err := k.s.Send(&pb.LeaseKeepAliveRequest{ID: int64(id)}); err != nil {
		return err
	}
	resp, err := k.s.Recv()
	if err != nil {
		return err
	}
	if resp.TTL <= 0 {
		return &codeError{codeNotFound, "lease " + strconv.FormatInt(resp.ID, 16) + " not found"}
	}
	return nil
}

// renewAll renews every lease of ids with the requests pipelined: one
// goroutine sends them all while this one reads the answers, as a batch
// heartbeat keeps many renewals in flight. It returns how many were
// renewed and the codes of the others.
func (k *keepAliveStream) renewAll(ids []clientv3.LeaseID) (int, map[string]int, error) {
	sent := make(chan error, 1)
	go func() {
		for _, id := range ids {
			if err := k.s.Send(&pb.LeaseKeepAliveRequest{ID: int64(id)}); err != nil {
				sent <- err
				return
			}
		}
		sent <- nil
	}()
	renewed := 0
	var failed map[string]int
	for range ids {
		resp, err := k.s.Recv()
		if err != nil {
			k.cancel() // unblocks the sender
			<-sent
			return renewed, failed, err
		}
		if resp.TTL > 0 {
			renewed++
			continue
		}
		if failed == nil {
			failed = map[string]int{}
		}
		failed[codeNotFound]++
	}
	return renewed, failed, <-sent
}

// members returns the voting members' ids and client URLs, and the
// leader's id, as the first endpoint that answers sees them.
func (r *rawEtcd) members(ctx context.Context) (voters map[uint64][]string, leader uint64, err error) {
	ctx, cancel := callCtx(ctx)
	defer cancel()
	var errs []error
	for i, cli := range r.clis {
		st, err := cli.Status(ctx, r.eps[i])
		if err != nil {
			errs = append(errs, err)
			continue
		}
		ml, err := cli.MemberList(ctx)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		voters = map[uint64][]string{}
		for _, m := range ml.Members {
			if !m.IsLearner {
				voters[m.ID] = m.ClientURLs
			}
		}
		return voters, st.Leader, nil
	}
	return nil, 0, fmt.Errorf("no etcd endpoint answered: %w", errors.Join(errs...))
}

// moveLeader makes another voting member the etcd leader (etcd's
// Maintenance.MoveLeader, which only the leader accepts, so it is sent to
// the leader's client URL). It returns the old and new leaders' ids.
func (r *rawEtcd) moveLeader(ctx context.Context) (from, to uint64, err error) {
	voters, leader, err := r.members(ctx)
	if err != nil {
		return 0, 0, err
	}
	if len(voters) < 2 {
		return 0, 0, fmt.Errorf("the etcd cluster has %d voting member(s): moving the leader needs at least 2", len(voters))
	}
	for id := range voters {
		if id != leader && (to == 0 || id < to) {
			to = id
		}
	}
	urls := voters[leader]
	if len(urls) == 0 {
		return 0, 0, fmt.Errorf("the etcd leader %x has no client URL", leader)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: urls, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return 0, 0, err
	}
	defer cli.Close()
	ctx, cancel := callCtx(ctx)
	defer cancel()
	if _, err := cli.MoveLeader(ctx, to); err != nil {
		return 0, 0, fmt.Errorf("move the etcd leader from %x (%s) to %x: %w", leader, strings.Join(urls, ","), to, err)
	}
	return leader, to, nil
}

// memberIDs returns the member id of each endpoint, in hex as the API
// shows them.
func (r *rawEtcd) memberIDs(ctx context.Context) (map[string]string, error) {
	ctx, cancel := callCtx(ctx)
	defer cancel()
	ids := map[string]string{}
	for i, cli := range r.clis {
		st, err := cli.Status(ctx, r.eps[i])
		if err != nil {
			return nil, fmt.Errorf("%s: %w", r.eps[i], err)
		}
		ids[r.eps[i]] = fmt.Sprintf("%x", st.Header.MemberId)
	}
	return ids, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}
