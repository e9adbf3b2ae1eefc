package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/spf13/pflag"

	"github.com/roster-dev/roster/registry"
	"github.com/roster-dev/roster/registry/client"
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

// drainSummary is what pool drain prints with -o json when it is done.
type drainSummary struct {
	Pool      string `json:"pool"`
	RequestID string `json:"request_id"`
	// InScope is how many sessions were open in the pool at the request;
	// of them LoggedOff closed themselves, Terminated were ended at the
	// deadline, and Other ended otherwise (killed, expired).
	InScope    int               `json:"in_scope"`
	LoggedOff  int               `json:"logged_off"`
	Terminated int               `json:"terminated"`
	Other      int               `json:"other"`
	Deadline   time.Time         `json:"deadline"`
	DrainedAt  time.Time         `json:"drained_at"`
	Request    registry.Shutdown `json:"request"`
}

// runPoolDrain deactivates the pool, requests its shutdown and follows the pool's
// event stream until the pool is empty.
func runPoolDrain(ctx context.Context, inv *invocation, grace time.Duration, msg string) error {
	name := inv.args[0]
	if name == "" {
		return usagef(inv.cmd.path, "the pool name is empty")
	}
	g, err := graceSeconds(inv.cmd.path, grace)
	if err != nil {
		return err
	}
	c, err := inv.apiClient()
	if err != nil {
		return err
	}
	// The stream starts before the pool is deactivated, so no session's end is missed.
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	st, err := c.Events(sctx, registry.EventFilter{Pool: name}, 0)
	if err != nil {
		return fmt.Errorf("follow pool %s: %w", name, err)
	}
	defer st.Close()
	if _, err := inv.do(ctx, http.MethodPost, "/v1/pools/"+url.PathEscape(name)+"/deactivate", nil, map[string]string{"message": msg}); err != nil {
		return err
	}
	data, err := inv.do(ctx, http.MethodPost, "/v1/shutdowns", nil,
		registry.ShutdownRequest{Scope: registry.ScopePool, Pool: name, GraceSeconds: &g, Message: msg})
	if err != nil {
		return err
	}
	var req registry.Shutdown
	if err := decodeAnswer(data, &req); err != nil {
		return err
	}
	d := &drain{inv: inv, c: c, pool: name, req: req, ended: map[string]registry.EventType{}}
	if !inv.g.json() {
		fmt.Fprintf(inv.stderr, "roster: pool %s deactivated; %s asked to log off by %s (request %s)\n",
			name, sessions(req.InScope), formatTime(req.Deadline), req.ID)
	}
	// Every session open once the pool is inactive is in the listing; the
	// ends the stream delivers, before or after it, take sessions off.
	if err := d.list(ctx); err != nil {
		return err
	}
	if err := d.follow(ctx, st); err != nil {
		return err
	}
	return d.finish(ctx)
}

// drain follows one pool drain.
type drain struct {
	inv   *invocation
	c     *client.Client
	pool  string
	req   registry.Shutdown
	open  map[string]bool               // sessions left
	ended map[string]registry.EventType // how each session seen ending ended
	last  string                        // the last progress line printed
}

// list reads the pool's open sessions, minus those already seen ending.
func (d *drain) list(ctx context.Context) error {
	d.open = map[string]bool{}
	f := registry.ListFilter{Pool: d.pool, Limit: registry.MaxListLimit}
	for {
		page, err := d.c.List(ctx, f)
		if err != nil {
			return fmt.Errorf("list pool %s: %w", d.pool, err)
		}
		for _, s := range page.Sessions {
			if _, gone := d.ended[s.ID]; !gone {
				d.open[s.ID] = true
			}
		}
		if page.NextCursor == "" {
			return nil
		}
		f.Cursor = page.NextCursor
	}
}

// follow takes ended sessions off as the stream reports them and shows the
// countdown until the pool is empty. Past the deadline it also checks the
// request, in case the stream lost something (it then lists again).
func (d *drain) follow(ctx context.Context, st *client.EventStream) error {
	events := st.Events()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	d.progress(true)
	for len(d.open) > 0 {
		select {
		case <-ctx.Done():
			return fmt.Errorf("pool drain interrupted; request %s stays pending (cancel it with 'roster shutdown cancel %s'): %w", d.req.ID, d.req.ID, ctx.Err())
		case e, ok := <-events:
			if !ok {
				fmt.Fprintf(d.inv.stderr, "roster: the event stream of pool %s ended (%v); following the request instead\n", d.pool, st.Err())
				events = nil
				continue
			}
			switch {
			case e.Type == registry.EventResync:
				if err := d.list(ctx); err != nil {
					return err
				}
			case e.Type.IsEnd():
				d.ended[e.Session.ID] = e.Type
				delete(d.open, e.Session.ID)
			}
			d.progress(false)
		case <-tick.C:
			d.progress(false)
			if time.Since(d.req.Deadline) > 5*time.Second || (events == nil && time.Now().After(d.req.Deadline)) {
				if err := d.recheck(ctx); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// recheck reads the request; once it is no longer pending the pool is
// listed again.
func (d *drain) recheck(ctx context.Context) error {
	data, err := d.inv.do(ctx, http.MethodGet, "/v1/shutdowns/"+d.req.ID, nil, nil)
	if err != nil {
		return err
	}
	var req registry.Shutdown // fresh: fields left out of the answer are zero
	if err := decodeAnswer(data, &req); err != nil {
		return err
	}
	d.req = req
	switch d.req.State {
	case registry.ShutdownCancelled:
		return fmt.Errorf("shutdown request %s was cancelled by %s; pool %s stays inactive with %d sessions (roster pool activate %s)",
			d.req.ID, d.req.By, d.pool, len(d.open), d.pool)
	case registry.ShutdownDone:
		return d.list(ctx)
	}
	return nil
}

// progress prints the sessions left and the countdown when either changed
// (the countdown every 10 s, every second in the last 10 s).
func (d *drain) progress(force bool) {
	if d.inv.g.json() {
		return
	}
	left := time.Until(d.req.Deadline).Round(time.Second)
	shown := left.Truncate(10 * time.Second)
	if left <= 10*time.Second {
		shown = left
	}
	line := fmt.Sprintf("roster: pool %s: %s left, %s to the deadline", d.pool, sessions(len(d.open)), max(shown, 0))
	if left <= 0 {
		line = fmt.Sprintf("roster: pool %s: %s left; the deadline has passed, terminating", d.pool, sessions(len(d.open)))
	}
	if force || line != d.last {
		fmt.Fprintln(d.inv.stderr, line)
		d.last = line
	}
}

// finish prints the outcome: a sentence, or with -o json the summary.
func (d *drain) finish(ctx context.Context) error {
	// Past the deadline the enforcer marks the request done right after its
	// last termination: wait a little for that, for the final counts. A pool
	// that emptied before the deadline leaves the request pending until then.
	for wait := time.Now().Add(5 * time.Second); ; {
		if data, err := d.inv.do(ctx, http.MethodGet, "/v1/shutdowns/"+d.req.ID, nil, nil); err == nil {
			var req registry.Shutdown
			if decodeAnswer(data, &req) == nil {
				d.req = req
			}
		}
		if d.req.State != registry.ShutdownPending || time.Now().Before(d.req.Deadline) || time.Now().After(wait) {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	sum := drainSummary{Pool: d.pool, RequestID: d.req.ID, InScope: d.req.InScope, Deadline: d.req.Deadline,
		DrainedAt: time.Now().UTC().Truncate(time.Millisecond), Request: d.req}
	for _, how := range d.ended {
		switch how {
		case registry.EventClosed:
			sum.LoggedOff++
		case registry.EventShutdown:
			sum.Terminated++
		default:
			sum.Other++
		}
	}
	if d.inv.g.json() {
		out, _ := json.MarshalIndent(sum, "", "  ")
		fmt.Fprintln(d.inv.stdout, string(out))
		return nil
	}
	fmt.Fprintf(d.inv.stdout, "pool %s drained: %s in it at the request; %d logged off, %d terminated at the deadline, %d ended otherwise\n",
		d.pool, sessions(sum.InScope), sum.LoggedOff, sum.Terminated, sum.Other)
	return nil
}

// sessions says "1 session", "2 sessions".
func sessions(n int) string {
	if n == 1 {
		return "1 session"
	}
	return fmt.Sprintf("%d sessions", n)
}
