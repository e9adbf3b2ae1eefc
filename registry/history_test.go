package registry_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/roster-dev/roster/cluster/clustertest/syncbuf"
	"github.com/roster-dev/roster/registry"
)

const (
	historyPrefix = "/roster/v1/history/"
	checkpointKey = "/roster/v1/history-checkpoint"
)

// startHistory runs r's history duty as a duty leader would, until the
// returned stop is called (or the test ends); stop waits for it to return.
func startHistory(t *testing.T, r *registry.Registry) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := r.RecordHistory(ctx); err != nil {
			t.Errorf("RecordHistory: %v", err)
		}
	}()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	return stop
}

// logTo makes a registry log to b.
func logTo(b *syncbuf.Buffer) func(*registry.Config) {
	return func(c *registry.Config) { c.Logger = slog.New(slog.NewTextHandler(b, nil)) }
}

// storedHistory reads every history record's key from etcd and returns, per
// session id, how many keys it has.
func storedHistory(t *testing.T) map[string]int {
	t.Helper()
	resp, err := etcd.Client().Get(context.Background(), historyPrefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		t.Fatal(err)
	}
	count := map[string]int{}
	for _, kv := range resp.Kvs {
		k := string(kv.Key)
		count[k[strings.LastIndexByte(k, '/')+1:]]++
	}
	return count
}

// allHistory follows the pages of r.History to the end.
func allHistory(t *testing.T, r *registry.Registry, f registry.HistoryFilter) []registry.HistoryRecord {
	t.Helper()
	return followPages(t, func(cursor string) ([]registry.HistoryRecord, string, error) {
		f.Cursor = cursor
		page, err := r.History(context.Background(), admin, f)
		return page.History, page.NextCursor, err
	})
}

// followPages reads the pages of a log from the first (cursor "") to the
// last: read returns the records of a page and the next cursor.
func followPages[T any](t *testing.T, read func(cursor string) ([]T, string, error)) []T {
	t.Helper()
	var out []T
	cursor := ""
	for {
		recs, next, err := read(cursor)
		if err != nil {
			t.Fatalf("read the page at cursor %q: %v", cursor, err)
		}
		out = append(out, recs...)
		if next == "" {
			return out
		}
		cursor = next
	}
}

// ender ends sessions by mixed reasons and remembers how each should end.
type ender struct {
	t    *testing.T
	mu   sync.Mutex
	want map[string]registry.EndReason
	n    int
}

func newEnder(t *testing.T) *ender { return &ender{t: t, want: map[string]registry.EndReason{}} }

func (e *ender) expect(id string, reason registry.EndReason) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.want[id] = reason
}

func (e *ender) user() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.n++
	return fmt.Sprintf("h%04d", e.n)
}

// round ends n sessions through r by each reason: logout, kill, expiry
// (TTL 1 s, never heartbeated) and shutdown (a pool's request with no
// grace, enforced by the nodes' backstop). It returns once the logouts and
// kills are done; the expiries and shutdowns follow within seconds.
func (e *ender) round(r *registry.Registry, n int) {
	t, ctx := e.t, context.Background()
	pool := "sd-" + e.user()
	for range n {
		c := open(t, r, admin, registry.OpenRequest{User: e.user(), Module: "sales", TTLSeconds: 60})
		k := open(t, r, admin, registry.OpenRequest{User: e.user(), Module: "crm", Host: "PC-9", TTLSeconds: 60})
		x := open(t, r, admin, registry.OpenRequest{User: e.user(), Module: "sales", TTLSeconds: 1})
		s := open(t, r, admin, registry.OpenRequest{User: e.user(), Module: "sales", Pool: pool, TTLSeconds: 60})
		e.expect(x.ID, registry.EndExpired)
		e.expect(s.ID, registry.EndShutdown)
		if _, err := r.Logout(ctx, admin, c.ID); err != nil {
			t.Fatal(err)
		}
		e.expect(c.ID, registry.EndClosed)
		if _, err := r.Kill(ctx, admin, k.ID, "hung"); err != nil {
			t.Fatal(err)
		}
		e.expect(k.ID, registry.EndKilled)
	}
	if _, err := r.RequestShutdown(ctx, admin, registry.ShutdownRequest{Scope: registry.ScopePool, Pool: pool, GraceSeconds: grace(0), Message: "upgrade"}); err != nil {
		t.Fatal(err)
	}
}

// check waits until every ended session is recorded, then asserts that each
// is recorded exactly once, with its reason, and that nothing else is.
func (e *ender) check(r *registry.Registry) {
	t := e.t
	t.Helper()
	e.mu.Lock()
	defer e.mu.Unlock()
	var missing []string
	eventually(t, 30*time.Second, fmt.Sprintf("all %d ended sessions recorded", len(e.want)), func() bool {
		stored := storedHistory(t)
		missing = missing[:0]
		for id := range e.want {
			if stored[id] == 0 {
				missing = append(missing, id)
			}
		}
		return len(missing) == 0
	})
	for id, n := range storedHistory(t) {
		switch {
		case n != 1:
			t.Errorf("session %s has %d history records", id, n)
		case e.want[id] == "":
			t.Errorf("session %s is recorded but did not end here", id)
		}
	}
	seen := map[string]bool{}
	for _, h := range allHistory(t, r, registry.HistoryFilter{Limit: 37}) {
		if seen[h.ID] {
			t.Errorf("session %s is listed twice", h.ID)
		}
		seen[h.ID] = true
		if h.Reason != e.want[h.ID] {
			t.Errorf("session %s is recorded as %s, want %s", h.ID, h.Reason, e.want[h.ID])
		}
	}
	if len(seen) != len(e.want) {
		t.Errorf("the history lists %d sessions, want %d", len(seen), len(e.want))
	}
}

// TestHistoryExactlyOnceAcrossFailover: the duty runs on one node, stops
// mid-way (its leader lost the lead) while sessions end, and another node's
// duty takes over from the checkpoint; every session ended by logout, kill,
// expiry or shutdown is recorded once with its reason, also those that ended
// while no duty ran.
func TestHistoryExactlyOnceAcrossFailover(t *testing.T) {
	r := newRegistry(t)
	r2 := secondNode(t)
	e := newEnder(t)

	stop := startHistory(t, r)
	e.round(r, 5)
	eventually(t, 10*time.Second, "the first records", func() bool { return len(storedHistory(t)) >= 5 })
	stop() // mid-way: expiries and shutdowns of the round are still to come
	e.round(r2, 5)
	e.round(r, 5) // no duty runs
	startHistory(t, r2)
	e.round(r2, 5)
	e.check(r)

	// One record in full.
	s := open(t, r, admin, registry.OpenRequest{User: "full", Module: "sales", Host: "PC-17", PID: 42, OS: "windows",
		ClientKind: registry.KindAppServer, Pool: "blue", TTLSeconds: 60, Labels: map[string]string{"build": "26.4"}})
	killed, err := r.Kill(context.Background(), admin, s.ID, "PC crashed")
	if err != nil {
		t.Fatal(err)
	}
	e.expect(s.ID, registry.EndKilled)
	e.check(r)
	got := allHistory(t, r2, registry.HistoryFilter{User: "full"})
	if len(got) != 1 {
		t.Fatalf("history of user full: %+v", got)
	}
	h := got[0]
	if h.ID != s.ID || h.Tenant != "default" || h.Module != "sales" || h.Host != "PC-17" || h.PID != 42 || h.OS != "windows" ||
		h.ClientKind != registry.KindAppServer || h.Pool != "blue" || h.Node != "n1" || h.Site != "fra" || h.Labels["build"] != "26.4" ||
		h.OpenedBy != "admin" || !h.StartedAt.Equal(s.StartedAt) || !h.EndedAt.Equal(killed.At) ||
		h.DurationSeconds != int64(killed.At.Sub(s.StartedAt)/time.Second) || h.By != "admin" || h.Message != "PC crashed" || h.Rev == 0 {
		t.Fatalf("record %+v does not match the session %+v killed %+v", h, s.Session, killed)
	}
}

// TestHistoryTwoDutiesAtOnce: three nodes run the duty at the same time (the
// overlap of a failover, stretched) while sessions end through each of them;
// no session is recorded twice, none is missed.
func TestHistoryTwoDutiesAtOnce(t *testing.T) {
	var logs syncbuf.Buffer
	r := newRegistry(t, logTo(&logs))
	nodes := []*registry.Registry{r, secondNode(t), secondNode(t)}
	for _, n := range nodes {
		startHistory(t, n)
	}
	e := newEnder(t)
	for range 3 {
		for _, n := range nodes {
			e.round(n, 5)
		}
	}
	e.check(r)
	if !strings.Contains(logs.String(), "the history checkpoint was moved by another duty leader") {
		t.Log("the duties never wrote over each other; the test did not exercise the overlap")
	}
}

// TestHistoryAfterCompaction: ends while no duty ran, past a compaction of
// the checkpoint's revision, are recorded from the tombstones; ends recorded
// before are not recorded again.
func TestHistoryAfterCompaction(t *testing.T) {
	var logs syncbuf.Buffer
	r := newRegistry(t, logTo(&logs))
	e := newEnder(t)
	stop := startHistory(t, r)
	e.round(r, 3)
	e.check(r)
	stop()
	e.round(r, 3)
	eventually(t, 10*time.Second, "the round's expiries and shutdowns", func() bool {
		page, err := r.List(context.Background(), admin, registry.ListFilter{})
		return err == nil && page.Total == 0
	})
	cli := etcd.Client()
	head, err := cli.Get(context.Background(), checkpointKey)
	if err != nil || len(head.Kvs) != 1 {
		t.Fatalf("checkpoint: %v %v", head, err)
	}
	if _, err := cli.Compact(context.Background(), head.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}
	startHistory(t, r)
	e.check(r)
	if !strings.Contains(logs.String(), "level=WARN msg=\"the history checkpoint is compacted") || !strings.Contains(logs.String(), "may be missing from the history") {
		t.Errorf("no warning that ends may be missing:\n%s", logs.String())
	}
	cp, err := cli.Get(context.Background(), checkpointKey)
	if err != nil || len(cp.Kvs) != 1 {
		t.Fatalf("checkpoint: %v %v", cp, err)
	}
	if n, _ := strconv.ParseInt(string(cp.Kvs[0].Value), 10, 64); n < head.Header.Revision {
		t.Fatalf("the checkpoint %d is before the compaction at %d", n, head.Header.Revision)
	}
}

// TestHistoryRetention: records older than the retention are pruned, and an
// end older than the retention is not recorded at all.
func TestHistoryRetention(t *testing.T) {
	r := newRegistry(t, func(c *registry.Config) {
		c.HistoryRetention = 3 * time.Second
		c.HistoryPruneInterval = 200 * time.Millisecond
	})
	ctx := context.Background()
	stop := startHistory(t, r)
	s := open(t, r, admin, registry.OpenRequest{User: "alice", Module: "sales"})
	if _, err := r.Logout(ctx, admin, s.ID); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "the record", func() bool { return storedHistory(t)[s.ID] == 1 })
	eventually(t, 10*time.Second, "the record pruned", func() bool { return len(storedHistory(t)) == 0 })

	stop()
	old := open(t, r, admin, registry.OpenRequest{User: "bob", Module: "sales"})
	if _, err := r.Logout(ctx, admin, old.ID); err != nil {
		t.Fatal(err)
	}
	time.Sleep(4 * time.Second) // the end is older than the retention now
	startHistory(t, r)
	fresh := open(t, r, admin, registry.OpenRequest{User: "carol", Module: "sales"})
	if _, err := r.Logout(ctx, admin, fresh.ID); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "the fresh record", func() bool { return storedHistory(t)[fresh.ID] == 1 })
	if n := storedHistory(t)[old.ID]; n != 0 {
		t.Fatalf("an end older than the retention was recorded (%d)", n)
	}
}

// TestHistoryRetentionZero: with retention 0 the duty deletes the history
// and its checkpoint and records nothing.
func TestHistoryRetentionZero(t *testing.T) {
	r := newRegistry(t)
	ctx := context.Background()
	stop := startHistory(t, r)
	s := open(t, r, admin, registry.OpenRequest{User: "alice", Module: "sales"})
	if _, err := r.Logout(ctx, admin, s.ID); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "the record", func() bool { return storedHistory(t)[s.ID] == 1 })
	stop()

	cfg := registry.DefaultConfig()
	cfg.Client, cfg.Node, cfg.MinTTL, cfg.HistoryRetention = etcd.Client(), "n0", time.Second, 0
	none, err := registry.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(none.Close)
	if err := none.Start(ctx); err != nil {
		t.Fatal(err)
	}
	startHistory(t, none)
	eventually(t, 5*time.Second, "the history deleted", func() bool {
		cp, err := etcd.Client().Get(ctx, checkpointKey)
		return err == nil && len(cp.Kvs) == 0 && len(storedHistory(t)) == 0
	})
	for i := range 5 {
		s := open(t, none, admin, registry.OpenRequest{User: fmt.Sprintf("u%d", i), Module: "sales"})
		if _, err := none.Logout(ctx, admin, s.ID); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(time.Second) // a running duty records within milliseconds
	if n := len(storedHistory(t)); n != 0 {
		t.Fatalf("retention 0 recorded %d sessions", n)
	}
	if cp, err := etcd.Client().Get(ctx, checkpointKey); err != nil || len(cp.Kvs) != 0 {
		t.Fatalf("retention 0 wrote a checkpoint: %v %v", cp, err)
	}
}

// TestHistoryQuery: filters, time bounds, newest-first paging, and who may
// read.
func TestHistoryQuery(t *testing.T) {
	r := newRegistry(t)
	ctx := context.Background()
	startHistory(t, r)
	end := func(tenant, user, module string, kill bool) registry.Ended {
		s := open(t, r, admin, registry.OpenRequest{Tenant: tenant, User: user, Module: module, TTLSeconds: 60})
		if kill {
			e, err := r.Kill(ctx, admin, s.ID, "")
			if err != nil {
				t.Fatal(err)
			}
			return e
		}
		e, err := r.Logout(ctx, admin, s.ID)
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	first := end("default", "alice", "sales", false)
	// The next ends in a later second, so time bounds can part them.
	time.Sleep(time.Until(first.At.Add(time.Second)) + 10*time.Millisecond)
	second := end("default", "alice", "crm", true)
	for i := range 12 {
		end("acme", fmt.Sprintf("u%02d", i), "sales", i%3 == 0)
	}
	eventually(t, 5*time.Second, "14 records", func() bool { return len(storedHistory(t)) == 14 })

	count := func(f registry.HistoryFilter) int { return len(allHistory(t, r, f)) }
	for _, tc := range []struct {
		name string
		f    registry.HistoryFilter
		want int
	}{
		{"all", registry.HistoryFilter{}, 14},
		{"user", registry.HistoryFilter{User: "alice"}, 2},
		{"user and module", registry.HistoryFilter{User: "alice", Module: "crm"}, 1},
		{"tenant", registry.HistoryFilter{Tenant: "acme"}, 12},
		{"reason", registry.HistoryFilter{Reason: registry.EndKilled}, 5},
		{"a reason nobody ended by", registry.HistoryFilter{Reason: "idle"}, 0},
		{"since", registry.HistoryFilter{User: "alice", Since: second.At}, 1},
		{"until", registry.HistoryFilter{User: "alice", Until: second.At}, 1},
		{"since and until", registry.HistoryFilter{User: "alice", Since: first.At, Until: second.At.Add(time.Second)}, 2},
		{"until before everything", registry.HistoryFilter{Until: first.At}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if n := count(tc.f); n != tc.want {
				t.Errorf("%d records, want %d", n, tc.want)
			}
		})
	}

	// Newest first, in pages of 5 that add up to everything once.
	page, err := r.History(ctx, admin, registry.HistoryFilter{Limit: 5})
	if err != nil || len(page.History) != 5 || page.NextCursor == "" {
		t.Fatalf("first page: %d records, cursor %q, %v", len(page.History), page.NextCursor, err)
	}
	all := allHistory(t, r, registry.HistoryFilter{Limit: 5})
	seen := map[string]bool{}
	for i, h := range all {
		if seen[h.ID] {
			t.Fatalf("%s listed twice", h.ID)
		}
		seen[h.ID] = true
		if i > 0 && h.EndedAt.After(all[i-1].EndedAt) {
			t.Fatalf("record %d ended at %s, after the one before it (%s): not newest first", i, h.EndedAt, all[i-1].EndedAt)
		}
	}
	if len(all) != 14 || all[len(all)-1].ID != first.ID {
		t.Fatalf("%d records, the last %s; want 14, the oldest %s last", len(all), all[len(all)-1].ID, first.ID)
	}
	last, err := r.History(ctx, admin, registry.HistoryFilter{Limit: 14})
	if err != nil || len(last.History) != 14 || last.NextCursor != "" {
		t.Fatalf("a page of exactly everything: %d records, cursor %q, %v", len(last.History), last.NextCursor, err)
	}

	_, op := token(t, r, "ops", registry.RoleOperator)
	if _, err := r.History(ctx, op, registry.HistoryFilter{}); err != nil {
		t.Fatalf("an operator may read the history: %v", err)
	}
	_, cl := token(t, r, "app", registry.RoleClient)
	if _, err := r.History(ctx, cl, registry.HistoryFilter{}); !errors.Is(err, registry.ErrPermissionDenied) {
		t.Fatalf("a client token read the history: %v", err)
	}
}

func TestHistoryInput(t *testing.T) {
	r := newRegistry(t)
	now := time.Now()
	for _, tc := range []struct {
		name string
		f    registry.HistoryFilter
		want string
	}{
		{"negative limit", registry.HistoryFilter{Limit: -1}, "limit: -1 is out of range; use 1-1000"},
		{"limit too big", registry.HistoryFilter{Limit: 1001}, "limit: 1001 is out of range"},
		{"slash in tenant", registry.HistoryFilter{Tenant: "a/b"}, "tenant: must not contain '/'"},
		{"control character in user", registry.HistoryFilter{User: "a\x01"}, "user: must not contain control"},
		{"long module", registry.HistoryFilter{Module: strings.Repeat("m", 129)}, "module: is 129 bytes long"},
		{"bad reason", registry.HistoryFilter{Reason: "Killed!"}, `reason: "Killed!" is not an end reason`},
		{"until before since", registry.HistoryFilter{Since: now, Until: now.Add(-time.Hour)}, "until: "},
		{"until equal to since", registry.HistoryFilter{Since: now, Until: now}, "is not after since"},
		{"malformed cursor", registry.HistoryFilter{Cursor: "!!"}, "cursor: is malformed"},
		{"cursor of a session listing", registry.HistoryFilter{Cursor: "dC9kZWZhdWx0L3g"}, "cursor: is malformed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := r.History(context.Background(), admin, tc.f)
			if !errors.Is(err, registry.ErrInvalidArgument) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("History(%+v) = %v, want invalid argument %q", tc.f, err, tc.want)
			}
		})
	}
	if _, err := r.History(context.Background(), registry.Principal{Role: registry.RoleClient, Name: "app"}, registry.HistoryFilter{}); err == nil ||
		!strings.Contains(err.Error(), "may not read the history: it needs a token with role operator or admin") {
		t.Fatalf("a client: %v", err)
	}
}

func TestHistoryConfig(t *testing.T) {
	for _, tc := range []struct {
		name string
		set  func(*registry.Config)
		want string
	}{
		{"negative retention", func(c *registry.Config) { c.HistoryRetention = -time.Hour }, "history retention -1h0m0s must not be negative"},
		{"no prune interval", func(c *registry.Config) { c.HistoryPruneInterval = 0 }, "history prune interval 0s must be positive"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := registry.DefaultConfig()
			cfg.Node = "n1"
			tc.set(&cfg)
			if err := cfg.ValidateSettings(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("ValidateSettings = %v, want %q", err, tc.want)
			}
		})
	}
	if d := registry.DefaultConfig().HistoryRetention; d != 720*time.Hour {
		t.Fatalf("default retention %s, want 720h", d)
	}
}
