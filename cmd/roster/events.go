package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/spf13/pflag"

	"github.com/roster-dev/roster/registry"
)

func eventCommands() []*command {
	return []*command{
		{
			path: "events", summary: "follow what happens to sessions, live",
			help: `Follow the event feed (GET /v1/events): every session opened and ended (closed,
killed, expired, shutdown) and every shutdown request made or cancelled, one line each,
until Ctrl-C. Filters combine with AND. When a node goes away the feed resumes on the
next endpoint from the last event, so nothing is missed or shown twice. --since REV
starts after an earlier event's revision (the REV column). With -o json each event is
one JSON line, as the API sends it. Needs an admin or operator token (a client token
sees the sessions it opened).`,
			setup: func(fs *pflag.FlagSet) action {
				var f registry.EventFilter
				fs.StringVar(&f.Tenant, "tenant", "", "only this tenant")
				fs.StringVar(&f.Pool, "pool", "", "only this pool")
				fs.StringVar(&f.Module, "module", "", "only this module")
				since := fs.Int64("since", 0, "start after this event revision (default: from now on)")
				return func(ctx context.Context, inv *invocation) error { return runEvents(ctx, inv, f, *since) }
			},
		},
	}
}

// eventLine lays out one event: the feed is printed as it comes, so the
// columns have fixed widths instead of a table's.
const eventLine = "%-8s %-18s %-20s %-32s %-12s %-10s %-8s %-10s %s\n"

func runEvents(ctx context.Context, inv *invocation, f registry.EventFilter, since int64) error {
	if since < 0 {
		return usagef(inv.cmd.path, "--since %d: give a revision, 0 or more", since)
	}
	c, err := inv.apiClient()
	if err != nil {
		return err
	}
	st, err := c.Events(ctx, f, since)
	if err != nil {
		return err
	}
	defer st.Close()
	if !inv.g.json() {
		fmt.Fprintf(inv.stderr, "roster: following events after revision %d; Ctrl-C to stop\n", st.LastEventID())
		fmt.Fprintf(inv.stdout, eventLine, "REV", "TYPE", "AT", "SESSION", "USER", "MODULE", "POOL", "BY", "DETAIL")
	}
	for e := range st.Events() {
		if inv.g.json() {
			data, _ := json.Marshal(e)
			inv.printJSON(data)
			continue
		}
		detail := e.Reason
		if e.Shutdown != nil {
			detail = fmt.Sprintf("request %s (%s %s) deadline %s: %s", e.Shutdown.ID, e.Shutdown.Scope,
				shutdownTarget(e.Shutdown), formatTime(e.Shutdown.Deadline), e.Shutdown.Message)
		}
		fmt.Fprintf(inv.stdout, eventLine, fmt.Sprint(e.Rev), e.Type, formatTime(e.At), cell(e.Session.ID),
			cell(e.Session.User), cell(e.Session.Module), cell(e.Session.Pool), cell(e.By), cell(detail))
	}
	if err := st.Err(); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// shutdownTarget names what a shutdown request reaches.
func shutdownTarget(n *registry.ShutdownNotice) string {
	switch n.Scope {
	case registry.ScopeSession:
		return n.Session
	case registry.ScopeAll:
		return n.Tenant
	}
	return n.Pool
}
