package ha_test

import (
	"context"
	"fmt"
	"log"
	"os"

	"github.com/roster-dev/roster/cluster/clustertest"
	"github.com/roster-dev/roster/ha"
)

func ExampleRunner() {
	dir, err := os.MkdirTemp("", "roster-ha-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	m, err := clustertest.StartIn(context.Background(), dir)
	if err != nil {
		log.Fatal(err)
	}
	defer m.Close()

	leading := make(chan struct{})
	deadlines := ha.Duty{Name: "deadlines", Run: func(ctx context.Context) error {
		select {
		case <-leading:
		default:
			close(leading)
		}
		// Read the shutdown requests from etcd, enforce their deadlines, and
		// stop when ctx ends.
		<-ctx.Done()
		return nil
	}}
	r, err := ha.New(ha.Config{Client: m.Client(), Node: "n1"}, deadlines)
	if err != nil {
		log.Fatal(err)
	}
	r.Start(context.Background())
	defer r.Close()

	<-leading
	leader, err := r.Leader(context.Background())
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("leader:", leader, r.IsLeader())
	// Output: leader: n1 true
}
