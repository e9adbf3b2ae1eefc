package main

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"

	"github.com/spf13/pflag"

	"github.com/roster-dev/roster/registry"
)

// knownRights are the rights the user master knows.
var knownRights = []registry.Right{registry.RightMultiLogin, registry.RightInterruptSessions}

const userRefHelp = `TENANT/USER names a user of a tenant, e.g. acme/alice; a bare USER means the
tenant "default", the one sessions open in when they name none.`

func userCommands() []*command {
	return []*command{
		{
			path: "user set", args: "TENANT/USER", nargs: 1, summary: "set a user's rights and services",
			help: `Set the rights and services of a user in the user master, replacing the rights
and services it had. Without --right the user keeps an entry with no rights, without
--service one with no services. Needs an admin token.

Rights:
  multi-login         may hold more than one session per module
  interrupt-sessions  may kill other users' sessions in the same tenant

Services are the connection services the user may use: a session over a connection
(direct or shared) whose service is not among them is refused with service_not_allowed.

` + userRefHelp,
			setup: func(fs *pflag.FlagSet) action {
				rights := fs.StringSlice("right", nil, "`RIGHT` to grant: multi-login or interrupt-sessions (repeatable, or comma-separated)")
				services := fs.StringSlice("service", nil, "connection `SERVICE` the user may use (repeatable, or comma-separated)")
				return func(ctx context.Context, inv *invocation) error { return runUserSet(ctx, inv, *rights, *services) }
			},
		},
		{
			path: "user get", args: "TENANT/USER", nargs: 1, summary: "show a user's rights and services",
			help: "Show a user's entry in the user master. A user who is not in it has no rights\n" +
				"and the answer is not_found. Needs an admin or operator token.\n\n" + userRefHelp,
			setup: func(fs *pflag.FlagSet) action { return runUserGet },
		},
		{
			path: "user list", summary: "list the user master",
			help: "List the users that have an entry in the user master. Needs an admin or operator token.",
			setup: func(fs *pflag.FlagSet) action {
				tenant := fs.String("tenant", "", "only users of this tenant (default: as the server decides)")
				return func(ctx context.Context, inv *invocation) error { return runUserList(ctx, inv, *tenant) }
			},
		},
		{
			path: "user delete", args: "TENANT/USER", nargs: 1, summary: "remove a user from the user master",
			help:  "Remove a user from the user master: the user keeps no rights. Needs an admin token.\n\n" + userRefHelp,
			setup: func(fs *pflag.FlagSet) action { return runUserDelete },
		},
	}
}

// parseUserRef splits TENANT/USER; a bare USER is in tenant "default".
func parseUserRef(path, ref string) (tenant, user string, err error) {
	tenant, user, found := strings.Cut(ref, "/")
	if !found {
		tenant, user = "default", ref
	}
	if tenant == "" || user == "" || strings.Contains(user, "/") {
		return "", "", usagef(path, "%q: want TENANT/USER, e.g. acme/alice, or USER for tenant default", ref)
	}
	return tenant, user, nil
}

func userPath(path, ref string) (string, error) {
	tenant, user, err := parseUserRef(path, ref)
	if err != nil {
		return "", err
	}
	return "/v1/users/" + url.PathEscape(tenant) + "/" + url.PathEscape(user), nil
}

// parseRights checks --right values and removes duplicates, keeping order.
func parseRights(values []string) ([]registry.Right, error) {
	rights := []registry.Right{}
	for _, v := range values {
		r := registry.Right(strings.TrimSpace(v))
		if !slices.Contains(knownRights, r) {
			return nil, usagef("user set", "--right %q: want multi-login or interrupt-sessions", v)
		}
		if !slices.Contains(rights, r) {
			rights = append(rights, r)
		}
	}
	return rights, nil
}

func runUserSet(ctx context.Context, inv *invocation, values, serviceValues []string) error {
	p, err := userPath(inv.cmd.path, inv.args[0])
	if err != nil {
		return err
	}
	rights, err := parseRights(values)
	if err != nil {
		return err
	}
	services, err := parseServices(serviceValues)
	if err != nil {
		return err
	}
	return inv.printUser(inv.do(ctx, http.MethodPut, p, nil, registry.UserSpec{Rights: rights, Services: services}))
}

// parseServices checks --service values and removes duplicates, keeping order.
func parseServices(values []string) ([]string, error) {
	services := []string{}
	for _, v := range values {
		s := strings.TrimSpace(v)
		if s == "" || strings.Contains(s, "/") {
			return nil, usagef("user set", "--service %q: want a service name without '/'", v)
		}
		if !slices.Contains(services, s) {
			services = append(services, s)
		}
	}
	return services, nil
}

func runUserGet(ctx context.Context, inv *invocation) error {
	p, err := userPath(inv.cmd.path, inv.args[0])
	if err != nil {
		return err
	}
	return inv.printUser(inv.do(ctx, http.MethodGet, p, nil, nil))
}

func (inv *invocation) printUser(data []byte, err error) error {
	return show(inv, data, err, func(u registry.User) { renderUsers(inv.stdout, []registry.User{u}) })
}

func runUserList(ctx context.Context, inv *invocation, tenant string) error {
	var q url.Values
	if tenant != "" {
		q = url.Values{"tenant": {tenant}}
	}
	data, err := inv.do(ctx, http.MethodGet, "/v1/users", q, nil)
	return show(inv, data, err, func(res struct {
		Users []registry.User `json:"users"`
	}) {
		renderUsers(inv.stdout, res.Users)
	})
}

func runUserDelete(ctx context.Context, inv *invocation) error {
	p, err := userPath(inv.cmd.path, inv.args[0])
	if err != nil {
		return err
	}
	data, err := inv.do(ctx, http.MethodDelete, p, nil, nil)
	if err != nil {
		return err
	}
	if inv.g.json() {
		inv.printJSON(data)
		return nil
	}
	tenant, user, _ := parseUserRef(inv.cmd.path, inv.args[0])
	fmt.Fprintf(inv.stdout, "user %s/%s deleted\n", tenant, user)
	return nil
}
