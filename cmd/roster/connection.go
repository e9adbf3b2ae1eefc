package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/roster-dev/roster/registry"
)

func connectionCommands() []*command {
	return []*command{
		{
			path: "connection list", summary: "list connections: kind, service, host, state, sessions",
			help: `List connections and how many sessions use each. A direct connection belongs to one
client and one session and ends with it; a shared one is an application server's,
registered with POST /v1/connections, renewed by its batch heartbeats and used by many
sessions. A shared connection whose lease ran out or that was deleted is dead: its
sessions are ended by clean-up once its service timeout has run out (CLEANUP-AT).
Operators and admins see every connection, a client token the ones it owns.`,
			setup: func(fs *pflag.FlagSet) action {
				kind := fs.String("kind", "", "only connections of this kind: direct or shared")
				service := fs.String("service", "", "only connections of this service")
				state := fs.String("state", "", "only connections in this state: live or dead")
				return func(ctx context.Context, inv *invocation) error {
					switch *kind {
					case "", string(registry.ConnDirect), string(registry.ConnShared):
					default:
						return usagef(inv.cmd.path, "--kind %q: want direct or shared", *kind)
					}
					switch *state {
					case "", registry.ConnLive, registry.ConnDead:
					default:
						return usagef(inv.cmd.path, "--state %q: want live or dead", *state)
					}
					q := url.Values{}
					for k, v := range map[string]string{"kind": *kind, "service": *service, "state": *state} {
						if v != "" {
							q.Set(k, v)
						}
					}
					data, err := inv.do(ctx, http.MethodGet, "/v1/connections", q, nil)
					return show(inv, data, err, func(res struct {
						Connections []registry.Connection `json:"connections"`
					}) {
						renderConnections(inv.stdout, res.Connections)
					})
				}
			},
		},
		{
			path: "connection get", args: "ID", nargs: 1, summary: "show one connection with its parameters",
			help: "Show connection ID, live or dead, with its parameters and the number of sessions that use it.\nroster session list --connection ID lists those sessions.",
			setup: func(fs *pflag.FlagSet) action {
				return func(ctx context.Context, inv *invocation) error {
					p, err := connectionPath(inv)
					if err != nil {
						return err
					}
					data, err := inv.do(ctx, http.MethodGet, p, nil, nil)
					return show(inv, data, err, func(c registry.Connection) { renderConnection(inv.stdout, c) })
				}
			},
		},
		{
			path: "connection delete", args: "ID", nargs: 1, summary: "end a shared connection (its sessions follow after the service timeout)",
			help: `End shared connection ID as if its owner had stopped renewing it. Its sessions stay
until its service timeout has run out, then clean-up ends them with reason cleanup; a
session close or kill before that is allowed and warns. A direct connection cannot be
deleted on its own (direct_connection): kill its session. The owner token, operators
and admins may.`,
			setup: func(fs *pflag.FlagSet) action {
				return func(ctx context.Context, inv *invocation) error {
					p, err := connectionPath(inv)
					if err != nil {
						return err
					}
					data, err := inv.do(ctx, http.MethodDelete, p, nil, nil)
					return show(inv, data, err, func(c registry.Connection) {
						fmt.Fprintf(inv.stdout, "connection %s (service %s) ended by %s", c.ID, c.Service, c.EndedBy)
						if c.CleanupAt != nil {
							fmt.Fprintf(inv.stdout, "; clean-up ends its %d sessions from %s (service timeout %s)", c.Sessions,
								formatTime(*c.CleanupAt), formatSeconds(c.ServiceTimeoutSeconds))
						}
						fmt.Fprintln(inv.stdout)
					})
				}
			},
		},
	}
}

// connectionPath checks the command's connection id and returns its API path.
func connectionPath(inv *invocation) (string, error) {
	if err := registry.CheckConnectionID("ID", inv.args[0]); err != nil {
		return "", usagef(inv.cmd.path, "%s", err)
	}
	return "/v1/connections/" + url.PathEscape(inv.args[0]), nil
}

// renderConnections prints connections as a table, header first.
func renderConnections(w io.Writer, all []registry.Connection) {
	tw := newTable(w)
	fmt.Fprintln(tw, "ID\tKIND\tSERVICE\tHOST\tPID\tSTATE\tSESSIONS\tEXPIRES-IN\tCLEANUP-AT\tOWNER")
	for _, c := range all {
		expires, cleanup := "-", "-"
		if c.ExpiresInSeconds > 0 {
			expires = formatSeconds(c.ExpiresInSeconds)
		}
		if c.CleanupAt != nil {
			cleanup = formatTime(*c.CleanupAt)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n", c.ID, c.Kind, cell(c.Service), cell(c.Host), formatPID(c.PID),
			c.State, c.Sessions, expires, cleanup, cell(c.Owner))
	}
	tw.Flush()
}

// renderConnection prints one connection as aligned "FIELD  value" lines.
func renderConnection(w io.Writer, c registry.Connection) {
	fields := [][2]string{
		{"ID", c.ID}, {"KIND", string(c.Kind)}, {"SERVICE", c.Service}, {"HOST", c.Host}, {"PID", formatPID(c.PID)},
		{"OS", c.OS}, {"PARAMETERS", formatLabels(c.Parameters)}, {"STATE", c.State}, {"SESSIONS", strconv.Itoa(c.Sessions)},
		{"NODE", c.Node}, {"CREATED", formatTime(c.CreatedAt)}, {"OWNER", c.Owner}, {"TTL", formatSeconds(c.TTLSeconds)},
	}
	if c.Session != "" {
		fields = append(fields, [2]string{"SESSION", c.Session})
	}
	if c.Kind == registry.ConnShared {
		fields = append(fields, [2]string{"SERVICE-TIMEOUT", formatSeconds(c.ServiceTimeoutSeconds)})
	}
	if c.ExpiresInSeconds > 0 {
		fields = append(fields, [2]string{"EXPIRES-IN", formatSeconds(c.ExpiresInSeconds)})
	}
	if c.DiedAt != nil {
		fields = append(fields, [2]string{"DIED-AT", formatTime(*c.DiedAt)}, [2]string{"ENDED-BY", c.EndedBy})
	}
	if c.CleanupAt != nil {
		fields = append(fields, [2]string{"CLEANUP-AT", formatTime(*c.CleanupAt)})
	}
	renderFields(w, fields)
}

func formatPID(pid int64) string {
	if pid <= 0 {
		return "-"
	}
	return strconv.FormatInt(pid, 10)
}

// formatConnRefs shows a session's connections as kind:id(service) items.
func formatConnRefs(refs []registry.ConnectionRef) string {
	parts := make([]string, len(refs))
	for i, c := range refs {
		parts[i] = fmt.Sprintf("%s:%s(%s)", c.Kind, c.ID, c.Service)
	}
	return strings.Join(parts, ",")
}

func policyCommands() []*command {
	scopeFlags := func(fs *pflag.FlagSet) (module, tenant *string) {
		return fs.String("module", "", "the policy of `MODULE` (in every tenant)"), fs.String("tenant", "", "the policy of `TENANT` (every module)")
	}
	return []*command{
		{
			path: "policy set", args: "--module M|--tenant T", summary: "set a module's or tenant's idle timeout and max lifetime",
			help: `Set the clean-up policy of a module (in every tenant) or of a tenant (every module),
replacing the one it had. Clean-up ends, with reason idle, a session whose user did
nothing for longer than --idle-timeout (a client says its user did something with
"active" heartbeats), and, with reason cleanup, a session opened longer ago than
--max-lifetime. Where a module's and a tenant's policy both apply, each limit the
module's sets wins. 0 means no limit; give at least one. A session on a live direct
connection is never ended by clean-up. Needs an admin token.`,
			setup: func(fs *pflag.FlagSet) action {
				module, tenant := scopeFlags(fs)
				idle := fs.Duration("idle-timeout", 0, "end sessions idle this long, whole seconds, e.g. 30m (0: no limit)")
				maxLife := fs.Duration("max-lifetime", 0, "end sessions opened this long ago, whole seconds, e.g. 8h (0: no limit)")
				return func(ctx context.Context, inv *invocation) error {
					p, err := policyPath(inv, fs, *module, *tenant)
					if err != nil {
						return err
					}
					if !fs.Changed("idle-timeout") && !fs.Changed("max-lifetime") {
						return usagef(inv.cmd.path, "give --idle-timeout, --max-lifetime or both")
					}
					spec := registry.PolicySpec{}
					for _, d := range []struct {
						flag string
						v    time.Duration
						out  *int64
					}{{"--idle-timeout", *idle, &spec.IdleTimeoutSeconds}, {"--max-lifetime", *maxLife, &spec.MaxLifetimeSeconds}} {
						if d.v < 0 || d.v%time.Second != 0 {
							return usagef(inv.cmd.path, "%s %s: must be 0 or a positive whole number of seconds, e.g. 30m", d.flag, d.v)
						}
						*d.out = int64(d.v / time.Second)
					}
					data, err := inv.do(ctx, http.MethodPut, p, nil, spec)
					return show(inv, data, err, func(pol registry.Policy) { renderPolicies(inv.stdout, []registry.Policy{pol}) })
				}
			},
		},
		{
			path: "policy list", summary: "list clean-up policies",
			help: "List the clean-up policies of modules and tenants. Needs an operator or admin token.",
			setup: func(fs *pflag.FlagSet) action {
				return func(ctx context.Context, inv *invocation) error {
					data, err := inv.do(ctx, http.MethodGet, "/v1/policies", nil, nil)
					return show(inv, data, err, func(res struct {
						Policies []registry.Policy `json:"policies"`
					}) {
						renderPolicies(inv.stdout, res.Policies)
					})
				}
			},
		},
		{
			path: "policy get", args: "--module M|--tenant T", summary: "show a module's or tenant's clean-up policy",
			help: "Show the clean-up policy of a module or a tenant. Needs an operator or admin token.",
			setup: func(fs *pflag.FlagSet) action {
				module, tenant := scopeFlags(fs)
				return func(ctx context.Context, inv *invocation) error {
					p, err := policyPath(inv, fs, *module, *tenant)
					if err != nil {
						return err
					}
					data, err := inv.do(ctx, http.MethodGet, p, nil, nil)
					return show(inv, data, err, func(pol registry.Policy) { renderPolicies(inv.stdout, []registry.Policy{pol}) })
				}
			},
		},
		{
			path: "policy delete", args: "--module M|--tenant T", summary: "remove a module's or tenant's clean-up policy",
			help: "Remove the clean-up policy of a module or a tenant: its limits no longer apply. Needs an admin token.",
			setup: func(fs *pflag.FlagSet) action {
				module, tenant := scopeFlags(fs)
				return func(ctx context.Context, inv *invocation) error {
					p, err := policyPath(inv, fs, *module, *tenant)
					if err != nil {
						return err
					}
					data, err := inv.do(ctx, http.MethodDelete, p, nil, nil)
					return show(inv, data, err, func(res struct {
						Scope string `json:"scope"`
						Name  string `json:"name"`
					}) {
						fmt.Fprintf(inv.stdout, "clean-up policy of %s %s deleted\n", res.Scope, res.Name)
					})
				}
			},
		},
	}
}

// policyPath is /v1/policies/SCOPE/NAME for exactly one of --module and --tenant.
func policyPath(inv *invocation, fs *pflag.FlagSet, module, tenant string) (string, error) {
	changed := fs.Changed
	switch {
	case changed("module") && changed("tenant"):
		return "", usagef(inv.cmd.path, "give --module or --tenant, not both: a policy belongs to one module or one tenant")
	case changed("module"):
		if module == "" || strings.Contains(module, "/") {
			return "", usagef(inv.cmd.path, "--module %q: want a module name without '/'", module)
		}
		return "/v1/policies/module/" + url.PathEscape(module), nil
	case changed("tenant"):
		if tenant == "" || strings.Contains(tenant, "/") {
			return "", usagef(inv.cmd.path, "--tenant %q: want a tenant name without '/'", tenant)
		}
		return "/v1/policies/tenant/" + url.PathEscape(tenant), nil
	}
	return "", usagef(inv.cmd.path, "give --module M or --tenant T")
}

// renderPolicies prints clean-up policies as a table, header first.
func renderPolicies(w io.Writer, all []registry.Policy) {
	tw := newTable(w)
	fmt.Fprintln(tw, "SCOPE\tNAME\tIDLE-TIMEOUT\tMAX-LIFETIME\tSET-BY\tSET-AT")
	limit := func(n int64) string {
		if n == 0 {
			return "-"
		}
		return formatSeconds(n)
	}
	for _, p := range all {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", p.Scope, cell(p.Name), limit(p.IdleTimeoutSeconds), limit(p.MaxLifetimeSeconds), cell(p.SetBy), formatTime(p.SetAt))
	}
	tw.Flush()
}

func cleanupCommands() []*command {
	return []*command{
		{
			path: "cleanup", summary: "run a clean-up round now and show what it ended and skipped, and why",
			help: `Run one clean-up round now, on the node that answers, as the duty leader does every
--cleanup-interval, and print what it ended and what it skipped, each with why. The rules:

  - a session whose shared connection died is ended (reason cleanup) once the
    connection's service timeout has run out since its death; until then it is skipped
  - a session on a live direct connection is never ended by clean-up: the client holds
    it; it is skipped, naming the rule that would apply (kill it to end it)
  - a session older than its policy's max lifetime is ended (reason cleanup)
  - a session whose user was idle past its policy's idle timeout is ended (reason idle)

With --dry-run nothing is ended: the ENDED list is what a round would end now.
Needs an operator or admin token.`,
			setup: func(fs *pflag.FlagSet) action {
				dry := fs.Bool("dry-run", false, "end nothing; show what a round would end and skip")
				return func(ctx context.Context, inv *invocation) error {
					data, err := inv.do(ctx, http.MethodPost, "/v1/cleanup", nil, registry.CleanupRequest{DryRun: *dry})
					return show(inv, data, err, func(rep registry.CleanupReport) { renderCleanup(inv.stdout, rep) })
				}
			},
		},
	}
}

// renderCleanup prints a clean-up report: the ended sessions, then the skipped ones.
func renderCleanup(w io.Writer, rep registry.CleanupReport) {
	verb := "ended"
	if rep.DryRun {
		verb = "would end (dry run)"
	}
	if len(rep.Ended) == 0 && len(rep.Skipped) == 0 {
		fmt.Fprintf(w, "clean-up at %s: nothing to end, nothing skipped\n", formatTime(rep.At))
		return
	}
	list := func(title string, items []registry.CleanupItem) {
		fmt.Fprintf(w, "%s %d %s:\n", title, len(items), plural(len(items), "session"))
		if len(items) == 0 {
			return
		}
		tw := newTable(w)
		fmt.Fprintln(tw, "SESSION\tTENANT\tUSER\tMODULE\tREASON\tWHY")
		for _, it := range items {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", it.Session, cell(it.Tenant), cell(it.User), cell(it.Module), it.Reason, cell(it.Why))
		}
		tw.Flush()
	}
	list(verb, rep.Ended)
	list("skipped", rep.Skipped)
}

func plural(n int, word string) string {
	if n == 1 {
		return word
	}
	return word + "s"
}
