package liveness_test

import (
	"fmt"
	"time"

	"github.com/roster-dev/roster/registry/liveness"
)

// A node alone: the heartbeat it notes keeps the session alive for its TTL; then, once
// the node's own notes are sealed past that moment, the session has lapsed.
func ExampleView() {
	cfg := liveness.DefaultConfig()
	cfg.Node, cfg.Interval = "n1", 10*time.Millisecond
	v, err := liveness.New(cfg)
	if err != nil {
		panic(err)
	}
	v.Start("peer-secret")
	defer v.Close()

	const id, ttl = "0193f2a1b2c3d4e5f60718293a4b5c6d", 50 * time.Millisecond
	v.Note(id)
	fmt.Println(v.Check(id, time.Hour, time.Time{}).State)
	for v.Check(id, ttl, time.Time{}).State != liveness.Lapsed {
		time.Sleep(5 * time.Millisecond)
	}
	fmt.Println(v.Check(id, ttl, time.Time{}).State)
	// Output:
	// alive
	// lapsed
}
