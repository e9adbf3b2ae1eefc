package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/roster-dev/roster/registry"
)

// runCLI runs the command line with no environment and no fallback token
// file, and returns the exit status and the output.
func runCLI(t *testing.T, env map[string]string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	return runCLICtx(context.Background(), t, env, args...)
}

func runCLICtx(ctx context.Context, t *testing.T, env map[string]string, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := run(ctx, args, &cliEnv{
		stdout: &out,
		stderr: &errOut,
		getenv: func(k string) string { return env[k] },
	})
	return code, out.String(), errOut.String()
}

func TestSplitWords(t *testing.T) {
	tests := []struct {
		name      string
		args      []string
		wantWords []string
		wantRest  []string
	}{
		{
			name:      "flags after the words",
			args:      []string{"session", "list", "--tenant", "acme", "--all"},
			wantWords: []string{"session", "list"},
			wantRest:  []string{"--tenant", "acme", "--all"},
		},
		{
			name:      "global flags before and between the words",
			args:      []string{"--endpoints", "http://a:7400", "session", "--token", "rt1.x", "list", "-o", "json"},
			wantWords: []string{"session", "list"},
			wantRest:  []string{"--endpoints", "http://a:7400", "--token", "rt1.x", "-o", "json"},
		},
		{
			name:      "attached values",
			args:      []string{"-ojson", "--endpoints=http://a", "session", "get", "0193"},
			wantWords: []string{"session", "get", "0193"},
			wantRest:  []string{"-ojson", "--endpoints=http://a"},
		},
		{
			name:      "a value that looks like a word is skipped",
			args:      []string{"session", "kill", "--reason", "crashed", "0193"},
			wantWords: []string{"session", "kill", "0193"},
			wantRest:  []string{"--reason", "crashed"},
		},
		{
			name:      "bool flags take no value",
			args:      []string{"session", "open", "--hold", "--user", "alice"},
			wantWords: []string{"session", "open"},
			wantRest:  []string{"--hold", "--user", "alice"},
		},
		{
			name:      "serve keeps its own arguments",
			args:      []string{"serve", "--data-dir", "d", "--name", "n1"},
			wantWords: []string{"serve"},
			wantRest:  []string{"--data-dir", "d", "--name", "n1"},
		},
		{
			name:      "double dash ends the flags",
			args:      []string{"session", "get", "--", "-x"},
			wantWords: []string{"session", "get"},
			wantRest:  []string{"--", "-x"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			words, rest := splitWords(tt.args)
			if !slices.Equal(words, tt.wantWords) || !slices.Equal(rest, tt.wantRest) {
				t.Errorf("splitWords(%q) = %q, %q; want %q, %q", tt.args, words, rest, tt.wantWords, tt.wantRest)
			}
		})
	}
}

// TestCommandLineErrors covers command lines that fail before any call:
// each must exit 2 (usage) with a message naming the culprit.
func TestCommandLineErrors(t *testing.T) {
	id := "0193f2a1b2c3d4e5f60718293a4b5c6d"
	existing := filepath.Join(t.TempDir(), "backup.db")
	if err := os.WriteFile(existing, []byte("an older backup"), 0o600); err != nil {
		t.Fatal(err)
	}
	restore := func(flags ...string) []string { return append([]string{"snapshot", "restore", "backup.db"}, flags...) }
	tests := []struct {
		name       string
		args       []string
		env        map[string]string
		wantStderr []string
	}{
		{name: "no command", args: nil, wantStderr: []string{"no command given", "usage: roster <command>"}},
		{name: "unknown command", args: []string{"sesion", "list"}, wantStderr: []string{`unknown command "sesion"`}},
		{name: "group without subcommand", args: []string{"session"}, wantStderr: []string{"session needs a subcommand: open, list"}},
		{name: "unknown subcommand", args: []string{"user", "add"}, wantStderr: []string{`unknown command "user add"`, "usage: roster user <set|get|list|delete>"}},
		{name: "unknown flag", args: []string{"session", "list", "--colour"}, wantStderr: []string{"unknown flag: --colour", "usage: roster session list [flags]"}},
		{name: "unknown output", args: []string{"token", "list", "-o", "yaml"}, wantStderr: []string{`-o: unknown output format "yaml" (want table or json)`}},
		{name: "missing argument", args: []string{"session", "get"}, wantStderr: []string{"session get takes ID, got 0 argument(s)"}},
		{name: "extra argument", args: []string{"session", "list", "x"}, wantStderr: []string{"session list takes no arguments, got 1"}},
		{name: "bad session id", args: []string{"session", "kill", "42"}, wantStderr: []string{`"42" is not a session id`}},
		{name: "open without user", args: []string{"session", "open", "--module", "sales"}, wantStderr: []string{"--user is required"}},
		{name: "label without =", args: []string{"session", "open", "--user", "a", "--module", "m", "--label", "desk"}, wantStderr: []string{`--label "desk": want KEY=VALUE`}},
		{name: "ttl not whole seconds", args: []string{"session", "open", "--user", "a", "--module", "m", "--ttl", "1500ms"}, wantStderr: []string{"--ttl 1.5s: must be whole seconds"}},
		{name: "ttl not a duration", args: []string{"session", "open", "--user", "a", "--module", "m", "--ttl", "30"}, wantStderr: []string{`invalid argument "30" for "--ttl"`}},
		{name: "close-on-shutdown without hold", args: []string{"session", "open", "--user", "a", "--module", "m", "--close-on-shutdown"}, wantStderr: []string{"--close-on-shutdown needs --hold"}},
		{name: "events since negative", args: []string{"events", "--since", "-1"}, wantStderr: []string{"--since -1: give a revision, 0 or more"}},
		{name: "drain grace not whole seconds", args: []string{"pool", "drain", "blue", "--grace", "1500ms"}, wantStderr: []string{"--grace 1.5s: give whole seconds"}},
		{name: "license set without seats", args: []string{"license", "set", "sales"}, wantStderr: []string{"--seats is required"}},
		{name: "bad kind", args: []string{"session", "list", "--kind", "robot"}, wantStderr: []string{`--kind "robot": want ui, background or appserver`}},
		{name: "limit too big", args: []string{"session", "list", "--limit", "5000"}, wantStderr: []string{"--limit 5000: must be between 1 and 1000"}},
		{name: "history limit too big", args: []string{"history", "--limit", "1001"}, wantStderr: []string{"--limit 1001: must be between 1 and 1000", "usage: roster history [flags]"}},
		{name: "history since not a time", args: []string{"history", "--since", "yesterday"}, wantStderr: []string{`--since "yesterday": give an RFC 3339 time`}},
		{name: "history until a negative duration", args: []string{"history", "--until", "-1h"}, wantStderr: []string{`--until "-1h": a duration ago must be positive`}},
		{name: "history with an argument", args: []string{"history", "alice"}, wantStderr: []string{"history takes no arguments, got 1"}},
		{name: "audit limit too big", args: []string{"audit", "--limit", "1001"}, wantStderr: []string{"--limit 1001: must be between 1 and 1000", "usage: roster audit [flags]"}},
		{name: "audit until not a time", args: []string{"audit", "--until", "soon"}, wantStderr: []string{`--until "soon": give an RFC 3339 time`, "usage: roster audit [flags]"}},
		{name: "audit unknown action", args: []string{"audit", "--action", "logon"}, wantStderr: []string{`--action "logon": not an audit action`}},
		{name: "bad right", args: []string{"user", "set", "acme/alice", "--right", "superuser"}, wantStderr: []string{`--right "superuser"`}},
		{name: "bad user ref", args: []string{"user", "get", "a/b/c"}, wantStderr: []string{`"a/b/c": want TENANT/USER`}},
		{name: "token without role", args: []string{"token", "create", "--name", "x"}, wantStderr: []string{"--role is required"}},
		{name: "bad role", args: []string{"token", "create", "--name", "x", "--role", "root"}, wantStderr: []string{`--role "root": want client, operator or admin`}},
		{name: "both token flags", args: []string{"session", "get", id, "--token", "a", "--token-file", "f"}, wantStderr: []string{"--token and --token-file both given"}},
		{name: "endpoint without scheme", args: []string{"session", "get", id, "--endpoints", "10.0.0.1:7400"}, wantStderr: []string{`--endpoints: endpoint "10.0.0.1:7400" has no scheme`}},
		{
			name: "endpoint from the environment", args: []string{"session", "get", id},
			env:        map[string]string{envEndpoints: "ftp://x"},
			wantStderr: []string{"ROSTER_ENDPOINTS: endpoint \"ftp://x\": scheme must be http or https"},
		},
		{name: "flag before the command", args: []string{"--tenant", "a"}, wantStderr: []string{"unknown flag --tenant before the command"}},
		{name: "members with an argument", args: []string{"members", "n1"}, wantStderr: []string{"members takes no arguments, got 1", "usage: roster members [flags]"}},
		{name: "snapshot without subcommand", args: []string{"snapshot"}, wantStderr: []string{"snapshot needs a subcommand: save, restore"}},
		{name: "save without FILE", args: []string{"snapshot", "save"}, wantStderr: []string{"snapshot save takes FILE, got 0 argument(s)"}},
		{name: "save over a FILE", args: []string{"snapshot", "save", existing}, wantStderr: []string{existing + " exists: give --force to replace it"}},
		{name: "restore without FILE", args: []string{"snapshot", "restore", "--data-dir", "d", "--name", "n1", "--peer-listen", "127.0.0.1:7402"},
			wantStderr: []string{"snapshot restore takes FILE, got 0", "usage: roster snapshot restore FILE --data-dir DIR --name NAME --peer-listen HOST:PORT [flags]"}},
		{name: "restore without --data-dir", args: restore("--name", "n1", "--peer-listen", "127.0.0.1:7402"), wantStderr: []string{"--data-dir is required"}},
		{name: "restore without --name", args: restore("--data-dir", "d", "--peer-listen", "127.0.0.1:7402"), wantStderr: []string{"--name is required"}},
		{name: "restore without --peer-listen", args: restore("--data-dir", "d", "--name", "n1"), wantStderr: []string{"--peer-listen is required"}},
		{name: "restore with a bad name", args: restore("--data-dir", "d", "--name", "n/1", "--peer-listen", "127.0.0.1:7402"),
			wantStderr: []string{`--name "n/1": character '/' not allowed`}},
		{name: "restore on an unspecified peer address", args: restore("--data-dir", "d", "--name", "n1", "--peer-listen", "0.0.0.0:7402"),
			wantStderr: []string{`--peer-listen "0.0.0.0:7402": host 0.0.0.0 is unspecified`}},
		{name: "restore on a peer address without port", args: restore("--data-dir", "d", "--name", "n1", "--peer-listen", "10.0.0.1"),
			wantStderr: []string{`--peer-listen "10.0.0.1": must be host:port`}},
		{name: "restore with etcd and peer on one address", args: restore("--data-dir", "d", "--name", "n1", "--peer-listen", "127.0.0.1:7402", "--etcd-listen", "127.0.0.1:7402"),
			wantStderr: []string{`--etcd-listen and --peer-listen are both "127.0.0.1:7402"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := runCLI(t, tt.env, tt.args...)
			if code != exitUsage {
				t.Errorf("exit status %d, want %d; stderr:\n%s", code, exitUsage, stderr)
			}
			if stdout != "" {
				t.Errorf("stdout = %q, want nothing", stdout)
			}
			for _, want := range tt.wantStderr {
				if !strings.Contains(stderr, want) {
					t.Errorf("stderr does not contain %q:\n%s", want, stderr)
				}
			}
			if !strings.HasPrefix(stderr, "roster: ") {
				t.Errorf("stderr does not start with \"roster: \":\n%s", stderr)
			}
		})
	}
}

func TestHelp(t *testing.T) {
	tests := []struct {
		name       string
		args       []string
		wantStdout []string
	}{
		{name: "help", args: []string{"help"}, wantStdout: []string{"session open", "user set TENANT/USER", "token revoke NAME", "--endpoints URLS", "Exit status",
			"Cluster:\n  members ", "snapshot save FILE", "snapshot restore FILE   "}},
		{name: "--help", args: []string{"--help"}, wantStdout: []string{"Usage:\n  roster <command>"}},
		{name: "group", args: []string{"token", "--help"}, wantStdout: []string{"token create", "token list"}},
		{name: "command", args: []string{"session", "open", "--help"}, wantStdout: []string{"roster session open --user USER --module MODULE [flags]", "--hold", "--label KEY=VALUE", "--token-file FILE", "exits 3"}},
		{name: "help command", args: []string{"help", "user", "set"}, wantStdout: []string{"--right RIGHT", "bare USER means the\ntenant \"default\""}},
		{name: "help of a one-word command", args: []string{"help", "members"}, wantStdout: []string{"roster members [flags]", "LEADER   yes on the node"}},
		{name: "one-word command --help", args: []string{"members", "--help"}, wantStdout: []string{"roster members [flags]"}},
		{name: "snapshot group", args: []string{"snapshot", "--help"}, wantStdout: []string{"snapshot save FILE", "snapshot restore FILE"}},
		{name: "-h after flags", args: []string{"session", "list", "--all", "-h"}, wantStdout: []string{"--all", "follows the pages"}},
		{name: "version", args: []string{"version"}, wantStdout: []string{"roster dev\n"}},
		{name: "--version", args: []string{"--version"}, wantStdout: []string{"roster dev\n"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := runCLI(t, nil, tt.args...)
			if code != exitOK || stderr != "" {
				t.Fatalf("exit status %d, stderr %q", code, stderr)
			}
			for _, want := range tt.wantStdout {
				if !strings.Contains(stdout, want) {
					t.Errorf("stdout does not contain %q:\n%s", want, stdout)
				}
			}
		})
	}
}

func TestOpenRequest(t *testing.T) {
	tests := []struct {
		name    string
		flags   openFlags
		want    registry.OpenRequest
		wantErr string
	}{
		{
			name:  "minimal",
			flags: openFlags{user: "alice", module: "sales"},
			want:  registry.OpenRequest{User: "alice", Module: "sales"},
		},
		{
			name: "everything",
			flags: openFlags{user: "alice", module: "sales", tenant: "acme", host: "PC-17", os: "windows", kind: "appserver",
				pool: "p1", pid: 4242, ttl: 2 * time.Minute, labels: []string{"desk=7", "note=a=b", "empty="}},
			want: registry.OpenRequest{User: "alice", Module: "sales", Tenant: "acme", Host: "PC-17", OS: "windows",
				ClientKind: registry.KindAppServer, Pool: "p1", PID: 4242, TTLSeconds: 120,
				Labels: map[string]string{"desk": "7", "note": "a=b", "empty": ""}},
		},
		{name: "no module", flags: openFlags{user: "alice"}, wantErr: "--module is required"},
		{name: "negative pid", flags: openFlags{user: "a", module: "m", pid: -1}, wantErr: "--pid -1: must be 0 or more"},
		{name: "negative ttl", flags: openFlags{user: "a", module: "m", ttl: -time.Second}, wantErr: "--ttl -1s: must be positive"},
		{name: "fractional ttl", flags: openFlags{user: "a", module: "m", ttl: 2500 * time.Millisecond}, wantErr: "must be whole seconds"},
		{name: "label key empty", flags: openFlags{user: "a", module: "m", labels: []string{"=v"}}, wantErr: "the key is empty"},
		{name: "label twice", flags: openFlags{user: "a", module: "m", labels: []string{"k=1", "k=2"}}, wantErr: `key "k" given twice`},
		{name: "kind", flags: openFlags{user: "a", module: "m", kind: "daemon"}, wantErr: `--kind "daemon"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.flags.request()
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("request() error = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("request() = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestHoldDefaultsPIDToOwn(t *testing.T) {
	o := openFlags{user: "a", module: "m", hold: true}
	req, err := o.request()
	if err != nil {
		t.Fatal(err)
	}
	if req.PID != int64(os.Getpid()) {
		t.Errorf("PID = %d, want roster's own %d", req.PID, os.Getpid())
	}
}

func TestParseUserRef(t *testing.T) {
	tests := []struct {
		name, ref            string
		wantTenant, wantUser string
		wantErr              bool
	}{
		{name: "tenant and user", ref: "acme/alice", wantTenant: "acme", wantUser: "alice"},
		{name: "bare user", ref: "alice", wantTenant: "default", wantUser: "alice"},
		{name: "empty tenant", ref: "/alice", wantErr: true},
		{name: "empty user", ref: "acme/", wantErr: true},
		{name: "two slashes", ref: "a/b/c", wantErr: true},
		{name: "empty", ref: "", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tenant, user, err := parseUserRef("user get", tt.ref)
			if (err != nil) != tt.wantErr {
				t.Fatalf("parseUserRef(%q) error = %v, want error %v", tt.ref, err, tt.wantErr)
			}
			if tenant != tt.wantTenant || user != tt.wantUser {
				t.Errorf("parseUserRef(%q) = %q, %q", tt.ref, tenant, user)
			}
		})
	}
}

func TestParseRights(t *testing.T) {
	tests := []struct {
		name    string
		values  []string
		want    []registry.Right
		wantErr bool
	}{
		{name: "none", values: nil, want: []registry.Right{}},
		{name: "both, deduplicated", values: []string{"multi-login", "interrupt-sessions", "multi-login"},
			want: []registry.Right{registry.RightMultiLogin, registry.RightInterruptSessions}},
		{name: "unknown", values: []string{"root"}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseRights(tt.values)
			if (err != nil) != tt.wantErr {
				t.Fatalf("parseRights error = %v, want error %v", err, tt.wantErr)
			}
			if !tt.wantErr && (got == nil || !slices.Equal(got, tt.want)) {
				t.Errorf("parseRights = %#v, want %#v", got, tt.want)
			}
		})
	}
}

func TestResolveToken(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	flagFile := write("flag.token", "rt1.fromflagfile\n")
	envFile := write("env.token", "rt1.fromenvfile")
	fallback := write("admin.token", "rt1.fromfallback\n")
	empty := write("empty.token", " \n")

	tests := []struct {
		name     string
		args     []string
		env      map[string]string
		fallback string
		want     string
		wantSrc  tokenSource
		wantErr  string
	}{
		{name: "flag wins", args: []string{"--token", "rt1.flag"}, env: map[string]string{envToken: "rt1.env"}, want: "rt1.flag", wantSrc: "--token"},
		{name: "flag file before env", args: []string{"--token-file", flagFile}, env: map[string]string{envToken: "rt1.env"}, want: "rt1.fromflagfile", wantSrc: "--token-file"},
		{name: "env token", env: map[string]string{envToken: "rt1.env", envTokenFile: envFile}, fallback: fallback, want: "rt1.env", wantSrc: envToken},
		{name: "env token file", env: map[string]string{envTokenFile: envFile}, fallback: fallback, want: "rt1.fromenvfile", wantSrc: envTokenFile},
		{name: "fallback file", fallback: fallback, want: "rt1.fromfallback", wantSrc: tokenSource(fallback)},
		{name: "no fallback file", fallback: filepath.Join(dir, "missing"), want: "", wantSrc: ""},
		{name: "missing flag file", args: []string{"--token-file", filepath.Join(dir, "missing")}, wantErr: "--token-file: open"},
		{name: "empty file", args: []string{"--token-file", empty}, wantErr: "holds no token"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := &globalFlags{}
			if err := g.flagSet("test").Parse(tt.args); err != nil {
				t.Fatal(err)
			}
			e := &cliEnv{getenv: func(k string) string { return tt.env[k] }, tokenFallback: tt.fallback}
			got, src, err := g.resolveToken(e)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("resolveToken error = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want || src != tt.wantSrc {
				t.Errorf("resolveToken = %q from %q, want %q from %q", got, src, tt.want, tt.wantSrc)
			}
		})
	}
}

func TestParseWhen(t *testing.T) {
	now := time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name, v string
		want    time.Time
		wantErr bool
	}{
		{name: "empty", v: "", want: time.Time{}},
		{name: "RFC 3339", v: "2026-11-21T10:00:00+01:00", want: time.Date(2026, 11, 21, 9, 0, 0, 0, time.UTC)},
		{name: "date", v: "2026-11-20", want: time.Date(2026, 11, 20, 0, 0, 0, 0, time.UTC)},
		{name: "duration ago", v: "90m", want: now.Add(-90 * time.Minute)},
		{name: "zero duration", v: "0s", wantErr: true},
		{name: "words", v: "last week", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := &logFlags{cmd: "audit"}
			got, err := l.parseWhen("--since", tt.v, now)
			if (err != nil) != tt.wantErr {
				t.Fatalf("parseWhen(%q) error = %v, want error %v", tt.v, err, tt.wantErr)
			}
			if !got.Equal(tt.want) {
				t.Errorf("parseWhen(%q) = %s, want %s", tt.v, got, tt.want)
			}
		})
	}
}
