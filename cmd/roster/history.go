package main

import (
	"context"
	"encoding/json"
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

// logFlags are the flags the log commands (history, audit) share.
type logFlags struct {
	cmd                  string // the command, for usage errors
	since, until, cursor string
	limit                int
	all                  bool
}

// define defines the shared flags; what says what --since and --until
// select ("sessions that ended", "records written").
func (l *logFlags) define(fs *pflag.FlagSet, what string) {
	fs.StringVar(&l.since, "since", "", "only "+what+" at or after `WHEN` (RFC 3339, date, or duration ago)")
	fs.StringVar(&l.until, "until", "", "only "+what+" before `WHEN` (RFC 3339, date, or duration ago)")
	fs.IntVar(&l.limit, "limit", 0, "records per page, 1-1000 (server default: 100)")
	fs.StringVar(&l.cursor, "cursor", "", "start at this cursor (next_cursor of the previous page)")
	fs.BoolVar(&l.all, "all", false, "follow next_cursor to the last page")
}

// window checks --limit and reads --since and --until; now is what a
// duration ago counts from.
func (l *logFlags) window(now time.Time) (since, until time.Time, err error) {
	if l.limit < 0 || l.limit > registry.MaxListLimit {
		return since, until, usagef(l.cmd, "--limit %d: must be between 1 and %d", l.limit, registry.MaxListLimit)
	}
	if since, err = l.parseWhen("--since", l.since, now); err != nil {
		return since, until, err
	}
	until, err = l.parseWhen("--until", l.until, now)
	return since, until, err
}

// parseWhen reads a --since or --until: an RFC 3339 time, a date (midnight
// UTC) or a positive duration before now. Empty is the zero time.
func (l *logFlags) parseWhen(flag, v string, now time.Time) (time.Time, error) {
	if v == "" {
		return time.Time{}, nil
	}
	if d, err := time.ParseDuration(v); err == nil {
		if d <= 0 {
			return time.Time{}, usagef(l.cmd, "%s %q: a duration ago must be positive, e.g. 24h", flag, v)
		}
		return now.Add(-d), nil
	}
	for _, layout := range []string{time.RFC3339, time.DateOnly} {
		if t, err := time.Parse(layout, v); err == nil {
			return t, nil
		}
	}
	return time.Time{}, usagef(l.cmd, "%s %q: give an RFC 3339 time (2026-11-21T10:00:00Z), a date (2026-11-21) or a duration ago (90m, 24h)", flag, v)
}

// runLog prints a log: one page, or with --all every page; fetch gets the
// page at a cursor ("" for the flags' cursor) and field names the page's
// array of records.
func runLog[T any](ctx context.Context, inv *invocation, l *logFlags, field string, fetch func(ctx context.Context, cursor string) ([]byte, error), render func(io.Writer, []T)) error {
	if !l.all {
		data, err := fetch(ctx, l.cursor)
		if err != nil {
			return err
		}
		if inv.g.json() {
			inv.printJSON(data)
			return nil
		}
		var page map[string]json.RawMessage
		if err := decodeAnswer(data, &page); err != nil {
			return err
		}
		var records []T
		var next string
		for k, dst := range map[string]any{field: &records, "next_cursor": &next} {
			if raw, ok := page[k]; ok {
				if err := decodeAnswer(raw, dst); err != nil {
					return err
				}
			}
		}
		render(inv.stdout, records)
		if next != "" {
			shown := fmt.Sprintf("%d records", len(records))
			if len(records) == 1 {
				shown = "1 record"
			}
			fmt.Fprintf(inv.stderr, "roster: %s shown; next page: --cursor %s (or --all)\n", shown, next)
		}
		return nil
	}
	items, _, err := allPages(ctx, field, func(ctx context.Context, cursor string) ([]byte, error) {
		if cursor == "" {
			cursor = l.cursor
		}
		return fetch(ctx, cursor)
	})
	if err != nil {
		return err
	}
	if inv.g.json() {
		inv.printJSON(joinedPage(field, items, ""))
		return nil
	}
	records, err := decodeItems[T](items)
	if err != nil {
		return err
	}
	render(inv.stdout, records)
	return nil
}

// historyFlags are the flags of history.
type historyFlags struct {
	logFlags
	tenant, user, module, reason string
}

func (h *historyFlags) define(fs *pflag.FlagSet) {
	h.cmd = "history"
	fs.StringVar(&h.tenant, "tenant", "", "only sessions of this tenant")
	fs.StringVar(&h.user, "user", "", "only sessions of this user")
	fs.StringVar(&h.module, "module", "", "only sessions in this module")
	fs.StringVar(&h.reason, "reason", "", "only sessions that ended so: closed, killed, expired, shutdown, …")
	h.logFlags.define(fs, "sessions that ended")
}

// filter checks the flags and builds the history filter; now is what a
// duration ago counts from.
func (h *historyFlags) filter(now time.Time) (registry.HistoryFilter, error) {
	f := registry.HistoryFilter{Tenant: h.tenant, User: h.user, Module: h.module, Reason: registry.EndReason(h.reason), Limit: h.limit}
	var err error
	f.Since, f.Until, err = h.window(now)
	return f, err
}

func (h *historyFlags) run(ctx context.Context, inv *invocation) error {
	f, err := h.filter(time.Now())
	if err != nil {
		return err
	}
	return runLog(ctx, inv, &h.logFlags, "history", func(ctx context.Context, cursor string) ([]byte, error) {
		f.Cursor = cursor
		return inv.history(ctx, f)
	}, renderHistory)
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
