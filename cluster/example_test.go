package cluster_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/roster-dev/roster/cluster"
	"github.com/roster-dev/roster/cluster/clustertest/loopback"
)

func ExampleStart() {
	dataDir, err := os.MkdirTemp("", "roster-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dataDir)

	cfg := cluster.DefaultConfig()
	cfg.Name = "n1"
	cfg.DataDir = filepath.Join(dataDir, "etcd")
	// A node keeps the default ports; the example takes free ones.
	for _, addr := range []*string{&cfg.ClientListen, &cfg.PeerListen} {
		if *addr, err = loopback.Addr(); err != nil {
			log.Fatal(err)
		}
	}

	ctx := context.Background()
	m, err := cluster.Start(ctx, cfg)
	if err != nil {
		log.Fatal(err)
	}
	defer m.Close()

	if _, err := m.Client().Put(ctx, "/roster/hello", "world"); err != nil {
		log.Fatal(err)
	}
	resp, err := m.Client().Get(ctx, "/roster/hello")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s\n", resp.Kvs[0].Value)
	// Output: world
}
