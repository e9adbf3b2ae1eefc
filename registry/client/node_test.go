package client_test

import (
	"context"
	"fmt"
	"io"
	"net/http/httptest"
	"os"
	"sync"
	"time"

	"github.com/roster-dev/roster/cluster"
	"github.com/roster-dev/roster/cluster/clustertest"
	"github.com/roster-dev/roster/registry"
	"github.com/roster-dev/roster/registry/api"
)

// realNode is a real Roster node in this process: an embedded etcd
// member, a registry and the HTTP API on a loopback port.
type realNode struct {
	URL        string
	AdminToken string
	Registry   *registry.Registry

	member *cluster.Member
	srv    *httptest.Server
	dir    string
}

var (
	nodeOnce sync.Once
	node     *realNode
	nodeErr  error
)

// sharedNode starts the package's real node on first use; TestMain
// closes it.
func sharedNode() (*realNode, error) {
	nodeOnce.Do(func() { node, nodeErr = startNode() })
	return node, nodeErr
}

func startNode() (*realNode, error) {
	dir, err := os.MkdirTemp("", "roster-client-test-")
	if err != nil {
		return nil, err
	}
	n := &realNode{dir: dir}
	if n.member, err = clustertest.StartIn(context.Background(), dir); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	cfg := registry.DefaultConfig()
	cfg.Client, cfg.Node, cfg.MinTTL = n.member.Client(), "n1", time.Second
	if n.Registry, err = registry.New(cfg); err != nil {
		n.Close()
		return nil, err
	}
	if err := n.Registry.Start(context.Background()); err != nil {
		n.Close()
		return nil, err
	}
	n.AdminToken = registry.NewAPIToken()
	if _, err := n.Registry.EnsureAdminToken(context.Background(), n.AdminToken); err != nil {
		n.Close()
		return nil, fmt.Errorf("admin token: %w", err)
	}
	n.srv = httptest.NewServer(api.New(api.Config{Registry: n.Registry, Node: "n1", Cluster: memberCluster{n.member}}))
	n.URL = n.srv.URL
	return n, nil
}

// memberCluster serves the API's cluster endpoints from the node's one
// member: the snapshot is etcd's own, the member list a single row.
type memberCluster struct{ m *cluster.Member }

func (c memberCluster) Members(ctx context.Context) ([]cluster.MemberStatus, error) {
	return []cluster.MemberStatus{{Name: "n1", Gossip: cluster.GossipAlive, EtcdRole: cluster.RoleVoter, Leader: true, Healthy: true}}, nil
}

func (c memberCluster) Snapshot(ctx context.Context, w io.Writer) error {
	rc, err := c.m.Client().Snapshot(ctx)
	if err != nil {
		return err
	}
	defer rc.Close()
	_, err = io.Copy(w, rc)
	return err
}

// Close stops the API, the registry and etcd, in that order.
func (n *realNode) Close() {
	if n.srv != nil {
		n.srv.CloseClientConnections()
		n.srv.Close()
	}
	if n.Registry != nil {
		n.Registry.Close()
	}
	if n.member != nil {
		n.member.Close()
	}
	os.RemoveAll(n.dir)
}
