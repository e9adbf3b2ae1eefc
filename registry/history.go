package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/metadata"
)

// DefaultHistoryRetention is how long the history keeps an ended session by
// default: 30 days.
const DefaultHistoryRetention = 30 * 24 * time.Hour

const (
	// historyBatch is how many records one transaction writes: with the
	// checkpoint's put, one below maxTxnOps.
	historyBatch = maxTxnOps - 1
	// historyQueue is how many watch responses wait for the history duty
	// before the watch waits for it.
	historyQueue = 4096
	// In a burst of ends (a storm of dead clients, a pool's deadline) the
	// history waits until the tombstones stop coming for historyQuiet, at
	// most historyHoldOff or historyBurstMax records, and then writes them
	// all: the burst's ends get etcd's time first. A burst is a watch
	// response of historyBurst tombstones or more.
	historyBurst    = 50
	historyQuiet    = 250 * time.Millisecond
	historyHoldOff  = 10 * time.Second
	historyBurstMax = 20_000
)

// HistoryRecord is an ended session as the history keeps it: the session as
// it was, and how, by whom and when it ended.
type HistoryRecord struct {
	ID         string            `json:"id"`
	Tenant     string            `json:"tenant"`
	User       string            `json:"user"`
	Module     string            `json:"module"`
	Host       string            `json:"host"`
	PID        int64             `json:"pid"`
	OS         string            `json:"os"`
	ClientKind ClientKind        `json:"client_kind"`
	Pool       string            `json:"pool"`
	Site       string            `json:"site"`
	Node       string            `json:"node"`
	Labels     map[string]string `json:"labels"`
	// OpenedBy names the API token that opened the session.
	OpenedBy  string    `json:"opened_by"`
	StartedAt time.Time `json:"started_at"`
	EndedAt   time.Time `json:"ended_at"`
	// DurationSeconds is EndedAt minus StartedAt, in whole seconds (both are
	// kept to the second).
	DurationSeconds int64 `json:"duration_seconds"`
	// Reason is the end reason as the session's tombstone says:
	// closed, killed, expired, shutdown, or a reason added later.
	Reason EndReason `json:"reason"`
	// By names who ended it: a token name, "user:<tenant>/<user>", or for
	// expiry "liveness" (Roster's liveness view) or "lease" (the etcd lease).
	By string `json:"by"`
	// Message is the kill reason, the shutdown request's message, or why a
	// session expired while the cluster was down.
	Message string `json:"message,omitempty"`
	// ShutdownID is the shutdown request that terminated it (reason shutdown).
	ShutdownID string `json:"shutdown_id,omitempty"`
	// Rev is the etcd revision of the end: the id of its end event.
	Rev int64 `json:"rev"`
}

// HistoryFilter selects records of the history. Empty fields match
// everything.
type HistoryFilter struct {
	Tenant, User, Module string
	Reason               EndReason
	// Since and Until select the sessions that ended at or after Since and
	// before Until.
	Since, Until time.Time
	// Limit is the page size, 1 to MaxListLimit; 0 means DefaultListLimit.
	Limit int
	// Cursor is the NextCursor of the previous page.
	Cursor string
}

// HistoryPage is one page of the history, newest first.
type HistoryPage struct {
	History []HistoryRecord `json:"history"`
	// NextCursor continues the listing; empty on the last page.
	NextCursor string `json:"next_cursor"`
}

var reasonPattern = regexp.MustCompile(`^[a-z][a-z_]{0,31}$`)

func (f *HistoryFilter) check() error {
	for _, c := range []struct{ field, v string }{{"tenant", f.Tenant}, {"user", f.User}, {"module", f.Module}} {
		if c.v != "" {
			if err := checkName(c.field, c.v); err != nil {
				return err
			}
		}
	}
	if f.Reason != "" && !reasonPattern.MatchString(string(f.Reason)) {
		return invalid("reason", "%q is not an end reason; reasons are lower-case words such as closed, killed, expired or shutdown", truncate(string(f.Reason), 40))
	}
	return checkLogWindow(f.Since, f.Until, &f.Limit)
}

func (f *HistoryFilter) match(h *HistoryRecord) bool {
	return (f.Tenant == "" || f.Tenant == h.Tenant) && (f.User == "" || f.User == h.User) &&
		(f.Module == "" || f.Module == h.Module) && (f.Reason == "" || f.Reason == h.Reason)
}

// History returns one page of the history of ended sessions that match f,
// newest first; pass its NextCursor as f.Cursor for the next page. It needs
// an operator or admin. A page holds at most f.Limit records; a filtered
// page reads at most 10,000 records, so it may hold fewer (even none) while
// NextCursor is set: only an empty NextCursor ends the listing. Records
// written after the first page sort before the cursor and are not listed by
// the later pages. Cancelling ctx abandons the read.
func (r *Registry) History(ctx context.Context, p Principal, f HistoryFilter) (HistoryPage, error) {
	if err := requireRole(p, "read the history", RoleOperator, RoleAdmin); err != nil {
		return HistoryPage{}, err
	}
	if err := f.check(); err != nil {
		return HistoryPage{}, err
	}
	q := logQuery{prefix: historyPrefix, what: "history", since: f.Since, until: f.Until, cursor: f.Cursor, limit: f.Limit,
		filtered: f.Tenant != "" || f.User != "" || f.Module != "" || f.Reason != ""}
	recs, next, err := readLogPage(ctx, r, q, f.match)
	if err != nil {
		return HistoryPage{}, err
	}
	return HistoryPage{History: recs, NextCursor: next}, nil
}

// historyRecord is the history record of the tombstone of session id,
// created at revision rev.
func historyRecord(id string, t *tombstone, rev int64) HistoryRecord {
	h := HistoryRecord{ID: id, Tenant: t.Tenant, User: t.User, EndedAt: t.At, Reason: t.Reason, By: t.By,
		Message: t.Message, ShutdownID: t.ShutdownID, Rev: rev, Labels: map[string]string{}}
	if s := t.Session; s != nil { // a tombstone written before events kept no session
		h.Module, h.Host, h.PID, h.OS, h.ClientKind = s.Module, s.Host, s.PID, s.OS, s.ClientKind
		h.Pool, h.Site, h.Node, h.OpenedBy, h.StartedAt = s.Pool, s.Site, s.Node, s.OpenedBy, s.StartedAt
		if s.Labels != nil {
			h.Labels = s.Labels
		}
		h.DurationSeconds = max(0, int64(t.At.Sub(s.StartedAt)/time.Second)) // clocks of two nodes
	}
	return h
}

// historyPut is a history record ready to be written.
type historyPut struct{ key, val string }

// historyOf turns a tombstone read from etcd into its history record; false
// when there is nothing to record: it cannot be decoded, or it ended before
// the retention.
func (r *Registry) historyOf(kv *mvccpb.KeyValue) (historyPut, bool) {
	id := strings.TrimPrefix(string(kv.Key), tombstonesPrefix)
	tomb, err := decodeTombstone(kv.Value)
	if err != nil {
		r.log.Warn("undecodable tombstone; its session gets no history record", "session-id", id, "error", err)
		return historyPut{}, false
	}
	if time.Since(tomb.At) > r.cfg.HistoryRetention {
		return historyPut{}, false // it would be pruned at once (and may have been)
	}
	val, err := json.Marshal(historyRecord(id, tomb, kv.CreateRevision))
	if err != nil {
		r.log.Warn("unencodable history record; skipped", "session-id", id, "error", err)
		return historyPut{}, false
	}
	return historyPut{key: historyKey(tomb.At.UnixMilli(), id), val: string(val)}, true
}

// historyState is where the history duty stands.
type historyState struct {
	// cp is the checkpoint: every tombstone created at or before this
	// revision is recorded.
	cp int64
	// cpMod is the checkpoint key's mod revision as this duty last wrote or
	// read it (0: no key); every write is conditional on it.
	cpMod int64
}

// Why the history duty starts over from the checkpoint.
var (
	// errCheckpointMoved: another duty leader wrote the checkpoint; this one
	// is stale or overlapping and continues from what that one wrote.
	errCheckpointMoved = errors.New("registry: the history checkpoint was moved by another duty leader")
	// errHistoryCompacted: the revision after the checkpoint is compacted.
	errHistoryCompacted = errors.New("registry: the history checkpoint's revision is compacted")
)

// RecordHistory runs as the duty leader's duty until ctx ends: it writes one
// HistoryRecord for every session that ends, whatever ended it, and every
// HistoryPruneInterval deletes the records that ended more than
// HistoryRetention ago. It returns nil when ctx ends; a failure it logs and
// starts over from the checkpoint.
//
// It follows an etcd watch of the creations of tombstones (one per ended
// session: written with a logout, kill or shutdown, or by the expiry watch)
// from a checkpoint revision kept in etcd. Each batch of records is written
// with the new checkpoint in one transaction that holds only while the
// checkpoint is as this duty last saw it, so a stale duty leader that still
// runs after a new one took over writes nothing and carries on from the new
// checkpoint; and each record's key holds the session id and is written
// only while absent. So a failover loses nothing (the successor starts at
// the checkpoint) and duplicates nothing (ends recorded already are
// skipped), even while two leaders overlap.
//
// When there is no checkpoint yet (the first run), or its revision is
// compacted (no duty leader ran for longer than etcd keeps history), it
// records the ended sessions whose tombstones still exist (for
// TombstoneTTL) and are not recorded yet, and follows on from there; after
// a compaction it warns that ends older than the tombstones may be missing.
// Records of ends older than HistoryRetention are not written.
//
// With HistoryRetention 0 it keeps no history: it deletes the history and
// its checkpoint once, then writes nothing until ctx ends.
func (r *Registry) RecordHistory(ctx context.Context) error {
	if r.cfg.HistoryRetention == 0 {
		return r.keepNoLog(ctx, historyPrefix, "history", historyCPKey)
	}
	pctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { r.pruneLog(pctx, historyPrefix, "history", r.cfg.HistoryRetention, r.cfg.HistoryPruneInterval) })
	defer func() {
		stop()
		wg.Wait()
	}()
	for {
		err := r.followTombstones(ctx)
		switch {
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, errCheckpointMoved):
			r.log.Info("the history checkpoint was moved by another duty leader; continuing from it")
			continue
		}
		r.log.Warn("recording history failed; resuming from the checkpoint", "error", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Second):
		}
	}
}

// historyWatchCtx puts the history watch on a gRPC stream of its own, apart
// from the event and expiry watches, and fails it when its member loses the
// etcd leader.
func historyWatchCtx(ctx context.Context) context.Context {
	return clientv3.WithRequireLeader(metadata.AppendToOutgoingContext(ctx, eventsStreamKey, "history"))
}

// followTombstones reads the checkpoint and records ends from it until an
// error (or the end of ctx) stops it.
func (r *Registry) followTombstones(ctx context.Context) error {
	st, head, err := r.readHistoryCheckpoint(ctx)
	if err != nil {
		return err
	}
	switch {
	case st.cp == 0:
		r.log.Info("no history checkpoint yet: recording the ended sessions whose tombstones exist, then following new ends")
		if err := r.historyFromTombstones(ctx, &st); err != nil {
			return err
		}
	case st.cp > head:
		// Written in another history of the data (a snapshot restore moves
		// revisions forward, so this needs a hand-made data dir).
		r.log.Warn("the history checkpoint is ahead of etcd's revision; recording the ended sessions whose tombstones exist and following on from now",
			"checkpoint", st.cp, "revision", head)
		st.cp = 0
		if err := r.historyFromTombstones(ctx, &st); err != nil {
			return err
		}
	}
	for {
		err := r.watchTombstones(ctx, &st)
		if !errors.Is(err, errHistoryCompacted) {
			return err
		}
		r.log.Warn("the history checkpoint is compacted: no duty leader recorded history for longer than etcd keeps its history; "+
			"recording the ended sessions whose tombstones still exist; sessions that ended before missing-before and were not recorded yet may be missing from the history",
			"checkpoint", st.cp, "missing-before", time.Now().Add(-r.cfg.TombstoneTTL).UTC().Truncate(time.Second))
		if err := r.historyFromTombstones(ctx, &st); err != nil {
			return err
		}
	}
}

// readHistoryCheckpoint reads the checkpoint, and the cluster's revision.
func (r *Registry) readHistoryCheckpoint(ctx context.Context) (historyState, int64, error) {
	cctx, cancel := r.opCtx(ctx)
	defer cancel()
	resp, err := r.cli.Get(cctx, historyCPKey)
	if err != nil {
		return historyState{}, 0, translate("read the history checkpoint", err)
	}
	if len(resp.Kvs) == 0 {
		return historyState{}, resp.Header.Revision, nil
	}
	st := historyState{cpMod: resp.Kvs[0].ModRevision}
	if st.cp, err = strconv.ParseInt(string(resp.Kvs[0].Value), 10, 64); err != nil || st.cp < 0 {
		r.log.Warn("undecodable history checkpoint; starting as if there were none", "value", string(resp.Kvs[0].Value))
		st.cp = 0
	}
	return st, resp.Header.Revision, nil
}

// watchTombstones watches the tombstones from the checkpoint on and records
// them until the watch fails. A goroutine of its own drains the watch into
// a queue, so the ends that arrive while a batch is being written are all
// there for the next one (see recordWatched); it waits for that goroutine
// before it returns.
func (r *Registry) watchTombstones(ctx context.Context, st *historyState) error {
	wctx, cancel := context.WithCancel(historyWatchCtx(ctx))
	wch := r.cli.Watch(wctx, tombstonesPrefix, clientv3.WithPrefix(), clientv3.WithRev(st.cp+1),
		clientv3.WithFilterDelete(), clientv3.WithProgressNotify())
	q := make(chan clientv3.WatchResponse, historyQueue)
	var wg sync.WaitGroup
	wg.Go(func() {
		defer close(q)
		for resp := range wch {
			select {
			case q <- resp:
			case <-wctx.Done():
				return
			}
		}
	})
	defer wg.Wait()
	defer cancel()
	return r.recordWatched(ctx, q, st)
}

// recordWatched records the tombstones created in the watch responses of q
// until one says the watch failed. It commits in groups: every response
// queued while a batch is being written goes into the next batch (up to
// historyBatch records), so a burst of ends costs a few transactions, not
// one each. A progress notification moves the checkpoint on, so a quiet
// history does not fall behind compaction.
func (r *Registry) recordWatched(ctx context.Context, q <-chan clientv3.WatchResponse, st *historyState) error {
	for resp := range q {
		if err := r.watchNotice(ctx, st, &resp); err != nil || len(resp.Events) == 0 {
			if err != nil {
				return err
			}
			continue
		}
		first := len(resp.Events)
		began := time.Now()
		evs, notice, err := gatherTombstones(ctx, q, resp.Events)
		if err != nil {
			return err
		}
		if first >= historyBurst {
			r.log.Debug("history: recording a burst of ends after it", "ends", len(evs), "waited", time.Since(began).Round(time.Millisecond))
		}
		if err := r.recordEvents(ctx, st, evs); err != nil {
			return err
		}
		if notice != nil {
			if err := r.watchNotice(ctx, st, notice); err != nil {
				return err
			}
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return fmt.Errorf("%w: the tombstone watch closed", ErrUnavailable)
}

// gatherTombstones adds to evs, the events of one watch response, those of
// the responses queued behind it, up to historyBatch, and returns them with
// the first response without events it took (a notice), if any. After a
// response of historyBurst events or more it waits for the burst to end
// (see historyQuiet) and takes up to historyBurstMax.
func gatherTombstones(ctx context.Context, q <-chan clientv3.WatchResponse, evs []*clientv3.Event) ([]*clientv3.Event, *clientv3.WatchResponse, error) {
	limit := historyBatch
	var quiet, holdOff *time.Timer
	if len(evs) >= historyBurst {
		limit = historyBurstMax
		quiet, holdOff = time.NewTimer(historyQuiet), time.NewTimer(historyHoldOff)
		defer quiet.Stop()
		defer holdOff.Stop()
	}
	for len(evs) < limit {
		var more clientv3.WatchResponse
		var ok bool
		if quiet == nil {
			select {
			case more, ok = <-q:
			default:
				return evs, nil, nil
			}
		} else {
			select {
			case more, ok = <-q:
			case <-quiet.C:
				return evs, nil, nil
			case <-holdOff.C:
				return evs, nil, nil
			case <-ctx.Done():
				return nil, nil, ctx.Err()
			}
		}
		if !ok {
			return evs, nil, nil // the range ends next
		}
		if more.CompactRevision != 0 || more.Err() != nil || more.IsProgressNotify() {
			return evs, &more, nil
		}
		evs = append(evs, more.Events...)
		if quiet != nil && len(more.Events) > 0 {
			quiet.Reset(historyQuiet)
		}
	}
	return evs, nil, nil
}

// watchNotice handles a watch response that carries no events: a
// compaction or an error ends the watch, a progress notification moves the
// checkpoint to its revision.
func (r *Registry) watchNotice(ctx context.Context, st *historyState, resp *clientv3.WatchResponse) error {
	switch {
	case resp.CompactRevision != 0:
		return errHistoryCompacted
	case resp.Err() != nil:
		return translate("watch tombstones", resp.Err())
	case resp.IsProgressNotify() && resp.Header.Revision > st.cp:
		_, err := r.writeHistory(ctx, st, nil, resp.Header.Revision)
		return err
	}
	return nil
}

// recordEvents records the tombstones created in evs, watch events in
// revision order, historyBatch at a time, each batch with the checkpoint
// up to which it completes the record.
func (r *Registry) recordEvents(ctx context.Context, st *historyState, evs []*clientv3.Event) error {
	var batch []historyPut
	for i, ev := range evs {
		kv := ev.Kv
		if ev.Type == mvccpb.PUT && kv.CreateRevision == kv.ModRevision { // a tombstone is written once
			if put, ok := r.historyOf(kv); ok {
				batch = append(batch, put)
			}
		}
		last := i == len(evs)-1
		if len(batch) < historyBatch && !last {
			continue
		}
		// A revision is recorded once all its tombstones are; one that goes
		// on in the next batch is not yet. (The watch never splits a
		// revision between responses.)
		cp := kv.ModRevision
		if !last && evs[i+1].Kv.ModRevision == cp {
			cp--
		}
		if _, err := r.writeHistory(ctx, st, batch, max(cp, st.cp)); err != nil {
			return err
		}
		batch = nil
	}
	return nil
}

// historyFromTombstones records every existing tombstone created after the
// checkpoint, at one revision, and moves the checkpoint to that revision.
func (r *Registry) historyFromTombstones(ctx context.Context, st *historyState) error {
	from, end := tombstonesPrefix, clientv3.GetPrefixRangeEnd(tombstonesPrefix)
	var rev int64
	written := 0
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(historyBatch)}
		if rev != 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		cctx, cancel := r.opCtx(ctx)
		resp, err := r.cli.Get(cctx, from, opts...)
		cancel()
		if err != nil {
			return translate("read tombstones", err)
		}
		rev = resp.Header.Revision
		var batch []historyPut
		for _, kv := range resp.Kvs {
			if kv.CreateRevision <= st.cp {
				continue // recorded from the watch
			}
			if put, ok := r.historyOf(kv); ok {
				batch = append(batch, put)
			}
		}
		more := resp.More && len(resp.Kvs) > 0
		if len(batch) > 0 || !more {
			cp := st.cp // the checkpoint stays until every page is written
			if !more {
				cp = max(rev, st.cp)
			}
			n, err := r.writeHistory(ctx, st, batch, cp)
			if err != nil {
				return err
			}
			written += n
		}
		if !more {
			break
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
	r.log.Info("recorded the ended sessions whose tombstones exist", "recorded", written, "revision", rev)
	return nil
}

// writeHistory writes puts, each only if its key is absent, and the
// checkpoint cp, in one transaction that holds only while the checkpoint
// key is as st says. It returns how many records it wrote. If another
// duty leader moved the checkpoint, it writes nothing, takes that
// checkpoint into st, and returns errCheckpointMoved.
func (r *Registry) writeHistory(ctx context.Context, st *historyState, puts []historyPut, cp int64) (int, error) {
	ops := []clientv3.Op{clientv3.OpPut(historyCPKey, strconv.FormatInt(cp, 10))}
	seen := map[string]bool{}
	for _, p := range puts {
		if seen[p.key] { // etcd refuses a transaction that puts a key twice
			continue
		}
		seen[p.key] = true
		ops = append(ops, clientv3.OpTxn(
			[]clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(p.key), "=", 0)},
			[]clientv3.Op{clientv3.OpPut(p.key, p.val)}, nil))
	}
	cctx, cancel := r.opCtx(ctx)
	defer cancel()
	resp, err := r.cli.Txn(cctx).If(clientv3.Compare(clientv3.ModRevision(historyCPKey), "=", st.cpMod)).
		Then(ops...).Else(clientv3.OpGet(historyCPKey)).Commit()
	if err != nil {
		return 0, translate("write history", err)
	}
	if !resp.Succeeded {
		*st = historyState{}
		if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) == 1 {
			st.cpMod = kvs[0].ModRevision
			st.cp, _ = strconv.ParseInt(string(kvs[0].Value), 10, 64)
		}
		return 0, errCheckpointMoved
	}
	st.cp, st.cpMod = cp, resp.Header.Revision
	n := 0
	for _, op := range resp.Responses[1:] {
		if op.GetResponseTxn().GetSucceeded() {
			n++
		}
	}
	return n, nil
}
