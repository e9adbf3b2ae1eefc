package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// Defaults of NodeConfig.
const (
	DefaultVoters    = 3
	MaxVoters        = 7
	DefaultDeadAfter = 5 * time.Minute
)

const (
	// tick is how often a node looks at gossip and etcd membership when nothing changes.
	tick = time.Second
	// callTimeout bounds each etcd call of the node's own loops.
	callTimeout = 3 * time.Second
	// settle is how long the set of bootstrap candidates must stay the same before the
	// lowest name bootstraps, so that two partial views cannot both bootstrap.
	settle = 2 * time.Second
	// staleAdd is how long a learner added for a node may stay unstarted while no alive
	// node claims it before the leader removes it again.
	staleAdd = 2 * time.Minute
	// noLeaderAlarm is how long a member may see no etcd leader before the node logs that
	// quorum is lost; the log repeats every noLeaderRepeat.
	noLeaderAlarm  = 5 * time.Second
	noLeaderRepeat = 30 * time.Second
	// restartLookup bounds how long a node restarting on its data dir looks for the
	// running cluster to learn whether its member was removed meanwhile.
	restartLookup = 12 * time.Second
	// bootstrapWait is how long a node with Bootstrap and Join addresses first looks for
	// peers, so that it never starts a cluster beside one it has not heard of yet.
	bootstrapWait = 10 * time.Second
	// stateFile, in the node's data dir, remembers which cluster and member the data in
	// <data dir>/etcd belongs to.
	stateFile = "cluster.json"
)

// NodeConfig configures a node's cluster layer: gossip, and either an embedded etcd
// member that the node manages itself or an external etcd cluster.
type NodeConfig struct {
	// DataDir is the node's data dir; the embedded member keeps its data in DataDir/etcd,
	// which overrides Member.DataDir. Required.
	DataDir string
	// Member configures the embedded etcd member; Member.Name is the node's name.
	Member Config
	// Gossip configures memberlist; Gossip.Name must equal Member.Name.
	Gossip GossipConfig
	// Site, Pool and APIURL are published to the other nodes.
	Site, Pool, APIURL string
	// Bootstrap starts a new cluster of this node alone when its data dir is empty and no
	// peer advertises a cluster.
	Bootstrap bool
	// BootstrapExpect waits until that many nodes with empty data dirs gossip; then the
	// lowest name bootstraps and the others join. 0 disables it.
	BootstrapExpect int
	// Voters is the number of voting members the etcd leader aims for, 1 to MaxVoters.
	Voters int
	// DeadAfter is how long gossip must report a member's node dead before the leader
	// removes the member.
	DeadAfter time.Duration
	// EtcdEndpoints, when set, runs the node against that external etcd cluster: no
	// embedded member, no membership management.
	EtcdEndpoints []string
	// Logger receives the node's logs and EtcdLogger etcd's; nil discards them.
	Logger     *slog.Logger
	EtcdLogger *zap.Logger
}

// DefaultNodeConfig returns a NodeConfig with every default set; the caller still sets the
// names, DataDir and APIURL.
func DefaultNodeConfig() NodeConfig {
	return NodeConfig{
		Member:    DefaultConfig(),
		Gossip:    GossipConfig{Listen: DefaultGossipListen},
		Voters:    DefaultVoters,
		DeadAfter: DefaultDeadAfter,
	}
}

// external reports whether the node runs against an external etcd cluster.
func (c *NodeConfig) external() bool { return len(c.EtcdEndpoints) > 0 }

// Validate reports the first problem with c, naming the setting.
func (c *NodeConfig) Validate() error {
	if c.DataDir == "" {
		return errors.New("cluster: data dir is empty")
	}
	m := c.Member
	m.DataDir = filepath.Join(c.DataDir, "etcd")
	if err := m.Validate(); err != nil {
		return err
	}
	if err := c.Gossip.Validate(); err != nil {
		return err
	}
	if c.Gossip.Name != c.Member.Name {
		return fmt.Errorf("cluster: gossip name %q differs from member name %q", c.Gossip.Name, c.Member.Name)
	}
	if c.Voters < 1 || c.Voters > MaxVoters {
		return fmt.Errorf("cluster: voters %d: must be from 1 to %d", c.Voters, MaxVoters)
	}
	if c.DeadAfter <= 0 {
		return fmt.Errorf("cluster: dead-after %s: must be positive", c.DeadAfter)
	}
	if c.BootstrapExpect < 0 || c.BootstrapExpect > 64 {
		return fmt.Errorf("cluster: bootstrap-expect %d: must be from 1 to 64, or 0 for none", c.BootstrapExpect)
	}
	if c.Bootstrap && c.BootstrapExpect > 0 {
		return errors.New("cluster: bootstrap and bootstrap-expect exclude each other: give one")
	}
	if c.external() {
		if c.Bootstrap || c.BootstrapExpect > 0 {
			return errors.New("cluster: with external etcd endpoints there is nothing to bootstrap: drop bootstrap and bootstrap-expect")
		}
		for _, ep := range c.EtcdEndpoints {
			u, err := url.Parse(ep)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				return fmt.Errorf("cluster: etcd endpoint %q: must be a URL like http://10.0.0.5:2379", ep)
			}
		}
	}
	if c.APIURL == "" {
		return errors.New("cluster: API URL is empty")
	}
	return nil
}

// Node is this node's place in the cluster: its gossip membership, its embedded etcd
// member when it runs one, and a client of the cluster's voters that stays the same for
// the node's whole life, whatever happens to the local member. Its methods are safe to
// call concurrently.
type Node struct {
	cfg    NodeConfig
	log    *slog.Logger
	elog   *zap.Logger
	gossip *Gossip
	client *clientv3.Client

	mu        sync.Mutex
	member    *Member // nil while the node runs no member
	role      string
	clusterID uint64
	healthy   bool
	endpoints []string // the client's endpoints, sorted
	// downSince remembers since when a member has had no alive node behind it, by member
	// id; unstartedSince since when an added learner has waited for its node.
	downSince      map[uint64]time.Time
	unstartedSince map[uint64]time.Time
	// settledAt is when the last membership change is settled: etcd refuses the next
	// change until every voter has been connected for its health interval (5 s).
	settledAt      time.Time
	noLeaderSince  time.Time
	noLeaderLogged time.Time
	leaving        bool
	bootstrapped   bool   // this node started the cluster
	joining        uint64 // the member id this node is starting, 0 when none
	looping        bool   // loop runs; set before it starts, read by Close

	errc      chan error
	stopc     chan struct{}
	loopDone  chan struct{}
	closeOnce sync.Once
	closeErr  error
}

// StartNode joins the node to its cluster and returns once the node has a working client
// of it. Depending on the data dir and the peers gossip shows, the node
//   - restarts its member from the data dir (or, when the running cluster removed that
//     member meanwhile, moves the data aside and joins as a new node);
//   - bootstraps a new cluster (Bootstrap, the lowest name of BootstrapExpect candidates, or
//     a node alone with no Join addresses);
//   - or joins the cluster a peer advertises: it serves as a client of the voters at once,
//     and the etcd leader adds it as a learner when the cluster needs one;
//   - or, with EtcdEndpoints, connects to the external cluster.
//
// Waiting for peers is bounded by ctx only: a node told to join waits until it can.
func StartNode(ctx context.Context, cfg NodeConfig) (*Node, error) {
	cfg.Member.DataDir = filepath.Join(cfg.DataDir, "etcd")
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	n := &Node{
		cfg:            cfg,
		log:            orDiscard(cfg.Logger),
		elog:           orNop(cfg.EtcdLogger),
		downSince:      map[uint64]time.Time{},
		unstartedSince: map[uint64]time.Time{},
		errc:           make(chan error, 1),
		stopc:          make(chan struct{}),
		loopDone:       make(chan struct{}),
	}
	if cfg.Gossip.Logger == nil {
		cfg.Gossip.Logger = n.log
	}
	if cfg.Member.Logger == nil {
		cfg.Member.Logger = n.log
	}
	if cfg.Member.EtcdLogger == nil {
		cfg.Member.EtcdLogger = n.elog
	}
	n.cfg = cfg
	if err := n.start(ctx); err != nil {
		n.Close()
		return nil, err
	}
	n.looping = true
	go n.loop()
	return n, nil
}

func (n *Node) start(ctx context.Context) error {
	cfg := &n.cfg
	if cfg.external() {
		return n.startExternal(ctx)
	}
	st, hasData, err := n.readState()
	if err != nil {
		return err
	}
	meta := n.baseMeta()
	meta.Role = RoleNone
	meta.Empty, meta.Want = !hasData, !hasData
	meta.Expect = cfg.BootstrapExpect
	if hasData {
		meta.ClusterID, meta.MemberID = st.ClusterID, st.MemberID
	}
	if n.gossip, err = StartGossip(cfg.Gossip, meta); err != nil {
		return err
	}
	if hasData && n.removedWhileAway(ctx, st) {
		aside, err := n.moveAside("removed")
		if err != nil {
			return err
		}
		n.log.Warn("this node's etcd member was removed from the cluster while it was away; its old data is kept aside and the node joins as a new member",
			"member-id", st.MemberID, "moved-to", aside)
		hasData = false
		meta.ClusterID, meta.MemberID = "", ""
		meta.Empty, meta.Want = true, true
		if err := n.gossip.SetMeta(meta); err != nil {
			return err
		}
	}
	if hasData {
		return n.startMember(ctx, Config{}, "restart")
	}
	how, voters, err := n.waitForCluster(ctx)
	if err != nil {
		return err
	}
	if how == "bootstrap" {
		// Say so first: a candidate that appears now must not bootstrap a second cluster.
		meta := n.gossip.Meta()
		meta.Bootstrapping, meta.Empty = true, false
		if err := n.gossip.SetMeta(meta); err != nil {
			return err
		}
		n.bootstrapped = true
		return n.startMember(ctx, Config{}, "bootstrap")
	}
	return n.connect(ctx, voters, RoleNone)
}

// startExternal connects to the external etcd cluster and gossips as RoleExternal.
func (n *Node) startExternal(ctx context.Context) error {
	meta := n.baseMeta()
	meta.Role = RoleExternal
	var err error
	if n.gossip, err = StartGossip(n.cfg.Gossip, meta); err != nil {
		return err
	}
	return n.connect(ctx, n.cfg.EtcdEndpoints, RoleExternal)
}

// baseMeta is the node's gossip metadata before it knows its role.
func (n *Node) baseMeta() NodeMeta {
	meta := NodeMeta{Site: n.cfg.Site, Pool: n.cfg.Pool, API: n.cfg.APIURL}
	if !n.cfg.external() {
		meta.Peer = peerURL(n.cfg.Member).String()
	}
	return meta
}

// connect creates the node's cluster client on endpoints and checks it with a member
// list, retrying until ctx ends or the node's start timeout passes.
func (n *Node) connect(ctx context.Context, endpoints []string, role string) error {
	c, err := clientv3.New(clientv3.Config{
		Endpoints:            endpoints,
		DialTimeout:          clientDialTimeout,
		DialKeepAliveTime:    clientKeepAliveTime,
		DialKeepAliveTimeout: clientKeepAliveTimeout,
		Logger:               n.elog.Named("client"),
	})
	if err != nil {
		return fmt.Errorf("cluster: etcd client for %s: %w", strings.Join(endpoints, ","), err)
	}
	n.client = c
	wctx, cancel := context.WithTimeout(ctx, n.cfg.Member.StartTimeout)
	defer cancel()
	for {
		cctx, ccancel := context.WithTimeout(wctx, callTimeout)
		resp, err := c.MemberList(cctx)
		ccancel()
		if err == nil {
			n.mu.Lock()
			n.role, n.clusterID = role, resp.Header.ClusterId
			n.endpoints = slices.Sorted(slices.Values(endpoints))
			n.mu.Unlock()
			if role == RoleExternal {
				n.publish()
			} else {
				n.syncMembership(resp.Members)
			}
			n.log.Info("connected to the etcd cluster", "role", role, "cluster-id", idString(resp.Header.ClusterId),
				"endpoints", strings.Join(endpoints, ","))
			return nil
		}
		n.log.Warn("etcd cluster not reachable yet", "endpoints", strings.Join(endpoints, ","), "error", err)
		select {
		case <-wctx.Done():
			return fmt.Errorf("cluster: reach etcd at %s: %w", strings.Join(endpoints, ","), err)
		case <-time.After(tick):
		}
	}
}

// waitForCluster waits until the node either may bootstrap a new cluster or sees a peer
// that runs a voter of an existing one; it returns "bootstrap", or "join" and the
// voters' client URLs.
func (n *Node) waitForCluster(ctx context.Context) (string, []string, error) {
	cfg := &n.cfg
	var stableSet string
	var stableSince, lastLog time.Time
	begin := time.Now()
	for {
		peers := n.gossip.Peers()
		var voters, candidates []string
		clusterSeen := ""
		expects := map[int]bool{}
		for _, p := range peers {
			if p.State != GossipAlive {
				continue
			}
			if !p.Self && (p.Meta.ClusterID != "" || p.Meta.Bootstrapping) {
				clusterSeen = p.Name
				if p.Meta.Role == RoleVoter && p.Meta.Client != "" {
					voters = append(voters, p.Meta.Client)
				}
			}
			if p.Meta.Empty && p.Meta.Expect > 0 && p.Meta.ClusterID == "" && p.Meta.Role != RoleExternal {
				candidates = append(candidates, p.Name)
				expects[p.Meta.Expect] = true
			}
		}
		now := time.Now()
		switch {
		case len(voters) > 0:
			return "join", voters, nil
		case clusterSeen != "":
			// A cluster exists but no voter advertises itself yet: never bootstrap
			// beside it, wait.
			if now.Sub(lastLog) > 15*time.Second {
				n.log.Info("waiting for a voter of the cluster node " + clusterSeen + " belongs to")
				lastLog = now
			}
		case cfg.Bootstrap && len(cfg.Gossip.Join) > 0 && now.Sub(begin) < bootstrapWait:
			// Give gossip time to reach the join addresses: a running cluster there
			// must be joined, not doubled.
		case cfg.Bootstrap || (cfg.BootstrapExpect == 0 && len(cfg.Gossip.Join) == 0):
			return "bootstrap", nil, nil
		case cfg.BootstrapExpect > 0 && len(candidates) >= cfg.BootstrapExpect:
			if len(expects) > 1 {
				n.log.Warn("bootstrap candidates disagree on --bootstrap-expect; give every first node the same value", "candidates", strings.Join(candidates, ","))
			}
			slices.Sort(candidates)
			set := strings.Join(candidates, ",")
			if set != stableSet {
				stableSet, stableSince = set, now
			}
			if now.Sub(stableSince) >= settle {
				if candidates[0] == cfg.Member.Name {
					n.log.Info("bootstrapping a new cluster", "candidates", set)
					return "bootstrap", nil, nil
				}
				if now.Sub(lastLog) > 15*time.Second {
					n.log.Info("waiting for "+candidates[0]+" to bootstrap the cluster", "candidates", set)
					lastLog = now
				}
			}
		default:
			stableSet = ""
			if now.Sub(lastLog) > 15*time.Second {
				if cfg.BootstrapExpect > 0 {
					n.log.Info(fmt.Sprintf("waiting for bootstrap candidates: %d of %d gossip", len(candidates), cfg.BootstrapExpect),
						"candidates", strings.Join(candidates, ","))
				} else {
					n.log.Info("waiting for a cluster to join through gossip", "join", strings.Join(cfg.Gossip.Join, ","))
				}
				lastLog = now
			}
		}
		select {
		case <-ctx.Done():
			return "", nil, fmt.Errorf("cluster: wait for a cluster to join: %w", context.Cause(ctx))
		case <-n.gossip.Changes():
		case <-time.After(tick / 2):
		}
	}
}

// removedWhileAway reports whether a node restarting on data of member st finds the
// running cluster without that member. It looks for the cluster through gossip for at
// most restartLookup; when it finds none (the whole cluster restarts, or this node is
// alone) the member restarts from its data as usual.
func (n *Node) removedWhileAway(ctx context.Context, st nodeState) bool {
	if st.MemberID == "" || len(n.cfg.Gossip.Join) == 0 {
		return false
	}
	deadline := time.Now().Add(restartLookup)
	for time.Now().Before(deadline) {
		var voters []string
		for _, p := range n.gossip.Peers() {
			if !p.Self && p.State == GossipAlive && p.Meta.Role == RoleVoter && p.Meta.Client != "" && p.Meta.ClusterID == st.ClusterID {
				voters = append(voters, p.Meta.Client)
			}
		}
		if len(voters) > 0 {
			members, err := listMembers(ctx, voters, n.elog)
			if err != nil {
				n.log.Warn("cannot list the cluster's members; restarting the member from its data", "error", err)
				return false
			}
			for _, m := range members {
				if idString(m.id) == st.MemberID {
					return false
				}
			}
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-n.gossip.Changes():
		case <-time.After(tick / 2):
		}
	}
	return false
}

// listMembers lists the members through a short-lived client of endpoints.
func listMembers(ctx context.Context, endpoints []string, elog *zap.Logger) ([]*memberInfo, error) {
	c, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: clientDialTimeout, Logger: elog.Named("client")})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	resp, err := c.MemberList(cctx)
	if err != nil {
		return nil, err
	}
	return toMemberInfo(resp.Members), nil
}

// startMember starts the embedded member: base's InitialCluster and JoinExisting decide
// whether it bootstraps, joins or restarts from its data.
func (n *Node) startMember(ctx context.Context, base Config, how string) error {
	cfg := n.cfg.Member
	cfg.InitialCluster, cfg.JoinExisting = base.InitialCluster, base.JoinExisting
	m, err := Start(ctx, cfg)
	if err != nil {
		return err
	}
	st := nodeState{ClusterID: idString(m.ClusterID()), MemberID: idString(m.ID()), Name: cfg.Name}
	if err := n.writeState(st); err != nil {
		m.Close()
		return err
	}
	n.mu.Lock()
	n.member = m
	n.clusterID = m.ClusterID()
	n.mu.Unlock()
	n.log.Info("etcd member started", "how", how, "member-id", st.MemberID, "cluster-id", st.ClusterID, "learner", m.IsLearner())
	if n.client == nil {
		// The first voter of a new cluster, or a restart: the client starts on the local
		// member, and the loop moves it to every voter. A learner serves no client
		// calls, so a restarted learner starts on the voters gossip shows.
		eps := []string{m.ClientURL()}
		if m.IsLearner() {
			if eps, err = n.gossipVoters(ctx); err != nil {
				return err
			}
		}
		return n.connect(ctx, eps, roleOf(m))
	}
	return nil
}

// gossipVoters waits until gossip shows alive voters of the node's cluster and returns
// their client URLs.
func (n *Node) gossipVoters(ctx context.Context) ([]string, error) {
	wctx, cancel := context.WithTimeout(ctx, n.cfg.Member.StartTimeout)
	defer cancel()
	for {
		var eps []string
		for _, p := range n.gossip.Peers() {
			if !p.Self && p.State == GossipAlive && p.Meta.Role == RoleVoter && p.Meta.Client != "" &&
				p.Meta.ClusterID == idString(n.clusterID) {
				eps = append(eps, p.Meta.Client)
			}
		}
		if len(eps) > 0 {
			return eps, nil
		}
		select {
		case <-wctx.Done():
			return nil, fmt.Errorf("cluster: find a voter through gossip: %w", context.Cause(wctx))
		case <-n.gossip.Changes():
		case <-time.After(tick / 2):
		}
	}
}

func roleOf(m *Member) string {
	if m.IsLearner() {
		return RoleLearner
	}
	return RoleVoter
}

// Client returns the node's client of the cluster. Its endpoints follow the voters; it
// stays the same client for the node's life. Close closes it.
func (n *Node) Client() *clientv3.Client { return n.client }

// EtcdLeader returns the etcd leader's member id, 0 when there is none or it
// cannot be found out within ctx. A node running a member asks that member
// directly (no request). Use it rather than Status on a member that may be
// leaving: etcd v3.7 panics serving Maintenance Status on a member removed
// from the cluster, and the panic kills the process that embeds that member.
// So only a node against an external cluster, where Roster removes no
// members, asks the endpoints' Status; an embedded-mode node between members
// (removed, about to join again) reports 0.
func (n *Node) EtcdLeader(ctx context.Context) uint64 {
	n.mu.Lock()
	m, eps := n.member, n.endpoints
	n.mu.Unlock()
	if m != nil {
		return m.Leader()
	}
	if !n.cfg.external() {
		return 0
	}
	for _, ep := range eps {
		if st, err := n.client.Status(ctx, ep); err == nil && st.Leader != 0 {
			return st.Leader
		}
	}
	return 0
}

// EtcdLeaderURL returns the etcd leader's first client URL, "" when there is
// no leader or it cannot be found out within ctx.
func (n *Node) EtcdLeaderURL(ctx context.Context) string {
	leader := n.EtcdLeader(ctx)
	if leader == 0 {
		return ""
	}
	resp, err := n.client.MemberList(ctx, clientv3.WithSerializable())
	if err != nil {
		return ""
	}
	for _, m := range resp.Members {
		if m.ID == leader && len(m.ClientURLs) > 0 {
			return m.ClientURLs[0]
		}
	}
	return ""
}

// Err receives a fatal error of the node's etcd member (other than its removal from the
// cluster, which the node handles by rejoining as a new member).
func (n *Node) Err() <-chan error { return n.errc }

// Bootstrapped reports whether this node started a new cluster when it started.
func (n *Node) Bootstrapped() bool { return n.bootstrapped }

// Role returns the node's etcd role: RoleVoter, RoleLearner, RoleNone or RoleExternal.
func (n *Node) Role() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.role
}

// Peers returns every node gossip knows, this one included, sorted by name: the live
// ones, and those that died or left until they come back (see Gossip.Peers). It does no
// I/O: the liveness exchange calls it every push interval.
func (n *Node) Peers() []Peer { return n.gossip.Peers() }

// loop runs the node's duties every tick and whenever gossip changes: it follows
// membership, starts the member the leader added for this node, reconciles membership
// while the local member leads, watches health, and handles the member's end.
func (n *Node) loop() {
	defer close(n.loopDone)
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		var memberErr <-chan error
		n.mu.Lock()
		if n.member != nil {
			memberErr = n.member.Err()
		}
		n.mu.Unlock()
		select {
		case <-n.stopc:
			return
		case err := <-memberErr:
			n.memberStopped(err)
		case <-n.gossip.Changes():
		case <-t.C:
		}
		n.step()
	}
}

// ctx returns a context cancelled when the node closes, bounded by callTimeout.
func (n *Node) ctx() (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	go func() {
		select {
		case <-n.stopc:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

// step is one round of the loop.
func (n *Node) step() {
	n.checkHealth()
	if n.cfg.external() {
		return
	}
	n.useLocalVoter()
	ctx, cancel := n.ctx()
	defer cancel()
	// Serializable: while quorum is lost the client must still learn which voters are
	// gone. The leader's own member, which alone changes membership, is never behind.
	resp, err := n.client.MemberList(ctx, clientv3.WithSerializable())
	if err != nil {
		return
	}
	members := n.syncMembership(resp.Members)
	n.mu.Lock()
	m, leaving := n.member, n.leaving
	n.mu.Unlock()
	if leaving {
		return
	}
	if m == nil {
		n.maybeStartLearner(members)
		return
	}
	if m.Leader() == m.ID() {
		n.reconcile(ctx, members, m.ID())
	}
}

// syncMembership points the client at the voters, learns the node's own role and
// publishes it.
func (n *Node) syncMembership(pbMembers []*etcdMember) []*memberInfo {
	members := toMemberInfo(pbMembers)
	gone := map[string]bool{}
	for _, p := range n.gossip.Peers() {
		gone[p.Name] = p.State == GossipDead || p.State == GossipLeft
	}
	// The voters, without those whose node gossip reports gone: a call does not first
	// try a dead endpoint. Should gossip report every voter gone, all of them.
	var eps, all []string
	for _, m := range members {
		if !m.learner && m.started() {
			all = append(all, m.clientURLs...)
			if !gone[m.name] {
				eps = append(eps, m.clientURLs...)
			}
		}
	}
	if len(eps) == 0 {
		eps = all
	}
	slices.Sort(eps)
	n.mu.Lock()
	role := RoleNone
	if n.member != nil {
		for _, m := range members {
			if m.id == n.member.ID() {
				role = RoleVoter
				if m.learner {
					role = RoleLearner
				}
			}
		}
	}
	changedRole := role != n.role
	n.role = role
	changedEps := len(eps) > 0 && !slices.Equal(eps, n.endpoints)
	if changedEps {
		n.endpoints = eps
	}
	n.mu.Unlock()
	if changedEps {
		n.client.SetEndpoints(eps...)
		n.log.Debug("etcd client follows the voters", "endpoints", strings.Join(eps, ","))
	}
	if changedRole {
		n.log.Info("etcd role changed", "role", role)
	}
	n.publish()
	return members
}

// publish sets the node's gossip metadata from its current state.
func (n *Node) publish() {
	n.mu.Lock()
	meta := n.baseMeta()
	meta.Role = n.role
	meta.Healthy = n.healthy
	if n.clusterID != 0 {
		meta.ClusterID = idString(n.clusterID)
	}
	if n.member != nil {
		meta.Client = n.member.ClientURL()
		meta.MemberID = idString(n.member.ID())
	} else if n.joining != 0 {
		// Starting the member the leader added: claim it, so the leader neither takes
		// it for an old incarnation nor removes it as never started.
		meta.MemberID = idString(n.joining)
	} else if !n.cfg.external() && !n.leaving {
		meta.Want = true
		meta.Empty = true
	}
	meta.Expect = n.cfg.BootstrapExpect
	n.mu.Unlock()
	if meta == n.gossip.Meta() {
		return
	}
	if err := n.gossip.SetMeta(meta); err != nil {
		n.log.Warn("cannot publish the node's gossip metadata", "error", err)
	}
}

// maybeStartLearner starts the local member once the leader has added one for this node
// (an unstarted member with this node's peer URL).
func (n *Node) maybeStartLearner(members []*memberInfo) {
	me := peerURL(n.cfg.Member).String()
	var mine *memberInfo
	var initial []string
	for _, m := range members {
		name := m.name
		if slices.Contains(m.peerURLs, me) {
			mine = m
			name = n.cfg.Member.Name
		} else if name == "" {
			name = "unstarted-" + idString(m.id)
		}
		for _, u := range m.peerURLs {
			initial = append(initial, name+"="+u)
		}
	}
	if mine == nil || mine.started() {
		// Not added yet; or a started member still holds this node's peer URL, an old
		// incarnation the leader removes first.
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), n.cfg.Member.StartTimeout)
	defer cancel()
	go func() {
		select {
		case <-n.stopc:
			cancel()
		case <-ctx.Done():
		}
	}()
	n.log.Info("the etcd leader added this node as a learner; starting its member", "member-id", idString(mine.id))
	n.mu.Lock()
	n.joining = mine.id
	n.mu.Unlock()
	n.publish()
	// Written before the start: a node killed while catching up knows on restart which
	// member its data belongs to.
	err := n.writeState(nodeState{ClusterID: idString(n.clusterID), MemberID: idString(mine.id), Name: n.cfg.Member.Name})
	if err == nil {
		err = n.startMember(ctx, Config{InitialCluster: strings.Join(initial, ","), JoinExisting: true}, "join")
	}
	n.mu.Lock()
	n.joining = 0
	n.mu.Unlock()
	if err != nil {
		// Never start this member id again on an empty log (raft would panic on the
		// leader's commit index): remove it, drop the partial data, and ask anew.
		n.log.Error("cannot start the etcd member the leader added; removing it and asking again", "member-id", idString(mine.id), "error", err)
		rctx, rcancel := n.ctx()
		if _, rerr := n.client.MemberRemove(rctx, mine.id); rerr != nil {
			n.log.Warn("cannot remove the member that failed to start; the leader removes it later", "member-id", idString(mine.id), "error", rerr)
		}
		rcancel()
		os.Remove(filepath.Join(n.cfg.DataDir, stateFile))
		if rerr := os.RemoveAll(n.cfg.Member.DataDir); rerr != nil {
			n.log.Error("cannot remove the failed member's data", "dir", n.cfg.Member.DataDir, "error", rerr)
		}
	}
	n.publish()
}

// memberStopped handles the local member's end: removed from the cluster (the node moves
// its data aside and asks to join as new), or failed (fatal for the node).
func (n *Node) memberStopped(err error) {
	n.mu.Lock()
	m, leaving := n.member, n.leaving
	n.mu.Unlock()
	if m == nil || leaving {
		return
	}
	ctx, cancel := n.ctx()
	defer cancel()
	resp, lerr := n.client.MemberList(ctx)
	if lerr == nil {
		for _, pm := range resp.Members {
			if pm.ID == m.ID() {
				n.fail(err)
				return
			}
		}
		n.log.Warn("this node's etcd member was removed from the cluster; the node keeps serving as a client of the voters and asks to join as a new member",
			"member-id", idString(m.ID()))
		n.avoid(m.ClientURL())
		n.mu.Lock()
		n.member = nil
		n.role = RoleNone
		n.mu.Unlock()
		m.Close()
		if aside, err := n.moveAside("removed"); err != nil {
			n.fail(err)
		} else {
			n.log.Info("moved the removed member's data aside", "moved-to", aside)
		}
		n.publish()
		return
	}
	n.fail(err)
}

// useLocalVoter adds the local member to the client's endpoints as soon as the member
// knows it is a voter, before any member list says so: were the other voters to die
// first, the client could otherwise reach no member at all, not even to learn that.
func (n *Node) useLocalVoter() {
	n.mu.Lock()
	m := n.member
	var eps []string
	if m != nil && !m.Removed() && !m.IsLearner() && !slices.Contains(n.endpoints, m.ClientURL()) {
		eps = append(slices.Clone(n.endpoints), m.ClientURL())
		slices.Sort(eps)
		n.endpoints = eps
	}
	n.mu.Unlock()
	if eps != nil {
		n.client.SetEndpoints(eps...)
	}
}

// avoid moves the client off url, the local member's that is about to close, so that
// no stream of the client holds up the member's close.
func (n *Node) avoid(url string) {
	n.mu.Lock()
	eps := slices.DeleteFunc(slices.Clone(n.endpoints), func(e string) bool { return e == url })
	if len(eps) > 0 {
		n.endpoints = eps
	}
	n.mu.Unlock()
	if len(eps) > 0 {
		n.client.SetEndpoints(eps...)
	}
}

func (n *Node) fail(err error) {
	select {
	case n.errc <- err:
	default:
	}
}

// checkHealth reads from the cluster once (linearizable) and publishes the result; a
// member that sees no leader for noLeaderAlarm logs loudly that quorum is lost.
func (n *Node) checkHealth() {
	ctx, cancel := n.ctx()
	defer cancel()
	_, err := n.client.Get(ctx, "/roster/v1/health", clientv3.WithCountOnly())
	select {
	case <-n.stopc:
		return // the node closes; the read was cancelled
	default:
	}
	now := time.Now()
	n.mu.Lock()
	changed := n.healthy != (err == nil)
	n.healthy = err == nil
	m := n.member
	noLeader := m != nil && m.Leader() == 0
	switch {
	case !noLeader:
		if !n.noLeaderSince.IsZero() && !n.noLeaderLogged.IsZero() {
			n.log.Info("etcd has a leader again; the cluster serves")
		}
		n.noLeaderSince, n.noLeaderLogged = time.Time{}, time.Time{}
	case n.noLeaderSince.IsZero():
		n.noLeaderSince = now
	case now.Sub(n.noLeaderSince) >= noLeaderAlarm && now.Sub(n.noLeaderLogged) >= noLeaderRepeat:
		n.noLeaderLogged = now
		n.log.Error("etcd has had no leader for "+now.Sub(n.noLeaderSince).Round(time.Second).String()+
			": quorum is probably lost (a majority of voters is down or cut off). Roster does not repair this by itself: bring the voters back, or recover from a snapshot as the README's 'Recovering from quorum loss' describes",
			"member-id", idString(m.ID()))
	}
	n.mu.Unlock()
	if changed {
		if err != nil {
			n.log.Warn("the node cannot read from the cluster", "error", err)
		} else {
			n.log.Info("the node reads from the cluster again")
		}
		n.publish()
	}
}

// Leave removes the node's member from the cluster, moves its data aside (a restart then
// joins as a new node) and leaves gossip. The node keeps its client until Close.
func (n *Node) Leave(ctx context.Context) error {
	n.mu.Lock()
	n.leaving = true
	m := n.member
	n.mu.Unlock()
	var errs []error
	if m != nil {
		id := m.ID()
		// Another member is asked: this one stops as soon as it applies its own
		// removal, and may not answer the request that removed it.
		n.avoid(m.ClientURL())
		if err := n.removeSelf(ctx, id); err != nil {
			errs = append(errs, fmt.Errorf("cluster: remove member %s: %w", idString(id), err))
		} else {
			n.log.Info("removed this node's etcd member from the cluster", "member-id", idString(id))
			n.mu.Lock()
			n.member = nil
			n.mu.Unlock()
			m.Close()
			if aside, err := n.moveAside("left"); err != nil {
				errs = append(errs, err)
			} else {
				n.log.Info("moved the member's data aside", "moved-to", aside)
			}
		}
	}
	if err := n.gossip.Leave(3 * time.Second); err != nil {
		errs = append(errs, fmt.Errorf("cluster: leave gossip: %w", err))
	}
	return errors.Join(errs...)
}

// removeSelf removes member id from the cluster. A removal whose answer was lost (the
// member that took it stopped, having applied it) counts as done when the members
// listed afterwards no longer include id.
func (n *Node) removeSelf(ctx context.Context, id uint64) error {
	cctx, cancel := context.WithTimeout(ctx, 2*callTimeout)
	defer cancel()
	_, err := n.client.MemberRemove(cctx, id)
	if err == nil {
		return nil
	}
	resp, lerr := n.client.MemberList(cctx)
	if lerr != nil || slices.ContainsFunc(resp.Members, func(m *etcdserverpb.Member) bool { return m.ID == id }) {
		return err
	}
	return nil
}

// Snapshot writes a point-in-time snapshot of the etcd database to w, streamed from one
// voter.
func (n *Node) Snapshot(ctx context.Context, w io.Writer) error {
	rc, err := n.client.Snapshot(ctx)
	if err != nil {
		return fmt.Errorf("cluster: snapshot: %w", err)
	}
	defer rc.Close()
	if _, err := io.Copy(w, rc); err != nil {
		return fmt.Errorf("cluster: snapshot: %w", err)
	}
	return nil
}

// Close stops the node's loop, closes its client, its member and its gossip. It is
// idempotent.
func (n *Node) Close() error {
	n.closeOnce.Do(func() {
		close(n.stopc)
		if n.looping {
			<-n.loopDone
		}
		var errs []error
		if n.client != nil {
			if err := n.client.Close(); err != nil && !errors.Is(err, context.Canceled) {
				errs = append(errs, err)
			}
		}
		n.mu.Lock()
		m := n.member
		n.mu.Unlock()
		if m != nil {
			errs = append(errs, m.Close())
		}
		if n.gossip != nil {
			errs = append(errs, n.gossip.Close())
		}
		n.closeErr = errors.Join(errs...)
	})
	return n.closeErr
}

// nodeState is the content of the state file.
type nodeState struct {
	ClusterID string `json:"cluster_id"`
	MemberID  string `json:"member_id"`
	Name      string `json:"name"`
}

// readState reads the state file and whether DataDir/etcd holds a member.
func (n *Node) readState() (nodeState, bool, error) {
	var st nodeState
	wal, err := os.ReadDir(filepath.Join(n.cfg.Member.DataDir, "member", "wal"))
	hasData := err == nil && len(wal) > 0
	b, err := os.ReadFile(filepath.Join(n.cfg.DataDir, stateFile))
	switch {
	case errors.Is(err, os.ErrNotExist):
		return st, hasData, nil
	case err != nil:
		return st, hasData, fmt.Errorf("cluster: read %s: %w", stateFile, err)
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, hasData, fmt.Errorf("cluster: %s in %s is damaged (%v): remove it; the node rewrites it", stateFile, n.cfg.DataDir, err)
	}
	return st, hasData, nil
}

func (n *Node) writeState(st nodeState) error {
	b, _ := json.MarshalIndent(st, "", "  ")
	path := filepath.Join(n.cfg.DataDir, stateFile)
	if err := os.WriteFile(path+".tmp", append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("cluster: write %s: %w", stateFile, err)
	}
	return os.Rename(path+".tmp", path)
}

// moveAside renames DataDir/etcd to DataDir/etcd.<why>-<UTC time> and removes the state
// file, so that the node starts as a new member. It returns the new path, or "" when
// there was nothing to move.
func (n *Node) moveAside(why string) (string, error) {
	dir := n.cfg.Member.DataDir
	os.Remove(filepath.Join(n.cfg.DataDir, stateFile))
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	aside := dir + "." + why + "-" + time.Now().UTC().Format("20060102T150405.000Z")
	if err := os.Rename(dir, aside); err != nil {
		return "", fmt.Errorf("cluster: move %s aside: %w", dir, err)
	}
	return aside, nil
}

// idString formats an etcd id as etcd does, in hex.
func idString(id uint64) string { return strconv.FormatUint(id, 16) }
