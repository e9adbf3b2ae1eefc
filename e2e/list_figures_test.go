package e2e_test

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/roster-dev/roster/e2e"
)

// Flags of BenchmarkList100k: the GOMEMLIMIT it gives every node ("" for
// none, Go's default; docs/performance.md explains the choice), and how
// many sessions it opens (100,000 for the figures, fewer to try the
// benchmark itself out quickly).
var (
	list100kMemLimit = flag.String("list100k-gomemlimit", "600MiB", "GOMEMLIMIT of BenchmarkList100k's nodes (empty: none)")
	list100kSessions = flag.Int("list100k-sessions", 100_000, "sessions BenchmarkList100k opens")
)

// BenchmarkList100k: the figures of docs/performance.md "100,000 live
// sessions on 3 nodes". Each iteration forms a new three-node cluster of
// real processes (each with GOMEMLIMIT -list100k-gomemlimit) and runs,
// through the CLI:
//
//	roster bench list --sessions 100000 --rounds 3 --baseline etcd --ttl 2h --keep -o json
//
// (8 clients, pages of 1,000, unfiltered and filtered by one module of
// ten; the etcd endpoints of the baseline come from GET
// /v1/cluster/members), sampling every node's VmRSS every second. Once the
// bench has ended and left its 100,000 sessions open, it waits 10 s and
// reads each node's VmRSS again and the etcd database size (Maintenance
// Status), then compacts etcd's history, defragments every member and
// reads the size again. Reported, as medians over the iterations: page
// p50 and p99 (ms) and the ratio to raw etcd per phase, the largest VmRSS
// of any node during the run and after it (MiB), and the database size
// before and after compaction (MiB). It takes about 15 minutes an
// iteration on a 2-core machine:
//
//	go test -run '^$' -bench List100k -benchtime 3x -timeout 120m -v ./e2e/
//
// (testing runs one iteration before the -benchtime ones, so 3x runs
// four; add -args -list100k-gomemlimit= for Go's default memory limit, or
// -list100k-sessions 2000 to try it out in a minute.)
func BenchmarkList100k(b *testing.B) {
	sessions := *list100kSessions
	metrics := map[string][]float64{}
	note := func(name string, v float64) { metrics[name] = append(metrics[name], v) }
	for range b.N {
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Minute)
		c := memLimitedVoters(ctx, b, *list100kMemLimit)
		nodes := c.Running()
		env := []string{"ROSTER_ENDPOINTS=" + strings.Join(c.URLs(nodes...), ","), "ROSTER_TOKEN=" + c.Token()}

		peak := newRSSPeak(nodes)
		stop := peak.sample(time.Second)
		res, err := bin.Run(ctx, b.TempDir(), env, "bench", "list", "--sessions", fmt.Sprint(sessions), "--rounds", "3",
			"--baseline", "etcd", "--ttl", "2h", "--keep", "-o", "json")
		stop()
		if err != nil || res.ExitCode != 0 {
			b.Fatalf("roster bench list: %v, exit %d\n%s", err, res.ExitCode, res.Stderr)
		}
		var rep benchJSON
		if err := json.Unmarshal([]byte(res.Stdout), &rep); err != nil {
			b.Fatalf("roster bench list -o json: %v\n%s", err, res.Stdout)
		}
		for _, r := range rep.Results {
			if r.Roster == nil || r.Roster.Latency == nil || r.Etcd == nil || r.Etcd.Latency == nil || r.Ratio == nil {
				b.Fatalf("list %s: no latencies or ratio: %+v", r.Phase, r)
			}
			note(r.Phase+"-p50-ms", r.Roster.Latency.P50)
			note(r.Phase+"-p99-ms", r.Roster.Latency.P99)
			note(r.Phase+"-raw-p50-ms", r.Etcd.Latency.P50)
			note(r.Phase+"-raw-p99-ms", r.Etcd.Latency.P99)
			note(r.Phase+"-ratio", *r.Ratio)
			b.Logf("%s: roster p50 %.1f p99 %.1f ms (%.2f pages/s), raw etcd p50 %.1f p99 %.1f ms (%.1f pages/s), ratio %.3f",
				r.Phase, r.Roster.Latency.P50, r.Roster.Latency.P99, r.Roster.Throughput, r.Etcd.Latency.P50, r.Etcd.Latency.P99, r.Etcd.Throughput, *r.Ratio)
		}
		note("rss-peak-MiB", float64(slices.Max(peak.max()))/1024)

		// The sessions stay open; let the nodes settle, then size them.
		select {
		case <-ctx.Done():
			b.Fatal(ctx.Err())
		case <-time.After(10 * time.Second):
		}
		var after []int64
		for _, n := range nodes {
			kib, err := vmRSS(n.PID())
			if err != nil {
				b.Fatal(err)
			}
			after = append(after, kib)
		}
		note("rss-after-MiB", float64(slices.Max(after))/1024)
		before, compacted, err := dbSizes(ctx, nodes)
		if err != nil {
			b.Fatal(err)
		}
		note("db-MiB", before)
		note("db-compacted-MiB", compacted)
		b.Logf("VmRSS per node (MiB): peak during the run %s, 10 s after it %s; etcd db %.1f MiB, %.1f MiB after compaction and defragmentation",
			mib(peak.max()), mib(after), before, compacted)
		c.Close()
		cancel()
	}
	b.ReportMetric(0, "ns/op")
	names := slices.Sorted(func(yield func(string) bool) {
		for k := range metrics {
			if !yield(k) {
				return
			}
		}
	})
	for _, name := range names {
		b.ReportMetric(median(metrics[name]), name)
	}
}

// memLimitedVoters is threeVoters with GOMEMLIMIT=limit in every node's
// environment (none when limit is empty).
func memLimitedVoters(ctx context.Context, tb testing.TB, limit string) *e2e.Cluster {
	tb.Helper()
	c := e2e.NewCluster(tb, bin)
	var nodes []*e2e.Node
	for i := 1; i <= 3; i++ {
		n := c.Add(fmt.Sprintf("n%d", i), "--bootstrap-expect", "3", "--voters", "3")
		if limit != "" {
			n.Env = append(n.Env, "GOMEMLIMIT="+limit)
		}
		nodes = append(nodes, n)
	}
	for _, n := range nodes {
		for _, o := range nodes {
			if o != n {
				n.Join = append(n.Join, o.Gossip)
			}
		}
	}
	c.Start(nodes...)
	c.WaitFor(ctx, "3 voters", c.Formed(3, 0))
	return c
}

func mib(kib []int64) string {
	parts := make([]string, len(kib))
	for i, k := range kib {
		parts[i] = fmt.Sprintf("%.0f", float64(k)/1024)
	}
	return strings.Join(parts, " / ")
}

// rssPeak keeps the largest VmRSS seen of each node.
type rssPeak struct {
	nodes []*e2e.Node
	mu    sync.Mutex
	peak  []int64 // KiB
}

func newRSSPeak(nodes []*e2e.Node) *rssPeak {
	return &rssPeak{nodes: nodes, peak: make([]int64, len(nodes))}
}

// sample reads every node's VmRSS every interval until the returned stop
// is called (which waits for the sampler to end).
func (p *rssPeak) sample(every time.Duration) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			for i, n := range p.nodes {
				if kib, err := vmRSS(n.PID()); err == nil {
					p.mu.Lock()
					p.peak[i] = max(p.peak[i], kib)
					p.mu.Unlock()
				}
			}
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	})
	return func() { close(done); wg.Wait() }
}

func (p *rssPeak) max() []int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.peak)
}

// dbSizes returns the largest etcd database size of the nodes' members
// (MiB, Maintenance Status), then compacts the history to the current
// revision, defragments every member and returns the largest size again.
func dbSizes(ctx context.Context, nodes []*e2e.Node) (before, after float64, err error) {
	var eps []string
	for _, n := range nodes {
		eps = append(eps, "http://"+n.Etcd)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: eps, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return 0, 0, err
	}
	defer cli.Close()
	size := func() (float64, int64, error) {
		var largest, rev int64
		for _, ep := range eps {
			st, err := cli.Status(ctx, ep)
			if err != nil {
				return 0, 0, fmt.Errorf("status of %s: %w", ep, err)
			}
			largest, rev = max(largest, st.DbSize), max(rev, st.Header.Revision)
		}
		return float64(largest) / (1 << 20), rev, nil
	}
	before, rev, err := size()
	if err != nil {
		return 0, 0, err
	}
	if _, err := cli.Compact(ctx, rev, clientv3.WithCompactPhysical()); err != nil {
		return 0, 0, fmt.Errorf("compact: %w", err)
	}
	for _, ep := range eps {
		if err := compactionSettled(ctx, cli, ep); err != nil {
			return 0, 0, err
		}
		dctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		_, err := cli.Defragment(dctx, ep)
		cancel()
		if err != nil {
			return 0, 0, fmt.Errorf("defragment %s: %w", ep, err)
		}
	}
	after, _, err = size()
	return before, after, err
}

// compactionSettled waits until member ep has applied the compaction: its
// database's size in use has stayed within 1 MiB for 10 s (the nodes' own
// small writes go on meanwhile). The compaction waits only for the member
// that took the request; the others delete the old revisions in the
// background, and defragmenting such a member before it is done frees
// nothing (one member of a run kept 290 of its 294 MiB so). After 3 minutes
// it goes on all the same: the size after is then the larger.
func compactionSettled(ctx context.Context, cli *clientv3.Client, ep string) error {
	const poll, still, slack = 500 * time.Millisecond, 10 * time.Second, 1 << 20
	deadline := time.Now().Add(3 * time.Minute)
	var last int64 = -1
	since := time.Now()
	for time.Now().Before(deadline) {
		st, err := cli.Status(ctx, ep)
		if err != nil {
			return fmt.Errorf("status of %s: %w", ep, err)
		}
		if last < 0 || st.DbSizeInUse < last-slack || st.DbSizeInUse > last+slack {
			last, since = st.DbSizeInUse, time.Now()
		} else if time.Since(since) >= still {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(poll):
		}
	}
	return nil
}
