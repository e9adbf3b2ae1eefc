package registry

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// watchSessions follows session deletions: it evicts each ended session
// from the cache and writes an "expired" tombstone for every session key
// that disappears without one, which is what happens when a lease runs
// out (logout and kill write their tombstone in the transaction that
// deletes the keys). It runs until ctx is cancelled and resumes a broken
// watch from the next revision, so no deletion is missed while etcd keeps
// it; past a compaction it empties the cache.
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
		opts := []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithPrevKV(), clientv3.WithFilterPut()}
		if next > 0 {
			opts = append(opts, clientv3.WithRev(next))
		}
		wctx := clientv3.WithRequireLeader(ctx)
		r.watched.setStream(wctx)
		wch := r.cli.Watch(wctx, sessionsPrefix, opts...)
		for resp := range wch {
			if resp.IsProgressNotify() {
				r.watched.advance(resp.Header.Revision)
				continue
			}
			if resp.CompactRevision != 0 {
				r.log.Warn("session watch fell behind compaction; expiries in between get no tombstone", "compact-revision", resp.CompactRevision)
				r.forgetAll()
				next = 0
				break
			}
			if err := resp.Err(); err != nil {
				r.log.Warn("session watch broke; resuming", "error", err)
				break
			}
			for _, ev := range resp.Events {
				r.evict(strings.TrimPrefix(string(ev.Kv.Key), sessionsPrefix), ev.Kv.ModRevision)
				if ev.PrevKv != nil {
					r.recordExpiry(ctx, ev.PrevKv)
				}
				next = ev.Kv.ModRevision + 1
			}
			r.watched.advance(next - 1)
		}
		r.watched.clearStream()
		select {
		case <-ctx.Done():
		case <-time.After(500 * time.Millisecond):
		}
	}
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

func (r *Registry) recordExpiry(ctx context.Context, prev *mvccpb.KeyValue) {
	rec, err := decodeRecord(prev)
	if err != nil {
		r.log.Warn("undecodable session record in expiry watch", "error", err)
		return
	}
	cctx, cancel := r.opCtx(ctx)
	defer cancel()
	// Logout and kill have written a tombstone already; a local read
	// spares them a second write.
	if resp, err := r.cli.Get(cctx, tombstoneKey(rec.ID), clientv3.WithSerializable(), clientv3.WithCountOnly()); err == nil && resp.Count > 0 {
		return
	}
	tl, err := r.tombstoneLease(cctx, false)
	if err != nil {
		r.log.Warn("no lease for an expiry tombstone", "session-id", rec.ID, "error", err)
		return
	}
	val, _ := json.Marshal(tombstoneOf(rec, Ended{ID: rec.ID, Reason: EndExpired, By: "lease", At: time.Now().UTC().Truncate(time.Second)}))
	_, err = r.cli.Txn(cctx).
		If(clientv3.Compare(clientv3.CreateRevision(tombstoneKey(rec.ID)), "=", 0)).
		Then(clientv3.OpPut(tombstoneKey(rec.ID), string(val), clientv3.WithLease(tl))).
		Commit()
	if err != nil {
		r.log.Warn("write expiry tombstone failed", "session-id", rec.ID, "error", err)
	}
}
