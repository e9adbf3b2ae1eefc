package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/roster-dev/roster/registry"
	"github.com/roster-dev/roster/registry/client"
)

// eventTimeout bounds the wait for a killed event (kill-latency).
const eventTimeout = 30 * time.Second

// streamWorkers is how many event streams or watches open at once.
const streamWorkers = 16

// apiSession is a session the run opened.
type apiSession struct {
	id, token, user string
}

func (b *bench) openRequest(user, module string) registry.OpenRequest {
	return registry.OpenRequest{
		Tenant: b.f.tenant, User: user, Module: module, Pool: b.f.pool, Host: benchHost,
		TTLSeconds: int64(b.f.ttl / time.Second),
	}
}

// openSession opens one session through c: one POST /v1/sessions.
func (b *bench) openSession(ctx context.Context, c *client.Client, req registry.OpenRequest) (apiSession, error) {
	data, err := c.Do(ctx, http.MethodPost, "/v1/sessions", nil, req)
	if err != nil {
		return apiSession{}, err
	}
	var s registry.OpenedSession
	if err := json.Unmarshal(data, &s); err != nil || s.ID == "" || s.Token == "" {
		return apiSession{}, &codeError{codeBadAnswer, fmt.Sprintf("POST /v1/sessions answered %.200q", data)}
	}
	return apiSession{id: s.ID, token: s.Token, user: req.User}, nil
}

// setupAttempts bounds the tries of one set-up call (see trySetup).
const setupAttempts = 5

// trySetup runs fn, one call of a workload's set-up, and tries it again
// after an error that again says may pass, setupAttempts times in all,
// after 1, 2, 4, 8 s (etcd stalls for over ten seconds on a loaded machine
// now and then), so that such a stall costs the set-up time, not the whole
// run. fn gets the number of its try; tried counts the calls tried again.
func trySetup(ctx context.Context, tried *atomic.Int64, again func(error) bool, fn func(attempt int) error) error {
	for attempt := 1; ; attempt++ {
		err := fn(attempt)
		if err == nil || attempt == setupAttempts || !again(err) || ctx.Err() != nil {
			return err
		}
		tried.Add(1)
		select {
		case <-ctx.Done():
			return err
		case <-time.After(time.Second << (attempt - 1)):
		}
	}
}

// openSetup opens one session of a workload's set-up through c, trying
// again (trySetup) an open that fails as unavailable (a node or etcd too
// slow to answer in time, as on a loaded machine opening 100,000 sessions,
// or a failover). The failed try may have made the session after all: a
// later try that meets already_logged_in logs out the user's sessions in
// the module (the run's users are its own) and opens again, so that no
// session of the run is left unknown.
func (b *bench) openSetup(ctx context.Context, c *client.Client, req registry.OpenRequest) (apiSession, error) {
	var s apiSession
	err := trySetup(ctx, &b.setupRetries, func(err error) bool { return errors.Is(err, client.ErrUnavailable) }, func(attempt int) error {
		var err error
		s, err = b.openSession(ctx, c, req)
		if attempt > 1 && errors.Is(err, client.ErrAlreadyLoggedIn) {
			if err := b.closeUserSessions(ctx, c, req); err != nil {
				return err
			}
			s, err = b.openSession(ctx, c, req)
		}
		return err
	})
	return s, err
}

// closeUserSessions logs out the sessions of req's user in req's module.
func (b *bench) closeUserSessions(ctx context.Context, c *client.Client, req registry.OpenRequest) error {
	q := url.Values{"user": {req.User}, "module": {req.Module}}
	if req.Tenant != "" {
		q.Set("tenant", req.Tenant)
	}
	data, err := c.Do(ctx, http.MethodGet, "/v1/sessions", q, nil)
	if err != nil {
		return err
	}
	var page registry.SessionPage
	if err := json.Unmarshal(data, &page); err != nil {
		return &codeError{codeBadAnswer, "GET /v1/sessions: " + err.Error()}
	}
	for _, s := range page.Sessions {
		if _, err := c.CloseSession(ctx, s.ID, ""); err != nil && !isGone(err) {
			return err
		}
	}
	return nil
}

// openMany opens n sessions for a workload's set-up, setupWorkers at a
// time, spread over the endpoints, each with openSetup; req(i) is the i-th
// one's request. On an error it closes those it opened.
func (b *bench) openMany(ctx context.Context, n int, req func(i int) registry.OpenRequest) ([]apiSession, error) {
	out := make([]apiSession, n)
	err := b.parallel(ctx, "opening "+groupDigits(int64(n))+" sessions", n, setupWorkers, func(ctx context.Context, i int) error {
		s, err := b.openSetup(ctx, b.api[i%len(b.api)], req(i))
		out[i] = s
		return err
	})
	if err != nil {
		b.closeSessions(ctx, out, true)
		return nil, fmt.Errorf("bench %s: set-up: %w", b.wl, err)
	}
	return out, nil
}

// closeSessions logs out the sessions of ss (untimed clean-up), unless
// --keep and not force. A session that has ended already is fine.
func (b *bench) closeSessions(ctx context.Context, ss []apiSession, force bool) {
	var live []apiSession
	for _, s := range ss {
		if s.id != "" {
			live = append(live, s)
		}
	}
	if len(live) == 0 {
		return
	}
	if b.f.keep && !force {
		fmt.Fprintf(b.stderr, "roster: bench: --keep: left %s sessions open; they expire %s after their last heartbeat\n", groupDigits(int64(len(live))), b.f.ttl)
		return
	}
	ctx, cancel := cleanupCtx(ctx)
	defer cancel()
	b.bestEffort(ctx, "closing "+groupDigits(int64(len(live)))+" sessions", len(live), func(ctx context.Context, i int) error {
		_, err := b.api[i%len(b.api)].CloseSession(ctx, live[i].id, "")
		if isGone(err) {
			return nil
		}
		return err
	})
}

// isGone reports whether err says a session has ended or is unknown.
func isGone(err error) bool {
	_, ended := errors.AsType[*client.EndedError](err)
	return ended || errors.Is(err, client.ErrNotFound)
}

// grantMany grants n leases for a baseline's set-up, each with a key
// (key(i)) when key is not nil.
func (b *bench) grantMany(ctx context.Context, n int, key func(i int) string) ([]clientv3.LeaseID, error) {
	out := make([]clientv3.LeaseID, n)
	err := b.parallel(ctx, "raw etcd: granting "+groupDigits(int64(n))+" leases", n, setupWorkers, func(ctx context.Context, i int) error {
		return rawSetup(ctx, &b.setupRetries, func() error {
			var err error
			if key != nil {
				out[i], err = b.raw.grantKey(ctx, i, key(i))
			} else {
				out[i], err = b.raw.grant(ctx, i)
			}
			return err
		})
	})
	if err != nil {
		b.revokeLeases(ctx, out)
		return nil, fmt.Errorf("bench %s: raw etcd set-up: %w", b.wl, err)
	}
	return out, nil
}

// revokeLeases revokes the leases of ids (untimed clean-up); 0 is none.
func (b *bench) revokeLeases(ctx context.Context, ids []clientv3.LeaseID) {
	var live []clientv3.LeaseID
	for _, id := range ids {
		if id != 0 {
			live = append(live, id)
		}
	}
	if len(live) == 0 {
		return
	}
	ctx, cancel := cleanupCtx(ctx)
	defer cancel()
	b.bestEffort(ctx, "raw etcd: revoking "+groupDigits(int64(len(live)))+" leases", len(live), func(ctx context.Context, i int) error {
		err := b.raw.revoke(ctx, i, live[i])
		if err != nil && etcdErrorCode(err) == "etcd_not_found" {
			return nil
		}
		return err
	})
}

// rawCleanup deletes every key the baseline wrote.
func (b *bench) rawCleanup(ctx context.Context) {
	if b.raw == nil {
		return
	}
	ctx, cancel := cleanupCtx(ctx)
	defer cancel()
	if err := b.raw.cleanup(ctx); err != nil {
		fmt.Fprintf(b.stderr, "roster: bench: raw etcd: deleting %s: %v\n", b.raw.prefix, err)
	}
}

// streams holds one long-lived keepalive stream per worker; each worker
// uses only its own, so no lock is needed.
type streams struct {
	b   *bench
	ctx context.Context
	s   []*keepAliveStream
}

// openStreams opens one keepalive stream per worker, worker w's through
// etcd endpoint w mod the endpoints, before a load starts.
func (b *bench) openStreams(ctx context.Context) (*streams, error) {
	st := &streams{b: b, ctx: ctx, s: make([]*keepAliveStream, b.f.clients)}
	for w := range st.s {
		ka, err := b.raw.openKeepAlive(ctx, w)
		if err != nil {
			st.close()
			return nil, fmt.Errorf("bench %s: raw etcd: open a keepalive stream: %w", b.wl, err)
		}
		st.s[w] = ka
	}
	return st, nil
}

// get returns worker w's stream, opening a new one after a failure.
func (st *streams) get(w int) (*keepAliveStream, error) {
	if st.s[w] == nil {
		ka, err := st.b.raw.openKeepAlive(st.ctx, w)
		if err != nil {
			return nil, err
		}
		st.s[w] = ka
	}
	return st.s[w], nil
}

// failed drops worker w's stream after err, unless err is a lease's own
// answer (the stream is fine then).
func (st *streams) failed(w int, err error) {
	if _, ok := errors.AsType[*codeError](err); ok || err == nil || st.s[w] == nil {
		return
	}
	st.s[w].close()
	st.s[w] = nil
}

func (st *streams) close() {
	for _, ka := range st.s {
		if ka != nil {
			ka.close()
		}
	}
}

// runOpen: concurrent opens of distinct users; raw: Grant + Txn.
func (b *bench) runOpen(ctx context.Context) ([]benchResult, error) {
	ours := func(ctx context.Context, round int) (map[string]*sample, error) {
		var mu sync.Mutex
		var opened []apiSession
		s := b.runLoad(ctx, b.timedLoad(b.what("", "roster", round), apiErrorCode), func(ctx context.Context, w int, _ int64) opResult {
			sess, err := b.openSession(ctx, b.api[w%len(b.api)], b.openRequest(b.newUser(), b.f.module))
			if err == nil {
				mu.Lock()
				opened = append(opened, sess)
				mu.Unlock()
			}
			return opResult{err: err}
		})
		b.closeSessions(ctx, opened, false)
		return s, nil
	}
	raw := func(ctx context.Context, round int) (map[string]*sample, error) {
		var mu sync.Mutex
		var leases []clientv3.LeaseID
		s := b.runLoad(ctx, b.timedLoad(b.what("", "etcd", round), etcdErrorCode), func(ctx context.Context, w int, _ int64) opResult {
			id, err := b.raw.open(ctx, w, b.newUser(), b.f.module)
			if err == nil {
				mu.Lock()
				leases = append(leases, id)
				mu.Unlock()
			}
			return opResult{err: err}
		})
		b.revokeLeases(ctx, leases)
		return s, nil
	}
	ours1, raw1, err := b.rounds(ctx, ours, b.rawRounds(raw))
	b.rawCleanup(ctx)
	spec := resultSpec{workload: wlOpen, unit: "ops/s", ratioOf: ratioThroughput,
		latency: "one open (POST /v1/sessions)", rawLatency: "Grant + Txn"}
	return summarize(spec, []string{""}, ours1, raw1), err
}

// runHeartbeat: --sessions sessions heartbeated in turn by --clients
// workers with their own tokens; raw: renewals on long-lived keepalive
// streams, one per worker.
func (b *bench) runHeartbeat(ctx context.Context) ([]benchResult, error) {
	n := b.f.sessions
	sessions, err := b.openMany(ctx, n, func(int) registry.OpenRequest { return b.openRequest(b.newUser(), b.f.module) })
	if err != nil {
		return nil, err
	}
	defer b.closeSessions(ctx, sessions, false)
	var leases []clientv3.LeaseID
	if b.f.baseline != "" {
		if leases, err = b.grantMany(ctx, n, nil); err != nil {
			return nil, err
		}
		defer b.rawCleanup(ctx)
		defer b.revokeLeases(ctx, leases)
	}
	var next atomic.Int64 // across rounds, so that every session gets its turn
	ours := func(ctx context.Context, round int) (map[string]*sample, error) {
		return b.runLoad(ctx, b.timedLoad(b.what("", "roster", round), apiErrorCode), func(ctx context.Context, w int, _ int64) opResult {
			s := sessions[(next.Add(1)-1)%int64(n)]
			_, err := b.api[w%len(b.api)].Heartbeat(ctx, s.id, s.token)
			return opResult{err: err}
		}), nil
	}
	var rawNext atomic.Int64
	raw := func(ctx context.Context, round int) (map[string]*sample, error) {
		st, err := b.openStreams(ctx)
		if err != nil {
			return nil, err
		}
		defer st.close()
		return b.runLoad(ctx, b.timedLoad(b.what("", "etcd", round), etcdErrorCode), func(ctx context.Context, w int, _ int64) opResult {
			ka, err := st.get(w)
			if err == nil {
				err = ka.renew(leases[(rawNext.Add(1)-1)%int64(n)])
				st.failed(w, err)
			}
			return opResult{err: err}
		}), nil
	}
	ours1, raw1, err := b.rounds(ctx, ours, b.rawRounds(raw))
	spec := resultSpec{workload: wlHeartbeat, unit: "ops/s", ratioOf: ratioThroughput,
		latency: "one heartbeat (POST /v1/sessions/{id}/heartbeat)", rawLatency: "one renewal on a keepalive stream"}
	return summarize(spec, []string{""}, ours1, raw1), err
}

// runBatch: a shared connection with --sessions sessions opened through it,
// renewed in batches of --batch-size; raw: each batch's renewals
// pipelined on one keepalive stream.
func (b *bench) runBatch(ctx context.Context) ([]benchResult, error) {
	n := b.f.sessions
	tenant := b.f.tenant
	if tenant == "" {
		tenant = registry.DefaultTenant
	}
	service := "bench-" + b.runID
	user := "bench-" + b.runID + "-app"
	admin := b.api[0]
	if _, err := admin.PutUser(ctx, tenant, user, registry.UserSpec{Rights: []registry.Right{registry.RightMultiLogin}, Services: []string{service}}); err != nil {
		return nil, fmt.Errorf("bench %s: set-up: add user %s/%s with service %s: %w", b.wl, tenant, user, service, err)
	}
	defer func() {
		ctx, cancel := cleanupCtx(ctx)
		defer cancel()
		if err := admin.DeleteUser(ctx, tenant, user); err != nil {
			fmt.Fprintf(b.stderr, "roster: bench: delete user %s/%s: %v\n", tenant, user, err)
		}
	}()
	conn, err := admin.RegisterConnection(ctx, registry.ConnectionRequest{Service: service, Host: benchHost, TTLSeconds: int64(b.f.ttl / time.Second)})
	if err != nil {
		return nil, fmt.Errorf("bench %s: set-up: register a shared connection: %w", b.wl, err)
	}
	defer func() {
		if b.f.keep {
			return // its sessions stay: the connection expires with its TTL
		}
		ctx, cancel := cleanupCtx(ctx)
		defer cancel()
		if _, err := admin.Do(ctx, http.MethodDelete, "/v1/connections/"+url.PathEscape(conn.ID), nil, nil); err != nil {
			fmt.Fprintf(b.stderr, "roster: bench: delete connection %s: %v\n", conn.ID, err)
		}
	}()
	sessions, err := b.openMany(ctx, n, func(int) registry.OpenRequest {
		req := b.openRequest(user, b.f.module)
		req.Connections = []string{conn.ID}
		return req
	})
	if err != nil {
		return nil, err
	}
	defer b.closeSessions(ctx, sessions, false)
	var batches [][]string
	for chunk := range slices.Chunk(sessions, b.f.batchSize) {
		ids := make([]string, len(chunk))
		for i, s := range chunk {
			ids[i] = s.id
		}
		batches = append(batches, ids)
	}
	var leaseBatches [][]clientv3.LeaseID
	if b.f.baseline != "" {
		leases, err := b.grantMany(ctx, n, nil)
		if err != nil {
			return nil, err
		}
		defer b.rawCleanup(ctx)
		defer b.revokeLeases(ctx, leases)
		leaseBatches = slices.Collect(slices.Chunk(leases, b.f.batchSize))
	}
	var next atomic.Int64
	batchLoad := func(side string, round int, classify func(error) string) load {
		l := b.timedLoad(b.what("", side, round), classify)
		l.items = "sessions renewed"
		return l
	}
	ours := func(ctx context.Context, round int) (map[string]*sample, error) {
		return b.runLoad(ctx, batchLoad("roster", round, apiErrorCode), func(ctx context.Context, w int, _ int64) opResult {
			batch := batches[(next.Add(1)-1)%int64(len(batches))]
			res, err := b.api[w%len(b.api)].HeartbeatBatch(ctx, registry.BatchHeartbeatRequest{Connection: conn.ID, Sessions: batch})
			if err != nil {
				return opResult{err: err}
			}
			r := opResult{items: res.Renewed}
			for _, s := range res.Results {
				if s.Error != nil {
					if r.itemErrs == nil {
						r.itemErrs = map[string]int{}
					}
					r.itemErrs[s.Error.Code]++
				}
			}
			return r
		}), nil
	}
	var rawNext atomic.Int64
	raw := func(ctx context.Context, round int) (map[string]*sample, error) {
		st, err := b.openStreams(ctx)
		if err != nil {
			return nil, err
		}
		defer st.close()
		return b.runLoad(ctx, batchLoad("etcd", round, etcdErrorCode), func(ctx context.Context, w int, _ int64) opResult {
			ka, err := st.get(w)
			if err != nil {
				return opResult{err: err}
			}
			renewed, failed, err := ka.renewAll(leaseBatches[(rawNext.Add(1)-1)%int64(len(leaseBatches))])
			st.failed(w, err)
			return opResult{err: err, items: renewed, itemErrs: failed}
		}), nil
	}
	ours1, raw1, err := b.rounds(ctx, ours, b.rawRounds(raw))
	spec := resultSpec{workload: wlBatch, unit: "sessions/s", perItem: true, ratioOf: ratioThroughput,
		latency: fmt.Sprintf("one call of up to %d sessions (POST /v1/heartbeats)", b.f.batchSize), rawLatency: "its renewals pipelined on one keepalive stream"}
	return summarize(spec, []string{""}, ours1, raw1), err
}

// runKill: each session followed by its event stream and killed through
// another endpoint; raw: each key watched and its lease revoked through
// another endpoint.
func (b *bench) runKill(ctx context.Context) ([]benchResult, error) {
	n := b.f.sessions
	b.noteSpread(ctx)
	ours := func(ctx context.Context, round int) (map[string]*sample, error) {
		sessions, err := b.openMany(ctx, n, func(int) registry.OpenRequest { return b.openRequest(b.newUser(), b.f.module) })
		if err != nil {
			return nil, err
		}
		killed := make([]bool, n)
		defer func() {
			var left []apiSession
			for i, s := range sessions {
				if !killed[i] {
					left = append(left, s)
				}
			}
			b.closeSessions(ctx, left, true)
		}()
		sctx, cancel := context.WithCancel(ctx)
		var readers sync.WaitGroup
		defer readers.Wait()
		defer cancel()
		arrived := make([]chan time.Time, n)
		err = b.parallel(ctx, "opening "+groupDigits(int64(n))+" event streams", n, streamWorkers, func(_ context.Context, i int) error {
			arrived[i] = make(chan time.Time, 1)
			st, err := b.one[i%len(b.one)].SessionEvents(sctx, sessions[i].id, sessions[i].token, 0)
			if err != nil {
				return fmt.Errorf("the event stream of %s at %s: %w", sessions[i].id, b.eps[i%len(b.eps)], err)
			}
			readers.Go(func() {
				defer st.Close()
				for e := range st.Events() {
					if e.Type == registry.EventKilled {
						select {
						case arrived[i] <- time.Now():
						default:
						}
					}
				}
			})
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("bench %s: set-up: %w", b.wl, err)
		}
		l := load{what: b.what("", "roster", round), clients: b.f.clients, total: int64(n), classify: apiErrorCode}
		return b.runLoad(ctx, l, func(ctx context.Context, _ int, seq int64) opResult {
			i := int(seq)
			sent := time.Now()
			_, err := b.one[(i+1)%len(b.one)].Kill(ctx, sessions[i].id, "roster bench")
			if err != nil {
				return opResult{err: err}
			}
			killed[i] = true
			return awaitArrival(ctx, arrived[i], sent, "killed event of session "+sessions[i].id)
		}), nil
	}
	raw := func(ctx context.Context, round int) (map[string]*sample, error) {
		key := func(i int) string { return b.raw.prefix + "kill/" + strconv.Itoa(round) + "/" + strconv.Itoa(i) }
		leases, err := b.grantMany(ctx, n, key)
		if err != nil {
			return nil, err
		}
		revoked := make([]bool, n)
		defer func() {
			var left []clientv3.LeaseID
			for i, id := range leases {
				if !revoked[i] {
					left = append(left, id)
				}
			}
			b.revokeLeases(ctx, left)
		}()
		wctx, cancel := context.WithCancel(ctx)
		var readers sync.WaitGroup
		defer readers.Wait()
		defer cancel()
		arrived := make([]chan time.Time, n)
		err = b.parallel(ctx, "raw etcd: opening "+groupDigits(int64(n))+" watches", n, streamWorkers, func(ctx context.Context, i int) error {
			arrived[i] = make(chan time.Time, 1)
			wch := b.raw.cli(i).Watch(wctx, key(i), clientv3.WithCreatedNotify())
			select {
			case first, ok := <-wch:
				if !ok || first.Err() != nil {
					return fmt.Errorf("watch %s: %v", key(i), first.Err())
				}
			case <-wctx.Done():
				return wctx.Err()
			}
			readers.Go(func() {
				for resp := range wch {
					for _, ev := range resp.Events {
						if ev.Type == mvccpb.DELETE {
							select {
							case arrived[i] <- time.Now():
							default:
							}
						}
					}
				}
			})
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("bench %s: raw etcd set-up: %w", b.wl, err)
		}
		l := load{what: b.what("", "etcd", round), clients: b.f.clients, total: int64(n), classify: etcdErrorCode}
		return b.runLoad(ctx, l, func(ctx context.Context, _ int, seq int64) opResult {
			i := int(seq)
			sent := time.Now()
			if err := b.raw.revoke(ctx, i+1, leases[i]); err != nil {
				return opResult{err: err}
			}
			revoked[i] = true
			return awaitArrival(ctx, arrived[i], sent, "delete event of "+key(i))
		}), nil
	}
	ours1, raw1, err := b.rounds(ctx, ours, b.rawRounds(raw))
	b.rawCleanup(ctx)
	spec := resultSpec{workload: wlKill, unit: "kills/s", ratioOf: ratioP50,
		latency:    "kill sent -> killed event received on the session's stream (streams and kills on different endpoints when there are several)",
		rawLatency: "Revoke -> the key's delete event on a watch"}
	return summarize(spec, []string{""}, ours1, raw1), err
}

// awaitArrival waits for the arrival time of an event on ch and returns
// the time from sent to it as the latency.
func awaitArrival(ctx context.Context, ch <-chan time.Time, sent time.Time, what string) opResult {
	t := time.NewTimer(eventTimeout)
	defer t.Stop()
	select {
	case at := <-ch:
		return opResult{lat: max(at.Sub(sent), time.Nanosecond)}
	case <-t.C:
		return opResult{err: &codeError{codeNoEvent, fmt.Sprintf("no %s within %s", what, eventTimeout)}}
	case <-ctx.Done():
		return opResult{err: ctx.Err()}
	}
}

// noteSpread notes on stderr when the cluster has more nodes than
// --endpoints names, since kill-latency spreads over the endpoints given.
func (b *bench) noteSpread(ctx context.Context) {
	ms, err := b.members(ctx)
	if err != nil {
		return
	}
	nodes := 0
	for _, m := range ms {
		if m.APIURL != "" && m.Healthy {
			nodes++
		}
	}
	if nodes > len(b.eps) {
		fmt.Fprintf(b.stderr, "roster: bench: note: the cluster has %d healthy nodes and --endpoints names %d; streams and kills are spread over the endpoints given: name every node to spread them over all\n",
			nodes, len(b.eps))
	}
}

// runExpiry: sessions heartbeated once and left; raw: leases renewed once
// and left. Latency: from the last renewal's answer to gone.
func (b *bench) runExpiry(ctx context.Context) ([]benchResult, error) {
	n := b.f.sessions
	if b.f.leaderChange {
		voters, _, err := b.raw.members(ctx)
		if err != nil {
			return nil, fmt.Errorf("--leader-change: %w", err)
		}
		if len(voters) < 2 {
			return nil, fmt.Errorf("--leader-change: the etcd cluster has %d voting member(s); moving the leader needs at least 2", len(voters))
		}
	}
	ours := func(ctx context.Context, round int) (map[string]*sample, error) {
		// The end events come on a stream opened before the sessions, on the last
		// endpoint (another node than the first's, which most sessions heartbeat).
		sessions := make([]apiSession, n)
		var index sync.Map // session id -> its index in sessions
		sctx, cancelStream := context.WithCancel(ctx)
		defer cancelStream()
		stream, err := b.api[len(b.api)-1].Events(sctx, registry.EventFilter{Tenant: b.f.tenant, Module: b.f.module}, 0)
		if err != nil {
			return nil, fmt.Errorf("bench %s: set-up: open the event stream: %w", b.wl, err)
		}
		// Room for every session's end: the reader stamps each end as it comes and
		// must never wait for awaitEnds, whose confirmations of earlier ends can
		// take seconds (with 1,024 the stamps of a storm's later ends were taken
		// only as the confirmations made room, seconds after the ends came).
		ends := make(chan goneAt, n)
		go func() {
			defer close(ends)
			for ev := range stream.Events() {
				if i, ok := index.Load(ev.Session.ID); ok && isEndEvent(ev.Type) {
					ends <- goneAt{i: i.(int), at: time.Now()}
				}
			}
		}()
		last := make([]time.Time, n)
		err = b.keptWhileMade(ctx, "opening "+groupDigits(int64(n))+" sessions", n, b.f.ttl, func(ctx context.Context, i int) error {
			s, err := b.openSetup(ctx, b.api[i%len(b.api)], b.openRequest(b.newUser(), b.f.module))
			sessions[i] = s
			if err == nil {
				index.Store(s.id, i)
			}
			return err
		}, func(ctx context.Context, i int) error {
			_, err := b.api[i%len(b.api)].Heartbeat(ctx, sessions[i].id, sessions[i].token)
			return err
		}, "heartbeating each session once", func(ctx context.Context, i int) error {
			_, err := b.api[i%len(b.api)].Heartbeat(ctx, sessions[i].id, sessions[i].token)
			last[i] = time.Now()
			return err
		})
		if err != nil {
			b.closeSessions(ctx, sessions, true)
			return nil, fmt.Errorf("bench %s: set-up: %w", b.wl, err)
		}
		s, gone, err := b.awaitEnds(ctx, b.what("", "roster", round), last, ends, apiErrorCode, func(ctx context.Context, i int, give time.Time) error {
			// Gone by its event: then GET must say so and a listing must not show it,
			// through the endpoint the session heartbeated, by give (a node may apply
			// the end a moment after another).
			c := b.api[i%len(b.api)]
			for {
				_, err := c.Get(ctx, sessions[i].id)
				if err != nil && !isGone(err) {
					return err
				}
				if err != nil {
					page, err := c.List(ctx, registry.ListFilter{Tenant: b.f.tenant, User: sessions[i].user, Module: b.f.module, Limit: 1})
					if err != nil {
						return err
					}
					if page.Total == 0 {
						return nil
					}
				}
				if time.Now().After(give) {
					return &codeError{codeStillListed, fmt.Sprintf("session %s still answers GET or is listed more than %s after its end event", sessions[i].id, confirmWithin)}
				}
				time.Sleep(20 * time.Millisecond)
			}
		})
		cancelStream()
		var left []apiSession
		for i, g := range gone {
			if !g {
				left = append(left, sessions[i])
			}
		}
		b.closeSessions(ctx, left, true)
		return map[string]*sample{"": s}, err
	}
	raw := func(ctx context.Context, round int) (map[string]*sample, error) {
		key := func(i int) string { return b.raw.prefix + "expiry/" + strconv.Itoa(round) + "/" + strconv.Itoa(i) }
		// The deletions come on a watch from the revision before the grants.
		from, err := b.raw.cli(0).Get(ctx, key(0), clientv3.WithCountOnly())
		if err != nil {
			return nil, fmt.Errorf("bench %s: raw etcd set-up: %w", b.wl, err)
		}
		wctx, cancelWatch := context.WithCancel(ctx)
		defer cancelWatch()
		dir := b.raw.prefix + "expiry/" + strconv.Itoa(round) + "/"
		wch := b.raw.cli(0).Watch(wctx, dir, clientv3.WithPrefix(), clientv3.WithFilterPut(), clientv3.WithRev(from.Header.Revision+1))
		ends := make(chan goneAt, n) // room for every key's end, as for Roster's
		go func() {
			defer close(ends)
			for resp := range wch {
				at := time.Now()
				for _, ev := range resp.Events {
					if i, err := strconv.Atoi(strings.TrimPrefix(string(ev.Kv.Key), dir)); err == nil && i >= 0 && i < n {
						ends <- goneAt{i: i, at: at}
					}
				}
			}
		}()
		leases := make([]clientv3.LeaseID, n)
		last := make([]time.Time, n)
		renew := func(ctx context.Context, i int) error {
			ctx, cancel := callCtx(ctx)
			defer cancel()
			_, err := b.raw.cli(i).KeepAliveOnce(ctx, leases[i])
			return err
		}
		err = b.keptWhileMade(ctx, "raw etcd: granting "+groupDigits(int64(n))+" leases", n, b.f.ttl, func(ctx context.Context, i int) error {
			return rawSetup(ctx, &b.setupRetries, func() error {
				var err error
				leases[i], err = b.raw.grantKey(ctx, i, key(i))
				return err
			})
		}, renew, "raw etcd: renewing each lease once", func(ctx context.Context, i int) error {
			err := renew(ctx, i)
			last[i] = time.Now()
			return err
		})
		if err != nil {
			b.revokeLeases(ctx, leases)
			return nil, fmt.Errorf("bench %s: raw etcd set-up: %w", b.wl, err)
		}
		s, gone, err := b.awaitEnds(ctx, b.what("", "etcd", round), last, ends, etcdErrorCode, nil)
		cancelWatch()
		for i, g := range gone {
			if g {
				leases[i] = 0
			}
		}
		b.revokeLeases(ctx, leases)
		return map[string]*sample{"": s}, err
	}
	ours1, raw1, err := b.rounds(ctx, ours, b.rawRounds(raw))
	b.rawCleanup(ctx)
	spec := resultSpec{workload: wlExpiry, ratioOf: ratioP50,
		latency:    fmt.Sprintf("the last heartbeat's answer -> the session's end event on a stream (once every session has ended, GET must answer 410 or 404 and no listing show it, within %s of its end event or at the first check after it: else still_listed), TTL %s", confirmWithin, b.f.ttl),
		rawLatency: "the last renewal's answer -> the lease's key's delete event on a watch"}
	return summarize(spec, []string{""}, ours1, raw1), err
}

// isEndEvent reports whether an event of type t is a session's end.
func isEndEvent(t registry.EventType) bool {
	switch t {
	case registry.EventClosed, registry.EventKilled, registry.EventExpired, registry.EventShutdown, registry.EventIdle, registry.EventCleanup:
		return true
	}
	return false
}

// goneAt says that item i was seen gone at at.
type goneAt struct {
	i  int
	at time.Time
}

// confirmWithin bounds how long after a session's end event GET and a
// listing may still show it before the expiry workload counts it as
// still_listed; a check made later than that must find it gone at once.
const confirmWithin = 5 * time.Second

// awaitEnds takes the items' ends from ends, as they come, and records for
// each the time from its last renewal (last[i]) to its end. An item not
// ended 3 TTLs plus 30 s after its last renewal counts as not_gone. With
// --leader-change the etcd leader is moved half a TTL after the first
// renewal. It returns the sample and which items went.
//
// confirm (nil: none) checks that an ended item is gone everywhere else too,
// retrying until give, or fails it (classify names the code). It is not
// timed, and it runs only once every item has ended or the wait is over:
// checking each end as it came, a GET and a listing per session, put 20,000
// requests on the nodes while they were still ending a storm of 10,000, work
// no storm of real dead clients brings. give is the item's end plus
// confirmWithin, or now for an item whose end is older than that (one check).
//
// Waiting for events rather than polling each item keeps the measuring from
// loading the nodes: 10,000 sessions polled twice a second each saturated a
// node.
func (b *bench) awaitEnds(ctx context.Context, what string, last []time.Time, ends <-chan goneAt, classify func(error) string,
	confirm func(ctx context.Context, i int, give time.Time) error) (*sample, []bool, error) {
	ttl := b.f.ttl
	s := newSample()
	gone := make([]bool, len(last))
	var mu sync.Mutex
	var ended, confirmed atomic.Int64
	var confirming atomic.Bool
	first := slices.MinFunc(last, func(a, b time.Time) int { return a.Compare(b) })
	latest := slices.MaxFunc(last, func(a, b time.Time) int { return a.Compare(b) })
	stop := b.progress(func(time.Duration) string {
		if confirming.Load() {
			return fmt.Sprintf("%s: %d of %d gone; %d of them checked by GET and a listing", what, ended.Load(), len(last), confirmed.Load())
		}
		return fmt.Sprintf("%s: %d of %d gone, %s after the first's last heartbeat", what, ended.Load(), len(last), time.Since(first).Round(100*time.Millisecond))
	})
	defer stop()
	record := func(lat time.Duration, code string) {
		mu.Lock()
		defer mu.Unlock()
		s.record(lat, code)
	}
	latency := func(e goneAt) time.Duration { return max(e.at.Sub(last[e.i]), time.Nanosecond) }
	var wg sync.WaitGroup
	var moveErr error
	if b.f.leaderChange {
		wg.Go(func() {
			if !sleepUntil(ctx, first.Add(ttl/2)) {
				return
			}
			from, to, err := b.raw.moveLeader(ctx)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				moveErr = fmt.Errorf("--leader-change: %w", err)
				return
			}
			s.notes = append(s.notes, fmt.Sprintf("%s: etcd leader moved from %x to %x %s after the first session's last heartbeat",
				what, from, to, time.Since(first).Round(time.Millisecond)))
		})
	}
	deadline := time.NewTimer(time.Until(latest.Add(3*ttl + 30*time.Second)))
	defer deadline.Stop()
	var came []goneAt // the ends still to confirm
	left := len(last)
wait:
	for left > 0 {
		select {
		case <-ctx.Done():
			break wait
		case <-deadline.C:
			break wait
		case e, ok := <-ends:
			if !ok {
				break wait
			}
			if gone[e.i] {
				continue
			}
			gone[e.i], left = true, left-1
			ended.Add(1)
			if confirm == nil {
				record(latency(e), "")
				continue
			}
			came = append(came, e)
		}
	}
	wg.Wait()
	code := codeNotGone
	if ctx.Err() != nil {
		code = codeCanceled
	}
	for i, g := range gone {
		if !g {
			record(time.Since(last[i]), code)
		}
	}
	s.elapsed = time.Since(first)
	confirming.Store(true)
	sem := make(chan struct{}, setupWorkers)
	for _, e := range came {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			code := ""
			if err := confirm(context.WithoutCancel(ctx), e.i, e.at.Add(confirmWithin)); err != nil {
				code = classify(err)
			}
			confirmed.Add(1)
			record(latency(e), code)
		})
	}
	wg.Wait()
	return s, gone, moveErr
}

// sleepUntil waits until t or until ctx ends, and reports whether t came.
func sleepUntil(ctx context.Context, t time.Time) bool {
	timer := time.NewTimer(time.Until(t))
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-timer.C:
		return true
	}
}

// runList: pages of --page-size of --sessions live sessions, unfiltered
// and filtered by one of ten modules, each worker following next_cursor;
// raw: range reads of as many session-sized values.
func (b *bench) runList(ctx context.Context) ([]benchResult, error) {
	n := b.f.sessions
	module := func(i int) string { return b.f.module + "-" + strconv.Itoa(i%10) }
	sessions, err := b.openMany(ctx, n, func(i int) registry.OpenRequest { return b.openRequest(b.newUser(), module(i)) })
	if err != nil {
		return nil, err
	}
	defer b.closeSessions(ctx, sessions, false)
	if b.f.baseline != "" {
		lease, err := b.raw.putRecords(ctx, b, n)
		defer b.rawCleanup(ctx)
		if lease != 0 {
			defer b.revokeLeases(ctx, []clientv3.LeaseID{lease})
		}
		if err != nil {
			return nil, fmt.Errorf("bench %s: raw etcd set-up: %w", b.wl, err)
		}
	}
	filtered := url.Values{"module": {module(0)}}
	if b.f.tenant != "" {
		filtered.Set("tenant", b.f.tenant)
	}
	phases := []struct {
		name   string
		query  url.Values
		prefix func() string
	}{
		{"unfiltered", url.Values{}, func() string { return b.raw.listPrefix() }},
		{"filtered", filtered, func() string { return b.raw.listFiltered() }},
	}
	ours := func(ctx context.Context, round int) (map[string]*sample, error) {
		out := map[string]*sample{}
		for _, ph := range phases {
			cursors := make([]string, b.f.clients)
			out[ph.name] = b.runLoad(ctx, b.timedLoad(b.what(ph.name, "roster", round), apiErrorCode), func(ctx context.Context, w int, _ int64) opResult {
				q := url.Values{"limit": {strconv.Itoa(b.f.pageSize)}}
				for k, v := range ph.query {
					q[k] = v
				}
				if cursors[w] != "" {
					q.Set("cursor", cursors[w])
				}
				next, items, err := b.listPage(ctx, b.api[w%len(b.api)], q)
				cursors[w] = next
				return opResult{err: err, items: items}
			})[""]
			if ctx.Err() != nil {
				break
			}
		}
		return out, nil
	}
	raw := func(ctx context.Context, round int) (map[string]*sample, error) {
		out := map[string]*sample{}
		for _, ph := range phases {
			start := ph.prefix()
			end := clientv3.GetPrefixRangeEnd(start)
			cursors := make([]string, b.f.clients)
			out[ph.name] = b.runLoad(ctx, b.timedLoad(b.what(ph.name, "etcd", round), etcdErrorCode), func(ctx context.Context, w int, _ int64) opResult {
				from := cursors[w]
				if from == "" {
					from = start
				}
				next, err := b.raw.page(ctx, w, from, end, b.f.pageSize)
				cursors[w] = next
				return opResult{err: err}
			})[""]
			if ctx.Err() != nil {
				break
			}
		}
		return out, nil
	}
	ours1, raw1, err := b.rounds(ctx, ours, b.rawRounds(raw))
	spec := resultSpec{workload: wlList, unit: "pages/s", ratioOf: ratioThroughput,
		latency: fmt.Sprintf("one page of up to %d sessions (GET /v1/sessions)", b.f.pageSize), rawLatency: "a range read of as many session-sized values"}
	return summarize(spec, []string{"unfiltered", "filtered"}, ours1, raw1), err
}

// listPage gets one page of GET /v1/sessions and returns its next cursor
// ("" after the last page) and how many sessions it held.
func (b *bench) listPage(ctx context.Context, c *client.Client, q url.Values) (string, int, error) {
	data, err := c.Do(ctx, http.MethodGet, "/v1/sessions", q, nil)
	if err != nil {
		return "", 0, err
	}
	var page struct {
		Sessions   []json.RawMessage `json:"sessions"`
		NextCursor string            `json:"next_cursor"`
	}
	if err := json.Unmarshal(data, &page); err != nil {
		return "", 0, &codeError{codeBadAnswer, "GET /v1/sessions: " + err.Error()}
	}
	return page.NextCursor, len(page.Sessions), nil
}

// pool holds the live sessions (or leases) of the mixed workload. An
// operation takes its item out while it works on it.
type pool[T any] struct {
	mu    sync.Mutex
	items []T
}

func (p *pool[T]) add(x T) {
	p.mu.Lock()
	p.items = append(p.items, x)
	p.mu.Unlock()
}

// take removes a random item and returns it.
func (p *pool[T]) take(rng *rand.Rand) (T, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var zero T
	if len(p.items) == 0 {
		return zero, false
	}
	i := rng.IntN(len(p.items))
	x := p.items[i]
	p.items[i] = p.items[len(p.items)-1]
	p.items = p.items[:len(p.items)-1]
	return x, true
}

func (p *pool[T]) all() []T {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.items)
}

// chooser picks a mixed operation by the --mix weights.
func (b *bench) chooser() func(rng *rand.Rand) string {
	sum := 0
	for _, op := range mixOps {
		sum += b.f.weights[op]
	}
	return func(rng *rand.Rand) string {
		x := rng.IntN(sum)
		for _, op := range mixOps {
			if x < b.f.weights[op] {
				return op
			}
			x -= b.f.weights[op]
		}
		return mixOps[0]
	}
}

// rngs returns one random source per worker.
func (b *bench) rngs() []*rand.Rand {
	out := make([]*rand.Rand, b.f.clients)
	seed := uint64(time.Now().UnixNano())
	for w := range out {
		out[w] = rand.New(rand.NewPCG(seed, uint64(w)))
	}
	return out
}

// runMixed: opens, heartbeats, logouts and listings at once in the
// proportions of --mix, among --sessions sessions opened first (each
// round anew); a heartbeat or logout with no session free opens one.
func (b *bench) runMixed(ctx context.Context) ([]benchResult, error) {
	choose := b.chooser()
	listQuery := url.Values{"limit": {strconv.Itoa(b.f.pageSize)}, "module": {b.f.module}}
	if b.f.tenant != "" {
		listQuery.Set("tenant", b.f.tenant)
	}
	ours := func(ctx context.Context, round int) (map[string]*sample, error) {
		pre, err := b.openMany(ctx, b.f.sessions, func(int) registry.OpenRequest { return b.openRequest(b.newUser(), b.f.module) })
		if err != nil {
			return nil, err
		}
		live := &pool[apiSession]{items: pre}
		rngs := b.rngs()
		l := b.timedLoad(b.what("", "roster", round), apiErrorCode)
		l.all = true
		s := b.runLoad(ctx, l, func(ctx context.Context, w int, _ int64) opResult {
			c, rng := b.api[w%len(b.api)], rngs[w]
			switch op := choose(rng); op {
			case "heartbeat":
				// Taken out while in use, so that no logout races the heartbeat.
				if s, ok := live.take(rng); ok {
					_, err := c.Heartbeat(ctx, s.id, s.token)
					if !isGone(err) {
						live.add(s)
					}
					return opResult{phase: op, err: err}
				}
			case "close":
				if s, ok := live.take(rng); ok {
					_, err := c.CloseSession(ctx, s.id, s.token)
					return opResult{phase: op, err: err}
				}
			case "list":
				_, _, err := b.listPage(ctx, c, listQuery)
				return opResult{phase: op, err: err}
			}
			s, err := b.openSession(ctx, c, b.openRequest(b.newUser(), b.f.module))
			if err == nil {
				live.add(s)
			}
			return opResult{phase: "open", err: err}
		})
		b.closeSessions(ctx, live.all(), false)
		return s, nil
	}
	raw := func(ctx context.Context, round int) (map[string]*sample, error) {
		var pre []clientv3.LeaseID
		var mu sync.Mutex
		err := b.parallel(ctx, "raw etcd: opening "+groupDigits(int64(b.f.sessions))+" sessions", b.f.sessions, setupWorkers, func(ctx context.Context, i int) error {
			var id clientv3.LeaseID
			err := rawSetup(ctx, &b.setupRetries, func() error { // a new user each try: the lost try may hold the last
				var err error
				id, err = b.raw.open(ctx, i, b.newUser(), b.f.module)
				return err
			})
			if err == nil {
				mu.Lock()
				pre = append(pre, id)
				mu.Unlock()
			}
			return err
		})
		live := &pool[clientv3.LeaseID]{items: pre}
		defer func() { b.revokeLeases(ctx, live.all()) }()
		if err != nil {
			return nil, fmt.Errorf("bench %s: raw etcd set-up: %w", b.wl, err)
		}
		st, err := b.openStreams(ctx)
		if err != nil {
			return nil, err
		}
		defer st.close()
		rngs := b.rngs()
		start := b.raw.prefix + "sessions/"
		end := clientv3.GetPrefixRangeEnd(start)
		l := b.timedLoad(b.what("", "etcd", round), etcdErrorCode)
		l.all = true
		return b.runLoad(ctx, l, func(ctx context.Context, w int, _ int64) opResult {
			rng := rngs[w]
			switch op := choose(rng); op {
			case "heartbeat":
				if x, ok := live.take(rng); ok {
					ka, err := st.get(w)
					if err == nil {
						err = ka.renew(x)
						st.failed(w, err)
					}
					if err == nil || etcdErrorCode(err) != codeNotFound {
						live.add(x)
					}
					return opResult{phase: op, err: err}
				}
			case "close":
				if x, ok := live.take(rng); ok {
					return opResult{phase: op, err: b.raw.revoke(ctx, w, x)}
				}
			case "list":
				_, err := b.raw.page(ctx, w, start, end, b.f.pageSize)
				return opResult{phase: op, err: err}
			}
			id, err := b.raw.open(ctx, w, b.newUser(), b.f.module)
			if err == nil {
				live.add(id)
			}
			return opResult{phase: "open", err: err}
		}), nil
	}
	ours1, raw1, err := b.rounds(ctx, ours, b.rawRounds(raw))
	b.rawCleanup(ctx)
	phases := []string{"all"}
	for _, op := range mixOps {
		if b.f.weights[op] > 0 {
			phases = append(phases, op)
		}
	}
	spec := resultSpec{workload: wlMixed, unit: "ops/s", ratioOf: ratioThroughput, kindRatioOf: ratioP50,
		latency: "one operation of its kind (all: any)", rawLatency: "Grant + Txn, a renewal on a keepalive stream, Revoke, a range read"}
	return summarize(spec, phases, ours1, raw1), err
}
