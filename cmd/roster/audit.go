package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/roster-dev/roster/registry"
	"github.com/roster-dev/roster/registry/client"
)

func auditCommands() []*command {
	return []*command{
		{
			path: "audit", summary: "list the audit log: logins, refusals, kills, changes, failed authentication",
			help: `List the audit log, newest first. Every node records, append-only:
  login, login_refused (with the refusal code), logout, kill,
  shutdown_request, shutdown_cancel, pool_deactivate, pool_activate,
  user_set, user_delete (rights and services), token_create, token_revoke,
  license_set, license_delete, policy_set, policy_delete, and auth_failed
  (a request with missing, unknown or wrong credentials).
A change is recorded in the same etcd transaction as the change itself; a refused
login before its answer. Failed authentications are recorded one by one up to 20 a
second per node, and summed up in one record a second beyond that.

Filters combine with AND. --since and --until take an RFC 3339 time, a date or a
duration ago (90m, 24h), as for 'roster history'. Paging, --all and -o json work as
for 'roster history'.

The duty leader keeps the audit log for its --audit-retention (default 30 days;
0 keeps none). Needs an operator or admin token.`,
			setup: func(fs *pflag.FlagSet) action {
				a := &auditFlags{}
				a.define(fs)
				return a.run
			},
		},
	}
}

// auditFlags are the flags of audit.
type auditFlags struct {
	logFlags
	action, actor, tenant, user, module, session, code string
}

func (a *auditFlags) define(fs *pflag.FlagSet) {
	a.cmd = "audit"
	fs.StringVar(&a.action, "action", "", "only records of this action: login, login_refused, kill, user_set, auth_failed, …")
	fs.StringVar(&a.actor, "actor", "", "only what this actor did: a token name, or user:<tenant>/<user>")
	fs.StringVar(&a.tenant, "tenant", "", "only records about this tenant")
	fs.StringVar(&a.user, "user", "", "only records about this user")
	fs.StringVar(&a.module, "module", "", "only records about this module")
	fs.StringVar(&a.session, "session", "", "only records about this session")
	fs.StringVar(&a.code, "code", "", "only refusals with this code: already_logged_in, no_license_seat, pool_inactive, …")
	a.logFlags.define(fs, "records written")
}

// filter checks the flags and builds the audit filter; now is what a
// duration ago counts from.
func (a *auditFlags) filter(now time.Time) (registry.AuditFilter, error) {
	f := registry.AuditFilter{Action: registry.AuditAction(a.action), Actor: a.actor, Tenant: a.tenant, User: a.user,
		Module: a.module, Session: a.session, Code: a.code, Limit: a.limit}
	if f.Action != "" && !slices.Contains(registry.AuditActions, f.Action) {
		names := make([]string, len(registry.AuditActions))
		for i, x := range registry.AuditActions {
			names[i] = string(x)
		}
		return f, usagef("audit", "--action %q: not an audit action; use one of %s", a.action, strings.Join(names, ", "))
	}
	var err error
	f.Since, f.Until, err = a.window(now)
	return f, err
}

func (a *auditFlags) run(ctx context.Context, inv *invocation) error {
	f, err := a.filter(time.Now())
	if err != nil {
		return err
	}
	return runLog(ctx, inv, &a.logFlags, "audit", func(ctx context.Context, cursor string) ([]byte, error) {
		f.Cursor = cursor
		q, err := client.AuditQuery(f)
		if err != nil {
			return nil, err
		}
		return inv.do(ctx, http.MethodGet, "/v1/audit", q, nil)
	}, renderAudit)
}

// renderAudit prints audit records as a table, one row each, header first.
// WHAT is the session, user, module or target the action was about; DETAIL
// the refusal code, the message and the details.
func renderAudit(w io.Writer, records []registry.AuditRecord) {
	tw := newTable(w)
	fmt.Fprintln(tw, "AT\tACTION\tACTOR\tWHAT\tFROM\tDETAIL")
	for _, a := range records {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", a.At.UTC().Format("2006-01-02T15:04:05.000Z"), cell(string(a.Action)),
			cell(a.Actor), cell(auditWhat(&a)), cell(a.Remote), cell(auditDetail(&a)))
	}
	tw.Flush()
}

// auditWhat names what a record is about: "<tenant>/<user> <module>
// <session>", or its target.
func auditWhat(a *registry.AuditRecord) string {
	var parts []string
	if a.User != "" {
		parts = append(parts, a.Tenant+"/"+a.User)
	} else if a.Tenant != "" && a.Target == "" {
		parts = append(parts, "tenant "+a.Tenant)
	}
	for _, p := range []string{a.Module, a.Session, a.Target} {
		if p != "" && !slices.Contains(parts, p) {
			parts = append(parts, p)
		}
	}
	return strings.Join(parts, " ")
}

// auditDetail sums up a record's code, count, message and details on one line.
func auditDetail(a *registry.AuditRecord) string {
	var parts []string
	if a.Code != "" {
		parts = append(parts, a.Code)
	}
	if a.Count > 1 {
		parts = append(parts, fmt.Sprintf("×%d", a.Count))
	}
	keys := make([]string, 0, len(a.Details))
	for k := range a.Details {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if a.Details[k] != "" {
			parts = append(parts, k+"="+a.Details[k])
		}
	}
	if a.Message != "" {
		parts = append(parts, shorten(a.Message, 120))
	}
	return strings.Join(parts, " ")
}

// shorten cuts s to at most n runes, marking the cut with "…".
func shorten(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}
