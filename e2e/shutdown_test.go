package e2e_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/roster-dev/roster/e2e"
	"github.com/roster-dev/roster/registry"
	"github.com/roster-dev/roster/registry/client"
)

// TestShutdownsAcrossNodes: kills, shutdown requests and pool drains reach
// clients on every node through event streams, on one cluster of three
// voters and a standby learner (four nodes, so two can be SIGKILLed while
// the voters keep quorum). In order: a kill reaches a stream on another
// node; a stream resumes on another node without loss or duplicate; a
// cancelled request terminates nothing; a pool drain; a deadline that holds
// while the node that accepted the request and the duty leader die.
func TestShutdownsAcrossNodes(t *testing.T) {
	ctx := testContext(t, 10*time.Minute)
	c := threeVoters(ctx, t)
	n4 := c.Add("n4", "--voters", "3")
	n4.Join = c.GossipAddrs(n4)
	c.Start(n4)
	c.WaitFor(ctx, "n4 as the standby learner", c.Formed(3, 1))

	killReachesOtherNode(ctx, t, c)
	resumeOnOtherNode(ctx, t, c, n4)
	cancelTerminatesNothing(ctx, t, c)
	drainPool(ctx, t, c)
	deadlineHoldsWhileNodesDie(ctx, t, c)
}

// next reads the stream's next event, failing the test after 15 s.
func next(ctx context.Context, t *testing.T, ch <-chan registry.Event, what string) registry.Event {
	t.Helper()
	select {
	case e, ok := <-ch:
		if !ok {
			t.Fatalf("%s: the stream ended", what)
		}
		return e
	case <-time.After(15 * time.Second):
		t.Fatalf("%s: no event within 15 s", what)
	case <-ctx.Done():
		t.Fatalf("%s: %v", what, ctx.Err())
	}
	return registry.Event{}
}

// killReachesOtherNode: a kill issued on one node reaches the session's
// event stream on another; the next heartbeat, on a third, answers 410
// killed.
func killReachesOtherNode(ctx context.Context, t *testing.T, c *e2e.Cluster) {
	nodes := c.Running()
	s, err := openRaw(ctx, c.Client(nodes[0]), registry.OpenRequest{User: "victim", Module: "events", TTLSeconds: 30})
	if err != nil {
		t.Fatal(err)
	}
	st, err := c.Client(nodes[0]).SessionEvents(ctx, s.ID, s.Token, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	sent := time.Now()
	if _, err := c.Client(nodes[2]).Kill(ctx, s.ID, "PC crashed"); err != nil {
		t.Fatal(err)
	}
	e := next(ctx, t, st.Events(), "the killed session's stream")
	t.Logf("kill on %s to the event on %s: %s", nodes[2].Name, nodes[0].Name, time.Since(sent).Round(time.Millisecond))
	if e.Type != registry.EventKilled || e.Session.ID != s.ID || e.Reason != "PC crashed" || e.By != "admin" {
		t.Fatalf("the stream on %s got %+v, want killed by admin: PC crashed", nodes[0].Name, e)
	}
	_, err = c.Client(nodes[1]).Heartbeat(ctx, s.ID, s.Token)
	if ae, ok := errors.AsType[*client.APIError](err); !errors.Is(err, client.ErrKilled) || !ok || ae.Status != http.StatusGone {
		t.Fatalf("heartbeat after the kill: %v, want 410 killed", err)
	}
}

// resumeOnOtherNode: a feed and a session stream follow node a; a is
// SIGKILLed; what happens meanwhile reaches both once they resume on the
// next node with Last-Event-ID, exactly once, as a stream that never broke
// (on a third node) saw it.
func resumeOnOtherNode(ctx context.Context, t *testing.T, c *e2e.Cluster, a *e2e.Node) {
	others := slices.DeleteFunc(c.Running(), func(n *e2e.Node) bool { return n == a })
	b, third := others[0], others[1]
	f := registry.EventFilter{Module: "resume"}
	feed, err := c.Client(a, b).Events(ctx, f, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer feed.Close()
	ref, err := c.Client(third).Events(ctx, f, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer ref.Close()
	via := c.Client(third)
	open := func(user string) registry.OpenedSession {
		t.Helper()
		s, err := openRaw(ctx, via, registry.OpenRequest{User: user, Module: "resume", TTLSeconds: 30})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	watched := open("watched")
	sst, err := c.Client(a, b).SessionEvents(ctx, watched.ID, watched.Token, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer sst.Close()
	open("before-1")
	open("before-2")
	for range 3 {
		next(ctx, t, feed.Events(), "the feed before the kill")
	}

	c.Kill(a)
	later := open("meanwhile-1")
	if _, err := via.Kill(ctx, later.ID, "meanwhile"); err != nil {
		t.Fatal(err)
	}
	open("meanwhile-2")
	var req registry.Shutdown
	data, err := via.Do(ctx, http.MethodPost, "/v1/shutdowns", nil, registry.ShutdownRequest{
		Scope: registry.ScopeSession, Session: watched.ID, GraceSeconds: new(int64(600)), Message: "resume test"})
	if err != nil || decodeJSON(data, &req) != nil {
		t.Fatalf("shutdown request: %v %s", err, data)
	}
	if _, err := via.Do(ctx, http.MethodDelete, "/v1/shutdowns/"+req.ID, nil, nil); err != nil {
		t.Fatal(err)
	}

	// The reference saw 3 opens, then open, kill, open, and the request and
	// its cancellation (an admin's feed has every request; the module filter
	// does not apply to them).
	var want []registry.Event
	for range 8 {
		want = append(want, next(ctx, t, ref.Events(), "the reference feed"))
	}
	var got []registry.Event
	for range 5 {
		got = append(got, next(ctx, t, feed.Events(), "the resumed feed"))
	}
	if !sameEvents(got, want[3:]) {
		t.Fatalf("the feed resumed on %s got\n%s\nwant\n%s", b.Name, describeEvents(got), describeEvents(want[3:]))
	}
	// Nothing twice: the next event is a new one.
	last := open("after")
	if e := next(ctx, t, feed.Events(), "the resumed feed"); e.Type != registry.EventOpened || e.Session.ID != last.ID {
		t.Fatalf("after the resume the feed got %+v, want the opening of %s", e, last.ID)
	}
	// The session stream: the request and its cancellation, once each.
	r := next(ctx, t, sst.Events(), "the resumed session stream")
	cl := next(ctx, t, sst.Events(), "the resumed session stream")
	if r.Type != registry.EventShutdownRequested || r.Shutdown == nil || r.Shutdown.ID != req.ID || r.Shutdown.Message != "resume test" ||
		cl.Type != registry.EventShutdownCancelled || cl.Shutdown == nil || cl.Shutdown.ID != req.ID {
		t.Fatalf("the session stream resumed on %s got %+v then %+v", b.Name, r, cl)
	}
	if _, err := via.Kill(ctx, watched.ID, "done"); err != nil {
		t.Fatal(err)
	}
	if e := next(ctx, t, sst.Events(), "the resumed session stream"); e.Type != registry.EventKilled {
		t.Fatalf("the session stream's next event is %+v, want killed", e)
	}
	t.Logf("feed and session stream resumed on %s after %s died", b.Name, a.Name)
	c.Restart(a)
	c.WaitFor(ctx, a.Name+" back as the standby", c.Formed(3, 1))
}

func sameEvents(a, b []registry.Event) bool {
	return slices.EqualFunc(a, b, func(x, y registry.Event) bool {
		return x.Rev == y.Rev && x.Type == y.Type && x.Session.ID == y.Session.ID
	})
}

func describeEvents(es []registry.Event) string {
	var sb strings.Builder
	for _, e := range es {
		fmt.Fprintf(&sb, "  %d %s %s\n", e.Rev, e.Type, e.Session.ID)
	}
	return sb.String()
}

// cancelTerminatesNothing: sessions of a pool on different nodes, two held by
// Go client handles and one by the CLI, get shutdown_requested; the request is
// cancelled on another node; they get shutdown_cancelled, and past the deadline
// every one is still alive.
func cancelTerminatesNothing(ctx context.Context, t *testing.T, c *e2e.Cluster) {
	nodes := c.Running()
	var handles []*client.Session
	for i := range 2 {
		s, err := c.Client(nodes[i]).OpenSession(ctx, registry.OpenRequest{User: fmt.Sprintf("keep-%d", i), Module: "cancel", Pool: "cancelpool", TTLSeconds: 10})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close(context.Background())
		s.Events() // follow from now on
		handles = append(handles, s)
	}
	cli := startHold(ctx, t, c, []*e2e.Node{nodes[2]}, "keep-cli", "--pool", "cancelpool")
	time.Sleep(time.Second) // the handles' streams are connected
	var req registry.Shutdown
	data, err := c.Client(nodes[3]).Do(ctx, http.MethodPost, "/v1/shutdowns", nil, registry.ShutdownRequest{
		Scope: registry.ScopePool, Pool: "cancelpool", GraceSeconds: new(int64(4)), Message: "maybe not"})
	if err != nil || decodeJSON(data, &req) != nil {
		t.Fatalf("shutdown request: %v %s", err, data)
	}
	for i, s := range handles {
		if e := next(ctx, t, s.Events(), "a handle's events"); e.Type != registry.EventShutdownRequested || e.Shutdown.ID != req.ID || e.Shutdown.Message != "maybe not" {
			t.Fatalf("handle %d got %+v, want shutdown_requested %s", i, e, req.ID)
		}
	}
	if _, err := c.Client(nodes[1]).Do(ctx, http.MethodDelete, "/v1/shutdowns/"+req.ID, nil, nil); err != nil {
		t.Fatal(err)
	}
	for i, s := range handles {
		if e := next(ctx, t, s.Events(), "a handle's events"); e.Type != registry.EventShutdownCancelled || e.Shutdown.ID != req.ID || e.By != "admin" {
			t.Fatalf("handle %d got %+v, want shutdown_cancelled %s by admin", i, e, req.ID)
		}
	}
	// Past the deadline and the nodes' backstop: nothing was terminated.
	time.Sleep(time.Until(req.Deadline) + registry.BackstopDelay + 2*time.Second)
	for i, s := range handles {
		if s.Err() != nil {
			t.Fatalf("handle %d ended after the cancellation: %v", i, s.Err())
		}
	}
	if !cli.running() {
		t.Fatalf("the CLI hold ended after the cancellation:\n%s", cli.err)
	}
	cli.check(t, c.Client())
	for _, want := range []string{"roster: SHUTDOWN REQUESTED by admin: maybe not", "roster: shutdown request " + req.ID + " was cancelled by admin; the session goes on"} {
		if !strings.Contains(cli.err.String(), want) {
			t.Fatalf("the CLI hold did not print %q:\n%s", want, cli.err)
		}
	}
	got, err := c.Client().Do(ctx, http.MethodGet, "/v1/shutdowns/"+req.ID, nil, nil)
	if err != nil || decodeJSON(got, &req) != nil || req.State != registry.ShutdownCancelled || req.Terminated != 0 {
		t.Fatalf("the cancelled request: %v %s", err, got)
	}
}

// drainPool: ten CLI holds in pool blue on all nodes (two of them with
// --close-on-shutdown) and five in green; pool drain blue with a short grace.
// Every blue client prints the message; those that close log off at once, the
// others are terminated at the deadline (exit 3); green is untouched; a new
// blue login is refused; the drain exits 0 with the counts.
func drainPool(ctx context.Context, t *testing.T, c *e2e.Cluster) {
	nodes := c.Running()
	order := func(i int) []*e2e.Node { // node i first, then the rest
		k := i % len(nodes)
		return append(slices.Clone(nodes[k:]), nodes[:k]...)
	}
	var blue, green []*heldCLI
	for i := range 10 {
		var extra []string
		if i < 2 {
			extra = []string{"--close-on-shutdown"}
		}
		blue = append(blue, startHold(ctx, t, c, order(i), fmt.Sprintf("blue-%d", i), append(extra, "--pool", "blue")...))
	}
	for i := range 5 {
		green = append(green, startHold(ctx, t, c, order(i), fmt.Sprintf("green-%d", i), "--pool", "green"))
	}
	time.Sleep(time.Second) // every hold follows its stream

	const msg = "Release 26.4 goes live at 18:00 - please save and log off"
	env := []string{"ROSTER_ENDPOINTS=" + nodes[0].URL(), "ROSTER_TOKEN=" + c.Token()}
	res, err := bin.Run(ctx, t.TempDir(), env, "pool", "drain", "blue", "--grace", "8s", "--message", msg)
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("pool drain: %v, exit %d\n%s%s", err, res.ExitCode, res.Stdout, res.Stderr)
	}
	t.Logf("pool drain:\n%s%s", res.Stderr, res.Stdout)
	if !strings.Contains(res.Stdout, "pool blue drained: 10 sessions in it at the request; 2 logged off, 8 terminated at the deadline, 0 ended otherwise") {
		t.Fatalf("pool drain printed:\n%s%s", res.Stdout, res.Stderr)
	}
	for i, h := range blue {
		code := h.wait(ctx, t)
		want, end := 3, "was shut down by admin"
		if i < 2 {
			want, end = 0, "logged out"
		}
		stderr := h.err.String()
		if code != want || !strings.Contains(stderr, "roster: SHUTDOWN REQUESTED by admin: "+msg) || !strings.Contains(stderr, end) {
			t.Fatalf("blue hold %d exited %d (want %d), printed:\n%s", i, code, want, stderr)
		}
	}
	for i, h := range green {
		if !h.running() {
			t.Fatalf("green hold %d ended:\n%s", i, h.err)
		}
		if strings.Contains(h.err.String(), "SHUTDOWN") {
			t.Fatalf("green hold %d was warned:\n%s", i, h.err)
		}
	}
	page, err := c.Client().List(ctx, registry.ListFilter{Pool: "green"})
	if err != nil || page.Total != 5 {
		t.Fatalf("green after the drain: %d sessions, %v", page.Total, err)
	}
	if page, err := c.Client().List(ctx, registry.ListFilter{Pool: "blue"}); err != nil || page.Total != 0 {
		t.Fatalf("blue after the drain: %d sessions, %v", page.Total, err)
	}
	res, err = bin.Run(ctx, t.TempDir(), env, "session", "open", "--user", "late", "--module", "cli", "--pool", "blue")
	if err != nil || res.ExitCode != 1 || !strings.Contains(res.Stderr, "pool_inactive") || !strings.Contains(res.Stderr, msg) {
		t.Fatalf("a new blue login: %v, exit %d\n%s", err, res.ExitCode, res.Stderr)
	}
}

// deadlineHoldsWhileNodesDie: a shutdown of a whole tenant, grace 10 s, is
// accepted by node a; 3 s in, a and the duty leader are SIGKILLed (one of them
// at most a voter, so quorum stays). Every session still ends, with reason
// shutdown, by the deadline + 2 s, as a feed on a surviving node sees it.
func deadlineHoldsWhileNodesDie(ctx context.Context, t *testing.T, c *e2e.Cluster) {
	ms, err := c.Members(ctx)
	if err != nil {
		t.Fatal(err)
	}
	duty := c.DutyLeader(ctx)
	var a *e2e.Node
	for _, n := range c.Running() {
		// Not the duty leader, and not a second voter if the duty leader is one.
		if n != duty && (!ms.Role(duty.Name, e2e.RoleVoter) || !ms.Role(n.Name, e2e.RoleVoter)) {
			a = n
			break
		}
	}
	if a == nil {
		t.Fatalf("no node to accept the request beside the duty leader %s:\n%s", duty.Name, ms)
	}
	survivors := slices.DeleteFunc(c.Running(), func(n *e2e.Node) bool { return n == a || n == duty })
	t.Logf("request via %s, duty leader %s, survivors %s and %s", a.Name, duty.Name, survivors[0].Name, survivors[1].Name)

	const n = 20
	all := c.Client()
	var handles []*client.Session
	for i := range n {
		s, err := all.OpenSession(ctx, registry.OpenRequest{Tenant: "acme", User: fmt.Sprintf("u%d", i), Module: "erp", TTLSeconds: 30})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close(context.Background())
		handles = append(handles, s)
	}
	feed, err := c.Client(survivors...).Events(ctx, registry.EventFilter{Tenant: "acme"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer feed.Close()
	var req registry.Shutdown
	data, err := c.Client(a).Do(ctx, http.MethodPost, "/v1/shutdowns", nil, registry.ShutdownRequest{
		Scope: registry.ScopeAll, Tenant: "acme", GraceSeconds: new(int64(10)), Message: "maintenance"})
	if err != nil || decodeJSON(data, &req) != nil {
		t.Fatalf("shutdown request: %v %s", err, data)
	}
	time.Sleep(time.Until(req.CreatedAt.Add(3 * time.Second)))
	c.Kill(a)
	c.Kill(duty)

	ended := map[string]time.Time{}
	for len(ended) < n {
		e := next(ctx, t, feed.Events(), "the feed on a survivor")
		switch {
		case e.Type.IsEnd() && e.Type != registry.EventShutdown:
			t.Fatalf("session %s ended %s, want shutdown", e.Session.ID, e.Type)
		case e.Type == registry.EventShutdown:
			ended[e.Session.ID] = time.Now()
		}
	}
	var last time.Time
	for _, at := range ended {
		if at.After(last) {
			last = at
		}
	}
	late := last.Sub(req.Deadline)
	t.Logf("the last of %d sessions ended %s after the deadline", n, late.Round(time.Millisecond))
	if late > 2*time.Second {
		t.Fatalf("the last session ended %s after the deadline; the bound is 2 s", late.Round(time.Millisecond))
	}
	for i, s := range handles {
		select {
		case <-s.Done():
		case <-time.After(15 * time.Second):
			t.Fatalf("handle %d did not learn its end", i)
		}
		if !errors.Is(s.Err(), client.ErrShutdown) {
			t.Fatalf("handle %d ended with %v, want shut down", i, s.Err())
		}
	}
}

func decodeJSON(data []byte, v any) error { return json.Unmarshal(data, v) }
