//go:build unix

package registry_test

import (
	"context"
	"flag"
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/roster-dev/roster/registry"
	"github.com/roster-dev/roster/registry/internal/proc"
)

// listSessions is how many live sessions BenchmarkList lists; the default
// keeps a run short, the figures of docs/performance.md pass 100000:
//
//	go test -run '^$' -bench BenchmarkList -benchtime 200x ./registry/ -args -list-sessions 100000
//
// -list-cpuprofile FILE profiles the listings alone (-cpuprofile would
// include the opens of the set-up).
var (
	listSessions = flag.Int("list-sessions", 20_000, "live sessions BenchmarkList opens")
	listProfile  = flag.String("list-cpuprofile", "", "write a CPU profile of BenchmarkList's listings, without its set-up, to `file`")
)

// BenchmarkList: pages of 1,000 sessions (Registry.List, the work behind
// GET /v1/sessions) among -list-sessions live sessions in ten modules,
// read by 8 concurrent readers that each follow next_cursor, as roster
// bench list does; and, for comparison, raw etcd range reads of 1,000 of
// the session records. Phases: unfiltered (every session), module (one
// module: a tenth, read by its index), kind (client kind ui: a third, a
// filter applied to the index values), raw; unfiltered and module also
// cold, each page read as by a node that has cached none of the records
// (the node caches every record it reads, and a record never changes while
// its session lives). It reports each phase's
// pages/s, its page latency p50 and p99 (ms), and the CPU time this
// process (the readers, the registry and the embedded etcd member) spent
// per page (cpu-ms/page), which other load on the machine disturbs less
// than the latencies.
func BenchmarkList(b *testing.B) {
	r := newRegistry(b)
	ctx := context.Background()
	n := *listSessions
	kinds := []registry.ClientKind{registry.KindUI, registry.KindBackground, registry.KindAppServer}
	var seq atomic.Int64
	var wg sync.WaitGroup
	begin := time.Now()
	for range 32 {
		wg.Go(func() {
			for i := seq.Add(1) - 1; i < int64(n); i = seq.Add(1) - 1 {
				_, err := r.Open(ctx, admin, registry.OpenRequest{User: fmt.Sprintf("u%d", i), Module: fmt.Sprintf("m%d", i%10),
					ClientKind: kinds[i%3], TTLSeconds: 3600, Labels: map[string]string{"build": "26.4"}})
				if err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if b.Failed() {
		return
	}
	b.Logf("opened %d sessions in %s", n, time.Since(begin).Round(time.Millisecond))
	if *listProfile != "" {
		f, err := os.Create(*listProfile)
		if err != nil {
			b.Fatal(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			b.Fatal(err)
		}
		defer func() {
			pprof.StopCPUProfile()
			f.Close()
		}()
	}
	const readers, limit = 8, registry.MaxListLimit
	// cold: every page is read as by a node that has cached no record.
	page := func(b *testing.B, f registry.ListFilter, cold bool) {
		readPages(b, readers, func(cursor string) (string, error) {
			f := f
			f.Limit, f.Cursor = limit, cursor
			if cold {
				r.ForgetCached()
			}
			p, err := r.List(ctx, admin, f)
			return p.NextCursor, err
		})
	}
	b.Run("unfiltered", func(b *testing.B) { page(b, registry.ListFilter{}, false) })
	b.Run("unfiltered-cold", func(b *testing.B) { page(b, registry.ListFilter{}, true) })
	b.Run("module", func(b *testing.B) { page(b, registry.ListFilter{Module: "m0"}, false) })
	b.Run("module-cold", func(b *testing.B) { page(b, registry.ListFilter{Module: "m0"}, true) })
	b.Run("kind", func(b *testing.B) { page(b, registry.ListFilter{ClientKind: registry.KindUI}, false) })
	b.Run("raw", func(b *testing.B) {
		cli := etcd.Client()
		const prefix = "/roster/v1/sessions/"
		end := clientv3.GetPrefixRangeEnd(prefix)
		readPages(b, readers, func(cursor string) (string, error) {
			if cursor == "" {
				cursor = prefix
			}
			resp, err := cli.Get(ctx, cursor, clientv3.WithRange(end), clientv3.WithLimit(limit))
			if err != nil || !resp.More {
				return "", err
			}
			return string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00", nil
		})
	})
}

// readPages has readers read pages one after the other with next, each
// following its own cursor ("" starts over), and reports them (reportPages).
func readPages(b *testing.B, readers int, next func(cursor string) (string, error)) {
	var mu sync.Mutex
	var lats []time.Duration
	cursors := make([]string, readers)
	var reader atomic.Int64
	b.SetParallelism(max(1, readers/runtime.GOMAXPROCS(0)))
	cpu0 := proc.CPUTime()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		w := int(reader.Add(1)-1) % readers
		var mine []time.Duration
		for pb.Next() {
			t0 := time.Now()
			cursor, err := next(cursors[w])
			mine = append(mine, time.Since(t0))
			if err != nil {
				b.Error(err)
				return
			}
			cursors[w] = cursor
		}
		mu.Lock()
		lats = append(lats, mine...)
		mu.Unlock()
	})
	b.StopTimer()
	reportPages(b, lats, proc.CPUTime()-cpu0)
}

// reportPages reports pages/s, the p50 and p99 of the page latencies, and
// cpu spent per page.
func reportPages(b *testing.B, lats []time.Duration, cpu time.Duration) {
	if len(lats) == 0 {
		return
	}
	slices.Sort(lats)
	q := func(p float64) float64 {
		return float64(lats[min(len(lats)-1, int(p*float64(len(lats))))]) / float64(time.Millisecond)
	}
	b.ReportMetric(float64(len(lats))/b.Elapsed().Seconds(), "pages/s")
	b.ReportMetric(q(0.50), "p50-ms")
	b.ReportMetric(q(0.99), "p99-ms")
	b.ReportMetric(float64(cpu)/float64(time.Millisecond)/float64(len(lats)), "cpu-ms/page")
}
