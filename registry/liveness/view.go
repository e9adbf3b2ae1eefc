package liveness

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Defaults of Config.
const (
	DefaultInterval = 200 * time.Millisecond
	DefaultTimeout  = time.Second
	DefaultForget   = 25 * time.Hour
)

// Path is where the HTTP API serves the exchange (POST).
const Path = "/v1/internal/beats"

// MaxPushBytes bounds the body of one push; a sender splits a larger one.
const MaxPushBytes = 4 << 20

const (
	shards = 64
	// maxIDsPerPush bounds the beats of one push request (19 bytes or fewer each).
	maxIDsPerPush = 100_000
	// recentWindow: a node that pushed this recently counts as live, whatever gossip
	// says of it.
	recentWindow = 2 * time.Second
	// narrowWindow: a node that stops serving at most this long after its last report
	// (it died; its API refuses connections or gossip declared it dead) no longer
	// counts, and the heartbeats it answered in between are taken to be none. One that
	// was silent for longer before it stopped (cut off, say) may have answered many:
	// every session then counts as beaten when it stopped.
	narrowWindow = time.Second
	// silentAfter is how far behind a live node's reports may fall before the view
	// warns (once) that it waits for it; neverAfter the same for a node never heard.
	silentAfter = time.Second
	neverAfter  = 5 * time.Second
	// retainEpochs bounds how long sealed epochs are kept for a node that lags.
	retainEpochs = 30 * time.Second
	// pruneEvery is how often beats older than Config.Forget are dropped.
	pruneEvery = time.Minute
	// maxEchoes is how many answers of a node the sender keeps to echo back.
	maxEchoes = 4
	// noCut marks a time not known yet.
	noCut = math.MinInt64 / 2
)

// Peer is another node as gossip shows it.
type Peer struct {
	// Name is the node's name, as its own Config.Node.
	Name string
	// URL is the node's API URL, e.g. "http://10.0.0.2:7400"; pushes go to URL+Path.
	URL string
	// Gone reports that gossip declared the node dead, or that it left.
	Gone bool
	// Self marks this node (it is skipped).
	Self bool
}

// Config configures a View. Zero durations take their defaults.
type Config struct {
	// Node is this node's name (required), as the others know it.
	Node string
	// Peers returns the cluster's nodes as gossip shows them (this node may be among
	// them); the view calls it every Interval. Nil means a node alone.
	Peers func() []Peer
	// Interval is how often the node seals its notes and pushes them to every live
	// node; default 200 ms.
	Interval time.Duration
	// Timeout bounds one push request; default 1 s.
	Timeout time.Duration
	// Forget is how long a beat is kept (default 25 h); it must be longer than the
	// longest session TTL. Check answers Unknown for a TTL of Forget or more.
	Forget time.Duration
	// Client sends the pushes; nil means a client of the view's own, whose idle
	// connections Close closes.
	Client *http.Client
	// Logger receives the view's logs: a node it waits for (warn, once) and when it
	// reports again; nil discards them.
	Logger *slog.Logger
}

// DefaultConfig returns a Config with the documented defaults and no Node.
func DefaultConfig() Config {
	return Config{Interval: DefaultInterval, Timeout: DefaultTimeout, Forget: DefaultForget}
}

// Validate checks the configuration and names the first wrong field. Zero durations
// are valid and mean their defaults.
func (c *Config) Validate() error {
	switch {
	case c.Node == "":
		return errors.New("liveness: config: Node is required")
	case len(c.Node) > maxNameLen:
		return fmt.Errorf("liveness: config: Node %.20q… is longer than %d bytes", c.Node, maxNameLen)
	case c.Interval < 0 || (c.Interval > 0 && (c.Interval < 10*time.Millisecond || c.Interval > 5*time.Second)):
		return fmt.Errorf("liveness: config: interval %s must be 10ms-5s", c.Interval)
	case c.Timeout < 0:
		return fmt.Errorf("liveness: config: timeout %s must be positive", c.Timeout)
	case c.Forget < 0 || (c.Forget > 0 && c.Forget < time.Minute):
		return fmt.Errorf("liveness: config: forget %s must be at least 1m", c.Forget)
	}
	return nil
}

// State is what Check says of a session.
type State int

const (
	// Alive: the session's TTL has not run out since the latest beat the view knows.
	Alive State = iota
	// Lapsed: the TTL ran out since the latest known beat, and every live node has
	// reported every heartbeat it answered up to that moment: no heartbeat answered
	// before the TTL ran out is missing.
	Lapsed
	// Unknown: the view cannot tell yet, because a live node has not reported far
	// enough (Waiting names it), or no beat of the session is known and the caller
	// gave no time it learned of it.
	Unknown
)

func (s State) String() string {
	switch s {
	case Alive:
		return "alive"
	case Lapsed:
		return "lapsed"
	}
	return "unknown"
}

// Verdict is Check's answer.
type Verdict struct {
	State State
	// Silent, of a lapsed session, is how long ago its latest beat (or the latest
	// moment the view has to assume one) was.
	Silent time.Duration
	// Next is when to ask again: for Alive when the TTL runs out, for Unknown after the
	// next reports.
	Next time.Time
	// Waiting, for Unknown, names the node whose report the verdict waits for ("" when
	// it waits for a beat or for this node's own next seal).
	Waiting string
}

// View is this node's view of the last heartbeat of every session, on any node. Its
// methods are safe for concurrent use.
type View struct {
	cfg      Config
	log      *slog.Logger
	client   *http.Client
	ownsHTTP bool
	start    time.Time
	instance uint64

	notes [shards]noteShard // heartbeats answered here since the last seal
	tab   [shards]tabShard  // the latest beat of each session, from any node

	// mu guards what follows. Check reads the reports' state under it before it looks
	// up the table, and every report is merged into the table before its state moves:
	// so a Check that sees a node's report sees the beats it carried.
	mu      sync.RWMutex
	secret  string
	started bool
	closed  bool
	epochs  []epoch // sealed, oldest first
	nextSeq uint64  // the seq of the next epoch; the first is 1
	selfCut int64   // every note taken before it is in the table
	peers   map[string]*peer
	// floor: every session counts as beaten no earlier than this (see judgeEnd).
	floor     int64
	outages   []span // when this node could not reach etcd, oldest first (see Outage)
	lastPrune int64

	cancel    context.CancelFunc
	wg        sync.WaitGroup
	closeOnce sync.Once
}

type noteShard struct {
	mu sync.Mutex
	m  map[[16]byte]int64
}

// tabShard holds the latest beat of sessions: view time (ns since start), never
// earlier than the beat.
type tabShard struct {
	mu sync.RWMutex
	m  map[[16]byte]int64
}

// epoch is one seal of this node's notes: every beat noted before cut and after the
// previous epoch's cut.
type epoch struct {
	seq   uint64
	cut   int64
	beats map[[16]byte]int64
}

// span is a stretch of view time.
type span struct{ from, to int64 }

// echo is one answer of a node: its time then, and this node's when the answer came.
type echo struct{ remote, local int64 }

// peer is what the view knows of another node, as a sender of pushes to this node and
// as a target of this node's.
type peer struct {
	name   string
	url    string
	listed bool // gossip shows it alive

	// As a sender.
	heard    bool
	instance uint64 // its current process
	lastSeq  uint64
	cut      int64 // every heartbeat it answered before this (receiver time) is known, if haveCut
	haveCut  bool
	lastRecv int64
	judged   bool // the end of its current process has been judged (judgeEnd)

	// As a target.
	acked     uint64 // the last epoch it holds (its answer)
	remote    uint64 // its instance
	echoes    []echo
	inflight  bool
	failing   bool  // a push failed; warned once it fails for silentAfter
	failedAt  int64 // when the current run of failures began
	warnedTx  bool
	refusedAt int64 // when a push was first refused (nothing listens), 0 if it was not

	// Per tick.
	expected    bool  // Check waits for its reports
	gone        bool  // not expected: it stopped serving, and stopped pushing
	wasExpected bool  // it was expected at some time
	since       int64 // when it last became expected
	silent      bool  // warned that the view waits for it
}

// New builds a view; it starts nothing. Notes may be taken at once; reports are
// exchanged from Start on.
func New(cfg Config) (*View, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Interval == 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Forget == 0 {
		cfg.Forget = DefaultForget
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	v := &View{cfg: cfg, log: log, client: cfg.Client, start: time.Now(), selfCut: noCut, nextSeq: 1, peers: map[string]*peer{}}
	if v.client == nil {
		v.client = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 2, IdleConnTimeout: time.Minute}}
		v.ownsHTTP = true
	}
	var b [8]byte
	for v.instance == 0 {
		if _, err := rand.Read(b[:]); err != nil {
			return nil, fmt.Errorf("liveness: random instance: %w", err)
		}
		v.instance = binary.BigEndian.Uint64(b[:])
	}
	for i := range v.notes {
		v.notes[i].m = map[[16]byte]int64{}
		v.tab[i].m = map[[16]byte]int64{}
	}
	return v, nil
}

// Start starts the exchange: every Interval the view seals its notes and pushes them
// to every live node, and it accepts pushes authenticated with secret. Start after
// Start or Close does nothing.
func (v *View) Start(secret string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.started || v.closed {
		return
	}
	v.started, v.secret = true, secret
	ctx, cancel := context.WithCancel(context.Background())
	v.cancel = cancel
	v.wg.Add(1)
	go func() {
		defer v.wg.Done()
		v.run(ctx)
	}()
}

// Close stops the exchange: (1) it refuses further pushes, (2) stops the sealing loop
// and the pushes in flight and waits for them, (3) closes the idle connections of its
// own HTTP client. Note and Check keep working (on what the view knew). Safe to call
// twice and before Start.
func (v *View) Close() {
	v.closeOnce.Do(func() {
		v.mu.Lock()
		v.closed = true
		cancel := v.cancel
		v.mu.Unlock()
		if cancel != nil {
			cancel()
		}
		v.wg.Wait()
		if v.ownsHTTP {
			v.client.CloseIdleConnections()
		}
	})
}

// Interval is how often the view seals and pushes its notes (Config.Interval).
func (v *View) Interval() time.Duration { return v.cfg.Interval }

// now is the view's time: nanoseconds since New, on the monotonic clock.
func (v *View) now() int64 { return int64(time.Since(v.start)) }

func (v *View) wall(t int64) time.Time { return v.start.Add(time.Duration(t)) }

// parseID reads a session id, 32 hex characters.
func parseID(id string) ([16]byte, bool) {
	var k [16]byte
	if len(id) != 32 {
		return k, false
	}
	_, err := hex.Decode(k[:], []byte(id))
	return k, err == nil
}

// Note records that this node answered a heartbeat of session id (or opened it) now.
// It costs a map write under one of 64 locks. Ids that are not 32 hex characters are
// ignored.
func (v *View) Note(id string) {
	k, ok := parseID(id)
	if !ok {
		return
	}
	s := &v.notes[k[15]%shards]
	s.mu.Lock()
	s.m[k] = v.now() // under the lock: see seal
	s.mu.Unlock()
}

// Forget drops what the view knows of session id, which has ended.
func (v *View) Forget(id string) {
	k, ok := parseID(id)
	if !ok {
		return
	}
	s := &v.tab[k[15]%shards]
	s.mu.Lock()
	delete(s.m, k)
	s.mu.Unlock()
}

// lookup returns the latest beat of a session the view knows: merged, or noted here
// and not sealed yet.
func (v *View) lookup(k [16]byte) (int64, bool) {
	s := &v.tab[k[15]%shards]
	s.mu.RLock()
	at, ok := s.m[k]
	s.mu.RUnlock()
	n := &v.notes[k[15]%shards]
	n.mu.Lock()
	if t, noted := n.m[k]; noted && (!ok || t > at) {
		at, ok = t, true
	}
	n.mu.Unlock()
	return at, ok
}

// merge records a beat of a session, keeping each session's latest.
func (v *View) merge(k [16]byte, at int64) {
	s := &v.tab[k[15]%shards]
	s.mu.Lock()
	if old, ok := s.m[k]; !ok || at > old {
		s.m[k] = at
	}
	s.mu.Unlock()
}

// Check says whether session id, whose TTL is ttl, has lapsed. knownAt is when the
// caller learned that the session exists (zero if it does not know): a session of
// which no beat is known counts as beaten then. With F the latest of its latest known
// beat (or knownAt), when this view started and the view's floor (see below), the
// session has lapsed when F + ttl has passed and this node and every live node have
// reported every heartbeat they answered up to F + ttl.
//
// A node is live while gossip shows it alive and its API does not refuse connections,
// or while it pushes. A node that stops serving within a second of its last report
// (it died) no longer counts, and the heartbeats it answered in that second are lost:
// a live client moves to another node and heartbeats there within its TTL. A node that
// was silent for longer before it stopped, or that returns having lost reports, may
// have answered any session's heartbeats: every session then counts as beaten when that
// was found (the floor).
//
// The fast path (a beat within ttl known) takes one read lock of 64.
func (v *View) Check(id string, ttl time.Duration, knownAt time.Time) Verdict {
	k, ok := parseID(id)
	if !ok || ttl <= 0 {
		return Verdict{State: Unknown}
	}
	now := v.now()
	if at, has := v.lookup(k); has && at+int64(ttl) > now {
		return Verdict{State: Alive, Next: v.wall(at + int64(ttl))}
	}
	later := v.wall(now + int64(v.cfg.Interval))
	if ttl >= v.cfg.Forget {
		return Verdict{State: Unknown, Next: later}
	}
	v.mu.RLock()
	defer v.mu.RUnlock()
	f, has := v.lookup(k) // again, after the reports' state: see View.mu
	if !has {
		if knownAt.IsZero() {
			return Verdict{State: Unknown, Next: later}
		}
		f = int64(knownAt.Sub(v.start))
	}
	f = max(f, v.floor, 0)
	for _, p := range v.peers {
		if p.expected && !p.heard {
			return Verdict{State: Unknown, Next: later, Waiting: p.name}
		}
	}
	due := v.pausedLocked(f, int64(ttl))
	if due > now {
		return Verdict{State: Alive, Next: v.wall(due)}
	}
	if v.selfCut < due {
		return Verdict{State: Unknown, Next: later}
	}
	for _, p := range v.peers {
		if p.expected && (!p.haveCut || p.cut < due) {
			return Verdict{State: Unknown, Next: later, Waiting: p.name}
		}
	}
	return Verdict{State: Lapsed, Silent: time.Duration(now - f)}
}

// Outage tells the view that this node could not reach etcd from from to to: no
// heartbeat could be renewed through it meanwhile, and with etcd down on every node no
// client could have kept its session alive. That time does not count against any
// session's TTL, as etcd's lease clock stops without a leader; a session lapses a TTL
// of time outside outages after its latest beat.
func (v *View) Outage(from, to time.Time) {
	a, b := int64(from.Sub(v.start)), int64(to.Sub(v.start))
	if b <= a {
		return
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	v.outages = append(v.outages, span{a, b})
	slices.SortFunc(v.outages, func(x, y span) int { return cmpInt(x.from, y.from) })
	merged := v.outages[:1]
	for _, o := range v.outages[1:] {
		if last := &merged[len(merged)-1]; o.from <= last.to {
			last.to = max(last.to, o.to)
		} else {
			merged = append(merged, o)
		}
	}
	v.outages = merged
}

func cmpInt(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// pausedLocked is when a TTL of ttl that starts at f runs out, not counting the
// outages. Callers hold v.mu.
func (v *View) pausedLocked(f, ttl int64) int64 {
	due := f + ttl
	for _, o := range v.outages {
		if o.to <= f {
			continue
		}
		if o.from >= due {
			break
		}
		due += o.to - max(o.from, f)
	}
	return due
}

// judgeEndLocked judges the end of p's current process, found at end (it stopped
// serving, or a new process of it reports): if it was silent for longer than
// narrowWindow before, it may have answered heartbeats it never reported, so every
// session counts as beaten at end. Callers hold v.mu.
func (v *View) judgeEndLocked(p *peer, end int64) {
	if p.judged || !p.wasExpected {
		p.judged = true
		return
	}
	p.judged = true
	if !p.haveCut || end-p.cut > int64(narrowWindow) {
		v.raiseFloorLocked(end, p.name, "it stopped serving after a silence, or never reported")
	}
}

// raiseFloorLocked makes every session count as beaten no earlier than at. Callers
// hold v.mu.
func (v *View) raiseFloorLocked(at int64, peer, why string) {
	if at > v.floor {
		v.floor = at
		v.log.Info("liveness view: every session counts as heartbeated now, since a node may have answered heartbeats it did not report",
			"peer", peer, "why", why)
	}
}

// peerLocked returns the state of node name, creating it. Callers hold v.mu.
func (v *View) peerLocked(name string) *peer {
	if p := v.peers[name]; p != nil {
		return p
	}
	p := &peer{name: name, cut: noCut}
	v.peers[name] = p
	return p
}

// Receive applies a push from another node, authenticated by secret, and returns the
// answer the sender needs. It fails with ErrNotStarted before Start and after Close,
// ErrUnauthenticated for a wrong secret, and ErrInvalidPush (wrapped, with why).
func (v *View) Receive(secret string, body []byte) (Reply, error) {
	v.mu.RLock()
	ok, want := v.started && !v.closed, v.secret
	v.mu.RUnlock()
	if !ok {
		return Reply{}, ErrNotStarted
	}
	if subtle.ConstantTimeCompare([]byte(secret), []byte(want)) != 1 {
		return Reply{}, ErrUnauthenticated
	}
	p, err := decodePush(body)
	if err != nil {
		return Reply{}, fmt.Errorf("%w: %v", ErrInvalidPush, err)
	}
	if p.Node == v.cfg.Node {
		return Reply{}, fmt.Errorf("%w: it comes from a node named %s, as this one: give every node its own --name", ErrInvalidPush, p.Node)
	}
	now := v.now()
	v.mu.Lock()
	st := v.peerLocked(p.Node)
	switch {
	case !st.heard || st.instance != p.Instance:
		if st.heard {
			v.judgeEndLocked(st, now) // the old process ended by now
		}
		st.heard, st.instance, st.lastSeq, st.haveCut, st.cut, st.judged = true, p.Instance, 0, false, noCut, false
		if p.First > 1 {
			// It no longer keeps its first epochs: what it answered then is lost.
			v.raiseFloorLocked(now, p.Node, "its first push to this node misses epochs")
		}
	case p.First > st.lastSeq+1:
		v.raiseFloorLocked(now, p.Node, "its push misses epochs it no longer keeps")
	}
	v.mu.Unlock()

	for _, b := range p.Beats {
		v.merge(b.id, now-int64(b.age))
	}

	v.mu.Lock()
	defer v.mu.Unlock()
	if st.instance == p.Instance {
		st.lastRecv = max(st.lastRecv, now)
		if !p.More {
			st.lastSeq = max(st.lastSeq, p.Last)
			if p.Echo == v.instance && p.EchoCut > noCut {
				if c := min(p.EchoCut, now); !st.haveCut || c > st.cut {
					st.cut, st.haveCut = c, true
				}
			}
		}
	}
	return Reply{Instance: v.instance, Now: now, LastSeq: st.lastSeq}, nil
}

// run seals and pushes every Interval until ctx ends.
func (v *View) run(ctx context.Context) {
	t := time.NewTicker(v.cfg.Interval)
	defer t.Stop()
	for {
		v.tick(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// tick seals this node's notes into an epoch, merges them, refreshes the nodes from
// gossip, starts a push to every live node that has none in flight, and reports a
// node the view waits for.
func (v *View) tick(ctx context.Context) {
	cut, beats := v.seal()
	for k, t := range beats {
		v.merge(k, t)
	}
	var list []Peer
	if v.cfg.Peers != nil {
		list = v.cfg.Peers()
	}
	now := v.now()
	v.mu.Lock()
	v.epochs = append(v.epochs, epoch{seq: v.nextSeq, cut: cut, beats: beats})
	v.nextSeq++
	v.selfCut = cut
	v.refreshLocked(list, now)
	var targets []*peer
	for _, p := range v.peers {
		if p.listed && p.url != "" && !p.inflight {
			p.inflight = true
			targets = append(targets, p)
		}
	}
	v.trimLocked(now)
	logs := v.silenceLocked(now)
	prune := now-v.lastPrune > int64(pruneEvery)
	if prune {
		v.lastPrune = now
	}
	v.mu.Unlock()
	for _, l := range logs {
		l()
	}
	for _, p := range targets {
		v.wg.Add(1)
		go func() {
			defer v.wg.Done()
			v.push(ctx, p)
		}()
	}
	if prune {
		v.prune(now)
	}
}

// seal takes the notes out of every shard. Every note taken before cut is among them:
// a note takes its time under its shard's lock, so one taken after its shard was
// emptied is later than cut.
func (v *View) seal() (int64, map[[16]byte]int64) {
	cut := v.now()
	beats := map[[16]byte]int64{}
	for i := range v.notes {
		s := &v.notes[i]
		var m map[[16]byte]int64
		s.mu.Lock()
		if len(s.m) > 0 {
			m, s.m = s.m, make(map[[16]byte]int64, len(s.m))
		}
		s.mu.Unlock()
		for k, t := range m {
			beats[k] = t
		}
	}
	return cut, beats
}

// refreshLocked updates which nodes are live from gossip's list, the pushes received
// and the pushes refused: a node is expected (Check waits for its reports) while
// gossip shows it alive and its API does not refuse connections, or while it pushed
// within recentWindow; otherwise it is gone, and the end of its process is judged.
func (v *View) refreshLocked(list []Peer, now int64) {
	listed := map[string]bool{}
	for _, p := range list {
		if p.Self || p.Name == v.cfg.Node || p.Name == "" || len(p.Name) > maxNameLen {
			continue
		}
		st := v.peerLocked(p.Name)
		st.url = strings.TrimRight(p.URL, "/")
		listed[p.Name] = !p.Gone
	}
	for name, p := range v.peers {
		p.listed = listed[name]
		refused := p.refusedAt != 0 && p.refusedAt > p.lastRecv
		exp := (p.listed && !refused) || (p.heard && !refused && now-p.lastRecv < int64(recentWindow))
		if exp && !p.expected {
			p.since, p.wasExpected, p.judged = now, true, false
		}
		if !exp && !p.gone {
			v.judgeEndLocked(p, now)
		}
		p.expected, p.gone = exp, !exp
	}
}

// trimLocked drops the epochs every live node holds, and any older than retainEpochs.
func (v *View) trimLocked(now int64) {
	minAck := uint64(math.MaxUint64)
	for _, p := range v.peers {
		if p.listed && p.url != "" {
			minAck = min(minAck, p.acked)
		}
	}
	i := 0
	for i < len(v.epochs) && (v.epochs[i].seq <= minAck || now-v.epochs[i].cut > int64(retainEpochs)) {
		i++
	}
	if i > 0 {
		v.epochs = slices.Clone(v.epochs[i:])
	}
}

// silenceLocked returns the log lines to write about nodes the view starts or stops
// waiting for: each is warned about once.
func (v *View) silenceLocked(now int64) []func() {
	var out []func()
	for _, p := range v.peers {
		name := p.name
		if !p.expected {
			if p.silent {
				p.silent = false
				out = append(out, func() {
					v.log.Info("liveness view: a node it waited for is gone (by gossip); it no longer waits for it", "peer", name)
				})
			}
			continue
		}
		ref, after := p.since, neverAfter
		if p.haveCut {
			ref, after = max(p.cut, p.since), silentAfter
		}
		quiet := time.Duration(now - ref)
		switch {
		case quiet > after && !p.silent:
			p.silent = true
			out = append(out, func() {
				v.log.Warn("liveness view incomplete: a live node has not reported; sessions whose TTL runs out meanwhile are left to their etcd leases until it does",
					"peer", name, "silent-for", quiet.Round(time.Millisecond))
			})
		case quiet <= after && p.silent:
			p.silent = false
			out = append(out, func() { v.log.Info("liveness view complete again: the node reports", "peer", name) })
		}
	}
	return out
}

// prune drops beats and outages older than Forget.
func (v *View) prune(now int64) {
	horizon := now - int64(v.cfg.Forget)
	v.mu.Lock()
	i := 0
	for i < len(v.outages) && v.outages[i].to < horizon {
		i++
	}
	v.outages = slices.Clone(v.outages[i:])
	v.mu.Unlock()
	for i := range v.tab {
		s := &v.tab[i]
		s.mu.Lock()
		for k, at := range s.m {
			if at < horizon {
				delete(s.m, k)
			}
		}
		s.mu.Unlock()
	}
}

// push sends node p every epoch it has not acknowledged (at least an empty push),
// in parts of at most maxIDsPerPush beats, and records its answer.
func (v *View) push(ctx context.Context, p *peer) {
	defer func() {
		v.mu.Lock()
		p.inflight = false
		v.mu.Unlock()
	}()
	v.mu.RLock()
	url, secret := p.url, v.secret
	first, last := p.acked+1, v.nextSeq-1
	var eps []epoch
	for _, e := range v.epochs {
		if e.seq >= first {
			eps = append(eps, e)
		}
	}
	if len(eps) > 0 && eps[0].seq > first {
		first = eps[0].seq // a gap: the receiver counts its knowledge from now
	}
	first = min(first, last+1)
	newest := v.selfCut
	var echoInst uint64
	echoCut := int64(noCut)
	for i := len(p.echoes) - 1; i >= 0; i-- {
		if e := p.echoes[i]; e.local <= newest {
			echoInst, echoCut = p.remote, e.remote+(newest-e.local)
			break
		}
	}
	v.mu.RUnlock()

	// The latest beat of each session in the epochs, newest epoch first.
	var beats []beat
	var times []int64
	if len(eps) == 1 {
		for k, t := range eps[0].beats {
			beats, times = append(beats, beat{id: k}), append(times, t)
		}
	} else if len(eps) > 1 {
		seen := map[[16]byte]bool{}
		for i := len(eps) - 1; i >= 0; i-- {
			for k, t := range eps[i].beats {
				if !seen[k] {
					seen[k] = true
					beats, times = append(beats, beat{id: k}), append(times, t)
				}
			}
		}
	}
	sent := v.now()
	for i := range beats {
		beats[i].age = time.Duration(sent - times[i]).Truncate(time.Millisecond)
	}
	for from := 0; ; from += maxIDsPerPush {
		to := min(from+maxIDsPerPush, len(beats))
		msg := &push{Node: v.cfg.Node, Instance: v.instance, More: to < len(beats), Echo: echoInst, EchoCut: echoCut,
			First: first, Last: last, Beats: beats[from:to]}
		reply, err := v.post(ctx, url, secret, encodePush(msg))
		if err != nil {
			v.pushFailed(p, err)
			return
		}
		if !msg.More {
			got := v.now()
			v.mu.Lock()
			if reply.Instance != p.remote {
				p.remote, p.echoes = reply.Instance, nil
			}
			p.acked = reply.LastSeq
			p.echoes = append(p.echoes, echo{remote: reply.Now, local: got})
			if len(p.echoes) > maxEchoes {
				p.echoes = slices.Delete(p.echoes, 0, len(p.echoes)-maxEchoes)
			}
			recovered := p.warnedTx
			p.failing, p.warnedTx, p.refusedAt = false, false, 0
			v.mu.Unlock()
			if recovered {
				v.log.Info("liveness: pushes to the node work again", "peer", p.name)
			}
			return
		}
	}
}

// pushFailed records a failed push to p and warns once when pushes to it have failed
// for silentAfter.
func (v *View) pushFailed(p *peer, err error) {
	now := v.now()
	v.mu.Lock()
	if !p.failing {
		p.failing, p.failedAt = true, now
	}
	if errors.Is(err, syscall.ECONNREFUSED) && p.refusedAt == 0 {
		p.refusedAt = now // nothing listens on its API: it answers no heartbeats
	}
	warn := !p.warnedTx && v.cfg.Interval > 0 && now-p.failedAt > int64(silentAfter) && !v.closed
	if warn {
		p.warnedTx = true
	}
	v.mu.Unlock()
	if warn {
		v.log.Warn("liveness: cannot push heartbeats to a live node; its view of them is incomplete until this works", "peer", p.name, "error", err)
	} else {
		v.log.Debug("liveness: push failed", "peer", p.name, "error", err)
	}
}

// post sends one push and decodes the answer.
func (v *View) post(ctx context.Context, url, secret string, body []byte) (Reply, error) {
	ctx, cancel := context.WithTimeout(ctx, v.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url+Path, bytes.NewReader(body))
	if err != nil {
		return Reply{}, err
	}
	req.Header.Set("Authorization", "Bearer "+secret)
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := v.client.Do(req)
	if err != nil {
		return Reply{}, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return Reply{}, err
	}
	if resp.StatusCode != http.StatusOK {
		return Reply{}, fmt.Errorf("%s: %.200s", resp.Status, strings.TrimSpace(string(data)))
	}
	return decodeReply(data)
}
