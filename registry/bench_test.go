package registry_test

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/roster-dev/roster/registry"
	"github.com/roster-dev/roster/registry/internal/proc"
)

// The benchmarks compare Roster's session operations with the same work
// done directly on etcd, against one embedded etcd, in one run:
//
//	go test -run '^$' -bench . -benchtime 5000x -count 5 ./registry/ | tee bench.txt
//
// Each runs 64 concurrent clients (b.SetParallelism(32) on 2 cores; see
// parallelism). Opens report opens/s; heartbeats report heartbeats/s.

// reportCPU reports the CPU time the process used per op since cpu0
// (cpu-us/op): registry, embedded etcd and clients together. Unlike the
// throughput, it hardly depends on what else the machine runs.
func reportCPU(b *testing.B, cpu0 time.Duration) {
	b.ReportMetric(float64(proc.CPUTime()-cpu0)/float64(time.Microsecond)/float64(b.N), "cpu-us/op")
}

// parallelism makes RunParallel run 64 goroutines whatever GOMAXPROCS is.
func parallelism(b *testing.B) {
	b.SetParallelism(max(1, 64/runtime.GOMAXPROCS(0)))
}

// BenchmarkOpen: Roster opens (lease grant + one transaction with the
// single-login compare, record and four index keys), distinct users.
func BenchmarkOpen(b *testing.B) { benchOpens(b, newRegistry(b)) }

// BenchmarkOpenNoAudit: BenchmarkOpen on a node that keeps no audit log,
// to show what recording the login in the open's transaction costs.
func BenchmarkOpenNoAudit(b *testing.B) {
	benchOpens(b, newRegistry(b, func(c *registry.Config) { c.AuditRetention = 0 }))
}

// BenchmarkOpenWithSeat: BenchmarkOpen in a module with a licence of
// MaxSeats seats: each open also takes a seat in its transaction.
func BenchmarkOpenWithSeat(b *testing.B) {
	r := newRegistry(b)
	if _, err := r.SetLicense(context.Background(), admin, "default", "sales", registry.LicenseSpec{Seats: registry.MaxSeats}); err != nil {
		b.Fatal(err)
	}
	benchOpens(b, r)
}

// benchOpens opens sessions of distinct users in module sales from 64
// clients and reports opens/s.
func benchOpens(b *testing.B, r *registry.Registry) {
	var seq atomic.Int64
	parallelism(b)
	b.ResetTimer()
	cpu0 := proc.CPUTime()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := seq.Add(1)
			if _, err := r.Open(context.Background(), admin, registry.OpenRequest{User: fmt.Sprintf("u%d", i), Module: "sales", Host: "PC"}); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "opens/s")
	reportCPU(b, cpu0)
}

// BenchmarkRawGrantTxn: the raw etcd floor of an open, Grant + a Txn that
// puts one key on the lease.
func BenchmarkRawGrantTxn(b *testing.B) {
	newRegistry(b) // wipes keys and leases
	cli := etcd.Client()
	var seq atomic.Int64
	parallelism(b)
	b.ResetTimer()
	cpu0 := proc.CPUTime()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := seq.Add(1)
			l, err := cli.Grant(context.Background(), 60)
			if err != nil {
				b.Error(err)
				return
			}
			key := fmt.Sprintf("/roster/bench/%d", i)
			if _, err := cli.Txn(context.Background()).
				If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
				Then(clientv3.OpPut(key, "session", clientv3.WithLease(l.ID))).Commit(); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "opens/s")
	reportCPU(b, cpu0)
}

// BenchmarkHeartbeat: Roster heartbeats (session lookup + renewal over a
// shared long-lived keepalive stream) on 1,000 live sessions.
func BenchmarkHeartbeat(b *testing.B) {
	r := newRegistry(b)
	ids := make([]string, 1000)
	for i := range ids {
		ids[i] = open(b, r, admin, registry.OpenRequest{User: fmt.Sprintf("u%d", i), Module: "sales"}).ID
	}
	var seq atomic.Int64
	parallelism(b)
	b.ResetTimer()
	cpu0 := proc.CPUTime()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			id := ids[seq.Add(1)%int64(len(ids))]
			if _, err := r.Heartbeat(context.Background(), admin, id); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "heartbeats/s")
	reportCPU(b, cpu0)
}

// BenchmarkRawKeepAlive: the raw etcd floor of a heartbeat, one renewal
// on a long-lived LeaseKeepAlive stream per client, on 1,000 leases.
func BenchmarkRawKeepAlive(b *testing.B) {
	newRegistry(b)
	cli := etcd.Client()
	leases := make([]int64, 1000)
	for i := range leases {
		l, err := cli.Grant(context.Background(), 60)
		if err != nil {
			b.Fatal(err)
		}
		leases[i] = int64(l.ID)
	}
	var seq atomic.Int64
	parallelism(b)
	b.ResetTimer()
	cpu0 := proc.CPUTime()
	b.RunParallel(func(p *testing.PB) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		stream, err := pb.NewLeaseClient(cli.ActiveConnection()).LeaseKeepAlive(ctx)
		if err != nil {
			b.Error(err)
			return
		}
		for p.Next() {
			id := leases[seq.Add(1)%int64(len(leases))]
			if err := stream.Send(&pb.LeaseKeepAliveRequest{ID: id}); err != nil {
				b.Error(err)
				return
			}
			if resp, err := stream.Recv(); err != nil || resp.TTL <= 0 {
				b.Errorf("renew: %v %v", resp, err)
				return
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "heartbeats/s")
	reportCPU(b, cpu0)
}

// BenchmarkHistoryLag: how long after a session's end its history record is
// visible, with sessions ending at about 500 a second (logouts and kills
// alternately, one every 2 ms, at most 64 at once) while the history duty
// runs. An op is one end. The lag runs from the tombstone's creation to the
// record's, both as one watcher in this process sees them. It reports the
// lag's p50, p99 and maximum (ms), the p99 of the ends' own calls (logout or
// kill, for comparison: both wait for the same etcd) and the ends per second
// achieved:
//
//	go test -run '^$' -bench HistoryLag -benchtime 5000x -count 3 ./registry/
func BenchmarkHistoryLag(b *testing.B) {
	r := newRegistry(b)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ids := make([]string, b.N)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range 32 {
		wg.Go(func() {
			for i := next.Add(1) - 1; i < int64(b.N); i = next.Add(1) - 1 {
				s, err := r.Open(ctx, admin, registry.OpenRequest{User: fmt.Sprintf("u%d", i), Module: "sales", TTLSeconds: 300})
				if err != nil {
					b.Error(err)
					return
				}
				ids[i] = s.ID
			}
		})
	}
	wg.Wait()
	if b.Failed() {
		return
	}

	// One watcher sees both ends and records, on one clock.
	var mu sync.Mutex
	ended, recorded := map[string]time.Time{}, map[string]time.Time{}
	all, closed := make(chan struct{}), false
	follow := func(prefix string, seen map[string]time.Time) {
		for resp := range etcd.Client().Watch(ctx, prefix, clientv3.WithPrefix(), clientv3.WithFilterDelete()) {
			now := time.Now()
			mu.Lock()
			for _, ev := range resp.Events {
				k := string(ev.Kv.Key)
				seen[k[strings.LastIndexByte(k, '/')+1:]] = now
			}
			if len(recorded) == b.N && len(ended) == b.N && !closed {
				close(all)
				closed = true
			}
			mu.Unlock()
		}
	}
	var watchers sync.WaitGroup
	watchers.Go(func() { follow("/roster/v1/tombstones/", ended) })
	watchers.Go(func() { follow("/roster/v1/history/", recorded) })
	defer watchers.Wait()
	defer cancel()

	duty := make(chan struct{})
	go func() {
		defer close(duty)
		r.RecordHistory(ctx)
	}()
	defer func() { cancel(); <-duty }()
	for { // the duty follows the tombstones once it has written its first checkpoint
		resp, err := etcd.Client().Get(ctx, "/roster/v1/history-checkpoint")
		if err != nil {
			b.Fatal(err)
		}
		if len(resp.Kvs) == 1 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // its watch is set up

	b.ResetTimer()
	tick := time.NewTicker(2 * time.Millisecond)
	sem := make(chan struct{}, 64)
	took := make([]float64, b.N) // each end's own call, for comparison
	for i, id := range ids {
		<-tick.C
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			begin := time.Now()
			defer func() { took[i] = float64(time.Since(begin)) / float64(time.Millisecond) }()
			var err error
			if i%2 == 0 {
				_, err = r.Logout(ctx, admin, id)
			} else {
				_, err = r.Kill(ctx, admin, id, "bench")
			}
			if err != nil {
				b.Error(err)
			}
		})
	}
	wg.Wait()
	tick.Stop()
	elapsed := b.Elapsed()
	select {
	case <-all:
	case <-time.After(30 * time.Second):
		mu.Lock()
		defer mu.Unlock()
		b.Fatalf("after 30 s, %d of %d ends recorded", len(recorded), b.N)
	}
	b.StopTimer()

	mu.Lock()
	defer mu.Unlock()
	lags := make([]float64, 0, b.N)
	for _, id := range ids {
		lags = append(lags, float64(recorded[id].Sub(ended[id]))/float64(time.Millisecond))
	}
	slices.Sort(lags)
	slices.Sort(took)
	pct := func(xs []float64, p float64) float64 { return xs[min(len(xs)-1, int(p*float64(len(xs))))] }
	b.ReportMetric(pct(lags, 0.50), "p50-ms")
	b.ReportMetric(pct(lags, 0.99), "p99-ms")
	b.ReportMetric(lags[len(lags)-1], "max-ms")
	b.ReportMetric(pct(took, 0.99), "end-call-p99-ms")
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "ends/s")
}

// BenchmarkBatchHeartbeat compares two ways an application server keeps
// 10,000 sessions alive, in sessions renewed per second (sessions/s):
//
//   - batch: one HeartbeatBatch call renews the shared connection and all
//     10,000 sessions opened through it (an op is one call);
//   - single: one Heartbeat per session, from 64 concurrent clients (an op
//     is one heartbeat), as without batches.
//
// Both ride the same long-lived keepalive streams.
//
//	go test -run '^$' -bench BatchHeartbeat -benchtime 3s -count 5 ./registry/
func BenchmarkBatchHeartbeat(b *testing.B) {
	r := newRegistry(b)
	ctx := context.Background()
	if _, err := r.PutUser(ctx, admin, "default", "web", registry.UserSpec{Rights: []registry.Right{registry.RightMultiLogin}, Services: []string{"web"}}); err != nil {
		b.Fatal(err)
	}
	conn, err := r.RegisterConnection(ctx, admin, registry.ConnectionRequest{Service: "web", TTLSeconds: 600})
	if err != nil {
		b.Fatal(err)
	}
	ids := make([]string, registry.MaxBatchSessions)
	var seq atomic.Int64
	var wg sync.WaitGroup
	for range 32 {
		wg.Go(func() {
			for i := seq.Add(1) - 1; i < int64(len(ids)); i = seq.Add(1) - 1 {
				s, err := r.Open(ctx, admin, registry.OpenRequest{User: "web", Module: "sales", TTLSeconds: 600, Connections: []string{conn.ID}})
				if err != nil {
					b.Error(err)
					return
				}
				ids[i] = s.ID
			}
		})
	}
	wg.Wait()
	if b.Failed() {
		return
	}
	b.Run("batch", func(b *testing.B) {
		req := registry.BatchHeartbeatRequest{Connection: conn.ID, Sessions: ids}
		for b.Loop() {
			res, err := r.HeartbeatBatch(ctx, admin, req)
			if err != nil {
				b.Fatal(err)
			}
			if res.Sessions[len(ids)-1].Err != nil {
				b.Fatal(res.Sessions[len(ids)-1].Err)
			}
		}
		b.ReportMetric(float64(b.N*len(ids))/b.Elapsed().Seconds(), "sessions/s")
	})
	b.Run("single", func(b *testing.B) {
		var seq atomic.Int64
		parallelism(b)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := r.Heartbeat(ctx, admin, ids[seq.Add(1)%int64(len(ids))]); err != nil {
					b.Error(err)
					return
				}
			}
		})
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "sessions/s")
	})
}
