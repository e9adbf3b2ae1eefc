package registry_test

import (
	"context"
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/roster-dev/roster/registry"
)

// The benchmarks compare Roster's session operations with the same work
// done directly on etcd, against one embedded etcd, in one run:
//
//	go test -run '^$' -bench . -benchtime 5000x -count 5 ./registry/ | tee bench.txt
//
// Each runs 64 concurrent clients (b.SetParallelism(32) on 2 cores; see
// parallelism). Opens report opens/s; heartbeats report heartbeats/s.

// parallelism makes RunParallel run 64 goroutines whatever GOMAXPROCS is.
func parallelism(b *testing.B) {
	b.SetParallelism(max(1, 64/runtime.GOMAXPROCS(0)))
}

// BenchmarkOpen: Roster opens (lease grant + one transaction with the
// single-login compare, record and four index keys), distinct users.
func BenchmarkOpen(b *testing.B) {
	r := newRegistry(b)
	var seq atomic.Int64
	parallelism(b)
	b.ResetTimer()
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
}

// BenchmarkRawGrantTxn: the raw etcd floor of an open, Grant + a Txn that
// puts one key on the lease.
func BenchmarkRawGrantTxn(b *testing.B) {
	newRegistry(b) // wipes keys and leases
	cli := etcd.Client()
	var seq atomic.Int64
	parallelism(b)
	b.ResetTimer()
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
}
