package cluster

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/roster-dev/roster/cluster/clustertest/loopback"
)

// testNodeConfig returns the config of node name with data in a temp dir and free ports.
func testNodeConfig(t *testing.T, name string, log *slog.Logger) NodeConfig {
	t.Helper()
	cfg := DefaultNodeConfig()
	cfg.DataDir = t.TempDir()
	cfg.Member.Name = name
	cfg.Member.ClientListen, cfg.Member.PeerListen = loopback.MustAddr(t), loopback.MustAddr(t)
	cfg.Member.StartTimeout = 30 * time.Second
	cfg.Gossip.Name = name
	cfg.Gossip.Listen = loopback.MustGossipAddr(t)
	cfg.Gossip.ReclaimAfter = time.Second
	cfg.APIURL = "http://" + loopback.MustAddr(t)
	cfg.Logger = log.With("node", name)
	return cfg
}

// startNodes starts the nodes concurrently and closes them when the test ends.
func startNodes(t *testing.T, cfgs ...NodeConfig) []*Node {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	nodes := make([]*Node, len(cfgs))
	errs := make(chan error, len(cfgs))
	for i, cfg := range cfgs {
		go func() {
			n, err := StartNode(ctx, cfg)
			nodes[i] = n
			if err != nil {
				err = fmt.Errorf("start %s: %w", cfg.Member.Name, err)
			}
			errs <- err
		}()
	}
	for range cfgs {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range nodes {
		t.Cleanup(func() { n.Close() })
	}
	return nodes
}

// waitRoles waits until n lists exactly the roles want (name → role) for the nodes named.
func waitRoles(t *testing.T, n *Node, want map[string]string) []MemberStatus {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	var last []MemberStatus
	var lastErr error
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		last, lastErr = n.Members(ctx)
		cancel()
		got := map[string]string{}
		for _, m := range last {
			got[m.Name] = m.EtcdRole
		}
		if lastErr == nil && fmt.Sprint(got) == fmt.Sprint(want) {
			return last
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("roles never became %v; last members %+v (error %v)", want, last, lastErr)
	return nil
}

func TestNodesBootstrapExpectAndStandby(t *testing.T) {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	var cfgs []NodeConfig
	for _, name := range []string{"n1", "n2", "n3"} {
		cfgs = append(cfgs, testNodeConfig(t, name, log))
	}
	for i := range cfgs {
		cfgs[i].BootstrapExpect = 3
		for j := range cfgs {
			if i != j {
				cfgs[i].Gossip.Join = append(cfgs[i].Gossip.Join, cfgs[j].Gossip.Listen)
			}
		}
	}
	nodes := startNodes(t, cfgs...)
	ms := waitRoles(t, nodes[2], map[string]string{"n1": RoleVoter, "n2": RoleVoter, "n3": RoleVoter})
	leaders := 0
	for _, m := range ms {
		if m.Leader {
			leaders++
		}
		if m.Gossip != GossipAlive || !strings.HasPrefix(m.APIURL, "http://127.0.0.1:") {
			t.Errorf("member %+v: want gossip alive and its API URL", m)
		}
		for _, c := range cfgs {
			if c.Member.Name == m.Name && m.EtcdClientURL != "http://"+c.Member.ClientListen {
				t.Errorf("member %s: etcd client URL %q, want http://%s (its --etcd-listen)", m.Name, m.EtcdClientURL, c.Member.ClientListen)
			}
		}
	}
	if leaders != 1 {
		t.Errorf("%d leaders in %+v, want 1", leaders, ms)
	}

	// Every node's client reaches the one cluster.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := nodes[2].Client().Put(ctx, "/test/k", "v"); err != nil {
		t.Fatal(err)
	}
	resp, err := nodes[0].Client().Get(ctx, "/test/k")
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("read through n1: %v %v", resp, err)
	}

	// A fourth node becomes the standby learner, a fifth runs no member.
	c4, c5 := testNodeConfig(t, "n4", log), testNodeConfig(t, "n5", log)
	c4.Gossip.Join = []string{cfgs[0].Gossip.Listen}
	c5.Gossip.Join = []string{cfgs[1].Gossip.Listen}
	more := startNodes(t, c4)
	waitRoles(t, nodes[0], map[string]string{"n1": RoleVoter, "n2": RoleVoter, "n3": RoleVoter, "n4": RoleLearner})
	more = append(more, startNodes(t, c5)...)
	waitRoles(t, nodes[0], map[string]string{"n1": RoleVoter, "n2": RoleVoter, "n3": RoleVoter, "n4": RoleLearner, "n5": RoleNone})
	// The learner's client URL is known once its member has started.
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		ms, err := nodes[0].Members(ctx)
		cancel()
		var bad []string
		for _, m := range ms {
			if (m.Name == "n4") != (m.EtcdClientURL == "http://"+c4.Member.ClientListen) || (m.Name == "n5" && m.EtcdClientURL != "") {
				bad = append(bad, fmt.Sprintf("%s %q", m.Name, m.EtcdClientURL))
			}
		}
		if err == nil && len(bad) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("etcd client URLs %v (error %v): want the learner n4's http://%s and none for n5, which runs no member", bad, err, c4.Member.ClientListen)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if r := more[1].Role(); r != RoleNone {
		t.Errorf("n5 role %q, want none", r)
	}
	if _, err := more[1].Client().Put(ctx, "/test/k5", "v"); err != nil {
		t.Errorf("n5 (no member) writes through the voters: %v", err)
	}
	if _, err := os.Stat(filepath.Join(c5.DataDir, "etcd", "member")); err == nil {
		t.Errorf("n5 has an etcd data dir; it should run no member")
	}
}

func TestNodeExternalEtcd(t *testing.T) {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	// The external etcd: a plain member, as an operator's etcd would be.
	mcfg := DefaultConfig()
	mcfg.Name, mcfg.DataDir = "etcd0", filepath.Join(t.TempDir(), "etcd")
	mcfg.ClientListen, mcfg.PeerListen = loopback.MustAddr(t), loopback.MustAddr(t)
	m, err := Start(context.Background(), mcfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })

	cfg := testNodeConfig(t, "x1", log)
	cfg.EtcdEndpoints = []string{m.ClientURL()}
	nodes := startNodes(t, cfg)
	if r := nodes[0].Role(); r != RoleExternal {
		t.Errorf("role %q, want external", r)
	}
	ms := waitRoles(t, nodes[0], map[string]string{"x1": RoleExternal})
	if ms[0].Leader {
		t.Errorf("an external node shows as leader: %+v", ms[0])
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := nodes[0].Client().Put(ctx, "/test/x", "v"); err != nil {
		t.Fatal(err)
	}
	if resp, err := m.Client().Get(ctx, "/test/x"); err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("the write did not reach the external etcd: %v %v", resp, err)
	}
	if entries, _ := os.ReadDir(cfg.DataDir); slices.ContainsFunc(entries, func(e os.DirEntry) bool { return e.Name() == "etcd" }) {
		t.Errorf("an external node created an etcd data dir")
	}
}

func TestNodeConfigValidate(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	for _, tc := range []struct {
		name   string
		change func(*NodeConfig)
		want   string
	}{
		{"voters 0", func(c *NodeConfig) { c.Voters = 0 }, "voters 0"},
		{"voters 8", func(c *NodeConfig) { c.Voters = 8 }, "from 1 to 7"},
		{"both bootstraps", func(c *NodeConfig) { c.Bootstrap, c.BootstrapExpect = true, 3 }, "exclude each other"},
		{"dead-after", func(c *NodeConfig) { c.DeadAfter = 0 }, "dead-after"},
		{"external with bootstrap", func(c *NodeConfig) { c.EtcdEndpoints, c.Bootstrap = []string{"http://127.0.0.1:1"}, true }, "nothing to bootstrap"},
		{"bad endpoint", func(c *NodeConfig) { c.EtcdEndpoints = []string{"127.0.0.1:2379"} }, "must be a URL"},
		{"names differ", func(c *NodeConfig) { c.Gossip.Name = "other" }, "differs"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testNodeConfig(t, "v1", log)
			tc.change(&cfg)
			_, err := StartNode(context.Background(), cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("StartNode: %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// TestNodesSpreadVotersAcrossSites: three voters all in site a; nodes of sites b and c
// arrive, and the leader moves votes to them (a learner promoted, then a voter of a
// removed, which rejoins), until each site holds one voter.
func TestNodesSpreadVotersAcrossSites(t *testing.T) {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	var cfgs []NodeConfig
	for _, name := range []string{"a1", "a2", "a3"} {
		cfg := testNodeConfig(t, name, log)
		cfg.Site, cfg.BootstrapExpect = "a", 3
		cfgs = append(cfgs, cfg)
	}
	for i := range cfgs {
		for j := range cfgs {
			if i != j {
				cfgs[i].Gossip.Join = append(cfgs[i].Gossip.Join, cfgs[j].Gossip.Listen)
			}
		}
	}
	nodes := startNodes(t, cfgs...)
	waitRoles(t, nodes[0], map[string]string{"a1": RoleVoter, "a2": RoleVoter, "a3": RoleVoter})

	b, c := testNodeConfig(t, "b1", log), testNodeConfig(t, "c1", log)
	b.Site, c.Site = "b", "c"
	b.Gossip.Join, c.Gossip.Join = []string{cfgs[0].Gossip.Listen}, []string{cfgs[1].Gossip.Listen}
	startNodes(t, b, c)

	deadline := time.Now().Add(3 * time.Minute)
	var last []MemberStatus
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		ms, err := nodes[2].Members(ctx)
		cancel()
		if err == nil {
			last = ms
			sites := map[string]int{}
			learners := 0
			for _, m := range ms {
				switch m.EtcdRole {
				case RoleVoter:
					sites[m.Site]++
				case RoleLearner:
					learners++
				}
			}
			if sites["a"] == 1 && sites["b"] == 1 && sites["c"] == 1 && learners == 1 {
				return
			}
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Fatalf("voters never spread one per site with a standby; last members:\n%+v", last)
}
