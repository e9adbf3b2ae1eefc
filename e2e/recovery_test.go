package e2e_test

import (
	"context"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/roster-dev/roster/e2e"
	"github.com/roster-dev/roster/registry"
)

// TestQuorumLossAndRestore follows the README's "Recovering from quorum loss": two of
// three voters are SIGKILLed; the survivor says loudly that quorum is lost, its /readyz
// fails, and nothing repairs it; a snapshot saved from the survivor is restored into a
// new one-member cluster that serves the old sessions, and a wiped node joins it.
func TestQuorumLossAndRestore(t *testing.T) {
	ctx := testContext(t, 5*time.Minute)
	c := threeVoters(ctx, t)
	nodes := c.Running()
	cl := c.Client(nodes...)
	opened, err := openRaw(ctx, cl, registry.OpenRequest{User: "alice", Module: "sales", TTLSeconds: 600})
	if err != nil {
		t.Fatal(err)
	}

	survivor := nodes[2]
	// The open was committed by a quorum, which need not include the survivor's member
	// (in one run it had been promoted a moment before and had not applied it, so the
	// snapshot lacked the session): wait until that member has it, reading it alone.
	waitApplied(ctx, t, survivor, "/roster/v1/sessions/"+opened.ID)
	c.Kill(nodes[0])
	c.Kill(nodes[1])

	// The survivor logs it at error level and is not ready; it stays so.
	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(survivor.Logs(), "quorum is probably lost") {
		if time.Now().After(deadline) {
			t.Fatalf("%s never logged the quorum loss:\n%s", survivor.Name, tail(survivor.Logs(), 20))
		}
		time.Sleep(250 * time.Millisecond)
	}
	for _, line := range survivor.LogLines() {
		if msg, _ := line["msg"].(string); strings.Contains(msg, "quorum is probably lost") && line["level"] != "error" {
			t.Errorf("the quorum-loss line is logged at %v, want error", line["level"])
		}
	}
	if code := httpStatus(ctx, t, survivor.URL()+"/readyz"); code != http.StatusServiceUnavailable {
		t.Fatalf("/readyz of %s during quorum loss: %d, want 503", survivor.Name, code)
	}

	// A snapshot from the survivor, which still runs without a leader.
	work := t.TempDir()
	env := []string{"ROSTER_ENDPOINTS=" + survivor.URL(), "ROSTER_TOKEN=" + c.Token()}
	backup := filepath.Join(work, "backup.db")
	res, err := bin.Run(ctx, work, env, "snapshot", "save", backup)
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("snapshot save from the survivor: %v, exit %d\n%s%s", err, res.ExitCode, res.Stdout, res.Stderr)
	}
	if code := httpStatus(ctx, t, survivor.URL()+"/readyz"); code != http.StatusServiceUnavailable {
		t.Fatalf("%s became ready by itself: %d; quorum loss must not be repaired automatically", survivor.Name, code)
	}
	c.Kill(survivor)

	// Restore into a fresh node r1 and start it: a one-member cluster.
	r1 := c.Add("r1")
	res, err = bin.Run(ctx, work, nil, "snapshot", "restore", backup,
		"--data-dir", r1.DataDir(), "--name", r1.Name, "--peer-listen", r1.Peer)
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("snapshot restore: %v, exit %d\n%s%s", err, res.ExitCode, res.Stdout, res.Stderr)
	}
	c.Start(r1)
	rc := c.Client(r1)
	got, err := rc.Get(ctx, opened.ID)
	if err != nil || got.User != "alice" {
		t.Fatalf("alice's session after the restore: %+v, %v", got, err)
	}

	// A former node, wiped, joins the restored cluster and becomes a voter.
	n2 := nodes[1]
	if err := n2.WipeData(); err != nil {
		t.Fatal(err)
	}
	n2.Join = []string{r1.Gossip}
	c.Restart(n2)
	c.WaitFor(ctx, "n2 a voter of the restored cluster", func(ms e2e.Members) bool {
		return ms.Role("r1", e2e.RoleVoter) && ms.Role("n2", e2e.RoleVoter)
	})
	if _, err := c.Client(n2).Heartbeat(ctx, opened.ID, opened.Token); err != nil {
		t.Fatalf("heartbeat through the rejoined node: %v", err)
	}
}

// httpStatus GETs url and returns the status code.
func httpStatus(ctx context.Context, t *testing.T, url string) int {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// waitApplied waits (up to 30 s) until node's own etcd member has applied key: a
// serializable read of that member alone finds it.
func waitApplied(ctx context.Context, t *testing.T, node *e2e.Node, key string) {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{"http://" + node.Etcd}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	deadline := time.Now().Add(30 * time.Second)
	for {
		gctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		resp, err := cli.Get(gctx, key, clientv3.WithSerializable(), clientv3.WithCountOnly())
		cancel()
		if err == nil && resp.Count == 1 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s's etcd member has not applied %s after 30 s (last read: %v)", node.Name, key, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
