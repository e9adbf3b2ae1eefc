package e2e_test

import (
	"context"
	"encoding/json"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/roster-dev/roster/e2e"
	"github.com/roster-dev/roster/registry"
)

// singleNode starts one node for the test and returns a runner of CLI commands against
// it, run from the node's directory, that fails the test unless the command exits with
// wantCode.
func singleNode(t *testing.T) func(wantCode int, args ...string) e2e.Result {
	t.Helper()
	_, dir, env := startSingle(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	run := func(wantCode int, args ...string) e2e.Result {
		t.Helper()
		res, err := bin.Run(ctx, dir, env, args...)
		if err != nil || res.ExitCode != wantCode {
			t.Fatalf("roster %s: %v, exit %d (want %d)\n%s%s", strings.Join(args, " "), err, res.ExitCode, wantCode, res.Stdout, res.Stderr)
		}
		return res
	}
	return run
}

// startSingle starts one node for the test, killed when it ends; it returns the node,
// its directory (which holds its admin.token) and the environment that points the CLI
// at it.
func startSingle(t *testing.T) (*e2e.Node, string, []string) {
	t.Helper()
	dir := t.TempDir()
	node, err := e2e.NewNode(bin, "n1", dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := node.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(node.Kill)
	return node, dir, []string{"ROSTER_ENDPOINTS=" + node.URL()}
}

// TestPoolCommands: deactivate a pool from the CLI, see a login into it refused with the
// message and the active pools, list the pools, activate it again.
func TestPoolCommands(t *testing.T) {
	run := singleNode(t)

	run(0, "session", "open", "--user", "alice", "--module", "sales", "--pool", "blue")
	run(0, "session", "open", "--user", "bob", "--module", "sales", "--pool", "green")
	res := run(0, "pool", "deactivate", "blue", "--message", "Release 26.4 goes live at 18:00")
	if !regexp.MustCompile(`(?m)^blue\s+inactive\s+1\s+\S+Z\s+admin\s+Release 26.4 goes live at 18:00$`).MatchString(res.Stdout) {
		t.Fatalf("pool deactivate printed:\n%s", res.Stdout)
	}

	res = run(1, "session", "open", "--user", "carol", "--module", "sales", "--pool", "blue")
	want := "pool_inactive: pool blue is inactive and accepts no new logins: Release 26.4 goes live at 18:00; active pools: green"
	if !strings.Contains(res.Stderr, want) {
		t.Fatalf("refused login printed:\n%s\nwant it to contain %q", res.Stderr, want)
	}
	run(0, "session", "open", "--user", "carol", "--module", "sales", "--pool", "green")

	res = run(0, "pool", "list", "-o", "json")
	var pools struct {
		Pools []registry.Pool `json:"pools"`
	}
	if err := json.Unmarshal([]byte(res.Stdout), &pools); err != nil || len(pools.Pools) != 2 ||
		pools.Pools[0].State != "inactive" || pools.Pools[0].Sessions != 1 || pools.Pools[1].Sessions != 2 {
		t.Fatalf("pool list -o json: %v\n%s", err, res.Stdout)
	}

	run(0, "pool", "activate", "blue")
	run(0, "session", "open", "--user", "dave", "--module", "sales", "--pool", "blue")
	res = run(2, "pool", "deactivate")
	if !strings.Contains(res.Stderr, "POOL") {
		t.Fatalf("pool deactivate without a name printed:\n%s", res.Stderr)
	}
}

// TestPoolDrain: 'roster pool drain' deactivates the pool, terminates the sessions still
// open at the deadline, leaves other pools alone and exits 0 once the pool is empty.
func TestPoolDrain(t *testing.T) {
	run := singleNode(t)
	for _, u := range []string{"a", "b", "c"} {
		run(0, "session", "open", "--user", u, "--module", "sales", "--pool", "blue", "--ttl", "60s")
	}
	run(0, "session", "open", "--user", "g", "--module", "sales", "--pool", "green", "--ttl", "60s")

	res := run(0, "pool", "drain", "blue", "--grace", "3s", "--message", "Release 26.4 goes live at 18:00")
	if !strings.Contains(res.Stdout, "pool blue drained: 3 sessions in it at the request; 0 logged off, 3 terminated at the deadline, 0 ended otherwise") ||
		!strings.Contains(res.Stderr, "pool blue: 3 sessions left") || !strings.Contains(res.Stderr, "pool blue: 0 sessions left") {
		t.Fatalf("pool drain printed:\n%s%s", res.Stdout, res.Stderr)
	}
	res = run(0, "session", "list", "-o", "json")
	var page registry.SessionPage
	if err := json.Unmarshal([]byte(res.Stdout), &page); err != nil || len(page.Sessions) != 1 || page.Sessions[0].Pool != "green" {
		t.Fatalf("sessions after the drain: %v\n%s", err, res.Stdout)
	}
	run(1, "session", "open", "--user", "late", "--module", "sales", "--pool", "blue")
	res = run(0, "shutdown", "list", "-o", "json")
	var list struct {
		Shutdowns []registry.Shutdown `json:"shutdowns"`
	}
	if err := json.Unmarshal([]byte(res.Stdout), &list); err != nil || len(list.Shutdowns) != 1 ||
		list.Shutdowns[0].State != registry.ShutdownDone || list.Shutdowns[0].Terminated != 3 {
		t.Fatalf("shutdown list: %v\n%s", err, res.Stdout)
	}
}
