package cluster

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/roster-dev/roster/cluster/clustertest/loopback"
	"github.com/roster-dev/roster/cluster/clustertest/syncbuf"
)

// newGossipLogs returns a debug logger into a buffer that is printed if t fails.
func newGossipLogs(t *testing.T) (*syncbuf.Buffer, *slog.Logger) {
	t.Helper()
	logs := &syncbuf.Buffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("logs:\n%s", logs)
		}
	})
	return logs, slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// testGossipConfig returns a config for node name on listen, logging to log.
func testGossipConfig(name, listen string, log *slog.Logger, join ...string) GossipConfig {
	return GossipConfig{Name: name, Listen: listen, Join: join, ReclaimAfter: time.Second, Logger: log}
}

// startGossip starts gossip from cfg and closes it when the test ends.
func startGossip(t *testing.T, cfg GossipConfig, meta NodeMeta) *Gossip {
	t.Helper()
	g, err := StartGossip(cfg, meta)
	if err != nil {
		t.Fatalf("StartGossip(%s): %v", cfg.Name, err)
	}
	t.Cleanup(func() {
		if err := g.Close(); err != nil {
			t.Errorf("Close(%s): %v", cfg.Name, err)
		}
	})
	return g
}

// waitFor polls cond until it returns "" or timeout passes, then fails with the last
// thing cond reported.
func waitFor(t *testing.T, timeout time.Duration, cond func() string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		msg := cond()
		if msg == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s", timeout, msg)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// peerOf returns the peer named name as g sees it.
func peerOf(g *Gossip, name string) (Peer, bool) {
	for _, p := range g.Peers() {
		if p.Name == name {
			return p, true
		}
	}
	return Peer{}, false
}

// seesAs reports "" when g sees name in state, with meta if meta is not nil, or what
// it sees instead.
func seesAs(g *Gossip, name, state string, meta *NodeMeta) string {
	p, ok := peerOf(g, name)
	switch {
	case !ok:
		return fmt.Sprintf("%s does not know %s; peers %+v", g.name, name, g.Peers())
	case p.State != state:
		return fmt.Sprintf("%s sees %s %s, want %s", g.name, name, p.State, state)
	case meta != nil && p.Meta != *meta:
		return fmt.Sprintf("%s sees %s with meta %+v, want %+v", g.name, name, p.Meta, *meta)
	}
	return ""
}

func TestGossipConfigValidate(t *testing.T) {
	valid := GossipConfig{Name: "n1", Listen: "127.0.0.1:7403"}
	tests := []struct {
		name    string
		mod     func(c *GossipConfig)
		wantErr string // substring; "" for valid
	}{
		{name: "valid", mod: func(*GossipConfig) {}},
		{name: "default listen", mod: func(c *GossipConfig) { c.Listen = "" }},
		{name: "ipv6", mod: func(c *GossipConfig) { c.Listen = "[::1]:7403" }},
		{name: "unspecified listen with advertise", mod: func(c *GossipConfig) {
			c.Listen, c.Advertise = "0.0.0.0:7403", "10.0.0.5:7403"
		}},
		{name: "join names", mod: func(c *GossipConfig) { c.Join = []string{"n2.example:7403", "10.0.0.3:7403"} }},
		{name: "missing name", mod: func(c *GossipConfig) { c.Name = "" }, wantErr: "gossip name"},
		{name: "bad name", mod: func(c *GossipConfig) { c.Name = "n 1" }, wantErr: "gossip name"},
		{name: "listen without port", mod: func(c *GossipConfig) { c.Listen = "127.0.0.1" }, wantErr: "gossip listen"},
		{name: "listen host name", mod: func(c *GossipConfig) { c.Listen = "localhost:7403" }, wantErr: "gossip listen"},
		{name: "listen port zero", mod: func(c *GossipConfig) { c.Listen = "127.0.0.1:0" }, wantErr: "gossip listen"},
		{name: "unspecified listen without advertise", mod: func(c *GossipConfig) { c.Listen = "0.0.0.0:7403" },
			wantErr: "gossip advertise is required"},
		{name: "unspecified ipv6 listen without advertise", mod: func(c *GossipConfig) { c.Listen = "[::]:7403" },
			wantErr: "gossip advertise is required"},
		{name: "unspecified advertise", mod: func(c *GossipConfig) { c.Advertise = "0.0.0.0:7403" },
			wantErr: "gossip advertise"},
		{name: "bad advertise", mod: func(c *GossipConfig) { c.Advertise = "n1:7403" }, wantErr: "gossip advertise"},
		{name: "join without port", mod: func(c *GossipConfig) { c.Join = []string{"10.0.0.3"} }, wantErr: "gossip join"},
		{name: "join bad port", mod: func(c *GossipConfig) { c.Join = []string{"10.0.0.3:x"} }, wantErr: "gossip join"},
		{name: "negative reclaim", mod: func(c *GossipConfig) { c.ReclaimAfter = -time.Second }, wantErr: "reclaim"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := valid
			tt.mod(&c)
			before := fmt.Sprintf("%+v", c)
			err := c.Validate()
			if after := fmt.Sprintf("%+v", c); after != before {
				t.Errorf("Validate changed the config: %s -> %s", before, after)
			}
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("Validate() = %v, want nil", err)
			case tt.wantErr != "" && err == nil:
				t.Errorf("Validate() = nil, want an error about %q", tt.wantErr)
			case tt.wantErr != "" && !strings.Contains(err.Error(), tt.wantErr):
				t.Errorf("Validate() = %q, want it to mention %q", err, tt.wantErr)
			}
		})
	}
}

func TestParseMemberlistLine(t *testing.T) {
	tests := []struct {
		name      string
		line      string
		wantLevel slog.Level
		wantMsg   string
	}{
		{name: "debug", line: "[DEBUG] memberlist: Stream connection from=127.0.0.1:1\n",
			wantLevel: slog.LevelDebug, wantMsg: "Stream connection from=127.0.0.1:1"},
		{name: "info", line: "[INFO] memberlist: Marking n3 as failed\n", wantLevel: slog.LevelInfo, wantMsg: "Marking n3 as failed"},
		{name: "warn", line: "[WARN] memberlist: Refuting a dead message\n", wantLevel: slog.LevelWarn, wantMsg: "Refuting a dead message"},
		{name: "err", line: "[ERR] memberlist: Push/Pull with n2 failed\n", wantLevel: slog.LevelError, wantMsg: "Push/Pull with n2 failed"},
		{name: "error", line: "[ERROR] memberlist: Failed to compress payload\n", wantLevel: slog.LevelError, wantMsg: "Failed to compress payload"},
		{name: "no component", line: "[ERR] Failed to shutdown transport: x\n", wantLevel: slog.LevelError, wantMsg: "Failed to shutdown transport: x"},
		{name: "unknown level", line: "[NOTICE] memberlist: hello\n", wantLevel: slog.LevelInfo, wantMsg: "[NOTICE] memberlist: hello"},
		{name: "no level", line: "memberlist: hello", wantLevel: slog.LevelInfo, wantMsg: "hello"},
		{name: "demoted", line: "[WARN] memberlist: failed to resolve n2.example:7403: no such host\n",
			wantLevel: slog.LevelDebug, wantMsg: "failed to resolve n2.example:7403: no such host"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			level, msg := parseMemberlistLine(tt.line)
			if level != tt.wantLevel || msg != tt.wantMsg {
				t.Errorf("parseMemberlistLine(%q) = %s, %q; want %s, %q", tt.line, level, msg, tt.wantLevel, tt.wantMsg)
			}
		})
	}
}

func TestMemberlistLogDemotesClosedSocketsWhenClosing(t *testing.T) {
	logs := &syncbuf.Buffer{}
	w := memberlistLog{
		log:     slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo})),
		closing: new(atomic.Bool),
	}
	line := "[ERR] memberlist: Failed to send gossip to 127.0.0.1:1: write udp: use of closed network connection\n"
	if _, err := w.Write([]byte(line)); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), "level=ERROR") {
		t.Errorf("before Close, %q was not logged as an error; logs: %s", line, logs)
	}
	w.closing.Store(true)
	before := logs.String()
	if _, err := w.Write([]byte(line)); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte("[ERR] memberlist: Push/Pull with n2 failed: EOF\n")); err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimPrefix(logs.String(), before); strings.Contains(got, "closed network") || !strings.Contains(got, "Push/Pull") {
		t.Errorf("while closing, logged %q; want only the unrelated error", got)
	}
}

func TestGossipStartErrors(t *testing.T) {
	_, log := newGossipLogs(t)
	if _, err := StartGossip(GossipConfig{Listen: loopback.MustGossipAddr(t), Logger: log}, NodeMeta{}); err == nil {
		t.Error("StartGossip without a name succeeded")
	}
	big := NodeMeta{API: strings.Repeat("a", 600)}
	if _, err := StartGossip(testGossipConfig("n1", loopback.MustGossipAddr(t), log), big); err == nil || !strings.Contains(err.Error(), "512") {
		t.Errorf("StartGossip with oversize meta: %v, want an error naming 512", err)
	}
	addr := loopback.MustGossipAddr(t)
	startGossip(t, testGossipConfig("n1", addr, log), NodeMeta{})
	if g, err := StartGossip(testGossipConfig("n2", addr, log), NodeMeta{}); err == nil {
		g.Close()
		t.Errorf("StartGossip on %s, already in use, succeeded", addr)
	} else if !strings.Contains(err.Error(), addr) {
		t.Errorf("StartGossip on a used address: %q does not name %s", err, addr)
	}
}

func TestGossipThreeNodes(t *testing.T) {
	t.Parallel()
	_, log := newGossipLogs(t)
	a1, a2, a3 := loopback.MustGossipAddr(t), loopback.MustGossipAddr(t), loopback.MustGossipAddr(t)
	metas := map[string]NodeMeta{
		"n1": {Site: "s", API: "http://127.0.0.1:1", Role: RoleVoter, Healthy: true},
		"n2": {Site: "s", API: "http://127.0.0.1:2", Role: RoleVoter, Healthy: true},
		"n3": {Site: "s", API: "http://127.0.0.1:3", Role: RoleNone, Want: true},
	}
	n1 := startGossip(t, testGossipConfig("n1", a1, log.With("node", "n1")), metas["n1"])
	n2 := startGossip(t, testGossipConfig("n2", a2, log.With("node", "n2"), a1), metas["n2"])
	n3 := startGossip(t, testGossipConfig("n3", a3, log.With("node", "n3"), a1, a3), metas["n3"]) // lists itself too
	nodes := []*Gossip{n1, n2, n3}
	addrs := map[string]string{"n1": a1, "n2": a2, "n3": a3}

	for _, g := range nodes {
		if g.Addr() != addrs[g.name] {
			t.Errorf("%s Addr() = %q, want %q", g.name, g.Addr(), addrs[g.name])
		}
		waitFor(t, 10*time.Second, func() string {
			for name := range metas {
				meta := metas[name]
				if msg := seesAs(g, name, GossipAlive, &meta); msg != "" {
					return msg
				}
			}
			return ""
		})
		peers := g.Peers()
		if len(peers) != 3 {
			t.Fatalf("%s Peers() = %+v, want 3", g.name, peers)
		}
		for i, p := range peers {
			if want := fmt.Sprintf("n%d", i+1); p.Name != want {
				t.Errorf("%s Peers()[%d].Name = %q, want %q (sorted)", g.name, i, p.Name, want)
			}
			if p.Addr != addrs[p.Name] {
				t.Errorf("%s sees %s at %q, want %q", g.name, p.Name, p.Addr, addrs[p.Name])
			}
			if p.Self != (p.Name == g.name) {
				t.Errorf("%s sees %s with Self %v", g.name, p.Name, p.Self)
			}
			if p.Since.IsZero() || p.Since.After(time.Now()) {
				t.Errorf("%s sees %s alive since %v", g.name, p.Name, p.Since)
			}
		}
	}

	// A metadata change reaches the others and fires Changes.
	select {
	case <-n1.Changes():
	default:
	}
	meta := metas["n2"]
	meta.ClusterID, meta.MemberID, meta.Healthy = "cdf818194e3a8c32", "8e9e05c52164694d", false
	if err := n2.SetMeta(meta); err != nil {
		t.Fatalf("SetMeta: %v", err)
	}
	if got := n2.Meta(); got != meta {
		t.Errorf("Meta() after SetMeta = %+v, want %+v", got, meta)
	}
	for _, g := range nodes {
		waitFor(t, 10*time.Second, func() string { return seesAs(g, "n2", GossipAlive, &meta) })
	}
	select {
	case <-n1.Changes():
	case <-time.After(10 * time.Second):
		t.Error("n1 Changes() did not fire for n2's metadata change")
	}

	// Oversize metadata is refused and the old one stays.
	if err := n2.SetMeta(NodeMeta{API: strings.Repeat("a", 600)}); err == nil || !strings.Contains(err.Error(), "512") {
		t.Errorf("SetMeta(oversize) = %v, want an error naming 512", err)
	}
	if got := n2.Meta(); got != meta {
		t.Errorf("Meta() after a failed SetMeta = %+v, want %+v", got, meta)
	}
}

func TestGossipCrashIsDeadLeaveIsLeft(t *testing.T) {
	t.Parallel()
	_, log := newGossipLogs(t)
	a1, a2, a3 := loopback.MustGossipAddr(t), loopback.MustGossipAddr(t), loopback.MustGossipAddr(t)
	n1 := startGossip(t, testGossipConfig("n1", a1, log.With("node", "n1")), NodeMeta{Site: "s1"})
	n2 := startGossip(t, testGossipConfig("n2", a2, log.With("node", "n2"), a1), NodeMeta{Site: "s2"})
	n3 := startGossip(t, testGossipConfig("n3", a3, log.With("node", "n3"), a1), NodeMeta{Site: "s3"})
	for _, g := range []*Gossip{n1, n2, n3} {
		waitFor(t, 10*time.Second, func() string {
			for _, name := range []string{"n1", "n2", "n3"} {
				if msg := seesAs(g, name, GossipAlive, nil); msg != "" {
					return msg
				}
			}
			return ""
		})
	}

	// A crash: Close without Leave.
	crashed := time.Now()
	if err := n3.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := n3.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := n3.Leave(time.Second); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Leave after Close = %v, want net.ErrClosed", err)
	}
	if err := n3.SetMeta(NodeMeta{}); !errors.Is(err, net.ErrClosed) {
		t.Errorf("SetMeta after Close = %v, want net.ErrClosed", err)
	}
	meta3 := NodeMeta{Site: "s3"}
	for _, g := range []*Gossip{n1, n2} {
		waitFor(t, 30*time.Second, func() string { return seesAs(g, "n3", GossipDead, &meta3) })
		p, _ := peerOf(g, "n3")
		if p.Since.Before(crashed) || p.Since.After(time.Now()) {
			t.Errorf("%s sees n3 dead since %v, want after the crash at %v", g.name, p.Since, crashed)
		}
		if p.Addr != a3 {
			t.Errorf("%s sees dead n3 at %q, want %q", g.name, p.Addr, a3)
		}
	}

	// A graceful leave.
	left := time.Now()
	if err := n2.Leave(5 * time.Second); err != nil {
		t.Fatalf("Leave: %v", err)
	}
	if err := n2.Leave(5 * time.Second); err != nil {
		t.Errorf("second Leave: %v", err)
	}
	meta2 := NodeMeta{Site: "s2"}
	waitFor(t, 10*time.Second, func() string { return seesAs(n1, "n2", GossipLeft, &meta2) })
	if p, _ := peerOf(n1, "n2"); p.Since.Before(left) {
		t.Errorf("n1 sees n2 left since %v, before it left at %v", p.Since, left)
	}
	if msg := seesAs(n2, "n2", GossipLeft, &meta2); msg != "" {
		t.Errorf("after Leave: %s", msg)
	}
	if err := n2.SetMeta(NodeMeta{Site: "s2b"}); err != nil {
		t.Errorf("SetMeta after Leave: %v", err)
	}
	if err := n2.Close(); err != nil {
		t.Errorf("Close after Leave: %v", err)
	}
	// n1 keeps n2 as left, not dead, once n2 has stopped answering.
	if msg := seesAs(n1, "n2", GossipLeft, nil); msg != "" {
		t.Errorf("after n2 closed: %s", msg)
	}
}

func TestGossipJoinerWaitsForPeer(t *testing.T) {
	t.Parallel()
	logs, log := newGossipLogs(t)
	a1, a2 := loopback.MustGossipAddr(t), loopback.MustGossipAddr(t)
	n2 := startGossip(t, testGossipConfig("n2", a2, log.With("node", "n2"), a1), NodeMeta{Site: "s2"})

	// n2 has tried and failed at least once before n1 exists.
	waitFor(t, 10*time.Second, func() string {
		if !strings.Contains(logs.String(), "gossip join failed") {
			return "n2 has not tried to join yet"
		}
		return ""
	})
	if peers := n2.Peers(); len(peers) != 1 || !peers[0].Self {
		t.Fatalf("n2 alone: Peers() = %+v, want only itself", peers)
	}

	n1 := startGossip(t, testGossipConfig("n1", a1, log.With("node", "n1")), NodeMeta{Site: "s1"})
	meta1, meta2 := NodeMeta{Site: "s1"}, NodeMeta{Site: "s2"}
	waitFor(t, 10*time.Second, func() string { return seesAs(n2, "n1", GossipAlive, &meta1) })
	waitFor(t, 10*time.Second, func() string { return seesAs(n1, "n2", GossipAlive, &meta2) })
}

func TestGossipRejoinsWhenAlone(t *testing.T) {
	t.Parallel()
	_, log := newGossipLogs(t)
	a1, a2 := loopback.MustGossipAddr(t), loopback.MustGossipAddr(t)
	n1 := startGossip(t, testGossipConfig("n1", a1, log.With("node", "n1")), NodeMeta{Site: "s1"})
	n2 := startGossip(t, testGossipConfig("n2", a2, log.With("node", "n2"), a1), NodeMeta{Site: "s2"})
	waitFor(t, 10*time.Second, func() string { return seesAs(n2, "n1", GossipAlive, nil) })

	// n1 crashes and restarts at the same address, knowing nobody: only n2's joiner
	// can bring them together again, once n2 has been alone for 10s.
	if err := n1.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	waitFor(t, 30*time.Second, func() string { return seesAs(n2, "n1", GossipDead, nil) })
	meta1 := NodeMeta{Site: "s1", Role: RoleVoter}
	n1 = startGossip(t, testGossipConfig("n1", a1, log.With("node", "n1b")), meta1)
	waitFor(t, 30*time.Second, func() string { return seesAs(n2, "n1", GossipAlive, &meta1) })
	waitFor(t, 10*time.Second, func() string { return seesAs(n1, "n2", GossipAlive, nil) })
}

func TestGossipDeadNameReclaimed(t *testing.T) {
	t.Parallel()
	logs, log := newGossipLogs(t)
	a1, a2, a2b := loopback.MustGossipAddr(t), loopback.MustGossipAddr(t), loopback.MustGossipAddr(t)
	n1 := startGossip(t, testGossipConfig("n1", a1, log.With("node", "n1")), NodeMeta{Site: "s1"})
	n2 := startGossip(t, testGossipConfig("n2", a2, log.With("node", "n2"), a1), NodeMeta{Site: "s2"})
	waitFor(t, 10*time.Second, func() string { return seesAs(n1, "n2", GossipAlive, nil) })

	if err := n2.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	// Dead for longer than ReclaimAfter (1s) on n1's clock.
	waitFor(t, 30*time.Second, func() string {
		if msg := seesAs(n1, "n2", GossipDead, nil); msg != "" {
			return msg
		}
		if p, _ := peerOf(n1, "n2"); time.Since(p.Since) <= 1500*time.Millisecond {
			return "n2 has not been dead for long enough"
		}
		return ""
	})

	// n2 comes back at another address.
	meta := NodeMeta{Site: "s2", Role: RoleLearner}
	n2 = startGossip(t, testGossipConfig("n2", a2b, log.With("node", "n2b"), a1), meta)
	waitFor(t, 15*time.Second, func() string {
		if msg := seesAs(n1, "n2", GossipAlive, &meta); msg != "" {
			return msg
		}
		if p, _ := peerOf(n1, "n2"); p.Addr != a2b {
			return fmt.Sprintf("n1 sees n2 at %s, want the new address %s", p.Addr, a2b)
		}
		return ""
	})
	waitFor(t, 10*time.Second, func() string { return seesAs(n2, "n1", GossipAlive, nil) })
	if strings.Contains(logs.String(), "Conflicting address") {
		t.Errorf("n1 refused n2's new address as a conflict")
	}
}

// TestGossipPeerEvents drives the event delegate the way memberlist does, with nodes
// memberlist could not be made to produce on demand.
func TestGossipPeerEvents(t *testing.T) {
	logs, log := newGossipLogs(t)
	g := startGossip(t, testGossipConfig("n1", loopback.MustGossipAddr(t), log), NodeMeta{Site: "s1"})
	d := delegate{g}
	node := func(name string, meta []byte) *memberlist.Node {
		return &memberlist.Node{Name: name, Addr: net.IPv4(10, 0, 0, 9), Port: 7403, Meta: meta}
	}
	drain := func() {
		select {
		case <-g.Changes():
		default:
		}
	}
	changed := func(what string) {
		t.Helper()
		select {
		case <-g.Changes():
		default:
			t.Errorf("Changes() did not fire for %s", what)
		}
	}
	leaving, err := encodeMeta(NodeMeta{Site: "s2"}, true)
	if err != nil {
		t.Fatal(err)
	}
	plain, err := NodeMeta{Site: "s3"}.Encode()
	if err != nil {
		t.Fatal(err)
	}

	// Undecodable metadata: shown as zero, warned about once.
	drain()
	d.NotifyJoin(node("x", []byte("garbage")))
	changed("a join")
	for range 2 {
		if msg := seesAs(g, "x", GossipAlive, &NodeMeta{}); msg != "" {
			t.Error(msg)
		}
	}
	if n := strings.Count(logs.String(), "cannot decode"); n != 1 {
		t.Errorf("undecodable metadata logged %d times, want once; logs:\n%s", n, logs)
	}
	if p, _ := peerOf(g, "x"); p.Addr != "10.0.0.9:7403" {
		t.Errorf("x at %q, want 10.0.0.9:7403", p.Addr)
	}

	// A node that marked itself leaving has left; one that did not has died.
	d.NotifyUpdate(node("x", leaving))
	changed("an update")
	if msg := seesAs(g, "x", GossipAlive, &NodeMeta{Site: "s2"}); msg != "" {
		t.Error(msg)
	}
	d.NotifyLeave(node("x", leaving))
	changed("a leave")
	if msg := seesAs(g, "x", GossipLeft, &NodeMeta{Site: "s2"}); msg != "" {
		t.Error(msg)
	}
	d.NotifyJoin(node("y", plain))
	d.NotifyLeave(node("y", plain))
	if msg := seesAs(g, "y", GossipDead, &NodeMeta{Site: "s3"}); msg != "" {
		t.Error(msg)
	}
	// A dead node that comes back is alive again.
	d.NotifyJoin(node("y", plain))
	if msg := seesAs(g, "y", GossipAlive, &NodeMeta{Site: "s3"}); msg != "" {
		t.Error(msg)
	}

	// A memberlist that reports the state is believed.
	z := node("z", plain)
	d.NotifyJoin(z)
	z.State = memberlist.StateLeft
	d.NotifyLeave(z)
	if msg := seesAs(g, "z", GossipLeft, nil); msg != "" {
		t.Error(msg)
	}
}
