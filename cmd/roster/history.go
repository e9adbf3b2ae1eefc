package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/spf13/pflag"

	"github.com/roster-dev/roster/registry"
	"github.com/roster-dev/roster/registry/client"
)

func historyCommands() []*command {
	return []*command{
		{
			path: "history", summary: "list ended sessions: why, by whom and when they ended",
			help: `List the history of ended sessions, newest first: every session that was logged
out (closed), killed, expired or shut down, with who ended it, when it started and
ended, and its host. Filters combine with AND. --since and --until take an RFC 3339
time (2026-11-21T10:00:00Z), a date (2026-11-21, midnight UTC) or a duration ago
(90m, 24h): sessions that ended at or after --since and before --until.

A page holds --limit records (server default 100); the table notes on stderr when
there are more, and --all follows the pages to the end. A filtered page reads at most
10,000 records, so it can hold fewer than --limit while more follow.

With -o json a single page is printed exactly as the API sent it; with --all, one
object of the same shape holding every page's records and an empty next_cursor.

The duty leader keeps the history for its --history-retention (default 30 days).
Needs an operator or admin token.`,
			setup: func(fs *pflag.FlagSet) action {
				h := &historyFlags{}
				h.define(fs)
				return h.run
			},
		},
	}
}

// historyFlags are the flags of history.
type historyFlags struct {
	tenant, user, module, reason, since, until, cursor string
	limit                                              int
	all                                                bool
}

func (h *historyFlags) define(fs *pflag.FlagSet) {
	fs.StringVar(&h.tenant, "tenant", "", "only sessions of this tenant")
	fs.StringVar(&h.user, "user", "", "only sessions of this user")
	fs.StringVar(&h.module, "module", "", "only sessions in this module")
	fs.StringVar(&h.reason, "reason", "", "only sessions that ended so: closed, killed, expired, shutdown, …")
	fs.StringVar(&h.since, "since", "", "only sessions that ended at or after `WHEN` (RFC 3339, date, or duration ago)")
	fs.StringVar(&h.until, "until", "", "only sessions that ended before `WHEN` (RFC 3339, date, or duration ago)")
	fs.IntVar(&h.limit, "limit", 0, "records per page, 1-1000 (server default: 100)")
	fs.StringVar(&h.cursor, "cursor", "", "start at this cursor (next_cursor of the previous page)")
	fs.BoolVar(&h.all, "all", false, "follow next_cursor to the last page")
}

// filter checks the flags and builds the history filter; now is what a
// duration ago counts from.
func (h *historyFlags) filter(now time.Time) (registry.HistoryFilter, error) {
	f := registry.HistoryFilter{Tenant: h.tenant, User: h.user, Module: h.module, Reason: registry.EndReason(h.reason),
		Limit: h.limit, Cursor: h.cursor}
	if h.limit < 0 || h.limit > registry.MaxListLimit {
		return f, usagef("history", "--limit %d: must be between 1 and %d", h.limit, registry.MaxListLimit)
	}
	var err error
	if f.Since, err = parseWhen("--since", h.since, now); err != nil {
		return f, err
	}
	if f.Until, err = parseWhen("--until", h.until, now); err != nil {
		return f, err
	}
	return f, nil
}

// parseWhen reads a --since or --until: an RFC 3339 time, a date (midnight
// UTC) or a positive duration before now. Empty is the zero time.
func parseWhen(flag, v string, now time.Time) (time.Time, error) {
	if v == "" {
		return time.Time{}, nil
	}
	if d, err := time.ParseDuration(v); err == nil {
		if d <= 0 {
			return time.Time{}, usagef("history", "%s %q: a duration ago must be positive, e.g. 24h", flag, v)
		}
		return now.Add(-d), nil
	}
	for _, layout := range []string{time.RFC3339, time.DateOnly} {
		if t, err := time.Parse(layout, v); err == nil {
			return t, nil
		}
	}
	return time.Time{}, usagef("history", "%s %q: give an RFC 3339 time (2026-11-21T10:00:00Z), a date (2026-11-21) or a duration ago (90m, 24h)", flag, v)
}

func (h *historyFlags) run(ctx context.Context, inv *invocation) error {
	f, err := h.filter(time.Now())
	if err != nil {
		return err
	}
	if !h.all {
		data, err := inv.history(ctx, f)
		if err != nil {
			return err
		}
		if inv.g.json() {
			inv.printJSON(data)
			return nil
		}
		var page registry.HistoryPage
		if err := decodeAnswer(data, &page); err != nil {
			return err
		}
		renderHistory(inv.stdout, page.History)
		if page.NextCursor != "" {
			shown := fmt.Sprintf("%d records", len(page.History))
			if len(page.History) == 1 {
				shown = "1 record"
			}
			fmt.Fprintf(inv.stderr, "roster: %s shown; next page: --cursor %s (or --all)\n", shown, page.NextCursor)
		}
		return nil
	}
	items, _, err := allPages(ctx, "history", func(ctx context.Context, cursor string) ([]byte, error) {
		f.Cursor = cursor
		return inv.history(ctx, f)
	})
	if err != nil {
		return err
	}
	if inv.g.json() {
		inv.printJSON(joinedPage("history", items, ""))
		return nil
	}
	records, err := decodeItems[registry.HistoryRecord](items)
	if err != nil {
		return err
	}
	renderHistory(inv.stdout, records)
	return nil
}

func (inv *invocation) history(ctx context.Context, f registry.HistoryFilter) ([]byte, error) {
	q, err := client.HistoryQuery(f)
	if err != nil {
		return nil, err
	}
	return inv.do(ctx, http.MethodGet, "/v1/history", q, nil)
}

// renderHistory prints history records as a table, one row each, header first.
func renderHistory(w io.Writer, records []registry.HistoryRecord) {
	tw := newTable(w)
	fmt.Fprintln(tw, "ENDED\tDURATION\tREASON\tBY\tUSER\tMODULE\tHOST\tSESSION")
	for _, h := range records {
		duration := "-"
		if !h.StartedAt.IsZero() {
			duration = formatSeconds(h.DurationSeconds)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", formatTime(h.EndedAt), duration, cell(string(h.Reason)),
			cell(h.By), cell(h.User), cell(h.Module), cell(h.Host), cell(h.ID))
	}
	tw.Flush()
}
