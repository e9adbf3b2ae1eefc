package e2e_test

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/roster-dev/roster/cluster/clustertest/syncbuf"
	"github.com/roster-dev/roster/e2e"
	"github.com/roster-dev/roster/registry"
)

// TestQuickStart drives the README's quick start and tour with the exact
// commands it shows, run from the node's directory; only the ports come
// from the environment (ROSTER_LISTEN, ROSTER_ENDPOINTS, …) so the test
// never collides with a node someone runs on the default ports.
func TestQuickStart(t *testing.T) {
	dir := t.TempDir()
	node, err := e2e.NewNode(bin, "n1", dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := node.Start(); err != nil { // roster serve
		t.Fatal(err)
	}
	defer node.Kill()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("node logs:\n%s", node.Logs())
		}
	})
	checkQuietStart(t, node)

	tok, err := os.Stat(filepath.Join(dir, "roster-data", "admin.token"))
	if err != nil || tok.Mode().Perm() != 0o600 {
		t.Fatalf("admin.token: %v, mode %v; want mode 0600", err, tok.Mode().Perm())
	}
	for _, path := range []string{"/healthz", "/readyz"} {
		resp, err := http.Get(node.URL() + path)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("%s: %v %v", path, resp, err)
		}
		resp.Body.Close()
	}

	env := []string{"ROSTER_ENDPOINTS=" + node.URL()}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	run := func(args ...string) e2e.Result {
		t.Helper()
		res, err := bin.Run(ctx, dir, env, args...)
		if err != nil {
			t.Fatalf("roster %s: %v", strings.Join(args, " "), err)
		}
		return res
	}

	// roster session open --user alice --module sales --host PC-17 --hold
	hold := bin.Command(dir, env, "session", "open", "--user", "alice", "--module", "sales", "--host", "PC-17", "--hold")
	var holdOut, holdErr syncbuf.Buffer
	hold.Stdout, hold.Stderr = &holdOut, &holdErr
	if err := hold.Start(); err != nil {
		t.Fatal(err)
	}
	holdDone := make(chan error, 1)
	go func() { holdDone <- hold.Wait() }()
	defer hold.Process.Kill()

	var id string
	deadline := time.Now().Add(30 * time.Second)
	for id == "" {
		if time.Now().After(deadline) {
			t.Fatalf("alice's held session never showed up; hold printed:\n%s\n%s", holdOut.String(), holdErr.String())
		}
		var page registry.SessionPage
		res := run("session", "list", "-o", "json")
		if res.ExitCode == 0 && json.Unmarshal([]byte(res.Stdout), &page) == nil && len(page.Sessions) == 1 {
			id = page.Sessions[0].ID
			break
		}
		time.Sleep(200 * time.Millisecond)
	}

	// roster session list
	res := run("session", "list")
	lines := strings.Split(strings.TrimSpace(res.Stdout), "\n")
	if res.ExitCode != 0 || len(lines) != 2 {
		t.Fatalf("session list: exit %d\n%s%s", res.ExitCode, res.Stdout, res.Stderr)
	}
	header := regexp.MustCompile(`^ID\s+TENANT\s+USER\s+MODULE\s+HOST\s+POOL\s+NODE\s+STARTED\s+EXPIRES-IN$`)
	row := regexp.MustCompile(`^` + id + `\s+default\s+alice\s+sales\s+PC-17\s+default\s+n1\s+\d{4}-\d\d-\d\dT\S+Z\s+\S+$`)
	if !header.MatchString(lines[0]) || !row.MatchString(lines[1]) {
		t.Fatalf("session list table:\n%s", res.Stdout)
	}
	// Columns are aligned: each header word starts where its value does.
	if strings.Index(lines[0], "USER") != strings.Index(lines[1], "alice") || strings.Index(lines[0], "HOST") != strings.Index(lines[1], "PC-17") {
		t.Fatalf("columns not aligned:\n%s", res.Stdout)
	}

	// A second login names the module, the host that holds it and since when.
	res = run("session", "open", "--user", "alice", "--module", "sales", "--host", "PC-99")
	if res.ExitCode != 1 || !regexp.MustCompile(`already_logged_in: user alice is already logged in to module sales on host PC-17 since \d{4}-\d\d-\d\dT[\d:]+Z and has no multi-login right`).MatchString(res.Stderr) {
		t.Fatalf("second login: exit %d\nstdout %s\nstderr %s", res.ExitCode, res.Stdout, res.Stderr)
	}

	// roster session kill <id> --reason "PC crashed": the held session ends
	// with exit code 3 and says why.
	res = run("session", "kill", id, "--reason", "PC crashed")
	if res.ExitCode != 0 {
		t.Fatalf("kill: exit %d %s", res.ExitCode, res.Stderr)
	}
	select {
	case <-holdDone:
	case <-time.After(45 * time.Second):
		t.Fatalf("the held session did not notice the kill; it printed:\n%s\n%s", holdOut.String(), holdErr.String())
	}
	if code := hold.ProcessState.ExitCode(); code != 3 || !strings.Contains(holdErr.String(), "killed") || !strings.Contains(holdErr.String(), "PC crashed") {
		t.Fatalf("held session: exit %d, stderr:\n%s", code, holdErr.String())
	}

	// The tour's user and token commands.
	for _, args := range [][]string{
		{"user", "set", "default/bob", "--right", "multi-login"},
		{"user", "set", "default/carol", "--right", "interrupt-sessions"},
		{"token", "create", "--role", "client", "--name", "appserver-1"},
		{"token", "create", "--role", "operator", "--name", "helpdesk"},
	} {
		if res := run(args...); res.ExitCode != 0 {
			t.Fatalf("roster %s: exit %d %s", strings.Join(args, " "), res.ExitCode, res.Stderr)
		}
	}
	if res := run("user", "list"); !strings.Contains(res.Stdout, "bob") || !strings.Contains(res.Stdout, "carol") {
		t.Fatalf("user list:\n%s", res.Stdout)
	}
	if res := run("token", "list"); !strings.Contains(res.Stdout, "appserver-1") || !strings.Contains(res.Stdout, "helpdesk") {
		t.Fatalf("token list:\n%s", res.Stdout)
	}
	// bob has multi-login: two logins to one module both succeed.
	for range 2 {
		if res := run("session", "open", "--user", "bob", "--module", "sales", "--ttl", "5m"); res.ExitCode != 0 {
			t.Fatalf("bob's login: %s", res.Stderr)
		}
	}

	// SIGTERM stops the node cleanly and quickly; a restart on the same
	// data dir keeps bob's sessions.
	stopped := time.Now()
	if err := node.Stop(15 * time.Second); err != nil {
		t.Fatalf("stop: %v", err)
	}
	t.Logf("SIGTERM to exit: %s", time.Since(stopped).Round(time.Millisecond))
	if strings.Contains(node.Logs(), "panic") {
		t.Fatalf("the node panicked on SIGTERM:\n%s", node.Logs())
	}
	if err := node.Restart(); err != nil {
		t.Fatal(err)
	}
	var page registry.SessionPage
	res = run("session", "list", "--user", "bob", "-o", "json")
	if err := json.Unmarshal([]byte(res.Stdout), &page); err != nil || page.Total != 2 {
		t.Fatalf("after restart: %v\n%s%s", err, res.Stdout, res.Stderr)
	}
	if strings.Contains(node.Logs(), "wrote the admin token") {
		t.Fatal("the restarted node wrote a new admin token")
	}
}

// checkQuietStart: a healthy start logs exactly one ready line with the
// API URL and nothing at warn or above.
func checkQuietStart(t *testing.T, node *e2e.Node) {
	t.Helper()
	ready := 0
	for _, l := range node.LogLines() {
		if l["msg"] == e2e.ReadyLine {
			ready++
			if l["api-url"] != node.URL() {
				t.Errorf("ready line has api-url %v, want %s", l["api-url"], node.URL())
			}
		}
		if lvl, _ := l["level"].(string); lvl != "info" && lvl != "debug" {
			t.Errorf("a healthy start logged at %s: %v", lvl, l)
		}
	}
	if ready != 1 || strings.Count(node.Logs(), e2e.ReadyLine) != 1 {
		t.Errorf("%d ready lines, want exactly 1", ready)
	}
}
