// Package cluster runs this node's infrastructure: the embedded etcd member that stores
// Roster's state. It is the only package that imports etcd's server; the rest of Roster
// sees a *clientv3.Client and the member's lifecycle: Start, Err, Done and Close.
//
// Today a node runs a single-member cluster. Start creates it on first use and restarts
// it from its data dir afterwards, keeping keys and leases.
//
// Example:
//
//	cfg := cluster.DefaultConfig()
//	cfg.Name = "n1"
//	cfg.DataDir = filepath.Join(dataDir, "etcd")
//	cfg.EtcdLogger, cfg.Logger = etcdLog, log
//	m, err := cluster.Start(ctx, cfg)
//	if err != nil {
//		return err
//	}
//	defer m.Close()
//	if _, err := m.Client().Put(ctx, "/roster/hello", "world"); err != nil {
//		return err
//	}
//	select {
//	case err := <-m.Err(): // etcd failed: stop the node
//		return err
//	case <-ctx.Done():
//		return nil
//	}
package cluster
