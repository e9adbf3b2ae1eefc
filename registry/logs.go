package registry

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"regexp"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// The history and the audit log are both newest-first logs: records under
// a prefix, keyed by a count-down time and an id (newestFirstKey), never
// changed once written, read in pages and pruned by age. This file holds
// what they share.

// maxLogScan bounds the records one page of a log reads, so a filter that
// matches little cannot make one request read the whole log; the page then
// ends early with a cursor.
const maxLogScan = 10 * scanBatch

// pruneBatch is how many records one delete of the pruning removes.
const pruneBatch = scanBatch

// logQuery selects one page of a newest-first log.
type logQuery struct {
	prefix string
	// what names the log in errors: "history", "audit log".
	what string
	// since and until select the records at or after since and before until.
	since, until time.Time
	// cursor is the next_cursor of the previous page.
	cursor string
	limit  int
	// filtered is true when match may drop records.
	filtered bool
}

var logCursorPattern = regexp.MustCompile(`^[0-9]{13}/[0-9a-f]{32}$`)

func encodeLogCursor(prefix, key string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(strings.TrimPrefix(key, prefix)))
}

func decodeLogCursor(prefix, c string) (string, error) {
	raw, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil || !logCursorPattern.Match(raw) {
		return "", invalid("cursor", "is malformed; pass the next_cursor of the previous page unchanged")
	}
	return prefix + string(raw), nil
}

// checkLogWindow checks a page size (0 becomes DefaultListLimit) and that
// until is after since.
func checkLogWindow(since, until time.Time, limit *int) error {
	if !since.IsZero() && !until.IsZero() && !until.After(since) {
		return invalid("until", "%s is not after since %s; give an until later than since", until.UTC().Format(time.RFC3339), since.UTC().Format(time.RFC3339))
	}
	switch {
	case *limit == 0:
		*limit = DefaultListLimit
	case *limit < 0 || *limit > MaxListLimit:
		return invalid("limit", "%d is out of range; use 1-%d (default %d)", *limit, MaxListLimit, DefaultListLimit)
	}
	return nil
}

// readLogPage reads one page of the log q selects: the records match keeps,
// newest first, and the cursor of the next page (empty on the last). A
// filtered page reads at most maxLogScan records, so it may hold fewer than
// q.limit (even none) while the cursor is set.
func readLogPage[T any](ctx context.Context, r *Registry, q logQuery, match func(*T) bool) ([]T, string, error) {
	lo, hi := q.prefix, clientv3.GetPrefixRangeEnd(q.prefix)
	// Records are stamped to the millisecond: one stamped at ms is at or
	// after a time t exactly when ms is at or after t rounded up.
	if !q.until.IsZero() {
		lo = newestFirstBefore(q.prefix, ceilMS(q.until))
	}
	if !q.since.IsZero() {
		hi = newestFirstBefore(q.prefix, ceilMS(q.since))
	}
	if q.cursor != "" {
		key, err := decodeLogCursor(q.prefix, q.cursor)
		if err != nil {
			return nil, "", err
		}
		lo = max(lo, key+"\x00")
	}
	page := []T{}
	if lo >= hi {
		return page, "", nil
	}
	batch := int64(q.limit + 1) // unfiltered, one more than a page tells whether there is a next
	if q.filtered {
		batch = scanBatch
	}
	cctx, cancel := r.opCtx(ctx)
	defer cancel()
	var rev int64
	var last string // the last key read
	scanned := 0
	for kv, err := range r.scan(cctx, lo, hi, batch, &rev) {
		if err != nil {
			return nil, "", translate("read "+q.what, err)
		}
		// kv is one more: the page ends before it.
		if len(page) == q.limit || scanned >= maxLogScan {
			return page, encodeLogCursor(q.prefix, last), nil
		}
		last = string(kv.Key)
		scanned++
		var rec T
		if err := json.Unmarshal(kv.Value, &rec); err != nil {
			r.log.Warn("undecodable record; skipped", "log", q.what, "key", last, "error", err)
		} else if match(&rec) {
			page = append(page, rec)
		}
	}
	return page, "", nil
}

// pruneLog deletes the records of the log under prefix that are older than
// retention, now and every interval until ctx ends.
func (r *Registry) pruneLog(ctx context.Context, prefix, what string, retention, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		n, err := r.pruneOnce(ctx, prefix, time.Now().Add(-retention))
		switch {
		case err != nil && ctx.Err() == nil:
			r.log.Warn("pruning failed; trying again at the next interval", "log", what, "error", err, "pruned", n)
		case n > 0:
			r.log.Debug("pruned", "log", what, "pruned", n)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// pruneOnce deletes the records under prefix older than cutoff and returns
// how many it deleted. The keys sort by time, so they are one key range,
// deleted pruneBatch keys at a time.
func (r *Registry) pruneOnce(ctx context.Context, prefix string, cutoff time.Time) (int64, error) {
	from, end := newestFirstBefore(prefix, cutoff.UnixMilli()), clientv3.GetPrefixRangeEnd(prefix)
	var n int64
	for {
		cctx, cancel := r.opCtx(ctx)
		resp, err := r.cli.Get(cctx, from, clientv3.WithRange(end), clientv3.WithKeysOnly(), clientv3.WithLimit(pruneBatch))
		if err == nil && len(resp.Kvs) > 0 {
			var del *clientv3.DeleteResponse
			del, err = r.cli.Delete(cctx, from, clientv3.WithRange(string(resp.Kvs[len(resp.Kvs)-1].Key)+"\x00"))
			if err == nil {
				n += del.Deleted
			}
		}
		cancel()
		if err != nil {
			return n, translate("prune "+prefix, err)
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return n, nil
		}
	}
}

// keepNoLog deletes everything under prefix and the extra keys (retrying
// each second until that works), then waits for ctx: the duty of a log
// whose retention is 0.
func (r *Registry) keepNoLog(ctx context.Context, prefix, what string, extra ...string) error {
	for {
		ops := []clientv3.Op{clientv3.OpDelete(prefix, clientv3.WithPrefix())}
		for _, k := range extra {
			ops = append(ops, clientv3.OpDelete(k))
		}
		cctx, cancel := r.opCtx(ctx)
		resp, err := r.cli.Txn(cctx).Then(ops...).Commit()
		cancel()
		if err == nil {
			if n := resp.Responses[0].GetResponseDeleteRange().Deleted; n > 0 {
				r.log.Info("retention is 0: deleted the records", "log", what, "deleted", n)
			}
			break
		}
		if ctx.Err() != nil {
			return nil
		}
		r.log.Warn("retention is 0, but deleting the records failed; retrying", "log", what, "error", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Second):
		}
	}
	<-ctx.Done()
	return nil
}

// ceilMS is t in Unix milliseconds, rounded up.
func ceilMS(t time.Time) int64 {
	ms := t.UnixMilli()
	if t.After(time.UnixMilli(ms)) {
		ms++
	}
	return ms
}
