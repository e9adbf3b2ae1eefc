package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/spf13/pflag"

	"github.com/roster-dev/roster/registry"
	"github.com/roster-dev/roster/registry/client"
)

// logoutTimeout bounds the logout of a held session after Ctrl-C.
const logoutTimeout = 10 * time.Second

func sessionCommands() []*command {
	return []*command{
		{
			path: "session open", args: "--user USER --module MODULE",
			summary: "open (log in) a session; with --hold keep it alive until Ctrl-C",
			help: `Open (log in) a session of USER in MODULE and print it, including the session token
that authorizes its heartbeats and logout. Unless the user has the multi-login right,
the user may hold only one session per module: a second open fails with
already_logged_in and names the host that holds it.

Without --hold the session expires after its TTL unless something heartbeats it
(roster session heartbeat ID --session-token TOKEN). With --hold roster keeps it
alive, heartbeating every third of the TTL, until SIGINT or SIGTERM, then logs it
out and exits 0. If the session ends otherwise, roster prints why on stderr and
exits 3 when it was killed, expired, shut down or ended by clean-up (0 when it was
logged out elsewhere).

--service S gives the session a direct connection of service S (with the session's
host, pid and os): one client, one session, created and ended with it. --connection ID
(repeatable) names shared connections registered by an application server; the
token must be the one that registered them (or an admin token). The user must have
each connection's service in the user master (roster user set --service), or the
open is refused with service_not_allowed.

A held session follows its event stream. When an operator asks it to log off
(roster shutdown request, roster pool drain), roster prints the message and a
countdown to the deadline on stderr; with --close-on-shutdown it logs out at once
instead (exit 0), as a client that saved its work would. A cancelled request is
reported too. A session still open at the deadline is terminated: exit 3.`,
			setup: func(fs *pflag.FlagSet) action {
				o := &openFlags{}
				o.define(fs)
				return o.run
			},
		},
		{
			path: "session list", summary: "list sessions, filtered and paged",
			help: `List live sessions. Filters combine with AND. A page holds --limit sessions
(server default 100); the table notes on stderr when there are more, and --all
follows the pages to the end.

With -o json a single page is printed exactly as the API sent it. With --all and
-o json roster prints one object of the same shape holding every page's sessions
(each exactly as the API sent it), the last page's total, and an empty next_cursor.`,
			setup: func(fs *pflag.FlagSet) action {
				l := &listFlags{}
				l.define(fs)
				return l.run
			},
		},
		{
			path: "session get", args: "ID", nargs: 1, summary: "show one session",
			help: `Show session ID as the registry sees it now. A session that has ended answers
with how, by whom and when while its tombstone lasts (15 minutes by default).`,
			setup: func(fs *pflag.FlagSet) action { return runSessionGet },
		},
		{
			path: "session heartbeat", args: "ID", nargs: 1, summary: "renew a session's lease once",
			help: `Renew session ID's lease once. The token is the session's own (--session-token),
the client token that opened it, or an admin token. With --active the heartbeat says
that the session's user did something: idle clean-up counts from the last such
heartbeat (see roster policy set).`,
			setup: func(fs *pflag.FlagSet) action {
				tok := fs.String("session-token", "", "authorize with the session's token `rs1.…` instead of the global token")
				active := fs.Bool("active", false, "the session's user did something since the last heartbeat")
				return func(ctx context.Context, inv *invocation) error { return runHeartbeat(ctx, inv, *tok, *active) }
			},
		},
		{
			path: "session close", args: "ID", nargs: 1, summary: "log a session out",
			help: `Log session ID out: its keys are deleted and its licence seat is freed at once.
The token is the session's own (--session-token), the client token that opened it,
or an admin token. If the session works through a shared connection that has died and
whose service timeout is still running, the logout goes ahead and a warning on stderr
says so (clean-up would have left the session alone until the timeout ran out).`,
			setup: func(fs *pflag.FlagSet) action {
				tok := fs.String("session-token", "", "authorize with the session's token `rs1.…` instead of the global token")
				return func(ctx context.Context, inv *invocation) error { return runClose(ctx, inv, *tok) }
			},
		},
		{
			path: "session kill", args: "ID", nargs: 1, summary: "cut a session (e.g. a hung one)",
			help: `Cut session ID, e.g. one left hanging by a crashed PC. Its holder learns the
reason at its next heartbeat. Allowed to admin and operator tokens, to a session
token of the same user (cutting one's own hung session from another module), and
to a session token of a user with the interrupt-sessions right, within its tenant.
Like session close, it warns when the session's dead shared connection's service
timeout is still running. A session on a live direct connection is never ended by
clean-up: a kill is how to end it.`,
			setup: func(fs *pflag.FlagSet) action {
				reason := fs.String("reason", "", fmt.Sprintf("why, shown to the session's holder (at most %d bytes)", registry.MaxReasonBytes))
				return func(ctx context.Context, inv *invocation) error { return runKill(ctx, inv, *reason) }
			},
		},
	}
}

// openFlags are the flags of session open.
type openFlags struct {
	user, module, tenant  string
	host, os, kind, pool  string
	pid                   int64
	ttl                   time.Duration
	labels                []string
	service               string
	connections           []string
	hold, closeOnShutdown bool
	fs                    *pflag.FlagSet
}

func (o *openFlags) define(fs *pflag.FlagSet) {
	host, _ := os.Hostname()
	fs.StringVar(&o.user, "user", "", "user to log in (required)")
	fs.StringVar(&o.module, "module", "", "module the user works in (required)")
	fs.StringVar(&o.tenant, "tenant", "", "tenant (server default: default)")
	fs.StringVar(&o.host, "host", host, "host name of the client")
	fs.Int64Var(&o.pid, "pid", 0, "process id of the client (default: roster's own with --hold, else none)")
	fs.StringVar(&o.os, "os", runtime.GOOS, "operating system of the client")
	fs.StringVar(&o.kind, "kind", "", "client kind: ui, background or appserver (server default: ui)")
	fs.StringVar(&o.pool, "pool", "", "pool (server default: the node's --pool)")
	fs.DurationVar(&o.ttl, "ttl", 0, "session TTL in whole seconds, e.g. 30s or 2m (server default: its --default-ttl)")
	fs.StringArrayVar(&o.labels, "label", nil, "label `KEY=VALUE` (repeatable)")
	fs.StringVar(&o.service, "service", "", "give the session a direct connection of `SERVICE`")
	fs.StringArrayVar(&o.connections, "connection", nil, "work through the shared connection `ID` (repeatable)")
	fs.BoolVar(&o.hold, "hold", false, "keep the session alive until SIGINT/SIGTERM, then log out")
	fs.BoolVar(&o.closeOnShutdown, "close-on-shutdown", false, "with --hold: log out at once when asked to by a shutdown request")
	o.fs = fs
}

// request checks the flags and builds the open request.
func (o *openFlags) request() (registry.OpenRequest, error) {
	const path = "session open"
	req := registry.OpenRequest{
		Tenant: o.tenant, User: o.user, Module: o.module, Host: o.host, OS: o.os,
		Pool: o.pool, ClientKind: registry.ClientKind(o.kind), PID: o.pid,
	}
	if req.User == "" {
		return req, usagef(path, "--user is required")
	}
	if req.Module == "" {
		return req, usagef(path, "--module is required")
	}
	if err := checkKind("session open", "--kind", o.kind); err != nil {
		return req, err
	}
	if o.pid < 0 {
		return req, usagef(path, "--pid %d: must be 0 or more", o.pid)
	}
	if o.closeOnShutdown && !o.hold {
		return req, usagef(path, "--close-on-shutdown needs --hold")
	}
	if o.hold && (o.fs == nil || !o.fs.Changed("pid")) {
		req.PID = int64(os.Getpid())
	}
	secs, err := ttlSeconds(o.ttl)
	if err != nil {
		return req, err
	}
	req.TTLSeconds = secs
	if req.Labels, err = parseLabels(o.labels); err != nil {
		return req, err
	}
	if o.service != "" || (o.fs != nil && o.fs.Changed("service")) {
		if o.service == "" || strings.Contains(o.service, "/") {
			return req, usagef(path, "--service %q: want a service name without '/'", o.service)
		}
		req.Connection = &registry.DirectConnection{Service: o.service}
	}
	for _, id := range o.connections {
		if err := registry.CheckConnectionID("--connection", id); err != nil {
			return req, usagef(path, "%s", err)
		}
	}
	req.Connections = o.connections
	return req, nil
}

// ttlSeconds checks --ttl: 0 (server default) or a positive whole number of seconds.
func ttlSeconds(d time.Duration) (int64, error) {
	switch {
	case d < 0:
		return 0, usagef("session open", "--ttl %s: must be positive", d)
	case d%time.Second != 0:
		return 0, usagef("session open", "--ttl %s: must be whole seconds, e.g. 30s or 2m", d)
	}
	return int64(d / time.Second), nil
}

// parseLabels turns --label KEY=VALUE flags into a map; nil when there are none.
func parseLabels(labels []string) (map[string]string, error) {
	if len(labels) == 0 {
		return nil, nil
	}
	m := make(map[string]string, len(labels))
	for _, l := range labels {
		k, v, ok := strings.Cut(l, "=")
		switch {
		case !ok:
			return nil, usagef("session open", "--label %q: want KEY=VALUE", l)
		case k == "":
			return nil, usagef("session open", "--label %q: the key is empty", l)
		}
		if _, dup := m[k]; dup {
			return nil, usagef("session open", "--label: key %q given twice", k)
		}
		m[k] = v
	}
	return m, nil
}

func checkKind(path, flag, kind string) error {
	switch registry.ClientKind(kind) {
	case "", registry.KindUI, registry.KindBackground, registry.KindAppServer:
		return nil
	}
	return usagef(path, "%s %q: want ui, background or appserver", flag, kind)
}

func (o *openFlags) run(ctx context.Context, inv *invocation) error {
	req, err := o.request()
	if err != nil {
		return err
	}
	data, err := inv.do(ctx, http.MethodPost, "/v1/sessions", nil, req)
	if err != nil {
		return err
	}
	var opened registry.OpenedSession
	if err := decodeAnswer(data, &opened); err != nil {
		return err
	}
	if inv.g.json() {
		inv.printJSON(data)
	} else {
		renderSession(inv.stdout, opened.Session, opened.Token)
	}
	if !o.hold {
		if !inv.g.json() {
			fmt.Fprintf(inv.stderr, "roster: the session expires in %s unless heartbeated: roster session heartbeat %s --session-token TOKEN\n",
				formatSeconds(opened.ExpiresInSeconds), opened.ID)
		}
		return nil
	}
	return hold(ctx, inv, opened, o.closeOnShutdown)
}

// hold keeps a session alive until ctx is done (SIGINT, SIGTERM), then logs
// it out; or until it ends otherwise, which it reports. It follows the
// session's events and warns of shutdown requests (see shutdownWatch).
func hold(ctx context.Context, inv *invocation, opened registry.OpenedSession, closeOnShutdown bool) error {
	stderr := &lockedWriter{w: inv.stderr}
	failing := false // touched only by the heartbeat goroutine
	notices := make(chan *registry.ShutdownNotice, 1)
	hook := func(res registry.HeartbeatResult, err error) {
		switch {
		case err == nil && failing:
			failing = false
			fmt.Fprintf(stderr, "roster: heartbeat ok again; the session expires in %s\n", formatSeconds(res.ExpiresInSeconds))
		case err != nil && !endsSession(err):
			failing = true
			fmt.Fprintf(stderr, "roster: heartbeat failed; retrying until the session would expire: %s\n", describeError(err))
		}
		if err == nil && res.Shutdown != nil {
			select { // a stream that works has told already; this is for one that does not
			case notices <- res.Shutdown:
			default:
			}
		}
	}
	interval := (time.Duration(opened.TTLSeconds) * time.Second / 3).Round(time.Millisecond)
	fmt.Fprintf(stderr, "roster: holding session %s (heartbeat every %s); press Ctrl-C to log out\n", opened.ID, interval)
	s, err := inv.c.Attach(opened, client.WithHeartbeatHook(hook))
	if err != nil {
		return err
	}
	w := &shutdownWatch{out: stderr, pending: map[string]*registry.ShutdownNotice{}}
	events := s.Events()
	countdown := time.NewTimer(time.Hour)
	countdown.Stop()
	defer countdown.Stop()
	for {
		var n *registry.ShutdownNotice
		select {
		case <-s.Done():
			_ = s.Close(ctx) // the session has ended: this only waits for the heartbeat goroutine
			return reportEnd(stderr, s.Err())
		case <-ctx.Done():
			return logout(ctx, stderr, s)
		case e, ok := <-events:
			if !ok {
				events = nil // the session ended (Done follows) or the stream gave up: heartbeats still tell
				continue
			}
			switch e.Type {
			case registry.EventShutdownRequested:
				n = e.Shutdown
			case registry.EventShutdownCancelled:
				w.cancelled(e)
			}
		case n = <-notices:
		case <-countdown.C:
		}
		if n != nil && w.requested(n) && closeOnShutdown {
			fmt.Fprintf(stderr, "roster: logging out now, as shutdown request %s asks (--close-on-shutdown)\n", n.ID)
			return logout(ctx, stderr, s)
		}
		if next := w.tick(time.Now()); next > 0 {
			countdown.Reset(next)
		}
	}
}

// logout logs a held session out and reports it.
func logout(ctx context.Context, stderr *lockedWriter, s *client.Session) error {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), logoutTimeout)
	defer cancel()
	if err := s.Close(cctx); err != nil {
		return err
	}
	if s.Err() == client.ErrClosed {
		fmt.Fprintf(stderr, "roster: session %s logged out\n", s.ID())
		return nil
	}
	return reportEnd(stderr, s.Err()) // it ended on its own just before the logout
}

// shutdownWatch keeps the shutdown requests pending for a held session and
// prints their warnings and countdown.
type shutdownWatch struct {
	out     *lockedWriter
	pending map[string]*registry.ShutdownNotice
	done    map[string]bool // cancelled: a late heartbeat notice must not revive it
}

// requested records request n and warns of it; it reports whether n is new.
func (w *shutdownWatch) requested(n *registry.ShutdownNotice) bool {
	if w.pending[n.ID] != nil || w.done[n.ID] {
		return false
	}
	w.pending[n.ID] = n
	msg := n.Message
	if msg == "" {
		msg = "(no message)"
	}
	fmt.Fprintf(w.out, "roster: SHUTDOWN REQUESTED by %s: %s\n", n.RequestedBy, msg)
	fmt.Fprintf(w.out, "roster: please save and log off; the session is terminated at %s (in %s) unless it logs out first (request %s)\n",
		formatTime(n.Deadline), untilDeadline(n.Deadline, time.Now()), n.ID)
	return true
}

// cancelled forgets the cancelled request of e and says so.
func (w *shutdownWatch) cancelled(e registry.Event) {
	if e.Shutdown == nil {
		return
	}
	if w.done == nil {
		w.done = map[string]bool{}
	}
	w.done[e.Shutdown.ID] = true
	delete(w.pending, e.Shutdown.ID)
	fmt.Fprintf(w.out, "roster: shutdown request %s was cancelled by %s; the session goes on\n", e.Shutdown.ID, e.By)
}

// tick prints the countdown to the nearest deadline when one of its marks
// has come, and returns the time to the next mark (0: nothing pending).
// The marks: every minute, every 10 s in the last minute, each of the last
// 5 seconds.
func (w *shutdownWatch) tick(now time.Time) time.Duration {
	var first *registry.ShutdownNotice
	for _, n := range w.pending {
		if first == nil || n.Deadline.Before(first.Deadline) {
			first = n
		}
	}
	if first == nil {
		return 0
	}
	left := first.Deadline.Sub(now)
	if left <= 0 {
		return 0 // the termination comes as the session's end
	}
	// The timer may fire a little early or late.
	const slack = 200 * time.Millisecond
	if m := countdownMark(left + slack); m > 0 && left+slack-m < 2*slack {
		msg := ""
		if first.Message != "" {
			msg = ": " + first.Message
		}
		fmt.Fprintf(w.out, "roster: shutdown in %s%s\n", formatSeconds(int64(m/time.Second)), msg)
	}
	if m := countdownMark(left - slack); m > 0 {
		return left - m
	}
	return 0
}

// countdownMark returns the largest countdown mark not above d (0 if none):
// every minute, every 10 s in the last minute, each of the last 5 seconds.
func countdownMark(d time.Duration) time.Duration {
	switch {
	case d >= time.Minute:
		return d.Truncate(time.Minute)
	case d >= 10*time.Second:
		return d.Truncate(10 * time.Second)
	case d >= 5*time.Second:
		return 5 * time.Second
	case d >= time.Second:
		return d.Truncate(time.Second)
	}
	return 0
}

// untilDeadline shows the time left to deadline, in whole seconds.
func untilDeadline(deadline, now time.Time) string {
	return formatSeconds(int64(max(deadline.Sub(now).Round(time.Second), 0) / time.Second))
}

// endsSession reports whether a heartbeat error means the session is over.
func endsSession(err error) bool {
	if _, ok := errors.AsType[*client.EndedError](err); ok {
		return true
	}
	ae, ok := errors.AsType[*client.APIError](err)
	return ok && ae.Status < 500 && !errors.Is(err, client.ErrUnavailable)
}

// reportEnd prints how a held session ended and returns the error that
// gives the exit status: 3 for killed, expired, shut down or ended by
// clean-up, 0 for logged out elsewhere.
func reportEnd(stderr *lockedWriter, err error) error {
	switch {
	case errors.Is(err, client.ErrKilled), errors.Is(err, client.ErrExpired), errors.Is(err, client.ErrShutdown),
		errors.Is(err, client.ErrIdle), errors.Is(err, client.ErrCleanup):
		fmt.Fprintln(stderr, err.Error())
		return &exitCodeError{code: exitEnded}
	case errors.Is(err, client.ErrClosed):
		fmt.Fprintln(stderr, err.Error())
		return nil
	}
	return err
}

// lockedWriter serializes writes from the heartbeat hook and the command.
type lockedWriter struct {
	mu sync.Mutex
	w  interface{ Write([]byte) (int, error) }
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// listFlags are the flags of session list.
type listFlags struct {
	tenant, user, module, pool, site, node, kind, cursor string
	connection                                           string
	limit                                                int
	all                                                  bool
}

func (l *listFlags) define(fs *pflag.FlagSet) {
	fs.StringVar(&l.tenant, "tenant", "", "only sessions of this tenant")
	fs.StringVar(&l.user, "user", "", "only sessions of this user")
	fs.StringVar(&l.module, "module", "", "only sessions in this module")
	fs.StringVar(&l.pool, "pool", "", "only sessions in this pool")
	fs.StringVar(&l.site, "site", "", "only sessions opened at this site")
	fs.StringVar(&l.node, "node", "", "only sessions opened on this node")
	fs.StringVar(&l.kind, "kind", "", "only sessions of this client kind: ui, background or appserver")
	fs.StringVar(&l.connection, "connection", "", "only sessions that work through the connection `ID`")
	fs.IntVar(&l.limit, "limit", 0, "sessions per page, 1-1000 (server default: 100)")
	fs.StringVar(&l.cursor, "cursor", "", "start at this cursor (next_cursor of the previous page)")
	fs.BoolVar(&l.all, "all", false, "follow next_cursor to the last page")
}

// filter checks the flags and builds the list filter.
func (l *listFlags) filter() (registry.ListFilter, error) {
	f := registry.ListFilter{
		Tenant: l.tenant, User: l.user, Module: l.module, Pool: l.pool, Site: l.site, Node: l.node,
		ClientKind: registry.ClientKind(l.kind), Limit: l.limit, Cursor: l.cursor, Connection: l.connection,
	}
	if err := checkKind("session list", "--kind", l.kind); err != nil {
		return f, err
	}
	if l.connection != "" {
		if err := registry.CheckConnectionID("--connection", l.connection); err != nil {
			return f, usagef("session list", "%s", err)
		}
	}
	if l.limit < 0 || l.limit > 1000 {
		return f, usagef("session list", "--limit %d: must be between 1 and 1000", l.limit)
	}
	return f, nil
}

func (l *listFlags) run(ctx context.Context, inv *invocation) error {
	f, err := l.filter()
	if err != nil {
		return err
	}
	if !l.all {
		data, err := inv.list(ctx, f)
		if err != nil {
			return err
		}
		if inv.g.json() {
			inv.printJSON(data)
			return nil
		}
		var page registry.SessionPage
		if err := decodeAnswer(data, &page); err != nil {
			return err
		}
		renderSessions(inv.stdout, page.Sessions)
		if page.NextCursor != "" {
			fmt.Fprintf(inv.stderr, "roster: %d of %d sessions shown; next page: --cursor %s (or --all)\n",
				len(page.Sessions), page.Total, page.NextCursor)
		}
		return nil
	}
	items, last, err := allPages(ctx, "sessions", func(ctx context.Context, cursor string) ([]byte, error) {
		f.Cursor = cursor
		return inv.list(ctx, f)
	})
	if err != nil {
		return err
	}
	if inv.g.json() {
		total := last["total"]
		if total == nil {
			total = json.RawMessage("0")
		}
		inv.printJSON(joinedPage("sessions", items, `"total":`+string(total)))
		return nil
	}
	sessions, err := decodeItems[registry.Session](items)
	if err != nil {
		return err
	}
	renderSessions(inv.stdout, sessions)
	return nil
}

func (inv *invocation) list(ctx context.Context, f registry.ListFilter) ([]byte, error) {
	q, err := client.ListQuery(f)
	if err != nil {
		return nil, err
	}
	return inv.do(ctx, http.MethodGet, "/v1/sessions", q, nil)
}

// sessionPath checks a session id and returns its API path.
func sessionPath(path, id, suffix string) (string, error) {
	if err := registry.CheckSessionID(id); err != nil {
		return "", usagef(path, "%s", strings.TrimPrefix(err.Error(), "id: "))
	}
	return "/v1/sessions/" + url.PathEscape(id) + suffix, nil
}

func runSessionGet(ctx context.Context, inv *invocation) error {
	p, err := sessionPath(inv.cmd.path, inv.args[0], "")
	if err != nil {
		return err
	}
	data, err := inv.do(ctx, http.MethodGet, p, nil, nil)
	return show(inv, data, err, func(s registry.Session) { renderSession(inv.stdout, s, "") })
}

func runHeartbeat(ctx context.Context, inv *invocation, token string, active bool) error {
	p, err := sessionPath(inv.cmd.path, inv.args[0], "/heartbeat")
	if err != nil {
		return err
	}
	inv.sessionToken = token
	var body any
	if active {
		body = registry.HeartbeatRequest{Active: true}
	}
	data, err := inv.do(ctx, http.MethodPost, p, nil, body)
	return show(inv, data, err, func(res registry.HeartbeatResult) {
		fmt.Fprintf(inv.stdout, "session %s renewed: expires in %s (ttl %s)\n",
			res.ID, formatSeconds(res.ExpiresInSeconds), formatSeconds(res.TTLSeconds))
	})
}

func runClose(ctx context.Context, inv *invocation, token string) error {
	p, err := sessionPath(inv.cmd.path, inv.args[0], "")
	if err != nil {
		return err
	}
	inv.sessionToken = token
	return inv.printEnded(inv.do(ctx, http.MethodDelete, p, nil, nil))
}

func runKill(ctx context.Context, inv *invocation, reason string) error {
	p, err := sessionPath(inv.cmd.path, inv.args[0], "/kill")
	if err != nil {
		return err
	}
	if len(reason) > registry.MaxReasonBytes {
		return usagef(inv.cmd.path, "--reason is %d bytes long; at most %d", len(reason), registry.MaxReasonBytes)
	}
	body := struct {
		Reason string `json:"reason,omitempty"`
	}{reason}
	return inv.printEnded(inv.do(ctx, http.MethodPost, p, nil, body))
}

// printEnded prints the answer of a close or kill, and its warning on stderr.
func (inv *invocation) printEnded(data []byte, err error) error {
	return show(inv, data, err, func(e registry.Ended) {
		fmt.Fprintln(inv.stdout, describeEnded(e))
		if e.Warning != "" {
			fmt.Fprintf(inv.stderr, "roster: warning: %s\n", e.Warning)
		}
	})
}

// describeEnded says how a session ended in one line.
func describeEnded(e registry.Ended) string {
	var b bytes.Buffer
	fmt.Fprintf(&b, "session %s %s", e.ID, e.Reason)
	if e.By != "" {
		fmt.Fprintf(&b, " by %s", e.By)
	}
	if !e.At.IsZero() {
		fmt.Fprintf(&b, " at %s", formatTime(e.At))
	}
	if e.Message != "" {
		fmt.Fprintf(&b, ": %s", e.Message)
	}
	return b.String()
}
