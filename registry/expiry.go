package registry

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// watchSessions follows session deletions: it evicts each ended session
// from the cache and writes an "expired" tombstone for every session key
// that disappears without one, which is what happens when a lease runs
// out (logout and kill write their tombstone in the transaction that
// deletes the keys). It runs until ctx is cancelled and resumes a broken
// watch from the next revision, so no deletion is missed while etcd keeps
// it; past a compaction it empties the cache.
//
// The watch covers the tombstones too (the event streams' range, see
// eventRange), so an end that wrote its tombstone in the deleting
// transaction shows it in the deletion's own response and needs no read
// (see takeSessionWatch). That costs every node one event per open, since
// a watch filters puts only all or none; the read it saves was a round
// trip to this member per end on every node.
func (r *Registry) watchSessions(ctx context.Context) {
	var next int64
	for ctx.Err() == nil {
		if next == 0 {
			// Start from a known revision, so a restarted watch resumes
			// where this one began even before its first event.
			resp, err := r.cli.Get(ctx, sessionsPrefix, clientv3.WithCountOnly())
			if err == nil {
				next = resp.Header.Revision + 1
			}
		}
		from, to := eventRange()
		// No previous values: etcd would read each deleted record back for
		// every node's watch, one read transaction per event (copying the
		// member's write buffer under load), for every logout and kill
		// although only an expiry needs it; recordExpiries reads those.
		opts := []clientv3.OpOption{clientv3.WithRange(to)}
		if next > 0 {
			opts = append(opts, clientv3.WithRev(next))
		}
		wctx := clientv3.WithRequireLeader(ctx)
		r.watched.setStream(wctx)
		wch := r.cli.Watch(wctx, from, opts...)
		for resp := range wch {
			// The responses that come within expiryGather of this one are
			// taken together, so the tombstones of a storm of lease expiries
			// (one revision, and mostly one response, each) are written many
			// per transaction: taken one response at a time they came some 30
			// a second, and the end events of 9,000 expired sessions over two
			// minutes. A response without an expiry (an open, an end that
			// wrote its tombstone) waits for nothing.
			var ended []deletion
			done, progress := r.takeSessionWatch(resp, &ended, &next)
			closed := false
			var gather *time.Timer
			if !done && len(ended) > 0 {
				gather = time.NewTimer(expiryGather)
			}
		drain:
			for gather != nil && !done && len(ended) < expiryBatch*expiryWriters {
				select {
				case more, ok := <-wch:
					if !ok {
						closed = true
						break drain
					}
					var p int64
					done, p = r.takeSessionWatch(more, &ended, &next)
					progress = max(progress, p)
				case <-gather.C:
					break drain
				}
			}
			if gather != nil {
				gather.Stop()
			}
			r.recordExpiries(ctx, ended)
			if next > 0 {
				r.watched.advance(max(next-1, progress))
			}
			if done || closed {
				break
			}
		}
		r.watched.clearStream()
		select {
		case <-ctx.Done():
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// takeSessionWatch applies one response of the session watch: it evicts each
// deleted session from the cache at once, so none is served as live while the
// tombstones are written, appends the deletions to ended and moves next past
// them. A deletion whose tombstone was put at its revision (by the same
// transaction: the watch never splits a revision between responses) is no
// expiry and is left out; the other events of the range are skipped. It returns the revision a progress notification reports (0 if resp is
// none), and done when the watch must be set up again: it fell behind a
// compaction (next is then 0 and the cache emptied) or broke.
func (r *Registry) takeSessionWatch(resp clientv3.WatchResponse, ended *[]deletion, next *int64) (done bool, progress int64) {
	switch {
	case resp.IsProgressNotify():
		return false, resp.Header.Revision
	case resp.CompactRevision != 0:
		r.log.Warn("session watch fell behind compaction; expiries in between get no tombstone", "compact-revision", resp.CompactRevision)
		r.forgetAll()
		*next = 0
		return true, 0
	case resp.Err() != nil:
		r.log.Warn("session watch broke; resuming", "error", resp.Err())
		return true, 0
	}
	var tombed map[string]int64 // session id → revision its tombstone was created at
	var shutdowns []string      // the shutdown requests that ended sessions here
	for _, ev := range resp.Events {
		if key := string(ev.Kv.Key); ev.Type == mvccpb.PUT && strings.HasPrefix(key, tombstonesPrefix) {
			if tombed == nil {
				tombed = map[string]int64{}
			}
			tombed[key[len(tombstonesPrefix):]] = ev.Kv.ModRevision
			if id := tombstoneShutdownID(ev.Kv.Value); id != "" && !slices.Contains(shutdowns, id) {
				shutdowns = append(shutdowns, id)
			}
		}
	}
	r.noteShutdownEnds(shutdowns)
	for _, ev := range resp.Events {
		*next = ev.Kv.ModRevision + 1
		key := string(ev.Kv.Key)
		if ev.Type != mvccpb.DELETE || !strings.HasPrefix(key, sessionsPrefix) {
			continue
		}
		id := key[len(sessionsPrefix):]
		cached := r.cached(id)
		r.evict(id, ev.Kv.ModRevision)
		if rev, ok := tombed[id]; !ok || rev != ev.Kv.ModRevision {
			*ended = append(*ended, deletion{id, ev.Kv.ModRevision, cached})
		}
	}
	return false, 0
}

// watchProgress tracks the revision up to which the session watch has
// handled every deletion (and so written every expiry tombstone).
type watchProgress struct {
	mu     sync.Mutex
	rev    int64
	ch     chan struct{} // closed and replaced at every advance
	stream context.Context
}

func (w *watchProgress) advance(rev int64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if rev > w.rev {
		w.rev = rev
		close(w.ch)
		w.ch = make(chan struct{})
	}
}

// setStream records the context of the current watch stream, which
// progress requests must name.
func (w *watchProgress) setStream(ctx context.Context) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.stream = ctx
}

// clearStream says there is no watch stream to ask until the next one.
func (w *watchProgress) clearStream() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.stream = nil
}

// waitWatched waits, at most a second, until the session watch has
// handled every deletion up to rev, asking etcd for a progress
// notification so an idle watch catches up at once. It reports whether
// it got there.
func (r *Registry) waitWatched(ctx context.Context, rev int64) bool {
	timeout := time.NewTimer(time.Second)
	defer timeout.Stop()
	for {
		w := &r.watched
		w.mu.Lock()
		done, ch, stream := w.rev >= rev, w.ch, w.stream
		w.mu.Unlock()
		if done {
			return true
		}
		if stream != nil {
			_ = r.cli.RequestProgress(stream)
		}
		select {
		case <-ch:
		case <-timeout.C:
			return false
		case <-ctx.Done():
			return false
		}
	}
}

// expiryBatch is how many tombstones one transaction of recordExpiries
// writes, and expiryWriters how many such transactions run at once.
// expiryGather is how long the session watch waits for more deletions before
// it writes the tombstones of those it has.
const (
	expiryBatch   = maxTxnOps
	expiryWriters = 8
	expiryGather  = 10 * time.Millisecond
)

// recordExpiries writes an "expired" tombstone for each deleted session
// record in dels that has none: logout and kill wrote theirs in the
// transaction that deleted the keys, so a session without one ran out of
// lease. Each tombstone is put only if absent (every node's watch tries),
// up to expiryBatch in one transaction, expiryWriters transactions at once,
// so a storm of thousands of expiries takes a few round trips, not one each.
// A failed transaction is tried again until it works or ctx ends.
func (r *Registry) recordExpiries(ctx context.Context, dels []deletion) {
	if len(dels) == 0 {
		return
	}
	recs := r.expiredRecords(ctx, dels)
	at := time.Now().UTC().Truncate(time.Second)
	var tombs []tombstone
	for _, rec := range recs {
		tombs = append(tombs, tombstoneOf(rec, Ended{ID: rec.ID, Reason: EndExpired, By: "lease", At: at}))
	}
	sem := make(chan struct{}, expiryWriters)
	var wg sync.WaitGroup
	for len(tombs) > 0 {
		batch := tombs[:min(expiryBatch, len(tombs))]
		tombs = tombs[len(batch):]
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			// A lost tombstone is a lost end: the history and the event
			// streams learn of an expiry from it. Puts are create-only, so
			// trying again until it works never writes one twice.
			for attempt := 0; ; attempt++ {
				err := r.putTombstones(ctx, batch)
				if err == nil || ctx.Err() != nil {
					return
				}
				if attempt == 0 {
					r.log.Warn("write expiry tombstones failed; trying again until it works", "sessions", len(batch), "error", err)
				}
				select {
				case <-ctx.Done():
					return
				case <-time.After(500 * time.Millisecond):
				}
			}
		})
	}
	wg.Wait()
}

// deletion is session id's record deleted at revision rev; rec is the record
// as this node had it cached, nil if it had not.
type deletion struct {
	id  string
	rev int64
	rec *record
}

// expiredRecords returns the records of the deletions whose session had no
// tombstone at the deletion's revision: a logout, kill or other end writes it
// in the transaction that deletes the keys. It reads this member's store as
// of each deletion, the tombstone's count and, where the node had not cached
// it, the record as it was just before, for up to expiryBatch operations in
// one read, so a tombstone deleted since (its lease revoked) still counts. A
// read that fails is tried again until it works or ctx ends (the member may
// not have applied the deletion yet); where the revisions were compacted
// away, the cached records are kept (the create-only put decides) and the
// others get no tombstone, as expiries past a compaction of the watch do.
func (r *Registry) expiredRecords(ctx context.Context, dels []deletion) []*record {
	var out []*record
	for len(dels) > 0 {
		n, ops := 0, 0
		for n < len(dels) && ops+2 <= expiryBatch {
			ops++ // the tombstone's count
			if dels[n].rec == nil {
				ops++ // the record
			}
			n++
		}
		batch := dels[:n]
		dels = dels[n:]
		resp, err := r.readExpiries(ctx, batch)
		if err != nil {
			// Compacted: the cached records still get their tombstones, the
			// create-only put deciding as of now.
			lost := 0
			for _, d := range batch {
				if d.rec != nil {
					out = append(out, d.rec)
				} else {
					lost++
				}
			}
			if lost > 0 && ctx.Err() == nil {
				r.log.Warn("expired sessions get no tombstone: their records could not be read back", "sessions", lost, "error", err)
			}
			continue
		}
		i := 0
		for _, d := range batch {
			tombed := resp.Responses[i].GetResponseRange().Count > 0
			i++
			rec := d.rec
			if rec == nil {
				kvs := resp.Responses[i].GetResponseRange().Kvs
				i++
				if len(kvs) == 0 {
					continue // no record before the deletion: nothing to tell of
				}
				var err error
				if rec, err = decodeRecord(kvs[0]); err != nil {
					r.log.Warn("undecodable session record in expiry watch", "session", d.id, "error", err)
					continue
				}
			}
			if !tombed {
				out = append(out, rec)
			}
		}
	}
	return out
}

// readExpiries reads, for each deletion of batch, its session's tombstone
// count at the deletion's revision and, unless the deletion has the record,
// the record at the revision before, from this member in one transaction;
// it tries again until that works, ctx ends, or the revisions were compacted.
func (r *Registry) readExpiries(ctx context.Context, batch []deletion) (*clientv3.TxnResponse, error) {
	var ops []clientv3.Op
	for _, d := range batch {
		ops = append(ops, clientv3.OpGet(tombstoneKey(d.id), clientv3.WithRev(d.rev), clientv3.WithCountOnly(), clientv3.WithSerializable()))
		if d.rec == nil {
			ops = append(ops, clientv3.OpGet(sessionKey(d.id), clientv3.WithRev(d.rev-1), clientv3.WithSerializable()))
		}
	}
	wait := 50 * time.Millisecond
	for attempt := 0; ; attempt++ {
		cctx, cancel := r.opCtx(ctx)
		resp, err := r.cli.Txn(cctx).Then(ops...).Commit()
		cancel()
		if err == nil || errors.Is(err, rpctypes.ErrCompacted) || ctx.Err() != nil {
			return resp, err
		}
		if attempt == 0 {
			r.log.Debug("read expired sessions failed; trying again", "sessions", len(batch), "error", err)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(wait):
		}
		wait = min(2*wait, time.Second)
	}
}

// putTombstones puts each tombstone unless its session has one, in one
// transaction, on the shared tombstone lease (a fresh one if it ran out).
func (r *Registry) putTombstones(ctx context.Context, tombs []tombstone) error {
	cctx, cancel := r.opCtx(ctx)
	defer cancel()
	for attempt := 0; ; attempt++ {
		tl, err := r.tombstoneLease(cctx, attempt > 0)
		if err != nil {
			return err
		}
		ops := make([]clientv3.Op, len(tombs))
		for i := range tombs {
			key := tombstoneKey(tombs[i].ID)
			val, _ := json.Marshal(tombs[i])
			ops[i] = clientv3.OpTxn([]clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(key), "=", 0)},
				[]clientv3.Op{clientv3.OpPut(key, string(val), clientv3.WithLease(tl))}, nil)
		}
		_, err = r.cli.Txn(cctx).Then(ops...).Commit()
		if errors.Is(err, rpctypes.ErrLeaseNotFound) && attempt == 0 {
			continue
		}
		return err
	}
}
