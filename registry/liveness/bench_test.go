package liveness_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/roster-dev/roster/registry/liveness"
)

// BenchmarkHeartbeatPath: what a heartbeat adds on a node with a view: a Check of the
// session (the fast path: a beat within its TTL is known) and a Note, for 100,000
// sessions, from parallel goroutines.
//
//	go test -run '^$' -bench HeartbeatPath ./liveness/
func BenchmarkHeartbeatPath(b *testing.B) {
	cfg := liveness.DefaultConfig()
	cfg.Node = "n1"
	v, err := liveness.New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	v.Start("s")
	defer v.Close()
	ids := make([]string, 100_000)
	for i := range ids {
		ids[i] = fmt.Sprintf("%032x", uint64(i)*0x9e3779b97f4a7c15)
		v.Note(ids[i])
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			id := ids[i%len(ids)]
			if v.Check(id, time.Minute, time.Time{}).State == liveness.Lapsed {
				b.Error("lapsed")
			}
			v.Note(id)
			i += 7
		}
	})
}
