package e2e_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/roster-dev/roster/cluster"
	"github.com/roster-dev/roster/cluster/clustertest"
	"github.com/roster-dev/roster/cluster/clustertest/syncbuf"
	"github.com/roster-dev/roster/e2e"
	"github.com/roster-dev/roster/registry"
	"github.com/roster-dev/roster/registry/client"
)

// The test binary runs as TestExternalEtcd's etcd when etcdHelperEnv is
// "1": it starts an embedded etcd member with its data in $etcdDirEnv,
// prints etcdURLPrefix and the member's client URL on a line of stdout, and
// serves until SIGTERM or SIGKILL.
const (
	etcdHelperEnv = "ROSTER_E2E_ETCD_HELPER"
	etcdDirEnv    = "ROSTER_E2E_ETCD_DIR"
	etcdURLPrefix = "etcd-url "
)

// runEtcdHelper is the etcd helper process (see etcdHelperEnv); it returns
// the exit code.
func runEtcdHelper() int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	cfg, err := clustertest.NewConfig(os.Getenv(etcdDirEnv))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	m, err := cluster.Start(ctx, cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer m.Close()
	fmt.Println(etcdURLPrefix + m.ClientURL())
	select {
	case <-ctx.Done():
		return 0
	case err := <-m.Err():
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
}

// startEtcd runs the test binary as an etcd helper process for the test and
// returns the client URL of its etcd. The process is SIGKILLed when the test
// ends.
func startEtcd(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self, "-test.run=^$")
	cmd.Env = append(os.Environ(), etcdHelperEnv+"=1", etcdDirEnv+"="+dir)
	e2e.KillWithParent(cmd)
	var stderr syncbuf.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waited := make(chan struct{})
	urls := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if u, ok := strings.CutPrefix(sc.Text(), etcdURLPrefix); ok {
				urls <- u
			}
		}
		cmd.Wait()
		close(waited)
	}()
	// Registered after TempDir, so it runs before the directory is removed.
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-waited
		if t.Failed() {
			t.Logf("etcd helper's stderr:\n%s", stderr.String())
		}
	})
	select {
	case u := <-urls:
		return u
	case <-waited:
		t.Fatalf("the etcd helper exited: %v\n%s", cmd.ProcessState, stderr.String())
	case <-time.After(60 * time.Second):
		t.Fatalf("the etcd helper printed no URL within 60 s\n%s", stderr.String())
	}
	return ""
}

// TestExternalEtcd: two nodes run against a separate etcd (--etcd-endpoints)
// with no member of their own; a session opened on one is heartbeated and
// killed through the other.
func TestExternalEtcd(t *testing.T) {
	ctx := testContext(t, 3*time.Minute)
	etcdURL := startEtcd(t)
	c := e2e.NewCluster(t, bin)
	n1 := c.Add("n1", "--etcd-endpoints", etcdURL)
	c.Start(n1)
	n2 := c.Add("n2", "--etcd-endpoints", etcdURL)
	n2.Join = []string{n1.Gossip}
	c.Start(n2)

	ms := c.WaitFor(ctx, "two external nodes", func(ms e2e.Members) bool {
		for _, n := range []*e2e.Node{n1, n2} {
			m, ok := ms.Get(n.Name)
			if !ok || m.EtcdRole != e2e.RoleExternal || m.Gossip != e2e.GossipAlive || !m.Healthy {
				return false
			}
		}
		return ms.Count(e2e.RoleVoter)+ms.Count(e2e.RoleLearner) == 0
	})
	t.Logf("members:\n%s", ms)
	checkMemberRows(t, c, ms)
	for _, n := range []*e2e.Node{n1, n2} {
		// No embedded member: nothing serves etcd on the node's etcd port.
		if conn, err := net.DialTimeout("tcp", n.Etcd, time.Second); err == nil {
			conn.Close()
			t.Errorf("%s serves on its etcd address %s in external mode", n.Name, n.Etcd)
		}
	}

	c1, c2 := c.Client(n1), c.Client(n2)
	// The handle heartbeats n1 every 2 s.
	s, err := c1.OpenSession(ctx, registry.OpenRequest{User: "alice", Module: "sales", TTLSeconds: 6})
	if err != nil {
		t.Fatalf("open on n1: %v", err)
	}
	if s.Info().Node != "n1" {
		t.Errorf("opened on n1, the session records node %q", s.Info().Node)
	}
	if _, err := c2.Heartbeat(ctx, s.ID(), s.Token()); err != nil {
		t.Fatalf("heartbeat on n2: %v", err)
	}
	if got, err := c2.Get(ctx, s.ID()); err != nil || got.User != "alice" {
		t.Fatalf("get on n2: %+v %v", got, err)
	}
	if _, err := c2.Kill(ctx, s.ID(), "external etcd test"); err != nil {
		t.Fatalf("kill on n2: %v", err)
	}
	select {
	case <-s.Done():
	case <-time.After(30 * time.Second):
		t.Fatalf("the session's handle (heartbeating n1) did not notice the kill on n2 within 30 s")
	}
	if !errors.Is(s.Err(), client.ErrKilled) {
		t.Fatalf("the session ended with %v, want killed", s.Err())
	}
	if _, err := c1.Heartbeat(ctx, s.ID(), s.Token()); !errors.Is(err, client.ErrKilled) {
		t.Fatalf("heartbeat on n1 after the kill: %v, want killed", err)
	}
}
