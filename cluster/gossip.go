package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// DefaultGossipListen is the address gossip binds, TCP and UDP, when GossipConfig.Listen
// is empty.
const DefaultGossipListen = "127.0.0.1:7403"

const (
	// defaultReclaimAfter is GossipConfig.ReclaimAfter when it is zero.
	defaultReclaimAfter = 10 * time.Second

	// joinRetryInterval is how often the joiner tries the join addresses until a join
	// reaches a peer.
	joinRetryInterval = time.Second
	// rejoinAfterAlone is how long a node that has joined must be alone before the
	// joiner tries the join addresses again: its peers restarted, or a partition healed.
	rejoinAfterAlone = 10 * time.Second
	// joinWarnAfter is how long the first join may fail before the joiner warns. Until
	// then failures are normal: the nodes of a cluster start at about the same time.
	joinWarnAfter = 30 * time.Second

	// updateTimeout bounds how long SetMeta waits for its update to be sent to peers.
	updateTimeout = 2 * time.Second
)

// errGossipClosed is returned, wrapped, by the methods that cannot work after Close.
// errors.Is matches it with net.ErrClosed, so callers need no new sentinel.
var errGossipClosed error = gossipClosedError{}

// gossipClosedError is the type of errGossipClosed.
type gossipClosedError struct{}

func (gossipClosedError) Error() string        { return "gossip is closed" }
func (gossipClosedError) Is(target error) bool { return target == net.ErrClosed }

// GossipConfig configures this node's gossip membership. The zero values of Listen and
// ReclaimAfter mean their defaults; Validate does not change the config.
type GossipConfig struct {
	// Name is the node name, e.g. "n1". Required; letters, digits, '-', '_' and '.'. It
	// must be unique in the cluster: gossip identifies nodes by name.
	Name string
	// Listen is the IP:port gossip binds, TCP and UDP; default DefaultGossipListen. An
	// unspecified IP (0.0.0.0 or ::) binds every interface and then needs Advertise.
	Listen string
	// Advertise is the IP:port other nodes reach this one at; "" means Listen. It cannot
	// be an unspecified IP.
	Advertise string
	// Join lists the gossip addresses, host:port, of other nodes. A node needs to reach
	// one of them to join the cluster; it may list itself. Empty: the node waits for
	// others to join it.
	Join []string
	// ReclaimAfter is how long after a node is declared dead its name may come back at
	// another address; before that such a node is refused as a conflict. Default 10s.
	// A node that left gracefully may come back at once.
	ReclaimAfter time.Duration
	// Logger receives this package's logs and memberlist's; nil discards them.
	Logger *slog.Logger
}

// listen returns c.Listen or its default.
func (c *GossipConfig) listen() string {
	if c.Listen == "" {
		return DefaultGossipListen
	}
	return c.Listen
}

// reclaimAfter returns c.ReclaimAfter or its default.
func (c *GossipConfig) reclaimAfter() time.Duration {
	if c.ReclaimAfter == 0 {
		return defaultReclaimAfter
	}
	return c.ReclaimAfter
}

// advertise returns the address to advertise, from an already validated c.
func (c *GossipConfig) advertise() netip.AddrPort {
	if c.Advertise != "" {
		return netip.MustParseAddrPort(c.Advertise)
	}
	return netip.MustParseAddrPort(c.listen())
}

// Validate reports the first problem with c, naming the field. It changes nothing.
func (c *GossipConfig) Validate() error {
	if err := validateName(c.Name); err != nil {
		return fmt.Errorf("cluster: gossip name %q: %w", c.Name, err)
	}
	listen, err := parseGossipAddr(c.listen())
	if err != nil {
		return fmt.Errorf("cluster: gossip listen %q: %w", c.listen(), err)
	}
	if c.Advertise == "" {
		if listen.Addr().IsUnspecified() {
			return fmt.Errorf("cluster: gossip listen %q binds every interface, so gossip advertise is required: set it to the IP:port other nodes reach this one at",
				c.listen())
		}
	} else {
		adv, err := parseGossipAddr(c.Advertise)
		if err != nil {
			return fmt.Errorf("cluster: gossip advertise %q: %w", c.Advertise, err)
		}
		if adv.Addr().IsUnspecified() {
			return fmt.Errorf("cluster: gossip advertise %q: host %s is unspecified: set the IP other nodes reach this one at",
				c.Advertise, adv.Addr())
		}
	}
	for _, j := range c.Join {
		if err := validateJoinAddr(j); err != nil {
			return fmt.Errorf("cluster: gossip join address %q: %w", j, err)
		}
	}
	if c.ReclaimAfter < 0 {
		return fmt.Errorf("cluster: gossip reclaim after %s: must not be negative", c.ReclaimAfter)
	}
	return nil
}

// parseGossipAddr parses a listen or advertise address: memberlist binds and advertises
// IP addresses only, not host names.
func parseGossipAddr(s string) (netip.AddrPort, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("must be IP:port, e.g. 10.0.0.5:7403 or [fd00::5]:7403: %w", err)
	}
	if ap.Port() == 0 {
		return netip.AddrPort{}, errors.New("port must be a number from 1 to 65535")
	}
	return ap, nil
}

// validateJoinAddr accepts host:port, where host may be a name that DNS resolves at
// each join attempt.
func validateJoinAddr(s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("must be host:port: %w", err)
	}
	if host == "" {
		return errors.New("host is empty")
	}
	if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
		return fmt.Errorf("port %q must be a number from 1 to 65535", port)
	}
	return nil
}

// Peer is one node as this node sees it through gossip.
type Peer struct {
	// Name is the node's name.
	Name string
	// Addr is the node's gossip address, host:port.
	Addr string
	// State is GossipAlive, GossipDead or GossipLeft. memberlist v0.7.0 does not tell
	// which nodes it suspects, so a suspect node shows as alive until it is declared
	// dead; GossipSuspect appears only with a memberlist that does.
	State string
	// Since is when this node saw the state begin, by its own clock: when the node
	// joined, or was declared dead, or left.
	Since time.Time
	// Meta is the node's metadata; zero when the node sent none or none this node can
	// decode.
	Meta NodeMeta
	// Self reports that the peer is this node.
	Self bool
}

// Gossip is this node's membership in the gossip cluster: it finds the other nodes,
// tells them this node's NodeMeta and learns theirs, and detects nodes that fail or
// leave. Its methods are safe to call concurrently.
type Gossip struct {
	name string
	addr string // advertised, host:port
	join []string
	log  *slog.Logger
	ml   *memberlist.Memberlist

	changes chan struct{} // buffered 1; never closed

	metaMu sync.Mutex
	meta   NodeMeta
	wire   []byte // meta as sent: encoded, with the leave mark once Leave has started

	leaving atomic.Bool  // set when Leave starts; read by the event delegate
	closing *atomic.Bool // set when Close starts; read by memberlist's logger

	mu    sync.Mutex // guards peers
	peers map[string]*peerEntry

	// life is held shared by SetMeta and Leave while they use ml, and exclusively by
	// Close to set closed: memberlist panics on a Leave after Shutdown.
	life   sync.RWMutex
	closed bool

	leaveMu sync.Mutex // serializes Leave
	left    bool       // under leaveMu

	stopJoin     chan struct{} // closed to stop the joiner
	stopJoinOnce sync.Once
	joinDone     chan struct{} // closed when the joiner returns; nil if none runs

	closeOnce sync.Once
	closeErr  error
}

// peerEntry is what the event delegate recorded about a node.
type peerEntry struct {
	addr    string
	state   string
	since   time.Time
	raw     []byte   // metadata as received
	meta    NodeMeta // raw decoded
	leaving bool     // raw carries the leave mark
	metaErr error    // raw could not be decoded
	warned  bool     // metaErr has been logged
}

// StartGossip creates this node's gossip member on cfg.Listen, publishing meta, and
// returns once it listens. Joining is left to a background joiner, which runs when
// cfg.Join lists another address: it tries the join addresses every second until one
// answers, and afterwards, whenever this node has been alone for 10s (its peers
// restarted, or a partition healed), tries them again. StartGossip does not wait for a
// join; Changes and Peers show its result.
//
// memberlist runs with its LAN defaults: nodes are probed every second and a node that
// stops answering is declared dead within seconds.
func StartGossip(cfg GossipConfig, meta NodeMeta) (*Gossip, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	wire, err := meta.Encode()
	if err != nil {
		return nil, err
	}
	lg := orDiscard(cfg.Logger)
	closing := new(atomic.Bool)
	listen := netip.MustParseAddrPort(cfg.listen())
	adv := cfg.advertise()

	g := &Gossip{
		name:     cfg.Name,
		addr:     adv.String(),
		join:     joinAddrs(cfg.Join, listen, adv),
		log:      lg,
		changes:  make(chan struct{}, 1),
		meta:     meta,
		wire:     wire,
		closing:  closing,
		peers:    make(map[string]*peerEntry),
		stopJoin: make(chan struct{}),
	}

	mc := memberlist.DefaultLANConfig()
	mc.Name = cfg.Name
	mc.BindAddr = listen.Addr().String()
	mc.BindPort = int(listen.Port())
	mc.AdvertiseAddr = adv.Addr().String()
	mc.AdvertisePort = int(adv.Port())
	mc.DeadNodeReclaimTime = cfg.reclaimAfter()
	// A full state exchange every 10 s instead of 30 s: a node that came back under its
	// name at a new address is taken up that much sooner once the reclaim time has run
	// (the others refused its first alive message while its old address looked alive).
	// Roster's clusters are small, so the exchanges cost little.
	mc.PushPullInterval = 10 * time.Second
	mc.Delegate = delegate{g}
	mc.Events = delegate{g}
	mc.LogOutput = nil // exclusive with Logger
	mc.Logger = log.New(memberlistLog{log: lg, closing: closing}, "", 0)

	// Create calls the delegates before it returns: g is complete but for ml, which
	// they do not use. On failure Create releases what it acquired (memberlist v0.7.0
	// leaks its listeners only when it cannot work out the advertise address, which is
	// always given here).
	ml, err := memberlist.Create(mc)
	if err != nil {
		return nil, fmt.Errorf("cluster: start gossip on %s: %w", cfg.listen(), err)
	}
	g.ml = ml

	if len(g.join) > 0 {
		g.joinDone = make(chan struct{})
		go g.joiner()
	}
	lg.Info("gossip started",
		slog.String("name", g.name),
		slog.String("listen", cfg.listen()),
		slog.String("advertise", g.addr),
		slog.Any("join", g.join))
	return g, nil
}

// joinAddrs returns the join addresses other than this node's own.
func joinAddrs(join []string, listen, adv netip.AddrPort) []string {
	var out []string
	for _, j := range join {
		if ap, err := netip.ParseAddrPort(j); err == nil && (ap == listen || ap == adv) {
			continue
		}
		if !slices.Contains(out, j) {
			out = append(out, j)
		}
	}
	return out
}

// Meta returns the metadata this node publishes.
func (g *Gossip) Meta() NodeMeta {
	g.metaMu.Lock()
	defer g.metaMu.Unlock()
	return g.meta
}

// SetMeta replaces the metadata this node publishes and sends it to peers, waiting up
// to 2s for it to go out; when that times out gossip still delivers it later, so
// SetMeta does not fail for it. Metadata that does not encode within 512 bytes is an
// error and leaves the old metadata in place. After Leave the metadata is recorded but
// no longer sent; after Close SetMeta fails.
func (g *Gossip) SetMeta(meta NodeMeta) error {
	wire, err := meta.Encode()
	if err != nil {
		return err
	}
	g.life.RLock()
	defer g.life.RUnlock()
	if g.closed {
		return fmt.Errorf("cluster: set gossip meta: %w", errGossipClosed)
	}
	g.metaMu.Lock()
	g.meta = meta
	leaving := g.leaving.Load()
	if !leaving {
		g.wire = wire
	}
	g.metaMu.Unlock()
	if leaving {
		return nil
	}
	if err := g.ml.UpdateNode(updateTimeout); err != nil {
		g.log.Debug("gossip meta update not sent to a peer yet; gossip will deliver it",
			slog.Duration("waited", updateTimeout), slog.Any("error", err))
	}
	return nil
}

// Peers returns every node this node knows, itself included, sorted by name: the live
// ones, and those that died or left until they come back. A node whose metadata cannot
// be decoded is shown with zero Meta, and logged once at warn.
func (g *Gossip) Peers() []Peer {
	self := g.Meta()
	type badMeta struct {
		name string
		err  error
	}
	var bad []badMeta

	g.mu.Lock()
	out := make([]Peer, 0, len(g.peers))
	for name, e := range g.peers {
		p := Peer{Name: name, Addr: e.addr, State: e.state, Since: e.since, Meta: e.meta}
		if name == g.name {
			p.Self = true
			p.Meta = self
		} else if e.metaErr != nil && !e.warned {
			e.warned = true
			bad = append(bad, badMeta{name, e.metaErr})
		}
		out = append(out, p)
	}
	g.mu.Unlock()

	for _, b := range bad {
		g.log.Warn("gossip peer sent metadata this node cannot decode; showing the peer without it",
			slog.String("peer", b.name), slog.Any("error", b.err))
	}
	slices.SortFunc(out, func(a, b Peer) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Changes returns a channel that receives a value whenever a node joins, leaves, dies
// or changes its metadata; call Peers to see what changed. It is buffered 1 and sent
// to without blocking, so a slow reader sees one value for several changes. It is not
// closed, not even by Close.
func (g *Gossip) Changes() <-chan struct{} { return g.changes }

// Addr returns the gossip address this node advertises, host:port.
func (g *Gossip) Addr() string { return g.addr }

// Leave tells the other nodes that this node leaves on purpose, so that they show it
// as left rather than dead, and stops the joiner. It waits at most timeout, which must
// be positive: up to half of it for a leave mark in this node's metadata to go out,
// then the rest for memberlist's leave message. Without the mark, which memberlist
// v0.7.0 needs because it does not tell its users whether a node left or failed,
// peers show the node as dead. Leave returns an error when the leave message was not
// sent in time; the node keeps gossiping until Close. Leave is idempotent; after
// Close it fails.
func (g *Gossip) Leave(timeout time.Duration) error {
	if timeout <= 0 {
		return fmt.Errorf("cluster: leave gossip: timeout %s must be positive", timeout)
	}
	g.leaveMu.Lock()
	defer g.leaveMu.Unlock()
	g.life.RLock()
	defer g.life.RUnlock()
	if g.closed {
		return fmt.Errorf("cluster: leave gossip: %w", errGossipClosed)
	}
	if g.left {
		return nil
	}
	deadline := time.Now().Add(timeout)
	g.stopJoiner()

	// 1. The leave mark, so that peers can tell a leave from a failure.
	g.metaMu.Lock()
	g.leaving.Store(true)
	wire, err := encodeMeta(g.meta, true)
	if err == nil {
		g.wire = wire
	}
	g.metaMu.Unlock()
	if err != nil {
		g.log.Debug("gossip meta has no room for the leave mark; peers will show this node as dead",
			slog.Any("error", err))
	} else if err := g.ml.UpdateNode(timeout / 2); err != nil {
		g.log.Debug("gossip leave mark not sent to a peer in time; peers may show this node as dead",
			slog.Duration("waited", timeout/2), slog.Any("error", err))
	}

	// 2. The leave itself. memberlist waits forever on a zero timeout: never pass one.
	g.left = true
	if err := g.ml.Leave(max(time.Until(deadline), time.Millisecond)); err != nil {
		return fmt.Errorf("cluster: leave gossip: the leave was not sent to a peer within %s (%w): peers will find this node dead instead",
			timeout, err)
	}
	g.log.Debug("gossip left", slog.String("name", g.name))
	return nil
}

// Close shuts this node's gossip down without a leave: peers that were not told with
// Leave declare the node dead after a few seconds. It is idempotent and safe to call
// concurrently: every call blocks until the first has finished and returns its result.
//
// The steps, in reverse start order:
//  1. stop the joiner and wait for it; a join attempt already under way finishes
//     first, which takes up to memberlist's TCP timeout (10s) for an address that does
//     not answer;
//  2. wait for SetMeta and Leave calls under way (up to their timeouts) and make later
//     ones fail;
//  3. mark gossip closing, so that memberlist's complaints about its own sockets being
//     closed are logged at debug, not as errors, and shut memberlist down: close its
//     listeners and stop its goroutines.
//
// Changes is not closed.
func (g *Gossip) Close() error {
	g.closeOnce.Do(func() {
		g.stopJoiner()
		if g.joinDone != nil {
			<-g.joinDone
		}
		g.life.Lock()
		g.closed = true
		g.life.Unlock()
		g.closing.Store(true)
		if err := g.ml.Shutdown(); err != nil {
			g.closeErr = fmt.Errorf("cluster: shut gossip down: %w", err)
		}
		g.log.Debug("gossip closed", slog.String("name", g.name))
	})
	return g.closeErr
}

// stopJoiner tells the joiner, if any, to stop; it does not wait.
func (g *Gossip) stopJoiner() {
	g.stopJoinOnce.Do(func() { close(g.stopJoin) })
}

// joiner joins the cluster through g.join: every second until a join reaches a peer,
// then again whenever this node has been alone for rejoinAfterAlone. It returns when
// stopJoin is closed.
func (g *Gossip) joiner() {
	defer close(g.joinDone)
	tick := time.NewTicker(joinRetryInterval)
	defer tick.Stop()

	begin := time.Now()
	joined, warned := false, false
	var aloneSince time.Time // zero while not alone
	for {
		switch {
		case !joined:
			n, err := g.tryJoin()
			switch {
			case n > 0:
				joined = true
				g.log.Info("gossip joined", slog.Int("contacted", n), slog.Duration("took", time.Since(begin)))
			case !warned && time.Since(begin) >= joinWarnAfter:
				warned = true
				g.log.Warn("gossip cannot reach any join address yet; still trying every second",
					slog.Any("join", g.join), slog.Duration("for", time.Since(begin)), slog.Any("error", err))
			default:
				g.log.Debug("gossip join failed; retrying", slog.Any("error", err))
			}
		case g.ml.NumMembers() > 1:
			aloneSince = time.Time{}
		case aloneSince.IsZero():
			aloneSince = time.Now()
		case time.Since(aloneSince) >= rejoinAfterAlone:
			n, err := g.tryJoin()
			if n > 0 {
				g.log.Info("gossip rejoined after being alone",
					slog.Int("contacted", n), slog.Duration("alone-for", time.Since(aloneSince)))
			} else {
				g.log.Debug("gossip rejoin failed", slog.Duration("alone-for", time.Since(aloneSince)), slog.Any("error", err))
			}
			aloneSince = time.Now() // try again in rejoinAfterAlone if still alone
		}
		select {
		case <-g.stopJoin:
			return
		case <-tick.C:
		}
	}
}

// tryJoin tries each join address in turn and returns how many answered. It checks for
// a stop between addresses, as each can take memberlist's TCP timeout.
func (g *Gossip) tryJoin() (int, error) {
	total := 0
	var errs []error
	for _, addr := range g.join {
		select {
		case <-g.stopJoin:
			return total, errors.Join(errs...)
		default:
		}
		n, err := g.ml.Join([]string{addr})
		total += n
		if err != nil {
			errs = append(errs, err)
		}
	}
	return total, errors.Join(errs...)
}

// signal tells a reader of Changes that something changed, without blocking.
func (g *Gossip) signal() {
	select {
	case g.changes <- struct{}{}:
	default:
	}
}

// delegate receives memberlist's callbacks for a Gossip. memberlist calls the event
// methods with its node lock held, one at a time: they copy what they need from the
// node, which memberlist changes later, and never block.
type delegate struct{ g *Gossip }

var (
	_ memberlist.Delegate      = delegate{}
	_ memberlist.EventDelegate = delegate{}
)

// NodeMeta returns this node's metadata as sent. Encode keeps it within limit.
func (d delegate) NodeMeta(limit int) []byte {
	d.g.metaMu.Lock()
	defer d.g.metaMu.Unlock()
	if len(d.g.wire) > limit {
		return nil // never: the limit is memberlist.MetaMaxSize
	}
	return bytes.Clone(d.g.wire)
}

// NotifyMsg ignores user messages: Roster sends none.
func (delegate) NotifyMsg([]byte) {}

// GetBroadcasts has no user broadcasts to add.
func (delegate) GetBroadcasts(int, int) [][]byte { return nil }

// LocalState has no user state to push.
func (delegate) LocalState(bool) []byte { return nil }

// MergeRemoteState ignores remote user state: there is none.
func (delegate) MergeRemoteState([]byte, bool) {}

// NotifyJoin records a node that joined, or came back, as alive.
func (d delegate) NotifyJoin(n *memberlist.Node) {
	e := &peerEntry{addr: n.Address(), state: GossipAlive, since: time.Now()}
	e.setMeta(n.Meta)
	d.g.mu.Lock()
	d.g.peers[n.Name] = e
	d.g.mu.Unlock()
	d.g.signal()
}

// NotifyUpdate records a node's new metadata.
func (d delegate) NotifyUpdate(n *memberlist.Node) {
	d.g.mu.Lock()
	e, ok := d.g.peers[n.Name]
	if !ok { // not seen joining: memberlist always reports the join first
		e = &peerEntry{state: GossipAlive, since: time.Now()}
		d.g.peers[n.Name] = e
	}
	e.addr = n.Address()
	e.setMeta(n.Meta)
	d.g.mu.Unlock()
	d.g.signal()
}

// NotifyLeave records a node as left or dead. memberlist v0.7.0 passes the node with
// State always StateAlive (nodeState's own State field shadows Node.State), so the leave
// mark of the node's last metadata, or this node's own Leave, decides; a memberlist
// that fills State in is believed.
func (d delegate) NotifyLeave(n *memberlist.Node) {
	d.g.mu.Lock()
	e, ok := d.g.peers[n.Name]
	if !ok {
		e = &peerEntry{}
		e.setMeta(n.Meta)
		d.g.peers[n.Name] = e
	}
	e.addr = n.Address()
	switch {
	case n.State == memberlist.StateLeft:
		e.state = GossipLeft
	case n.State == memberlist.StateDead:
		e.state = GossipDead
	case n.Name == d.g.name && d.g.leaving.Load(), e.leaving:
		e.state = GossipLeft
	default:
		e.state = GossipDead
	}
	e.since = time.Now()
	d.g.mu.Unlock()
	d.g.signal()
}

// setMeta records raw metadata, decoding it if it changed.
func (e *peerEntry) setMeta(raw []byte) {
	if e.raw != nil && bytes.Equal(e.raw, raw) {
		return
	}
	e.raw = bytes.Clone(raw)
	if e.raw == nil {
		e.raw = []byte{}
	}
	e.meta, e.leaving, e.metaErr = decodeMeta(raw)
	e.warned = false
}

// memberlistLog turns memberlist's log lines, "[LEVEL] memberlist: message", into
// records of log at the matching level.
type memberlistLog struct {
	log     *slog.Logger
	closing *atomic.Bool
}

// Write logs one line; memberlist's log.Logger calls it once per line. Once Close has
// started, memberlist's goroutines still running report the sockets Close closed as
// errors ("Failed to send gossip to ...: use of closed network connection"): those
// lines are logged at debug.
func (w memberlistLog) Write(p []byte) (int, error) {
	level, msg := parseMemberlistLine(string(p))
	if level > slog.LevelDebug && w.closing.Load() && strings.Contains(msg, net.ErrClosed.Error()) {
		level = slog.LevelDebug
	}
	w.log.Log(context.Background(), level, msg)
	return len(p), nil
}

// demotedMemberlistLines start messages that memberlist logs above debug but that the
// joiner reports itself, throttled: at startup they would come every second.
var demotedMemberlistLines = []string{
	"failed to resolve ", // a join address's name does not resolve (yet)
}

// parseMemberlistLine returns the level and message of one memberlist log line. A line
// without a known level is logged at info, whole.
func parseMemberlistLine(line string) (slog.Level, string) {
	line = strings.TrimRight(line, "\r\n")
	level := slog.LevelInfo
	if rest, ok := strings.CutPrefix(line, "["); ok {
		if tag, msg, ok := strings.Cut(rest, "]"); ok {
			known := true
			switch tag {
			case "TRACE", "DEBUG":
				level = slog.LevelDebug
			case "INFO":
				level = slog.LevelInfo
			case "WARN", "WARNING":
				level = slog.LevelWarn
			case "ERR", "ERROR":
				level = slog.LevelError
			default:
				known = false
			}
			if known {
				line = strings.TrimSpace(msg)
			}
		}
	}
	line = strings.TrimPrefix(line, "memberlist: ")
	for _, prefix := range demotedMemberlistLines {
		if strings.HasPrefix(line, prefix) {
			level = min(level, slog.LevelDebug)
		}
	}
	return level, line
}
