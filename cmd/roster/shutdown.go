package main

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/spf13/pflag"

	"github.com/roster-dev/roster/registry"
)

func shutdownCommands() []*command {
	return []*command{
		{
			path: "shutdown request", args: "--scope session|all|pool", summary: "ask sessions to log off before a deadline",
			help: `Ask every client in scope to save and log off within the grace period. Sessions
still open at the deadline are terminated with reason shutdown. Scopes:
  --scope session --session ID   one session
  --scope all [--tenant T]       every session of a tenant (default "default");
                                 new logins there are refused until it is over
  --scope pool --pool P          every session of a pool
Needs an operator or admin token.`,
			setup: func(fs *pflag.FlagSet) action {
				req := registry.ShutdownRequest{}
				fs.StringVar(&req.Scope, "scope", "", "session, all or pool (required)")
				fs.StringVar(&req.Session, "session", "", "the session `ID`, for --scope session")
				fs.StringVar(&req.Tenant, "tenant", "", "the tenant, for --scope all (default \"default\")")
				fs.StringVar(&req.Pool, "pool", "", "the pool, for --scope pool")
				grace := fs.Duration("grace", registry.DefaultGraceSeconds*time.Second, "time to save and log off, whole seconds")
				fs.StringVar(&req.Message, "message", "", "shown to every client in scope")
				return func(ctx context.Context, inv *invocation) error {
					g, err := graceSeconds(inv.cmd.path, *grace)
					if err != nil {
						return err
					}
					req.GraceSeconds = &g
					data, err := inv.do(ctx, http.MethodPost, "/v1/shutdowns", nil, req)
					return show(inv, data, err, func(s registry.Shutdown) { renderShutdowns(inv.stdout, []registry.Shutdown{s}) })
				}
			},
		},
		{
			path: "shutdown list", summary: "list shutdown requests, pending and finished",
			help:  "List the shutdown requests, newest first, with their counts. Needs an operator or admin token.",
			setup: func(fs *pflag.FlagSet) action { return runShutdownList },
		},
		{
			path: "shutdown cancel", args: "ID", nargs: 1, summary: "cancel a pending shutdown request",
			help: `Cancel the pending shutdown request ID: nothing is terminated and logins are
accepted again. Needs an operator or admin token.`,
			setup: func(fs *pflag.FlagSet) action {
				return func(ctx context.Context, inv *invocation) error {
					data, err := inv.do(ctx, http.MethodDelete, "/v1/shutdowns/"+url.PathEscape(inv.args[0]), nil, nil)
					return show(inv, data, err, func(s registry.Shutdown) { renderShutdowns(inv.stdout, []registry.Shutdown{s}) })
				}
			},
		},
		{
			path: "pool drain", args: "POOL", nargs: 1, summary: "deactivate a pool and shut its sessions down",
			help: `Drain POOL before an upgrade: deactivate it (new logins are refused), ask every
client in it to save and log off within --grace, and show a countdown and the sessions
left until the pool is empty, at the latest at the deadline, when the rest are
terminated. Exits 0 once the pool is empty. With -o json, prints a final summary
instead of the progress. Needs an operator or admin token.`,
			setup: func(fs *pflag.FlagSet) action {
				grace := fs.Duration("grace", registry.DefaultGraceSeconds*time.Second, "time to save and log off, whole seconds")
				msg := fs.String("message", "", "shown to every client in the pool and to refused logins")
				return func(ctx context.Context, inv *invocation) error { return runPoolDrain(ctx, inv, *grace, *msg) }
			},
		},
	}
}

// graceSeconds turns --grace into whole seconds.
func graceSeconds(cmd string, d time.Duration) (int64, error) {
	if d < 0 || d%time.Second != 0 {
		return 0, usagef(cmd, "--grace %s: give whole seconds, 0 or more (e.g. 5m, 90s)", d)
	}
	return int64(d / time.Second), nil
}

func runShutdownList(ctx context.Context, inv *invocation) error {
	data, err := inv.do(ctx, http.MethodGet, "/v1/shutdowns", nil, nil)
	return show(inv, data, err, func(res struct {
		Shutdowns []registry.Shutdown `json:"shutdowns"`
	}) {
		renderShutdowns(inv.stdout, res.Shutdowns)
	})
}

// runPoolDrain deactivates the pool, requests its shutdown and follows the request
// until the pool is empty.
func runPoolDrain(ctx context.Context, inv *invocation, grace time.Duration, msg string) error {
	name := inv.args[0]
	if name == "" {
		return usagef(inv.cmd.path, "the pool name is empty")
	}
	g, err := graceSeconds(inv.cmd.path, grace)
	if err != nil {
		return err
	}
	if _, err := inv.do(ctx, http.MethodPost, "/v1/pools/"+url.PathEscape(name)+"/deactivate", nil, map[string]string{"message": msg}); err != nil {
		return err
	}
	data, err := inv.do(ctx, http.MethodPost, "/v1/shutdowns", nil,
		registry.ShutdownRequest{Scope: registry.ScopePool, Pool: name, GraceSeconds: &g, Message: msg})
	if err != nil {
		return err
	}
	var s registry.Shutdown
	if err := decodeAnswer(data, &s); err != nil {
		return err
	}
	if !inv.g.json() {
		fmt.Fprintf(inv.stderr, "roster: pool %s deactivated; %d sessions asked to log off by %s (request %s)\n",
			name, s.InScope, formatTime(s.Deadline), s.ID)
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		if s.State != registry.ShutdownPending || s.Open == 0 {
			break
		}
		if !inv.g.json() {
			left := time.Until(s.Deadline).Round(time.Second)
			fmt.Fprintf(inv.stderr, "roster: pool %s: %d sessions left, %s to the deadline\n", name, s.Open, max(left, 0))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("pool drain interrupted; request %s stays pending (cancel it with 'roster shutdown cancel %s'): %w", s.ID, s.ID, ctx.Err())
		case <-tick.C:
		}
		data, err := inv.do(ctx, http.MethodGet, "/v1/shutdowns/"+s.ID, nil, nil)
		if err != nil {
			return err
		}
		if err := decodeAnswer(data, &s); err != nil {
			return err
		}
	}
	if inv.g.json() {
		data, _ := inv.do(ctx, http.MethodGet, "/v1/shutdowns/"+s.ID, nil, nil)
		inv.printJSON(data)
		return nil
	}
	fmt.Fprintf(inv.stdout, "pool %s drained: %d sessions in it at the request, %d terminated at the deadline, the rest logged off\n",
		name, s.InScope, s.Terminated)
	return nil
}
