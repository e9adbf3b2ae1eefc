package main

import (
	"context"
	"fmt"
	"net/http"
	"net/url"

	"github.com/spf13/pflag"

	"github.com/roster-dev/roster/registry"
)

func tokenCommands() []*command {
	return []*command{
		{
			path: "token create", args: "--role ROLE --name NAME", summary: "create an API token (shown once)",
			help: `Create an API token and print it. The secret is shown only this once: store it
now, it cannot be shown again, only revoked. Needs an admin token.

Roles:
  client    open sessions; heartbeat, close, read and list the sessions it opened
  operator  read every session, user and token; kill sessions
  admin     everything`,
			setup: func(fs *pflag.FlagSet) action {
				role := fs.String("role", "", "`ROLE` of the token: client, operator or admin (required)")
				name := fs.String("name", "", "unique name of the token, e.g. appserver-1 (required)")
				return func(ctx context.Context, inv *invocation) error { return runTokenCreate(ctx, inv, *role, *name) }
			},
		},
		{
			path: "token list", summary: "list API tokens (never their secrets)",
			help:  "List the API tokens: name, role and creation time. Needs an admin token.",
			setup: func(fs *pflag.FlagSet) action { return runTokenList },
		},
		{
			path: "token revoke", args: "NAME", nargs: 1, summary: "revoke an API token",
			help:  "Revoke the API token called NAME; calls with it fail from now on. Needs an admin token.",
			setup: func(fs *pflag.FlagSet) action { return runTokenRevoke },
		},
	}
}

// tokenRequest checks the flags of token create.
func tokenRequest(role, name string) (registry.TokenRequest, error) {
	req := registry.TokenRequest{Name: name, Role: registry.Role(role)}
	if name == "" {
		return req, usagef("token create", "--name is required")
	}
	switch req.Role {
	case registry.RoleClient, registry.RoleOperator, registry.RoleAdmin:
	case "":
		return req, usagef("token create", "--role is required: client, operator or admin")
	default:
		return req, usagef("token create", "--role %q: want client, operator or admin", role)
	}
	return req, nil
}

func runTokenCreate(ctx context.Context, inv *invocation, role, name string) error {
	req, err := tokenRequest(role, name)
	if err != nil {
		return err
	}
	data, err := inv.do(ctx, http.MethodPost, "/v1/tokens", nil, req)
	if err != nil {
		return err
	}
	if inv.g.json() {
		inv.printJSON(data)
	} else {
		var t registry.NewToken
		if err := decodeAnswer(data, &t); err != nil {
			return err
		}
		renderFields(inv.stdout, [][2]string{
			{"NAME", t.Name}, {"ROLE", string(t.Role)}, {"CREATED", formatTime(t.CreatedAt)}, {"TOKEN", t.Token},
		})
	}
	fmt.Fprintln(inv.stderr, "roster: this is the only time the token is shown: store it now; it cannot be recovered, only revoked")
	return nil
}

func runTokenList(ctx context.Context, inv *invocation) error {
	data, err := inv.do(ctx, http.MethodGet, "/v1/tokens", nil, nil)
	return show(inv, data, err, func(res struct {
		Tokens []registry.TokenInfo `json:"tokens"`
	}) {
		renderTokens(inv.stdout, res.Tokens)
	})
}

func runTokenRevoke(ctx context.Context, inv *invocation) error {
	name := inv.args[0]
	if name == "" {
		return usagef(inv.cmd.path, "the token name is empty")
	}
	data, err := inv.do(ctx, http.MethodDelete, "/v1/tokens/"+url.PathEscape(name), nil, nil)
	if err != nil {
		return err
	}
	if inv.g.json() {
		inv.printJSON(data)
		return nil
	}
	fmt.Fprintf(inv.stdout, "token %s revoked\n", name)
	return nil
}
