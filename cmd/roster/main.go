// Command roster runs a Roster node (roster serve) and is the command-line
// client of the Roster HTTP API (docs/api.md): it opens, lists and kills
// sessions, manages users' rights and API tokens, lists the cluster's nodes,
// saves and restores etcd snapshots, and measures a running cluster (roster
// bench).
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"

	"github.com/spf13/pflag"

	"github.com/roster-dev/roster/registry/client"
)

// version is the version string; release builds set it with
// -ldflags "-X main.version=v1.2.3".
var version = "dev"

// Exit statuses.
const (
	exitOK    = 0
	exitError = 1 // the command failed
	exitUsage = 2 // the command line is wrong
	exitEnded = 3 // a held session was killed, expired or shut down
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], &cliEnv{
		stdout:        os.Stdout,
		stderr:        os.Stderr,
		getenv:        os.Getenv,
		tokenFallback: defaultTokenFile,
	})
	stop()
	os.Exit(code)
}

// cliEnv is what a command may touch outside its arguments.
type cliEnv struct {
	stdout, stderr io.Writer
	getenv         func(string) string
	// tokenFallback is the token file read when no token is given.
	tokenFallback string
}

// command is one leaf of the command tree, e.g. "session open".
type command struct {
	path    string // the command words: "session open"
	args    string // synopsis of the positional arguments and required flags
	nargs   int    // number of positional arguments
	summary string // one line for the command list
	help    string // what it does, for --help
	// setup defines the command's own flags on fs and returns the action,
	// which reads them once fs has been parsed.
	setup func(fs *pflag.FlagSet) action
}

// action runs a parsed command.
type action func(ctx context.Context, inv *invocation) error

// invocation is a parsed client command, ready to run.
type invocation struct {
	*cliEnv
	cmd  *command
	args []string // positional arguments
	g    *globalFlags

	c            *client.Client // built on first use
	noToken      bool           // no token was found anywhere
	sessionToken string         // --session-token: used instead of the global token
}

// groups are the first words of the commands of two words, e.g. "session"
// of "session open". A command of one word, e.g. "members", has no group.
var groups = []string{"session", "user", "token", "pool", "shutdown", "license", "snapshot", "connection", "policy"}

// sections lists the sections of the command list in the order help shows
// them; each holds the commands whose first word it names.
var sections = []struct {
	title string
	words []string
}{
	{"Sessions", []string{"session", "events", "history"}},
	{"Users and rights (the user master)", []string{"user"}},
	{"API tokens", []string{"token"}},
	{"Pools and shutdown requests", []string{"pool", "shutdown"}},
	{"Licences", []string{"license"}},
	{"Connections and clean-up", []string{"connection", "policy", "cleanup"}},
	{"Audit log", []string{"audit"}},
	{"Cluster", []string{"members", "snapshot", "bench"}},
}

// commands returns the command tree's leaves.
func commands() []*command {
	return slices.Concat(sessionCommands(), historyCommands(), userCommands(), tokenCommands(), poolCommands(), shutdownCommands(),
		licenseCommands(), eventCommands(), clusterCommands(), connectionCommands(), policyCommands(), cleanupCommands(), auditCommands(),
		benchCommands())
}

func findCommand(path string) *command {
	for _, c := range commands() {
		if c.path == path {
			return c
		}
	}
	return nil
}

// usageError is a wrong command line: it is reported with a usage line and
// exit status 2.
type usageError struct {
	msg  string
	path string // the command whose usage applies; "" for the root
}

func (e *usageError) Error() string { return e.msg }

func usagef(path, format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...), path: path}
}

// exitError carries an exit status other than 1 for an error already reported.
type exitCodeError struct{ code int }

func (e *exitCodeError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// run runs the command line args (without the program name) and returns the
// exit status.
func run(ctx context.Context, args []string, e *cliEnv) int {
	words, rest := splitWords(args)
	if len(words) > 0 && words[0] == "serve" {
		return runServe(ctx, rest, e.stderr)
	}
	err := dispatch(ctx, words, rest, e)
	return report(e, err)
}

func dispatch(ctx context.Context, words, rest []string, e *cliEnv) error {
	wantHelp := hasHelpFlag(rest)
	if len(words) == 0 {
		switch {
		case wantHelp:
			writeRootUsage(e.stdout)
			return nil
		case slices.Contains(rest, "--version"):
			fmt.Fprintf(e.stdout, "roster %s\n", version)
			return nil
		case len(rest) > 0:
			return usagef("", "unknown flag %s before the command (command flags go after the command words)", rest[0])
		}
		return usagef("", "no command given")
	}
	switch words[0] {
	case "help":
		return runHelp(words[1:], e)
	case "version":
		if len(words) > 1 {
			return usagef("", "version takes no arguments")
		}
		fmt.Fprintf(e.stdout, "roster %s\n", version)
		return nil
	}
	if cmd := findCommand(words[0]); cmd != nil {
		return runCommand(ctx, cmd, append(rest, words[1:]...), e)
	}
	if !isGroup(words[0]) {
		return usagef("", "unknown command %q", words[0])
	}
	if len(words) == 1 {
		if wantHelp {
			writeGroupUsage(e.stdout, words[0])
			return nil
		}
		return usagef(words[0], "%s needs a subcommand: %s", words[0], strings.Join(subcommands(words[0]), ", "))
	}
	cmd := findCommand(words[0] + " " + words[1])
	if cmd == nil {
		return usagef(words[0], "unknown command %q; %s has: %s", words[0]+" "+words[1], words[0], strings.Join(subcommands(words[0]), ", "))
	}
	// Words past the command are its positional arguments; give them back
	// to the flag parser in their place.
	return runCommand(ctx, cmd, append(rest, words[2:]...), e)
}

// runCommand parses args (everything but the command words) and runs cmd,
// or shows its help.
func runCommand(ctx context.Context, cmd *command, args []string, e *cliEnv) error {
	inv, act, err := parseCommand(cmd, args, e)
	if errors.Is(err, pflag.ErrHelp) {
		writeCommandUsage(e.stdout, cmd)
		return nil
	}
	if err != nil {
		return err
	}
	return act(ctx, inv)
}

// parseCommand parses args (everything but the command words) with cmd's
// flags and the global flags.
func parseCommand(cmd *command, args []string, e *cliEnv) (*invocation, action, error) {
	fs, g, act := newFlagSet(cmd)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return nil, nil, err
		}
		return nil, nil, usagef(cmd.path, "%v", err)
	}
	if fs.NArg() != cmd.nargs {
		want := "no arguments"
		if cmd.nargs > 0 {
			want = positional(cmd)
		}
		return nil, nil, usagef(cmd.path, "%s takes %s, got %d argument(s)", cmd.path, want, fs.NArg())
	}
	if err := g.check(cmd.path); err != nil {
		return nil, nil, err
	}
	return &invocation{cliEnv: e, cmd: cmd, args: fs.Args(), g: g}, act, nil
}

// newFlagSet builds the flag set of cmd: its own flags and the global ones.
func newFlagSet(cmd *command) (*pflag.FlagSet, *globalFlags, action) {
	own := pflag.NewFlagSet(cmd.path, pflag.ContinueOnError)
	act := cmd.setup(own)
	g := &globalFlags{}
	fs := pflag.NewFlagSet(cmd.path, pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.SortFlags = false
	fs.AddFlagSet(own)
	fs.AddFlagSet(g.flagSet(cmd.path))
	return fs, g, act
}

// valueFlags returns the names (long and shorthand) of every flag of every
// command that takes a value, so that splitWords can skip the values.
func valueFlags() map[string]bool {
	m := map[string]bool{}
	for _, cmd := range commands() {
		fs, _, _ := newFlagSet(cmd)
		fs.VisitAll(func(f *pflag.Flag) {
			if f.NoOptDefVal == "" {
				m[f.Name] = true
				if f.Shorthand != "" {
					m[f.Shorthand] = true
				}
			}
		})
	}
	return m
}

// splitWords separates the command words (the positional arguments, e.g.
// "session", "kill", and an ID) from the flags and their values, so that
// flags may stand before, between or after the words. After "serve" nothing
// is interpreted: the rest belongs to roster serve. After "--" everything
// is a positional argument and stays in rest for the flag parser.
func splitWords(args []string) (words, rest []string) {
	values := valueFlags()
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--":
			return words, append(rest, args[i:]...)
		case len(a) > 1 && a[0] == '-':
			rest = append(rest, a)
			name := strings.TrimLeft(a, "-")
			if strings.Contains(name, "=") {
				continue
			}
			long := strings.HasPrefix(a, "--")
			if (long && values[name]) || (!long && len(name) == 1 && values[name]) {
				if i+1 < len(args) {
					i++
					rest = append(rest, args[i])
				}
			}
		default:
			words = append(words, a)
			if len(words) == 1 && a == "serve" {
				return words, append(rest, args[i+1:]...)
			}
		}
	}
	return words, rest
}

func hasHelpFlag(args []string) bool {
	for _, a := range args {
		if a == "--" {
			return false
		}
		if a == "-h" || a == "--help" {
			return true
		}
	}
	return false
}

func isGroup(name string) bool { return slices.Contains(groups, name) }

func subcommands(group string) []string {
	var subs []string
	for _, c := range commands() {
		if g, sub, _ := strings.Cut(c.path, " "); g == group {
			subs = append(subs, sub)
		}
	}
	return subs
}

func runHelp(words []string, e *cliEnv) error {
	switch {
	case len(words) == 0:
		writeRootUsage(e.stdout)
	case len(words) == 1 && isGroup(words[0]):
		writeGroupUsage(e.stdout, words[0])
	case len(words) == 1 && findCommand(words[0]) != nil:
		writeCommandUsage(e.stdout, findCommand(words[0]))
	case len(words) == 1 && words[0] == "serve":
		fmt.Fprintln(e.stdout, "Run 'roster serve --help' for the node's flags.")
	case len(words) == 1 && (words[0] == "version" || words[0] == "help"):
		writeRootUsage(e.stdout)
	case len(words) == 2 && findCommand(words[0]+" "+words[1]) != nil:
		writeCommandUsage(e.stdout, findCommand(words[0]+" "+words[1]))
	default:
		return usagef("", "no help for %q: unknown command", strings.Join(words, " "))
	}
	return nil
}

// report prints err, if any, and returns the exit status for it.
func report(e *cliEnv, err error) int {
	if err == nil {
		return exitOK
	}
	if ec, ok := errors.AsType[*exitCodeError](err); ok {
		return ec.code
	}
	if ue, ok := errors.AsType[*usageError](err); ok {
		fmt.Fprintf(e.stderr, "roster: %s\n", ue.msg)
		writeShortUsage(e.stderr, ue.path)
		return exitUsage
	}
	fmt.Fprintf(e.stderr, "roster: %s\n", describeError(err))
	return exitError
}

func writeShortUsage(w io.Writer, path string) {
	if cmd := findCommand(path); cmd != nil {
		fmt.Fprintf(w, "usage: %s\nRun 'roster %s --help' for details.\n", synopsis(cmd), cmd.path)
		return
	}
	if isGroup(path) {
		fmt.Fprintf(w, "usage: roster %s <%s> [flags]\nRun 'roster %s --help' for details.\n",
			path, strings.Join(subcommands(path), "|"), path)
		return
	}
	fmt.Fprintln(w, "usage: roster <command> [flags]\nRun 'roster help' for the commands.")
}

func synopsis(cmd *command) string {
	s := "roster " + cmd.path
	if cmd.args != "" {
		s += " " + cmd.args
	}
	return s + " [flags]"
}

func writeRootUsage(w io.Writer) {
	width := len("help [command]")
	for _, c := range commands() {
		width = max(width, len(listName(c)))
	}
	line := func(name, summary string) string { return fmt.Sprintf("  %-*s  %s\n", width, name, summary) }
	fmt.Fprint(w, `roster - a distributed session registry: who is logged in to which module,
kept alive by heartbeats and ended by logout, kill or expiry.

Usage:
  roster <command> [arguments] [flags]

Node:
`)
	fmt.Fprint(w, line("serve", "run a node (roster serve --help lists its flags)"))
	for _, sec := range sections {
		fmt.Fprintf(w, "\n%s:\n", sec.title)
		for _, c := range commands() {
			if first, _, _ := strings.Cut(c.path, " "); slices.Contains(sec.words, first) {
				fmt.Fprint(w, line(listName(c), c.summary))
			}
		}
	}
	fmt.Fprint(w, "\nOther:\n")
	fmt.Fprint(w, line("version", "print the version"))
	fmt.Fprint(w, line("help [command]", "show help for a command (or: roster <command> --help)"))
	fmt.Fprint(w, "\nGlobal flags (any client command; flags may stand before or after the command words):\n")
	fmt.Fprint(w, (&globalFlags{}).flagSet("").FlagUsages())
	fmt.Fprint(w, globalNotes)
}

// listName is how a command appears in a command list: its words and
// positional arguments.
func listName(c *command) string {
	if c.nargs > 0 {
		return c.path + " " + positional(c)
	}
	return c.path
}

// positional is the synopsis of c's positional arguments: the first nargs
// words of its args, which may go on to name required flags.
func positional(c *command) string {
	return strings.Join(strings.Fields(c.args)[:c.nargs], " ")
}

// globalNotes explains the token sources and exit statuses.
const globalNotes = `
The token is the first of: --token, --token-file, $ROSTER_TOKEN, $ROSTER_TOKEN_FILE,
and ./roster-data/admin.token (the admin token a node writes on its first start), so the
quick start needs no set-up. Prefer a file or the environment to --token: the command
line is visible to other users of the machine.

Exit status: 0 success, 1 error, 2 usage error, 3 a held session was killed, expired,
shut down or ended by clean-up.
`

func writeGroupUsage(w io.Writer, group string) {
	fmt.Fprintf(w, "Usage:\n  roster %s <command> [arguments] [flags]\n\nCommands:\n", group)
	writeCommandList(w, group)
	fmt.Fprintf(w, "\nRun 'roster %s <command> --help' for a command's flags; 'roster help' for the global flags.\n", group)
}

func writeCommandList(w io.Writer, group string) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, c := range commands() {
		if g, _, _ := strings.Cut(c.path, " "); g == group {
			fmt.Fprintf(tw, "  %s\t%s\n", listName(c), c.summary)
		}
	}
	tw.Flush()
}

func writeCommandUsage(w io.Writer, cmd *command) {
	fmt.Fprintf(w, "Usage:\n  %s\n\n%s\n", synopsis(cmd), strings.TrimSpace(cmd.help))
	own := pflag.NewFlagSet(cmd.path, pflag.ContinueOnError)
	own.SortFlags = false
	cmd.setup(own)
	if own.HasFlags() {
		fmt.Fprintf(w, "\nFlags:\n%s", own.FlagUsages())
	}
	fmt.Fprintf(w, "\nGlobal flags:\n%s", (&globalFlags{}).flagSet(cmd.path).FlagUsages())
	fmt.Fprint(w, globalNotes)
}
