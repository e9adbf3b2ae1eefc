package main

import (
	"context"
	"net/http"
	"net/url"

	"github.com/spf13/pflag"

	"github.com/roster-dev/roster/registry"
)

func poolCommands() []*command {
	return []*command{
		{
			path: "pool list", summary: "list pools: state and sessions",
			help: `List every pool that holds sessions or is inactive: its state (active or
inactive), its sessions, and for an inactive pool since when, by whom and why.
Needs an operator or admin token.`,
			setup: func(fs *pflag.FlagSet) action { return runPoolList },
		},
		{
			path: "pool deactivate", args: "POOL", nargs: 1, summary: "refuse new logins into a pool",
			help: `Deactivate POOL: new logins into it are refused with pool_inactive, naming the
active pools; sessions already open are untouched. Use it before an upgrade of the
servers behind a pool. Needs an operator or admin token.`,
			setup: func(fs *pflag.FlagSet) action {
				msg := fs.String("message", "", "shown to every refused login, e.g. \"Release 26.4 goes live at 18:00\"")
				return func(ctx context.Context, inv *invocation) error {
					return runPoolChange(ctx, inv, "deactivate", map[string]string{"message": *msg})
				}
			},
		},
		{
			path: "pool activate", args: "POOL", nargs: 1, summary: "accept logins into a pool again",
			help: "Activate POOL: logins into it are accepted again. Needs an operator or admin token.",
			setup: func(fs *pflag.FlagSet) action {
				return func(ctx context.Context, inv *invocation) error { return runPoolChange(ctx, inv, "activate", nil) }
			},
		},
	}
}

func runPoolList(ctx context.Context, inv *invocation) error {
	data, err := inv.do(ctx, http.MethodGet, "/v1/pools", nil, nil)
	return show(inv, data, err, func(res struct {
		Pools []registry.Pool `json:"pools"`
	}) {
		renderPools(inv.stdout, res.Pools)
	})
}

// runPoolChange posts body to /v1/pools/POOL/<verb> and shows the pool.
func runPoolChange(ctx context.Context, inv *invocation, verb string, body any) error {
	name := inv.args[0]
	if name == "" {
		return usagef(inv.cmd.path, "the pool name is empty")
	}
	data, err := inv.do(ctx, http.MethodPost, "/v1/pools/"+url.PathEscape(name)+"/"+verb, nil, body)
	return show(inv, data, err, func(pl registry.Pool) {
		renderPools(inv.stdout, []registry.Pool{pl})
	})
}
