package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unicode"

	"github.com/spf13/pflag"

	"github.com/roster-dev/roster/cluster"
	"github.com/roster-dev/roster/registry"
	"github.com/roster-dev/roster/registry/client"
)

// Workloads of roster bench.
const (
	wlOpen      = "open"
	wlHeartbeat = "heartbeat"
	wlBatch     = "batch-heartbeat"
	wlKill      = "kill-latency"
	wlExpiry    = "expiry"
	wlList      = "list"
	wlMixed     = "mixed"
)

// benchWorkloads lists the workloads in the order the help shows them.
var benchWorkloads = []string{wlOpen, wlHeartbeat, wlBatch, wlKill, wlExpiry, wlList, wlMixed}

// benchDefault holds the defaults that depend on the workload.
type benchDefault struct {
	clients  int
	sessions int
	ttl      time.Duration
}

var benchDefaults = map[string]benchDefault{
	wlOpen:      {clients: 64, ttl: time.Minute},
	wlHeartbeat: {clients: 64, sessions: 1000, ttl: time.Minute},
	wlBatch:     {clients: 1, sessions: registry.MaxBatchSessions, ttl: time.Minute},
	wlKill:      {clients: 8, sessions: 200, ttl: 5 * time.Minute},
	wlExpiry:    {sessions: 10, ttl: 10 * time.Second},
	wlList:      {clients: 8, sessions: 100_000, ttl: 30 * time.Minute},
	wlMixed:     {clients: 64, sessions: 1000, ttl: time.Minute},
}

// benchFlagScope names the workloads each flag applies to, for the flags
// that do not apply to all.
var benchFlagScope = map[string][]string{
	"clients":       {wlOpen, wlHeartbeat, wlBatch, wlKill, wlList, wlMixed},
	"duration":      {wlOpen, wlHeartbeat, wlBatch, wlList, wlMixed},
	"total":         {wlOpen, wlHeartbeat, wlBatch, wlList, wlMixed},
	"sessions":      {wlHeartbeat, wlBatch, wlKill, wlExpiry, wlList, wlMixed},
	"keep":          {wlOpen, wlHeartbeat, wlBatch, wlList, wlMixed},
	"batch-size":    {wlBatch},
	"page-size":     {wlList, wlMixed},
	"mix":           {wlMixed},
	"leader-change": {wlExpiry},
}

// Kinds of operation of the mixed workload, in the order they are shown.
var mixOps = []string{"open", "heartbeat", "close", "list"}

// defaultMix is a login storm: many opens among the heartbeats of those
// already in, some logouts, and operators watching lists.
const defaultMix = "open=30,heartbeat=55,close=10,list=5"

// Limits of the bench's flags.
const (
	maxBenchClients  = 10_000
	maxBenchSessions = 1_000_000
	maxBenchRounds   = 100
	maxNameLen       = 100
	benchHost        = "roster-bench"
)

// Defaults of the flags that do not depend on the workload.
const (
	defaultBenchDuration = 10 * time.Second
)

func benchCommands() []*command {
	return []*command{{
		path: "bench", args: "WORKLOAD", nargs: 1,
		summary: "measure a running cluster: opens, heartbeats, kills, expiry, listings; optionally against raw etcd",
		help: `Measure a running cluster through its HTTP API (the nodes in --endpoints, with an
admin token) and print, for the workload, the throughput, the p50/p90/p99/max latency
of the successful operations, and the failed ones by the API's error code (or
transport, timeout, canceled when no answer came). Progress goes to stderr every
second; -o json prints one object for scripts.

Workloads:
  open             --clients open sessions of distinct users (no user master entry
                   needed) for --duration or --total opens; closed afterwards, untimed,
                   unless --keep
  heartbeat        --sessions live sessions heartbeated by --clients workers with
                   POST /v1/sessions/{id}/heartbeat and each session's own token
  batch-heartbeat  a shared connection (POST /v1/connections) with --sessions sessions
                   opened through it, renewed by POST /v1/heartbeats in batches of
                   --batch-size; throughput is sessions renewed per second. It adds a
                   user entry (multi-login, the connection's service) for the run and
                   deletes it afterwards
  kill-latency     --sessions sessions, each followed by its event stream (GET
                   /v1/sessions/{id}/events), the streams spread over the endpoints;
                   each session is killed through the next endpoint, --clients kills
                   in flight; latency is kill sent -> killed event received
  expiry           --sessions sessions heartbeated once and then no more: latency is
                   the last heartbeat's answer -> the session's end event on a
                   stream (GET /v1/events at the last endpoint); once every session
                   has ended, GET must answer 410 or 404 and no listing show it
                   (through the session's own endpoint) within 5s of its end, or at
                   once where that has passed, else it counts as still_listed;
                   --leader-change moves the etcd leader to another member half a TTL
                   after the last heartbeat
  list             --sessions live sessions (opened concurrently, in ten modules);
                   pages of --page-size from GET /v1/sessions, unfiltered and filtered
                   by one module (a tenth), each worker following next_cursor
  mixed            a login storm: opens, heartbeats, logouts and listings at once in
                   the proportions of --mix, among --sessions sessions opened first

Each workload runs --rounds rounds. With --baseline etcd each round also does the same
work directly on the cluster's etcd, with the same concurrency, alternating which goes
first, each side once etcd's count of leases has held still for 1s (the side
before's lease revocations are over); every result then has a ratio (Roster / raw
etcd, the median of the per-round ratios): of throughput for open, heartbeat,
batch-heartbeat, list and mixed as a whole (below 1: Roster does fewer per second), of
p50 latency for kill-latency, expiry and each kind of operation of mixed (above 1:
Roster takes longer). The raw work:
  open             Grant + one Txn: single-login compare, a session-sized record and
                   five index entries on the lease
  heartbeat        one renewal on a long-lived LeaseKeepAlive stream per worker
  batch-heartbeat  the batch's renewals pipelined on one such stream
  kill-latency     Revoke through the next endpoint -> the key's delete event on a watch
  expiry           a lease renewed once, then left: until its key's delete event on a watch
  list             a range read of --page-size session-sized values
  mixed            the same mix of those raw operations
The raw keys live under /roster-bench/<run id>/ and are deleted at the end. The
baseline (and --leader-change) talks to the etcd voters at the client URLs GET
/v1/cluster/members reports (etcd_client_url); --etcd-endpoints overrides them, and is
needed against an external etcd, whose URLs the API does not know. No TLS.

Sessions are opened in --module (list: MODULE-0 to MODULE-9) by users
bench-<run id>-<n>, with --ttl; the run cleans up what it opened (Ctrl-C too, within
30 s). A set-up open that fails as unavailable (a node too slow to answer in time) is
tried up to 5 times, over about 15 s. Operations started before the end of --duration are completed and counted.`,
		setup: func(fs *pflag.FlagSet) action {
			f := &benchFlags{}
			f.define(fs)
			return f.run
		},
	}}
}

// benchFlags are the flags of roster bench.
type benchFlags struct {
	clients       int
	duration      time.Duration
	total         int64
	sessions      int
	ttl           time.Duration
	rounds        int
	baseline      string
	etcdEndpoints []string
	leaderChange  bool
	batchSize     int
	pageSize      int
	mix           string
	module        string
	tenant        string
	pool          string
	keep          bool

	weights map[string]int // --mix, parsed
	fs      *pflag.FlagSet
}

func (f *benchFlags) define(fs *pflag.FlagSet) {
	fs.IntVar(&f.clients, "clients", 0, "`N` concurrent clients (default 64 for open, heartbeat, mixed; 8 for kill-latency (kills in flight), list; 1 for batch-heartbeat)")
	fs.DurationVar(&f.duration, "duration", defaultBenchDuration, "how long each round of each side runs")
	fs.Int64Var(&f.total, "total", 0, "run `N` operations per round and side instead of for --duration")
	fs.IntVar(&f.sessions, "sessions", 0, "`N` live sessions (default 1,000 for heartbeat, mixed; 10,000 for batch-heartbeat; 200 for kill-latency; 10 for expiry; 100,000 for list)")
	fs.DurationVar(&f.ttl, "ttl", 0, "TTL of the sessions, whole seconds (default 60s, or --duration plus 30s if longer; kill-latency 5m; expiry 10s; list 30m)")
	fs.IntVar(&f.rounds, "rounds", 0, "run `N` rounds (default 1; 3 with --baseline)")
	fs.StringVar(&f.baseline, "baseline", "", "`NAME` of the baseline: etcd does the same work directly on the cluster's etcd, interleaved, and gives ratios")
	fs.StringSliceVar(&f.etcdEndpoints, "etcd-endpoints", nil, "comma-separated etcd client `URLS` (http://host:port, each node's --etcd-listen) for --baseline and --leader-change (default: the voters' etcd_client_url from GET /v1/cluster/members)")
	fs.BoolVar(&f.leaderChange, "leader-change", false, "expiry: move the etcd leader to another member half a TTL after the last heartbeat")
	fs.IntVar(&f.batchSize, "batch-size", registry.MaxBatchSessions, "batch-heartbeat: sessions per POST /v1/heartbeats, 1-10000")
	fs.IntVar(&f.pageSize, "page-size", registry.MaxListLimit, "list, mixed: sessions per page, 1-1000")
	fs.StringVar(&f.mix, "mix", defaultMix, "mixed: weights of the operations open, heartbeat, close and list, as `OP=W,...`")
	fs.StringVar(&f.module, "module", "bench", "module of the sessions")
	fs.StringVar(&f.tenant, "tenant", "", "tenant of the sessions (server default: default)")
	fs.StringVar(&f.pool, "pool", "", "pool of the sessions (server default: the node's --pool)")
	fs.BoolVar(&f.keep, "keep", false, "leave the sessions open at the end, to expire with their TTL")
	f.fs = fs
}

// check validates the flags for workload wl and fills in the defaults
// that depend on it.
func (f *benchFlags) check(wl string) error {
	const path = "bench"
	if !slices.Contains(benchWorkloads, wl) {
		return usagef(path, "unknown workload %q; the workloads are %s", wl, strings.Join(benchWorkloads, ", "))
	}
	var scopeErr error
	// VisitAll, not Visit: the flags were parsed as part of the command's
	// whole flag set, which shares them but keeps its own record of those set.
	f.fs.VisitAll(func(fl *pflag.Flag) {
		if scope, ok := benchFlagScope[fl.Name]; ok && fl.Changed && !slices.Contains(scope, wl) && scopeErr == nil {
			scopeErr = usagef(path, "--%s does not apply to workload %s; it applies to %s", fl.Name, wl, strings.Join(scope, ", "))
		}
	})
	if scopeErr != nil {
		return scopeErr
	}
	d := benchDefaults[wl]
	changed := f.fs.Changed
	if !changed("clients") {
		f.clients = d.clients
	}
	if !changed("sessions") {
		f.sessions = d.sessions
	}
	switch {
	case changed("clients") && (f.clients < 1 || f.clients > maxBenchClients):
		return usagef(path, "--clients %d: give 1 to %d concurrent clients", f.clients, maxBenchClients)
	case changed("duration") && changed("total"):
		return usagef(path, "--duration and --total both given: give one (a time or a number of operations per round)")
	case f.duration <= 0:
		return usagef(path, "--duration %s: give a positive duration, e.g. 10s", f.duration)
	case changed("total") && f.total < 1:
		return usagef(path, "--total %d: give 1 or more operations per round", f.total)
	case changed("sessions") && (f.sessions < 1 || f.sessions > maxBenchSessions):
		return usagef(path, "--sessions %d: give 1 to %d sessions", f.sessions, maxBenchSessions)
	case changed("rounds") && (f.rounds < 1 || f.rounds > maxBenchRounds):
		return usagef(path, "--rounds %d: give 1 to %d rounds", f.rounds, maxBenchRounds)
	case f.baseline != "" && f.baseline != "etcd":
		return usagef(path, "--baseline %q: the only baseline is etcd (or leave it out)", f.baseline)
	case f.batchSize < 1 || f.batchSize > registry.MaxBatchSessions:
		return usagef(path, "--batch-size %d: give 1 to %d sessions per call", f.batchSize, registry.MaxBatchSessions)
	case f.pageSize < 1 || f.pageSize > registry.MaxListLimit:
		return usagef(path, "--page-size %d: give 1 to %d sessions per page", f.pageSize, registry.MaxListLimit)
	}
	if !changed("rounds") {
		f.rounds = 1
		if f.baseline != "" {
			f.rounds = 3
		}
	}
	if err := f.checkTTL(wl, d.ttl); err != nil {
		return err
	}
	for _, n := range []struct{ flag, value string }{{"--module", f.module}, {"--tenant", f.tenant}, {"--pool", f.pool}} {
		if err := checkBenchName(n.flag, n.value, n.flag == "--module" || changed(n.flag[2:])); err != nil {
			return err
		}
	}
	if len(f.etcdEndpoints) > 0 && f.baseline == "" && !f.leaderChange {
		return usagef(path, "--etcd-endpoints is only used with --baseline etcd or --leader-change")
	}
	for _, ep := range f.etcdEndpoints {
		if err := checkEtcdEndpoint(ep); err != nil {
			return usagef(path, "--etcd-endpoints: %s", err)
		}
	}
	if wl == wlMixed {
		w, err := parseMix(f.mix)
		if err != nil {
			return usagef(path, "--mix %q: %s", f.mix, err)
		}
		f.weights = w
	}
	return nil
}

// checkTTL checks --ttl, or sets the workload's default: whole seconds,
// and longer than a round where sessions must live
// through one without heartbeats: those opened during a round of open or
// mixed (an expiry in the middle would add its own load), and with a
// baseline those of heartbeat and batch-heartbeat, which nothing renews
// while the raw round runs.
func (f *benchFlags) checkTTL(wl string, def time.Duration) error {
	const path = "bench"
	outlive := f.total == 0 && (wl == wlOpen || wl == wlMixed || (f.baseline != "" && (wl == wlHeartbeat || wl == wlBatch)))
	need := f.duration + 30*time.Second
	if !f.fs.Changed("ttl") {
		f.ttl = def
		if outlive && f.ttl < need {
			f.ttl = need.Round(time.Second)
		}
		return nil
	}
	switch {
	case f.ttl < time.Second:
		return usagef(path, "--ttl %s: give at least 1s (the nodes' --min-ttl applies too, default 5s)", f.ttl)
	case f.ttl%time.Second != 0:
		return usagef(path, "--ttl %s: must be whole seconds, e.g. 30s or 2m", f.ttl)
	case outlive && f.ttl < need:
		return usagef(path, "--ttl %s: sessions must not expire within a round, so give at least --duration plus 30s (%s)", f.ttl, need)
	}
	return nil
}

// checkBenchName checks a module, tenant or pool name as the API would,
// so that a typo fails before any session is opened. An empty name is
// refused only when required.
func checkBenchName(flag, name string, required bool) error {
	if name == "" {
		if required {
			return usagef("bench", "%s is empty: give a name", flag)
		}
		return nil
	}
	if len(name) > maxNameLen {
		return usagef("bench", "%s: %d bytes; give at most %d", flag, len(name), maxNameLen)
	}
	for _, r := range name {
		if r == '/' || unicode.IsControl(r) {
			return usagef("bench", "%s %q: want a name without '/' or control characters", flag, name)
		}
	}
	return nil
}

// checkEtcdEndpoint checks one etcd client URL: http, a host and port,
// nothing else.
func checkEtcdEndpoint(ep string) error {
	if !strings.Contains(ep, "://") {
		return fmt.Errorf("%q has no scheme: write http://%s", ep, ep)
	}
	u, err := url.Parse(ep)
	switch {
	case err != nil:
		return fmt.Errorf("%q is not a URL: %v", ep, err)
	case u.Scheme == "https":
		return fmt.Errorf("%q: TLS is not supported (the nodes' embedded etcd serves plain http)", ep)
	case u.Scheme != "http":
		return fmt.Errorf("%q: scheme must be http, as in http://127.0.0.1:7401", ep)
	case u.Host == "" || u.Port() == "":
		return fmt.Errorf("%q: give host and port, as in http://127.0.0.1:7401", ep)
	case (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil:
		return fmt.Errorf("%q: only scheme, host and port are allowed", ep)
	}
	return nil
}

// parseMix parses --mix: OP=WEIGHT pairs of the mixed operations; those
// left out weigh 0.
func parseMix(s string) (map[string]int, error) {
	w := map[string]int{}
	sum := 0
	for part := range strings.SplitSeq(s, ",") {
		op, val, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			return nil, fmt.Errorf("%q: want OP=WEIGHT, e.g. open=30", part)
		}
		if !slices.Contains(mixOps, op) {
			return nil, fmt.Errorf("unknown operation %q; the operations are %s", op, strings.Join(mixOps, ", "))
		}
		if _, dup := w[op]; dup {
			return nil, fmt.Errorf("%s given twice", op)
		}
		n, err := strconv.Atoi(val)
		if err != nil || n < 0 || n > 1_000_000 {
			return nil, fmt.Errorf("%s=%s: the weight must be a whole number from 0 to 1000000", op, val)
		}
		w[op] = n
		sum += n
	}
	if sum == 0 {
		return nil, errors.New("every weight is 0: give at least one operation a weight")
	}
	return w, nil
}

// bench is one run of roster bench.
type bench struct {
	f      *benchFlags
	wl     string
	stderr io.Writer
	eps    []string
	// api[k] sends to endpoint k first and fails over to the others; one[k]
	// knows endpoint k alone (streams and kills that must stay where they
	// are sent).
	api []*client.Client
	one []*client.Client
	raw *rawEtcd // nil without a baseline or leader change
	// runID names what the run creates: users, the raw key prefix.
	runID string
	users atomic.Int64 // users handed out so far; see newUser
	hc    *http.Client
	// setupRetries counts the set-up calls tried again (openSetup, rawSetup).
	setupRetries atomic.Int64
}

// cleanupGrace bounds the clean-up of an interrupted run.
const cleanupGrace = 30 * time.Second

// newBench builds the API clients (one per endpoint), checks the token
// with one listing and, for a baseline, connects to etcd and checks that
// it is the cluster's.
func newBench(ctx context.Context, inv *invocation, f *benchFlags, wl string) (*bench, error) {
	eps, src := inv.g.endpointList(inv.getenv)
	if err := (client.Config{Endpoints: eps}).Validate(); err != nil {
		return nil, usagef(inv.cmd.path, "%s: %s", src, strings.TrimPrefix(err.Error(), "client: "))
	}
	tok, tsrc, err := inv.g.resolveToken(inv.cliEnv)
	if err != nil {
		return nil, err
	}
	inv.noToken = tsrc == ""
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.DialContext = (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	// Every worker keeps its connection; the default of 2 idle connections
	// per host would make most requests dial anew.
	t.MaxIdleConns = 0
	t.MaxIdleConnsPerHost = f.clients + setupWorkers
	b := &bench{
		f: f, wl: wl, stderr: inv.stderr, eps: eps, runID: randomHex(3),
		hc: &http.Client{Transport: t, Timeout: 30 * time.Second},
	}
	for k := range eps {
		rotated := append(slices.Clone(eps[k:]), eps[:k]...)
		c, err := client.New(client.Config{Endpoints: rotated, Token: tok, HTTPClient: b.hc})
		if err != nil {
			return nil, err
		}
		one, err := client.New(client.Config{Endpoints: []string{eps[k]}, Token: tok, HTTPClient: b.hc})
		if err != nil {
			return nil, err
		}
		b.api, b.one = append(b.api, c), append(b.one, one)
	}
	if _, err := b.api[0].Do(ctx, http.MethodGet, "/v1/sessions", url.Values{"limit": {"1"}}, nil); err != nil {
		return nil, inv.hint(fmt.Errorf("check the token with GET /v1/sessions: %w", err))
	}
	if len(f.etcdEndpoints) == 0 && (f.baseline != "" || f.leaderChange) {
		eps, err := b.etcdVoters(ctx)
		if err != nil {
			return nil, err
		}
		f.etcdEndpoints = eps // the report and the progress lines name them
	}
	if len(f.etcdEndpoints) > 0 {
		raw, err := dialEtcd(ctx, f.etcdEndpoints, b.runID, int64(f.ttl/time.Second))
		if err != nil {
			return nil, err
		}
		b.raw = raw
		if err := b.checkSameCluster(ctx); err != nil {
			raw.close()
			return nil, err
		}
	}
	return b, nil
}

// checkSameCluster checks that every etcd endpoint is a member of the
// cluster the API serves, by the member ids GET /v1/cluster/members
// reports. A node without a cluster layer (503) cannot say: that passes.
func (b *bench) checkSameCluster(ctx context.Context) error {
	members, err := b.members(ctx)
	if errors.Is(err, client.ErrUnavailable) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("check --etcd-endpoints against GET /v1/cluster/members: %w", err)
	}
	known := map[string]bool{}
	for _, m := range members {
		if m.EtcdMemberID != "" {
			known[m.EtcdMemberID] = true
		}
	}
	if len(known) == 0 {
		return nil // an external etcd: the API names no members
	}
	ids, err := b.raw.memberIDs(ctx)
	if err != nil {
		return fmt.Errorf("--etcd-endpoints: %w", err)
	}
	for _, ep := range b.raw.eps {
		if !known[ids[ep]] {
			return usagef("bench", "--etcd-endpoints: %s is etcd member %s, which is not a member of the cluster at %s: give the etcd client URLs of this cluster's nodes",
				ep, ids[ep], strings.Join(b.eps, ","))
		}
	}
	return nil
}

// etcdVoters returns the etcd client URLs of the cluster's voters as GET
// /v1/cluster/members reports them, for a baseline or a leader change run
// without --etcd-endpoints.
func (b *bench) etcdVoters(ctx context.Context) ([]string, error) {
	what := "--baseline etcd"
	if b.f.baseline == "" {
		what = "--leader-change"
	}
	members, err := b.members(ctx)
	if err != nil {
		return nil, fmt.Errorf("%s: find the etcd client URLs with GET /v1/cluster/members (or give --etcd-endpoints): %w", what, err)
	}
	var eps []string
	for _, m := range members {
		if m.EtcdRole == cluster.RoleVoter && m.EtcdClientURL != "" {
			if err := checkEtcdEndpoint(m.EtcdClientURL); err != nil {
				return nil, usagef("bench", "%s: GET /v1/cluster/members gives %s the etcd client URL %s; give --etcd-endpoints", what, m.Name, err)
			}
			eps = append(eps, m.EtcdClientURL)
		}
	}
	if len(eps) == 0 {
		return nil, usagef("bench", "%s needs --etcd-endpoints: GET /v1/cluster/members reports no etcd client URL of a voter "+
			"(an external etcd, or nodes that predate etcd_client_url); give the client URLs of the cluster's etcd members, e.g. http://127.0.0.1:7401", what)
	}
	slices.Sort(eps)
	return eps, nil
}

// members returns GET /v1/cluster/members.
func (b *bench) members(ctx context.Context) ([]cluster.MemberStatus, error) {
	data, err := b.api[0].Do(ctx, http.MethodGet, "/v1/cluster/members", nil, nil)
	if err != nil {
		return nil, err
	}
	var res struct {
		Members []cluster.MemberStatus `json:"members"`
	}
	if err := json.Unmarshal(data, &res); err != nil {
		return nil, fmt.Errorf("GET /v1/cluster/members: %w", err)
	}
	return res.Members, nil
}

func (b *bench) close() {
	if n := b.setupRetries.Load(); n > 0 {
		fmt.Fprintf(b.stderr, "roster: bench: set-up: %s calls tried again after the cluster did not answer in time or was unavailable\n", groupDigits(n))
	}
	if b.raw != nil {
		b.raw.close()
	}
	b.hc.CloseIdleConnections()
}

// newUser returns a user name no other open of the run has used:
// bench-<run id>-<n>. Users not in the user master have no rights, which
// an open does not need.
func (b *bench) newUser() string {
	return fmt.Sprintf("bench-%s-%d", b.runID, b.users.Add(1))
}

func (f *benchFlags) run(ctx context.Context, inv *invocation) error {
	wl := inv.args[0]
	if err := f.check(wl); err != nil {
		return err
	}
	b, err := newBench(ctx, inv, f, wl)
	if err != nil {
		return err
	}
	defer b.close()
	rep := &benchReport{
		Workload: wl, RunID: b.runID, Endpoints: b.eps, EtcdEndpoints: f.etcdEndpoints, Baseline: f.baseline,
		Clients: f.clients, Sessions: f.sessions, Rounds: f.rounds, TTLSeconds: int64(f.ttl / time.Second),
		StartedAt: time.Now().UTC().Truncate(time.Millisecond),
	}
	if benchTimed(wl) {
		if f.total > 0 {
			rep.Total = f.total
		} else {
			rep.DurationSeconds = f.duration.Seconds()
		}
	}
	fmt.Fprintf(inv.stderr, "roster: bench %s: run %s against %s%s\n", wl, b.runID, strings.Join(b.eps, ","), baselineNote(f))
	results, runErr := b.workload(ctx)
	rep.Results = results
	if ctx.Err() != nil {
		rep.Interrupted = true
	}
	if len(results) > 0 {
		if inv.g.json() {
			if err := rep.printJSON(inv.stdout); err != nil {
				return err
			}
		} else {
			rep.printTable(inv.stdout)
		}
	}
	if runErr != nil {
		return runErr
	}
	if rep.Interrupted {
		return errors.New("bench: interrupted; the results are partial")
	}
	return nil
}

func baselineNote(f *benchFlags) string {
	if f.baseline == "" {
		return ""
	}
	return ", baseline etcd at " + strings.Join(f.etcdEndpoints, ",")
}

// benchTimed reports whether wl runs for --duration or --total.
func benchTimed(wl string) bool { return slices.Contains(benchFlagScope["duration"], wl) }

// workload runs the workload and returns its results.
func (b *bench) workload(ctx context.Context) ([]benchResult, error) {
	switch b.wl {
	case wlOpen:
		return b.runOpen(ctx)
	case wlHeartbeat:
		return b.runHeartbeat(ctx)
	case wlBatch:
		return b.runBatch(ctx)
	case wlKill:
		return b.runKill(ctx)
	case wlExpiry:
		return b.runExpiry(ctx)
	case wlList:
		return b.runList(ctx)
	case wlMixed:
		return b.runMixed(ctx)
	}
	return nil, fmt.Errorf("bench: no workload %q", b.wl)
}

// roundFunc measures one round of one side and returns its samples by phase.
type roundFunc func(ctx context.Context, round int) (map[string]*sample, error)

// rounds runs --rounds rounds of ours and, with a baseline, raw: in odd
// rounds Roster first, in even ones raw etcd first, so that neither side
// always runs on a machine warmed (or tired) by the other. It stops at the
// first error or when ctx ends, returning what was measured (the sides may
// then hold different numbers of rounds; ratios pair only whole rounds).
func (b *bench) rounds(ctx context.Context, ours, raw roundFunc) (oursS, rawS []map[string]*sample, err error) {
	type side struct {
		fn  roundFunc
		out *[]map[string]*sample
	}
	for r := range b.f.rounds {
		order := []side{{ours, &oursS}}
		if raw != nil {
			order = append(order, side{raw, &rawS})
			if r%2 == 1 {
				order[0], order[1] = order[1], order[0]
			}
		}
		for _, sd := range order {
			var settled string
			if raw != nil {
				settled = b.settle(ctx)
			}
			s, err := sd.fn(ctx, r)
			if settled != "" {
				for _, smp := range s {
					smp.notes = append(smp.notes, settled)
				}
			}
			if err != nil {
				return oursS, rawS, err
			}
			*sd.out = append(*sd.out, s)
			if ctx.Err() != nil {
				return oursS, rawS, nil
			}
		}
	}
	return oursS, rawS, nil
}

// settleQuiet is how long etcd's count of leases must hold still before a
// side of a round starts, and settleMax how long settle waits for that.
const (
	settleQuiet = time.Second
	settleMax   = time.Minute
)

// settle waits until the cluster has finished the clean-up of the side before:
// until etcd's count of leases has not changed for settleQuiet (at most
// settleMax; a count that keeps changing is noted on stderr and the side starts
// anyway). Roster answers a logout or a kill before the session's lease is
// revoked, and the leases of sessions the liveness view ended run out by
// themselves 6 s later; each revocation is a backend commit on every member.
// Raw etcd's side revokes its leases before it returns; Roster's revocations may
// still run after its side has, into the next side's measurement. The wait
// makes sure they do not; on fresh nodes, rounds of opens and of kills needed
// no more than 2 s of it. A wait longer than twice settleQuiet is described in
// what it returns, for the round's notes.
func (b *bench) settle(ctx context.Context) string {
	began := time.Now()
	first := int64(-1)
	var count, changes atomic.Int64
	stop := b.progress(func(time.Duration) string {
		return fmt.Sprintf("%s: waiting for the cluster to finish the clean-up of the side before: %d leases, %d changes of the count so far", b.wl, count.Load(), changes.Load())
	})
	defer stop()
	last, stillSince := int64(-1), time.Now()
	for ctx.Err() == nil && time.Since(began) < settleMax {
		cctx, cancel := callCtx(ctx)
		resp, err := b.raw.cli(0).Leases(cctx)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return ""
			}
			fmt.Fprintf(b.stderr, "roster: bench: note: could not count etcd's leases to wait for the side before's clean-up (%v); starting the next side without waiting\n", err)
			return fmt.Sprintf("before this side: could not count etcd's leases (%v); the side started without waiting for the clean-up of the side before", err)
		}
		n := int64(len(resp.Leases))
		if n != last {
			last, stillSince = n, time.Now()
			changes.Add(1)
		}
		if first == -1 {
			first = n
		}
		count.Store(n)
		if time.Since(stillSince) >= settleQuiet {
			if d := time.Since(began); d > 2*settleQuiet {
				return fmt.Sprintf("before this side: waited %s for the cluster to finish the clean-up of the side before (etcd's leases %d -> %d)", d.Round(100*time.Millisecond), first, n)
			}
			return ""
		}
		select {
		case <-ctx.Done():
		case <-time.After(settleQuiet / 5):
		}
	}
	if ctx.Err() != nil {
		return ""
	}
	fmt.Fprintf(b.stderr, "roster: bench: note: etcd's count of leases was still changing %s after the side before (%d leases now); starting the next side anyway\n", settleMax, last)
	return fmt.Sprintf("before this side: etcd's count of leases was still changing after %s (%d -> %d); the side started anyway", settleMax, first, last)
}

// what names a load for progress lines: "open, roster, round 1 of 3".
func (b *bench) what(phase, side string, round int) string {
	name := b.wl
	if phase != "" {
		name += " " + phase
	}
	return fmt.Sprintf("%s, %s, round %d of %d", name, side, round+1, b.f.rounds)
}

// timedLoad is the load of a timed workload's round.
func (b *bench) timedLoad(what string, classify func(error) string) load {
	return load{what: what, clients: b.f.clients, total: b.f.total, duration: b.f.duration, classify: classify}
}

// rawRounds returns raw when the run has a baseline, else nil.
func (b *bench) rawRounds(raw roundFunc) roundFunc {
	if b.f.baseline == "" {
		return nil
	}
	return raw
}

// cleanupCtx returns the context clean-up runs in: ctx while it lives
// (Ctrl-C during clean-up stops it and leaves the rest to the TTL); once
// ctx has ended, because the run was interrupted, a fresh one bounded by
// cleanupGrace, so that an interrupted run still removes what it made.
func cleanupCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	if ctx.Err() == nil {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(context.WithoutCancel(ctx), cleanupGrace)
}
