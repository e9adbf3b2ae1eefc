package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/roster-dev/roster/registry/client"
)

// Etcd roles and gossip states of a MemberStatus, as GET /v1/cluster/members
// spells them.
const (
	RoleVoter    = "voter"
	RoleLearner  = "learner"
	RoleNone     = "none"
	RoleExternal = "external"

	GossipAlive   = "alive"
	GossipSuspect = "suspect"
	GossipDead    = "dead"
	GossipLeft    = "left"
	GossipUnknown = "unknown"
)

// MaxNodes bounds how many roster processes one Cluster runs at once.
const MaxNodes = 7

// MemberStatus is one row of GET /v1/cluster/members. The e2e package keeps
// its own copy of the wire shape so that its tests check the JSON the API
// sends, not a Go type they share with the server.
type MemberStatus struct {
	Name         string `json:"name"`
	Site         string `json:"site"`
	Pool         string `json:"pool"`
	APIURL       string `json:"api_url"`
	Gossip       string `json:"gossip"`
	EtcdRole     string `json:"etcd_role"`
	Leader       bool   `json:"leader"`
	Healthy      bool   `json:"healthy"`
	Address      string `json:"address"`
	EtcdMemberID string `json:"etcd_member_id"`
	PeerURL      string `json:"peer_url"`
	// EtcdClientURL is the node's etcd client URL, empty without a member.
	EtcdClientURL string `json:"etcd_client_url"`
}

// Members is the answer of GET /v1/cluster/members with helpers for the
// conditions the tests wait for.
type Members []MemberStatus

// Get returns the row of the node named name.
func (ms Members) Get(name string) (MemberStatus, bool) {
	for _, m := range ms {
		if m.Name == name {
			return m, true
		}
	}
	return MemberStatus{}, false
}

// Count returns how many rows have the etcd role role.
func (ms Members) Count(role string) int {
	n := 0
	for _, m := range ms {
		if m.EtcdRole == role {
			n++
		}
	}
	return n
}

// Names returns the names of the rows with the etcd role role, sorted.
func (ms Members) Names(role string) []string {
	var names []string
	for _, m := range ms {
		if m.EtcdRole == role {
			names = append(names, m.Name)
		}
	}
	sort.Strings(names)
	return names
}

// Leader returns the row whose node runs the etcd leader.
func (ms Members) Leader() (MemberStatus, bool) {
	for _, m := range ms {
		if m.Leader {
			return m, true
		}
	}
	return MemberStatus{}, false
}

// Role reports whether the node named name has the etcd role role.
func (ms Members) Role(name, role string) bool {
	m, ok := ms.Get(name)
	return ok && m.EtcdRole == role
}

// String is the rows as a table, one line each, for failure messages.
func (ms Members) String() string {
	var b strings.Builder
	for _, m := range ms {
		lead := ""
		if m.Leader {
			lead = " leader"
		}
		fmt.Fprintf(&b, "  %-4s gossip=%-7s role=%-8s healthy=%-5v id=%-16s peer=%s api=%s addr=%s%s\n",
			m.Name, m.Gossip, m.EtcdRole, m.Healthy, m.EtcdMemberID, m.PeerURL, m.APIURL, m.Address, lead)
	}
	return b.String()
}

// Cluster is a set of roster processes on loopback that form one cluster,
// owned by one test. Each node works in its own directory under one
// t.TempDir(); every node still running when the test ends is SIGKILLed
// before that directory is removed, and when the test has failed the logs
// of every node are logged first. When ROSTER_E2E_LOG_DIR is set, every
// node's full log (all its runs) is written to
// $ROSTER_E2E_LOG_DIR/<test>/<node>.log, failed or not.
//
// The methods that take no testing.TB report failures with the Cluster's
// t.Fatalf and must be called from the test's goroutine; Members,
// MembersFrom and the Node methods return errors and may be called from
// any goroutine.
type Cluster struct {
	t    testing.TB
	bin  Binary
	base string

	mu     sync.Mutex
	nodes  []*Node
	token  string
	closed bool

	// PollEvery is how often WaitFor asks for the members, 250 ms by default.
	PollEvery time.Duration
	// NodeTimeout bounds each node's start, 90 s by default.
	NodeTimeout time.Duration
}

// NewCluster returns an empty Cluster for t; add nodes with Add and start
// them with Start, or use StartCluster.
func NewCluster(t testing.TB, bin Binary) *Cluster {
	c := &Cluster{t: t, bin: bin, base: t.TempDir(), PollEvery: 250 * time.Millisecond, NodeTimeout: 90 * time.Second}
	// Registered after TempDir, so it runs before the directory is removed.
	t.Cleanup(c.cleanup)
	return c
}

// StartCluster starts n nodes named n1…nN with args, each joining the
// gossip addresses of all the others, all at once (as --bootstrap-expect
// needs), and waits until every one is ready.
func StartCluster(t testing.TB, bin Binary, n int, args ...string) *Cluster {
	t.Helper()
	c := NewCluster(t, bin)
	var nodes []*Node
	for i := 1; i <= n; i++ {
		nodes = append(nodes, c.Add(fmt.Sprintf("n%d", i), args...))
	}
	for _, nd := range nodes {
		for _, other := range nodes {
			if other != nd {
				nd.Join = append(nd.Join, other.Gossip)
			}
		}
	}
	c.Start(nodes...)
	return c
}

// Add prepares (does not start) a node named name with args, in a fresh
// directory, on free ports.
func (c *Cluster) Add(name string, args ...string) *Node {
	c.t.Helper()
	dir, err := os.MkdirTemp(c.base, name+"-")
	if err != nil {
		c.t.Fatal(err)
	}
	n, err := NewNode(c.bin, name, dir)
	if err != nil {
		c.t.Fatal(err)
	}
	n.Args = slices.Clone(args)
	n.Timeout = c.NodeTimeout
	c.mu.Lock()
	c.nodes = append(c.nodes, n)
	c.mu.Unlock()
	return n
}

// Start starts nodes at once and waits until each is ready; it fails the
// test if one is not, or if more than MaxNodes processes would run.
func (c *Cluster) Start(nodes ...*Node) {
	c.t.Helper()
	if running := len(c.Running()) + len(nodes); running > MaxNodes {
		c.t.Fatalf("e2e: %d roster processes would run; the harness allows %d", running, MaxNodes)
	}
	errs := make([]error, len(nodes))
	var wg sync.WaitGroup
	for i, n := range nodes {
		wg.Go(func() { errs[i] = n.Start() })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		c.t.Fatal(err)
	}
}

// Restart starts n again on its data dir and addresses (change them first
// with NewAddrs and WipeData for a node that comes back fresh).
func (c *Cluster) Restart(n *Node) {
	c.t.Helper()
	c.Start(n)
}

// Kill SIGKILLs n and waits until its process is gone.
func (c *Cluster) Kill(n *Node) {
	c.t.Helper()
	n.Kill()
	if n.Running() {
		c.t.Fatalf("e2e: %s still runs after SIGKILL", n.Name)
	}
}

// Close SIGKILLs every node that still runs. It is safe to call more than
// once; the test's cleanup calls it too.
func (c *Cluster) Close() {
	c.mu.Lock()
	nodes := slices.Clone(c.nodes)
	c.mu.Unlock()
	var wg sync.WaitGroup
	for _, n := range nodes {
		wg.Go(n.Kill)
	}
	wg.Wait()
}

// Nodes returns every node added, running or not, in the order added.
func (c *Cluster) Nodes() []*Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.nodes)
}

// Running returns the nodes whose process runs.
func (c *Cluster) Running() []*Node {
	var out []*Node
	for _, n := range c.Nodes() {
		if n.Running() {
			out = append(out, n)
		}
	}
	return out
}

// Node returns the node named name, failing the test if there is none.
func (c *Cluster) Node(name string) *Node {
	c.t.Helper()
	for _, n := range c.Nodes() {
		if n.Name == name {
			return n
		}
	}
	c.t.Fatalf("e2e: no node named %q", name)
	return nil
}

// GossipAddrs returns the gossip addresses of the running nodes other than
// except, for --join.
func (c *Cluster) GossipAddrs(except ...*Node) []string {
	var addrs []string
	for _, n := range c.Running() {
		if !slices.Contains(except, n) {
			addrs = append(addrs, n.Gossip)
		}
	}
	return addrs
}

// URLs returns the API URLs of nodes, or of the running nodes if none are
// given.
func (c *Cluster) URLs(nodes ...*Node) []string {
	if len(nodes) == 0 {
		nodes = c.Running()
	}
	var urls []string
	for _, n := range nodes {
		urls = append(urls, n.URL())
	}
	return urls
}

// Token returns the admin token, read from admin.token in the data dir of
// the node that bootstrapped the cluster (the only one that writes it). It
// waits up to 30 s for the file.
func (c *Cluster) Token() string {
	c.t.Helper()
	c.mu.Lock()
	tok := c.token
	c.mu.Unlock()
	if tok != "" {
		return tok
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		var found []string
		for _, n := range c.Nodes() {
			data, err := os.ReadFile(filepath.Join(n.DataDir(), "admin.token"))
			if err == nil && len(strings.TrimSpace(string(data))) > 0 {
				found = append(found, n.Name)
				if tok == "" {
					tok = strings.TrimSpace(string(data))
				}
			}
		}
		if len(found) > 1 {
			c.t.Errorf("e2e: %d nodes wrote admin.token (%v); only the one that bootstraps should", len(found), found)
		}
		if tok != "" {
			c.mu.Lock()
			c.token = tok
			c.mu.Unlock()
			return tok
		}
		if time.Now().After(deadline) {
			c.t.Fatal("e2e: no node wrote admin.token within 30 s")
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// Client returns an API client with the admin token for nodes, or for the
// running nodes if none are given.
func (c *Cluster) Client(nodes ...*Node) *client.Client {
	c.t.Helper()
	cl, err := client.New(client.Config{Endpoints: c.URLs(nodes...), Token: c.Token()})
	if err != nil {
		c.t.Fatal(err)
	}
	return cl
}

// membersTimeout bounds one GET /v1/cluster/members.
const membersTimeout = 5 * time.Second

// Members asks the running nodes, in turn until one answers, for GET
// /v1/cluster/members. The token must have been read (Token) before.
func (c *Cluster) Members(ctx context.Context) (Members, error) {
	var errs []error
	for _, n := range c.Running() {
		ms, err := c.MembersFrom(ctx, n)
		if err == nil {
			return ms, nil
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	if len(errs) == 0 {
		return nil, errors.New("e2e: members: no node runs")
	}
	return nil, errors.Join(errs...)
}

// MembersFrom asks node n for GET /v1/cluster/members, as n sees them. The
// token must have been read (Token) before.
func (c *Cluster) MembersFrom(ctx context.Context, n *Node) (Members, error) {
	a, err := c.membersAnswer(ctx, n)
	return a.Members, err
}

// membersAnswer is the answer of GET /v1/cluster/members.
type membersAnswer struct {
	Members    Members `json:"members"`
	DutyLeader string  `json:"duty_leader"`
}

func (c *Cluster) membersAnswer(ctx context.Context, n *Node) (membersAnswer, error) {
	var body membersAnswer
	c.mu.Lock()
	tok := c.token
	c.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, membersTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, n.URL()+"/v1/cluster/members", nil)
	if err != nil {
		return body, err
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return body, fmt.Errorf("e2e: members from %s: %w", n.Name, err)
	}
	defer resp.Body.Close()
	dec := json.NewDecoder(resp.Body)
	if resp.StatusCode != http.StatusOK {
		var raw json.RawMessage
		dec.Decode(&raw)
		return body, fmt.Errorf("e2e: members from %s: %s %s", n.Name, resp.Status, raw)
	}
	if err := dec.Decode(&body); err != nil {
		return body, fmt.Errorf("e2e: members from %s: decode: %w", n.Name, err)
	}
	sort.Slice(body.Members, func(i, j int) bool { return body.Members[i].Name < body.Members[j].Name })
	return body, nil
}

// DutyLeader waits until a running node names a running node as the duty
// leader (the node that enforces shutdown deadlines) and returns it.
func (c *Cluster) DutyLeader(ctx context.Context) *Node {
	c.t.Helper()
	for {
		for _, n := range c.Running() {
			a, err := c.membersAnswer(ctx, n)
			if err != nil || a.DutyLeader == "" {
				continue
			}
			if l := c.Node(a.DutyLeader); l != nil && l.Running() {
				return l
			}
		}
		select {
		case <-ctx.Done():
			c.t.Fatalf("e2e: no running duty leader: %v", ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// WaitFor polls Members until cond holds and returns the members that
// satisfied it. When ctx ends first it fails the test, naming what and
// showing the last members seen (or the last error).
func (c *Cluster) WaitFor(ctx context.Context, what string, cond func(Members) bool) Members {
	c.t.Helper()
	c.Token()
	ms, err := c.Until(ctx, cond)
	if err != nil {
		c.t.Fatalf("e2e: waiting for %s: %v\nlast members:\n%s", what, err, ms)
	}
	return ms
}

// Until polls Members every PollEvery until cond holds and returns those
// members, or ctx's error with the last members seen. It gives up at once
// when a node's process exits without Stop or Kill. It does not touch
// the test, so it may run in any goroutine; the token must have been read
// (Token) before.
func (c *Cluster) Until(ctx context.Context, cond func(Members) bool) (Members, error) {
	var last Members
	var lastErr error
	for {
		for _, n := range c.Nodes() {
			if err := n.Crashed(); err != nil {
				return last, err
			}
		}
		ms, err := c.Members(ctx)
		if err == nil {
			last, lastErr = ms, nil
			if cond(ms) {
				return ms, nil
			}
		} else {
			lastErr = err
		}
		t := time.NewTimer(c.PollEvery)
		select {
		case <-ctx.Done():
			t.Stop()
			if lastErr != nil {
				return last, fmt.Errorf("%w (last error: %v)", ctx.Err(), lastErr)
			}
			return last, ctx.Err()
		case <-t.C:
		}
	}
}

// Leader waits until the running nodes agree on an etcd leader among them
// and returns its node.
func (c *Cluster) Leader(ctx context.Context) *Node {
	c.t.Helper()
	var name string
	c.WaitFor(ctx, "an etcd leader on a running node", func(ms Members) bool {
		l, ok := ms.Leader()
		if !ok {
			return false
		}
		for _, n := range c.Running() {
			if n.Name == l.Name {
				name = l.Name
				return true
			}
		}
		return false
	})
	return c.Node(name)
}

// logTail is how much of each node's log a failed test prints.
const logTail = 48 << 10

func (c *Cluster) cleanup() {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	c.mu.Unlock()
	if c.t.Failed() {
		// Ask for the members one last time while the nodes still run.
		if ms, err := c.Members(context.Background()); err == nil {
			c.t.Logf("members when the test failed:\n%s", ms)
		}
	}
	c.Close()
	dir := os.Getenv("ROSTER_E2E_LOG_DIR")
	if !c.t.Failed() && dir == "" {
		return
	}
	if dir != "" {
		dir = filepath.Join(dir, strings.ReplaceAll(c.t.Name(), "/", "_"))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			c.t.Logf("e2e: log dir: %v", err)
			dir = ""
		}
	}
	for _, n := range c.Nodes() {
		logs := n.AllLogs()
		if dir != "" {
			path := filepath.Join(dir, n.Name+".log")
			if err := os.WriteFile(path, []byte(logs), 0o644); err != nil {
				c.t.Logf("e2e: %v", err)
			} else if c.t.Failed() {
				c.t.Logf("full log of %s: %s", n.Name, path)
			}
		}
		if !c.t.Failed() {
			continue
		}
		if len(logs) > logTail {
			logs = "…" + logs[len(logs)-logTail:]
		}
		c.t.Logf("log of %s (exit: %v):\n%s", n.Name, n.ExitErr(), logs)
	}
}

// Formed returns a condition for WaitFor: every running node has a row
// that is gossip alive and healthy; exactly voters rows are etcd voters and
// learners rows learners (so no member of a stopped node is left in etcd);
// every running member's row names its etcd client URL (a new member
// publishes it a moment after it joins); and exactly one row is the leader,
// a running voter.
func (c *Cluster) Formed(voters, learners int) func(Members) bool {
	return func(ms Members) bool {
		for _, n := range c.Running() {
			m, ok := ms.Get(n.Name)
			if !ok || m.Gossip != GossipAlive || !m.Healthy {
				return false
			}
			if (m.EtcdRole == RoleVoter || m.EtcdRole == RoleLearner) && m.EtcdClientURL == "" {
				return false
			}
		}
		if ms.Count(RoleVoter) != voters || ms.Count(RoleLearner) != learners {
			return false
		}
		leaders := 0
		for _, m := range ms {
			if m.Leader {
				leaders++
				if m.EtcdRole != RoleVoter {
					return false
				}
			}
		}
		return leaders == 1
	}
}

// All returns a condition that holds when every one of conds does.
func All(conds ...func(Members) bool) func(Members) bool {
	return func(ms Members) bool {
		for _, cond := range conds {
			if !cond(ms) {
				return false
			}
		}
		return true
	}
}
