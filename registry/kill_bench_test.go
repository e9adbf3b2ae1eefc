package registry_test

import (
	"context"
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/roster-dev/roster/registry"
	"github.com/roster-dev/roster/registry/internal/proc"
)

// BenchmarkKill: kills through one node of three registries on the one
// embedded etcd (each with its own watches, as three nodes have), from 8
// clients, of sessions opened before the timer starts. It reports kills/s
// and the CPU per kill of the whole process, counted until the killed
// sessions' leases are revoked, so that the work each kill leaves behind
// (the revocation, the other nodes' watches) is in it:
//
//	go test -run '^$' -bench 'BenchmarkKill$' -benchtime 2000x -count 5 ./registry/
func BenchmarkKill(b *testing.B) {
	r := newRegistry(b)
	for _, node := range []string{"n2", "n3"} {
		otherNode(b, node, "fra")
	}
	ids := make([]string, b.N)
	for i := range ids {
		ids[i] = open(b, r, admin, registry.OpenRequest{User: fmt.Sprintf("u%d", i), Module: "sales"}).ID
	}
	r.PooledLeases()
	leases := leaseCount(b)
	var seq atomic.Int64
	b.SetParallelism(max(1, 8/runtime.GOMAXPROCS(0)))
	b.ResetTimer()
	cpu0, t0 := proc.CPUTime(), time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			id := ids[seq.Add(1)-1]
			if _, err := r.Kill(context.Background(), admin, id, "bench"); err != nil {
				b.Error(err)
				return
			}
		}
	})
	elapsed := time.Since(t0)
	eventually(b, 10*time.Second, "the killed sessions' leases revoked", func() bool { return leaseCount(b) <= leases-b.N+1 }) // +1: the tombstones' lease
	b.StopTimer()
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "kills/s")
	reportCPU(b, cpu0)
}
