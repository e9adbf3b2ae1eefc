package e2e_test

import (
	"encoding/json"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/roster-dev/roster/cluster/clustertest/syncbuf"
	"github.com/roster-dev/roster/e2e"
	"github.com/roster-dev/roster/registry"
)

// TestEventsCommand: 'roster events -o json' follows the feed: a session opened and
// killed from the CLI, and a shutdown request, each appear once, in order; SIGINT
// ends it with status 0.
func TestEventsCommand(t *testing.T) {
	_, dir, env := startSingle(t)
	ctx := testContext(t, 2*time.Minute)
	run := func(args ...string) e2e.Result {
		t.Helper()
		res, err := bin.Run(ctx, dir, env, args...)
		if err != nil || res.ExitCode != 0 {
			t.Fatalf("roster %s: %v, exit %d\n%s%s", strings.Join(args, " "), err, res.ExitCode, res.Stdout, res.Stderr)
		}
		return res
	}

	cmd := bin.Command(dir, env, "events", "--module", "sales", "-o", "json")
	out, errOut := &syncbuf.Buffer{}, &syncbuf.Buffer{}
	cmd.Stdout, cmd.Stderr = out, errOut
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill() })
	time.Sleep(time.Second) // connected

	res := run("session", "open", "--user", "alice", "--module", "sales", "-o", "json")
	var s registry.OpenedSession
	if err := json.Unmarshal([]byte(res.Stdout), &s); err != nil {
		t.Fatal(err)
	}
	run("session", "open", "--user", "bob", "--module", "crm") // filtered out
	run("session", "kill", s.ID, "--reason", "PC crashed")
	run("shutdown", "request", "--scope", "pool", "--pool", "blue", "--grace", "60s", "--message", "later")

	want := []string{"opened", "killed", "shutdown_requested"}
	deadline := time.Now().Add(15 * time.Second)
	for strings.Count(out.String(), "\n") < len(want) && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	cmd.Process.Signal(os.Interrupt)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("roster events after SIGINT: %v\n%s", err, errOut)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != len(want) {
		t.Fatalf("roster events printed %d lines, want %d:\n%s", len(lines), len(want), out)
	}
	for i, line := range lines {
		var e registry.Event
		if err := json.Unmarshal([]byte(line), &e); err != nil || string(e.Type) != want[i] {
			t.Fatalf("event %d: %v %q, want %s", i, err, line, want[i])
		}
		if e.Type != registry.EventShutdownRequested && e.Session.ID != s.ID {
			t.Fatalf("event %d is of session %s, want %s", i, e.Session.ID, s.ID)
		}
	}
}

// TestLicenseCommands: a licence of 2 seats from the CLI; the third login is refused
// naming the holders; license get lists them; a kill frees a seat at once.
func TestLicenseCommands(t *testing.T) {
	run := singleNode(t)
	run(0, "license", "set", "sales", "--seats", "2")
	var ids []string
	for _, u := range []string{"alice", "bob"} {
		res := run(0, "session", "open", "--user", u, "--module", "sales", "--host", "PC-"+u, "-o", "json")
		var s registry.OpenedSession
		if err := json.Unmarshal([]byte(res.Stdout), &s); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, s.ID)
	}
	res := run(1, "session", "open", "--user", "carol", "--module", "sales")
	if !strings.Contains(res.Stderr, "no_license_seat: no free licence seat for module sales: 2 of 2 seats in use, held by") ||
		!strings.Contains(res.Stderr, "alice@PC-alice") {
		t.Fatalf("the third login printed:\n%s", res.Stderr)
	}
	res = run(0, "license", "get", "sales")
	if !strings.Contains(res.Stdout, "default  sales   2      2") || !strings.Contains(res.Stdout, ids[0]) || !strings.Contains(res.Stdout, ids[1]) {
		t.Fatalf("license get printed:\n%s", res.Stdout)
	}
	run(0, "session", "kill", ids[0])
	run(0, "session", "open", "--user", "carol", "--module", "sales")
	res = run(0, "license", "list", "-o", "json")
	var list struct {
		Licenses []registry.License `json:"licenses"`
	}
	if err := json.Unmarshal([]byte(res.Stdout), &list); err != nil || len(list.Licenses) != 1 || list.Licenses[0].InUse != 2 {
		t.Fatalf("license list -o json: %v\n%s", err, res.Stdout)
	}
	res = run(2, "license", "set", "sales")
	if !strings.Contains(res.Stderr, "--seats is required") {
		t.Fatalf("license set without --seats printed:\n%s", res.Stderr)
	}
	run(1, "license", "set", "sales", "--seats", "-3")
	run(0, "license", "delete", "sales")
	run(0, "session", "open", "--user", "dave", "--module", "sales")
}

// TestAuditCommand: the node's first admin token, a login, a refusal and a
// failed authentication show up in roster audit, filtered, as a table and
// as JSON.
func TestAuditCommand(t *testing.T) {
	run := singleNode(t)
	run(0, "license", "set", "sales", "--seats", "1")
	run(0, "session", "open", "--user", "alice", "--module", "sales", "--host", "PC-17")
	run(1, "session", "open", "--user", "bob", "--module", "sales", "--host", "PC-18")
	run(1, "--token", "rt1.not-a-token", "session", "list")

	res := run(0, "audit", "--all", "-o", "json")
	var page registry.AuditPage
	if err := json.Unmarshal([]byte(res.Stdout), &page); err != nil {
		t.Fatalf("audit -o json: %v\n%s", err, res.Stdout)
	}
	actions := map[registry.AuditAction]int{}
	for _, a := range page.Audit {
		actions[a.Action]++
	}
	want := map[registry.AuditAction]int{registry.AuditTokenCreate: 1, registry.AuditLicenseSet: 1, registry.AuditLogin: 1,
		registry.AuditLoginRefused: 1, registry.AuditAuthFailed: 1}
	if len(actions) != len(want) {
		t.Fatalf("actions %v, want %v", actions, want)
	}
	for a, n := range want {
		if actions[a] != n {
			t.Fatalf("actions %v, want %v", actions, want)
		}
	}
	if first := page.Audit[len(page.Audit)-1]; first.Action != registry.AuditTokenCreate || first.Actor != "node:n1" || first.Target != "admin" {
		t.Fatalf("the oldest record is %+v, want the node creating the admin token", first)
	}
	res = run(0, "audit", "--code", "no_license_seat")
	lines := strings.Split(strings.TrimSpace(res.Stdout), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "AT") ||
		!regexp.MustCompile(`^\S+Z\s+login_refused\s+admin\s+default/bob sales\s+127\.0\.0\.1\s+no_license_seat host=PC-18 pool=default no free licence seat`).MatchString(lines[1]) {
		t.Fatalf("audit --code no_license_seat printed:\n%s", res.Stdout)
	}
	res = run(0, "audit", "--action", "auth_failed", "--since", "1h")
	if !strings.Contains(res.Stdout, "method=GET path=/v1/sessions unauthenticated: unknown or revoked API token") || strings.Contains(res.Stdout, "not-a-token") {
		t.Fatalf("audit --action auth_failed printed:\n%s", res.Stdout)
	}
	res = run(0, "audit", "--limit", "2")
	if !strings.Contains(res.Stderr, "2 records shown; next page: --cursor") {
		t.Fatalf("audit --limit 2 printed on stderr:\n%s", res.Stderr)
	}
	res = run(2, "audit", "--action", "logon")
	if !strings.Contains(res.Stderr, `--action "logon": not an audit action; use one of login, login_refused`) {
		t.Fatalf("audit --action logon printed:\n%s", res.Stderr)
	}
}
