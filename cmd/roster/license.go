package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/spf13/pflag"

	"github.com/roster-dev/roster/registry"
)

func licenseCommands() []*command {
	return []*command{
		{
			path: "license set", args: "MODULE --seats N", nargs: 1, summary: "limit the sessions of a module to N seats",
			help: `Give MODULE a licence of N seats in a tenant (default "default"): at most N of its
sessions may be open at once. An open takes a seat in the same transaction as the session,
and logout, kill, shutdown, clean-up and expiry all free it. With every seat taken an open
is refused with no_license_seat, naming the holders. Lowering N below the seats in use ends
nobody; new logins wait until use drops below N. Needs an admin token.`,
			setup: func(fs *pflag.FlagSet) action {
				seats := fs.Int("seats", -1, "number of seats, 0 to 100000 (required)")
				return onLicense(fs, http.MethodPut, func(inv *invocation) (any, error) {
					if !fs.Changed("seats") {
						return nil, usagef(inv.cmd.path, "--seats is required")
					}
					return registry.LicenseSpec{Seats: *seats}, nil
				}, showLicense)
			},
		},
		{
			path: "license list", summary: "list licences: seats, in use, holders",
			help: "List the licences of every tenant (or of --tenant): seats, seats in use and who holds them.\nNeeds an operator or admin token.",
			setup: func(fs *pflag.FlagSet) action {
				tenant := fs.String("tenant", "", "only this tenant")
				return func(ctx context.Context, inv *invocation) error {
					q := url.Values{}
					if *tenant != "" {
						q.Set("tenant", *tenant)
					}
					data, err := inv.do(ctx, http.MethodGet, "/v1/licenses", q, nil)
					return show(inv, data, err, func(res struct {
						Licenses []registry.License `json:"licenses"`
					}) {
						renderLicenses(inv.stdout, res.Licenses, false)
					})
				}
			},
		},
		{
			path: "license get", args: "MODULE", nargs: 1, summary: "show a module's licence and every seat holder",
			help:  "Show MODULE's licence in a tenant with every seat holder. Needs an operator or admin token.",
			setup: func(fs *pflag.FlagSet) action { return onLicense(fs, http.MethodGet, nil, showLicense) },
		},
		{
			path: "license delete", args: "MODULE", nargs: 1, summary: "lift a module's licence limit",
			help: "Delete MODULE's licence in a tenant: its logins are no longer counted. Needs an admin token.",
			setup: func(fs *pflag.FlagSet) action {
				return onLicense(fs, http.MethodDelete, nil, func(inv *invocation, tenant string, _ struct{}) {
					fmt.Fprintf(inv.stdout, "licence of module %s in tenant %s deleted\n", inv.args[0], tenant)
				})
			},
		},
	}
}

// onLicense is the action of a command on the licence of the MODULE argument
// in --tenant: it sends method with the body that body returns (none when
// body is nil) and shows the answer with render.
func onLicense[T any](fs *pflag.FlagSet, method string, body func(*invocation) (any, error), render func(inv *invocation, tenant string, answer T)) action {
	tenant := fs.String("tenant", registry.DefaultTenant, "tenant")
	return func(ctx context.Context, inv *invocation) error {
		path, err := licensePath(inv, *tenant)
		if err != nil {
			return err
		}
		var b any
		if body != nil {
			if b, err = body(inv); err != nil {
				return err
			}
		}
		data, err := inv.do(ctx, method, path, nil, b)
		return show(inv, data, err, func(answer T) { render(inv, *tenant, answer) })
	}
}

func showLicense(inv *invocation, _ string, l registry.License) {
	renderLicenses(inv.stdout, []registry.License{l}, true)
}

// licensePath is /v1/licenses/TENANT/MODULE for the command's MODULE argument.
func licensePath(inv *invocation, tenant string) (string, error) {
	module := inv.args[0]
	if module == "" {
		return "", usagef(inv.cmd.path, "the module name is empty")
	}
	if tenant == "" {
		return "", usagef(inv.cmd.path, "--tenant is empty")
	}
	return "/v1/licenses/" + url.PathEscape(tenant) + "/" + url.PathEscape(module), nil
}

// renderLicenses prints licences as a table; with holders, every holder below.
func renderLicenses(w io.Writer, all []registry.License, holders bool) {
	tw := newTable(w)
	fmt.Fprintln(tw, "TENANT\tMODULE\tSEATS\tIN-USE\tHOLDERS")
	for _, l := range all {
		var hs []string
		for _, h := range l.Holders[:min(len(l.Holders), 3)] {
			hs = append(hs, holderName(h))
		}
		if len(l.Holders) > 3 {
			hs = append(hs, fmt.Sprintf("+%d more", len(l.Holders)-3))
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\n", cell(l.Tenant), cell(l.Module), l.Seats, l.InUse, cell(strings.Join(hs, ", ")))
	}
	tw.Flush()
	if !holders || len(all) != 1 || len(all[0].Holders) == 0 {
		return
	}
	fmt.Fprintln(w)
	tw = newTable(w)
	fmt.Fprintln(tw, "SESSION\tUSER\tHOST\tSINCE")
	for _, h := range all[0].Holders {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", h.Session, cell(h.User), cell(h.Host), formatTime(h.Since))
	}
	tw.Flush()
}

func holderName(h registry.SeatHolder) string {
	if h.Host == "" {
		return h.User
	}
	return h.User + "@" + h.Host
}
