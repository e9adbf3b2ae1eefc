package e2e_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/roster-dev/roster/cluster/clustertest/syncbuf"
	"github.com/roster-dev/roster/e2e"
	"github.com/roster-dev/roster/registry"
	"github.com/roster-dev/roster/registry/client"
)

// failoverTTL is the TTL of the held sessions in the failover tests: short,
// so that heartbeats (every TTL/3) are frequent and a lost session shows
// within seconds.
const failoverTTL = 10 * time.Second

// threeVoters starts n1…n3 expecting each other with --voters 3 and extra,
// and waits until they form a cluster of three voters.
func threeVoters(ctx context.Context, tb testing.TB, extra ...string) *e2e.Cluster {
	tb.Helper()
	c := e2e.StartCluster(tb, bin, 3, append([]string{"--bootstrap-expect", "3", "--voters", "3"}, extra...)...)
	c.WaitFor(ctx, "3 voters", c.Formed(3, 0))
	return c
}

// failoverTimes is what probeFailover measured from the kill.
type failoverTimes struct {
	open, heartbeat time.Duration
}

// probeFailover measures, from killed, how long it takes until a new open
// and a heartbeat of s succeed through survivors. Each attempt is bounded
// by 3 s and attempts are 50 ms apart; ctx bounds the whole.
func probeFailover(ctx context.Context, c *e2e.Cluster, survivors []*e2e.Node, s *client.Session, killed time.Time) (failoverTimes, error) {
	cl := c.Client(survivors...)
	var ft failoverTimes
	var openErr, beatErr error
	var wg sync.WaitGroup
	var probes atomic.Int32
	wg.Go(func() {
		openErr = retry(ctx, 50*time.Millisecond, 3*time.Second, func(ctx context.Context) error {
			req := registry.OpenRequest{User: fmt.Sprintf("probe-%d", probes.Add(1)), Module: "failover", TTLSeconds: 5}
			_, err := cl.Do(ctx, http.MethodPost, "/v1/sessions", nil, req)
			return err
		})
		ft.open = time.Since(killed)
	})
	wg.Go(func() {
		beatErr = retry(ctx, 50*time.Millisecond, 3*time.Second, func(ctx context.Context) error {
			_, err := cl.Heartbeat(ctx, s.ID(), s.Token())
			return err
		})
		ft.heartbeat = time.Since(killed)
	})
	wg.Wait()
	if err := errors.Join(openErr, beatErr); err != nil {
		return ft, fmt.Errorf("after the kill: open: %v; heartbeat: %v", openErr, beatErr)
	}
	return ft, nil
}

// others returns the nodes of nodes other than n.
func others(nodes []*e2e.Node, n *e2e.Node) []*e2e.Node {
	var out []*e2e.Node
	for _, o := range nodes {
		if o != n {
			out = append(out, o)
		}
	}
	return out
}

// TestLeaderKillKeepsSessions: 300 sessions held by Go clients that know
// all three nodes survive a SIGKILL of the node that runs the etcd leader;
// the survivors serve opens and heartbeats; the killed node comes back on
// its data dir as the same etcd member.
func TestLeaderKillKeepsSessions(t *testing.T) {
	ctx := testContext(t, 5*time.Minute)
	c := threeVoters(ctx, t)
	nodes := c.Running()
	h := openHeld(ctx, t, clientsFor(t, c, nodes), 300, int64(failoverTTL/time.Second))

	leader := c.Leader(ctx)
	ms, err := c.Members(ctx)
	if err != nil {
		t.Fatal(err)
	}
	row, _ := ms.Get(leader.Name)

	// The CLI holds a session through the leader's node first: it must move on.
	hold := startHold(ctx, t, c, append([]*e2e.Node{leader}, others(nodes, leader)...), "cli-holder")

	t.Logf("killing %s, the etcd leader (member %s)", leader.Name, row.EtcdMemberID)
	killed := time.Now()
	c.Kill(leader)
	survivors := c.Running()

	ft, err := probeFailover(ctx, c, survivors, h.sessions[0], killed)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("SIGKILL of the leader's node to the first successful open on a survivor: %s", ft.open.Round(time.Millisecond))
	t.Logf("SIGKILL of the leader's node to the first successful heartbeat on a survivor: %s", ft.heartbeat.Round(time.Millisecond))

	// For two TTLs no session ends, and each has been heartbeated since the
	// kill by its own handle.
	watchEnd := killed.Add(2 * failoverTTL)
	for time.Now().Before(watchEnd) {
		if ended := h.ended(); len(ended) > 0 {
			t.Fatalf("%d of %d sessions ended after the leader's node was killed, e.g. %s", len(ended), len(h.sessions), ended[0])
		}
		select {
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		case <-time.After(250 * time.Millisecond):
		}
	}
	hold.check(t, c.Client(survivors...))
	if n := h.beatSince(killed); n != len(h.sessions) {
		t.Fatalf("only %d of %d sessions were heartbeated by their handles in the %s after the kill", n, len(h.sessions), 2*failoverTTL)
	}

	// Every session can be fetched and heartbeated through a survivor.
	sc := c.Client(survivors...)
	var mu sync.Mutex
	var failed []string
	sem := make(chan struct{}, 16)
	var wg sync.WaitGroup
	for _, s := range h.sessions {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			_, gerr := sc.Get(ctx, s.ID())
			_, herr := sc.Heartbeat(ctx, s.ID(), s.Token())
			if gerr != nil || herr != nil {
				mu.Lock()
				failed = append(failed, fmt.Sprintf("%s: get %v, heartbeat %v", s.ID(), gerr, herr))
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(failed) > 0 {
		t.Fatalf("%d sessions not served by the survivors, e.g. %s", len(failed), failed[0])
	}

	// The killed node restarts on its data dir as the same member; no
	// member is added twice.
	c.Restart(leader)
	ms = c.WaitFor(ctx, leader.Name+" a voter again as the same member", e2e.All(c.Formed(3, 0), func(ms e2e.Members) bool {
		m, ok := ms.Get(leader.Name)
		return ok && m.EtcdRole == e2e.RoleVoter && m.EtcdMemberID == row.EtcdMemberID
	}))
	if len(ms) != 3 {
		t.Fatalf("%d member rows after the restart, want 3:\n%s", len(ms), ms)
	}
	checkMemberRows(t, c, ms)
	if ended := h.ended(); len(ended) > 0 {
		t.Fatalf("%d sessions ended around the restart, e.g. %s", len(ended), ended[0])
	}
}

// TestDeadVoterReplaced: a voter whose node is dead for --dead-after is
// removed from etcd and the standby learner is promoted, so the cluster
// tolerates one more failure.
func TestDeadVoterReplaced(t *testing.T) {
	ctx := testContext(t, 5*time.Minute)
	begin := time.Now()
	c := e2e.StartCluster(t, bin, 4, "--bootstrap-expect", "4", "--voters", "3", "--dead-after", "5s")
	ms := c.WaitFor(ctx, "3 voters and a standby learner", c.Formed(3, 1))
	t.Logf("first start to 3 voters and a standby: %s", time.Since(begin).Round(time.Millisecond))
	standby := ms.Names(e2e.RoleLearner)[0]
	leader := c.Leader(ctx)
	victim := otherVoter(t, c, ms, leader)
	t.Logf("members:\n%s", ms)
	t.Logf("killing voter %s (leader %s, standby %s)", victim.Name, leader.Name, standby)
	killed := time.Now()
	c.Kill(victim)

	ms = c.WaitFor(ctx, victim.Name+" removed and "+standby+" promoted", e2e.All(c.Formed(3, 0), func(ms e2e.Members) bool {
		if m, ok := ms.Get(victim.Name); ok && (m.EtcdRole == e2e.RoleVoter || m.EtcdRole == e2e.RoleLearner || m.Gossip == e2e.GossipAlive) {
			return false
		}
		return ms.Role(standby, e2e.RoleVoter)
	}))
	t.Logf("SIGKILL of voter %s to its replacement by %s (dead-after 5s): %s", victim.Name, standby, time.Since(killed).Round(time.Millisecond))
	t.Logf("members:\n%s", ms)
	checkMemberRows(t, c, ms)

	// One more failure, of the leader this time, leaves two of three voters.
	leader = c.Leader(ctx)
	c.Kill(leader)
	killed = time.Now()
	survivors := c.Running()
	cl := c.Client(survivors...)
	var s *client.Session
	if err := retry(ctx, 100*time.Millisecond, 5*time.Second, func(ctx context.Context) error {
		var err error
		s, err = cl.OpenSession(ctx, registry.OpenRequest{User: "after", Module: "sales", TTLSeconds: 10})
		if errors.Is(err, client.ErrAlreadyLoggedIn) {
			return nil // an earlier attempt got through after all
		}
		return err
	}); err != nil {
		t.Fatalf("open after a second voter failed: %v", err)
	}
	t.Logf("SIGKILL of %s, the leader, to an open through a survivor: %s", leader.Name, time.Since(killed).Round(time.Millisecond))
	if s != nil {
		if _, err := cl.Heartbeat(ctx, s.ID(), s.Token()); err != nil {
			t.Fatalf("heartbeat after a second voter failed: %v", err)
		}
		s.Close(ctx)
	}
	ms = c.WaitFor(ctx, "a leader among the survivors", func(ms e2e.Members) bool {
		l, ok := ms.Leader()
		return ok && l.Name != leader.Name
	})
	t.Logf("members after killing %s too:\n%s", leader.Name, ms)
}

// TestLeaveAndRejoin: a new node with an empty data dir joins a running
// cluster as the standby; a voter started with --leave removes itself on
// SIGTERM and the standby takes its place; a node that comes back under the
// same name at new addresses with an empty data dir becomes a member
// again, and its old member is gone.
func TestLeaveAndRejoin(t *testing.T) {
	ctx := testContext(t, 5*time.Minute)
	args := []string{"--voters", "3", "--leave"}
	begin := time.Now()
	c := threeVoters(ctx, t, "--leave")
	t.Logf("first start to 3 voters: %s", time.Since(begin).Round(time.Millisecond))

	n4 := c.Add("n4", args...)
	n4.Join = c.GossipAddrs(n4)
	begin = time.Now()
	c.Start(n4)
	ms := c.WaitFor(ctx, "n4 as the standby learner", e2e.All(c.Formed(3, 1), func(ms e2e.Members) bool {
		return ms.Role("n4", e2e.RoleLearner)
	}))
	t.Logf("start of n4 (empty data dir) to the standby learner: %s", time.Since(begin).Round(time.Millisecond))
	checkMemberRows(t, c, ms)
	if _, err := c.Client(n4).Heartbeat(ctx, mustOpen(ctx, t, c.Client(n4), "via-n4").ID, ""); err != nil {
		t.Fatalf("heartbeat through the new node n4: %v", err)
	}

	// Graceful leave of a voter that is not the leader.
	leader := c.Leader(ctx)
	leaver := otherVoter(t, c, ms, leader)
	leaverRow, _ := ms.Get(leaver.Name)
	begin = time.Now()
	if err := leaver.Stop(30 * time.Second); err != nil {
		t.Fatalf("SIGTERM to %s (--leave): %v", leaver.Name, err)
	}
	ms = c.WaitFor(ctx, leaver.Name+" left and n4 promoted", e2e.All(c.Formed(3, 0), func(ms e2e.Members) bool {
		if m, ok := ms.Get(leaver.Name); ok && (m.EtcdRole == e2e.RoleVoter || m.EtcdRole == e2e.RoleLearner ||
			(m.Gossip != e2e.GossipLeft && m.Gossip != e2e.GossipUnknown)) {
			return false
		}
		return ms.Role("n4", e2e.RoleVoter)
	}))
	for _, m := range ms {
		if m.EtcdMemberID == leaverRow.EtcdMemberID {
			t.Errorf("the member %s of %s, who left, is still listed:\n%s", m.EtcdMemberID, leaver.Name, ms)
		}
	}
	t.Logf("SIGTERM of %s (--leave) to its removal and the promotion of n4: %s", leaver.Name, time.Since(begin).Round(time.Millisecond))
	t.Logf("after %s left:\n%s", leaver.Name, ms)

	// The same name at new addresses with an empty data dir.
	leader = c.Leader(ctx)
	back := otherVoter(t, c, ms, leader)
	old, _ := ms.Get(back.Name)
	c.Kill(back)
	if err := back.WipeData(); err != nil {
		t.Fatal(err)
	}
	if err := back.NewAddrs(); err != nil {
		t.Fatal(err)
	}
	back.Join = c.GossipAddrs(back)
	begin = time.Now()
	c.Restart(back)
	ms = c.WaitFor(ctx, back.Name+" a voter again at "+back.Peer, e2e.All(c.Formed(3, 0), func(ms e2e.Members) bool {
		m, ok := ms.Get(back.Name)
		return ok && m.EtcdRole == e2e.RoleVoter && m.PeerURL == back.PeerURL() && m.EtcdMemberID != old.EtcdMemberID
	}))
	t.Logf("restart of %s at new addresses to a voter again: %s", back.Name, time.Since(begin).Round(time.Millisecond))
	t.Logf("after %s came back at new addresses:\n%s", back.Name, ms)
	for _, m := range ms {
		if m.EtcdMemberID == old.EtcdMemberID || m.PeerURL == old.PeerURL {
			t.Errorf("the old member of %s (%s at %s) is still listed:\n%s", back.Name, old.EtcdMemberID, old.PeerURL, ms)
		}
	}
	// Only the row of the node that left may linger (as left), no other.
	for _, m := range ms {
		if !c.Node(m.Name).Running() && (m.Name != leaver.Name || m.Gossip != e2e.GossipLeft) {
			t.Errorf("stale row %s:\n%s", m.Name, ms)
		}
	}
	checkMemberRows(t, c, ms)
	if _, err := c.Client(back).Heartbeat(ctx, mustOpen(ctx, t, c.Client(back), "via-"+back.Name).ID, ""); err != nil {
		t.Fatalf("heartbeat through %s: %v", back.Name, err)
	}
}

// mustOpen opens a session for user through cl, retrying failures within
// ctx (each attempt as another user, user-2, user-3, …, so that an attempt
// that got through unseen does not refuse the next), and returns it; the
// session is not heartbeated and expires on its own.
func mustOpen(ctx context.Context, t *testing.T, cl *client.Client, user string) registry.OpenedSession {
	t.Helper()
	var opened registry.OpenedSession
	attempt := 0
	err := retry(ctx, 200*time.Millisecond, 5*time.Second, func(ctx context.Context) error {
		attempt++
		u := user
		if attempt > 1 {
			u = fmt.Sprintf("%s-%d", user, attempt)
		}
		var err error
		opened, err = openRaw(ctx, cl, registry.OpenRequest{User: u, Module: "sales", TTLSeconds: 30})
		return err
	})
	if err != nil {
		t.Fatalf("open %s through %s: %v", user, cl.Endpoint(), err)
	}
	return opened
}

// openRaw opens a session with POST /v1/sessions and no handle: nothing
// heartbeats it.
func openRaw(ctx context.Context, cl *client.Client, req registry.OpenRequest) (registry.OpenedSession, error) {
	var opened registry.OpenedSession
	data, err := cl.Do(ctx, http.MethodPost, "/v1/sessions", nil, req)
	if err != nil {
		return opened, err
	}
	err = json.Unmarshal(data, &opened)
	return opened, err
}

// heldCLI is a 'roster session open --hold' process.
type heldCLI struct {
	id       string
	out, err *syncbuf.Buffer
	done     chan error
}

// startHold runs 'roster session open --user user --module cli --ttl 6s --hold'
// and extra flags with ROSTER_ENDPOINTS listing nodes in order, and waits for
// its session.
func startHold(ctx context.Context, t *testing.T, c *e2e.Cluster, nodes []*e2e.Node, user string, extra ...string) *heldCLI {
	t.Helper()
	env := []string{"ROSTER_ENDPOINTS=" + strings.Join(c.URLs(nodes...), ","), "ROSTER_TOKEN=" + c.Token()}
	args := append([]string{"session", "open", "--user", user, "--module", "cli", "--ttl", "6s", "--hold"}, extra...)
	cmd := bin.Command(t.TempDir(), env, args...)
	h := &heldCLI{out: &syncbuf.Buffer{}, err: &syncbuf.Buffer{}, done: make(chan error, 1)}
	cmd.Stdout, cmd.Stderr = h.out, h.err
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { h.done <- cmd.Wait() }()
	t.Cleanup(func() { cmd.Process.Kill() })
	cl := c.Client(nodes...)
	for h.id == "" {
		page, err := cl.List(ctx, registry.ListFilter{User: user})
		if err == nil && len(page.Sessions) == 1 {
			h.id = page.Sessions[0].ID
			break
		}
		select {
		case err := <-h.done:
			t.Fatalf("session open --hold exited: %v\n%s%s", err, h.out, h.err)
		case <-ctx.Done():
			t.Fatalf("the held session never showed up:\n%s%s", h.out, h.err)
		case <-time.After(100 * time.Millisecond):
		}
	}
	return h
}

// wait waits for the hold to exit and returns its exit status (-1 if it was
// killed by a signal).
func (h *heldCLI) wait(ctx context.Context, t *testing.T) int {
	t.Helper()
	select {
	case err := <-h.done:
		if err == nil {
			return 0
		}
		if ee, ok := errors.AsType[*exec.ExitError](err); ok {
			return ee.ExitCode()
		}
		t.Fatalf("session open --hold: %v", err)
	case <-ctx.Done():
		t.Fatalf("session open --hold %s did not exit:\n%s%s", h.id, h.out, h.err)
	}
	return 0
}

// running reports whether the hold still runs.
func (h *heldCLI) running() bool {
	select {
	case err := <-h.done:
		h.done <- err // for wait
		return false
	default:
		return true
	}
}

// check asserts that the hold still runs and its session is alive.
func (h *heldCLI) check(t *testing.T, cl *client.Client) {
	t.Helper()
	select {
	case err := <-h.done:
		t.Fatalf("session open --hold exited across the node's death: %v\n%s%s", err, h.out, h.err)
	default:
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cl.Get(ctx, h.id); err != nil {
		t.Fatalf("the CLI's held session %s: %v\n%s", h.id, err, h.err)
	}
}

// otherVoter returns a voter of ms other than leader.
func otherVoter(t *testing.T, c *e2e.Cluster, ms e2e.Members, leader *e2e.Node) *e2e.Node {
	t.Helper()
	for _, name := range ms.Names(e2e.RoleVoter) {
		if name != leader.Name {
			return c.Node(name)
		}
	}
	t.Fatalf("no voter other than the leader %s:\n%s", leader.Name, ms)
	return nil
}
