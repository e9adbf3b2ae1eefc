package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/spf13/pflag"

	"github.com/roster-dev/roster/registry/client"
)

func ms(n float64) time.Duration { return time.Duration(n * float64(time.Millisecond)) }

func TestPercentile(t *testing.T) {
	hundred := make([]time.Duration, 100)
	for i := range hundred {
		hundred[i] = ms(float64(i + 1))
	}
	tests := []struct {
		name   string
		sorted []time.Duration
		q      float64
		want   time.Duration
	}{
		{name: "none", sorted: nil, q: 0.5, want: 0},
		{name: "one", sorted: []time.Duration{ms(7)}, q: 0.99, want: ms(7)},
		{name: "p50 of 100", sorted: hundred, q: 0.5, want: ms(50)},
		{name: "p90 of 100", sorted: hundred, q: 0.9, want: ms(90)},
		{name: "p99 of 100", sorted: hundred, q: 0.99, want: ms(99)},
		{name: "max of 100", sorted: hundred, q: 1, want: ms(100)},
		{name: "p50 of 4 is the 2nd", sorted: []time.Duration{ms(1), ms(2), ms(3), ms(4)}, q: 0.5, want: ms(2)},
		{name: "p99 of 3 is the max", sorted: []time.Duration{ms(1), ms(2), ms(3)}, q: 0.99, want: ms(3)},
		{name: "tiny q is the min", sorted: []time.Duration{ms(1), ms(2), ms(3)}, q: 0.0001, want: ms(1)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := percentile(tt.sorted, tt.q); got != tt.want {
				t.Errorf("percentile(q=%v) = %v, want %v", tt.q, got, tt.want)
			}
		})
	}
}

func TestMedian(t *testing.T) {
	tests := []struct {
		name string
		xs   []float64
		want float64
	}{
		{name: "none", xs: nil, want: 0},
		{name: "odd, unsorted", xs: []float64{3, 1, 2}, want: 2},
		{name: "even", xs: []float64{4, 1, 3, 2}, want: 2.5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := median(tt.xs); got != tt.want {
				t.Errorf("median(%v) = %v, want %v", tt.xs, got, tt.want)
			}
		})
	}
}

// TestBenchCommandLineErrors: every bad flag fails before any call (no
// node runs here), naming the flag and what to do.
func TestBenchCommandLineErrors(t *testing.T) {
	const etcd = "--etcd-endpoints=http://127.0.0.1:7401"
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no workload", []string{"bench"}, "bench takes WORKLOAD, got 0 argument(s)"},
		{"unknown workload", []string{"bench", "login"}, `unknown workload "login"; the workloads are open, heartbeat, batch-heartbeat, kill-latency, expiry, list, mixed`},
		{"two workloads", []string{"bench", "open", "list"}, "bench takes WORKLOAD, got 2 argument(s)"},
		{"no clients", []string{"bench", "open", "--clients", "0"}, "--clients 0: give 1 to 10000 concurrent clients"},
		{"too many clients", []string{"bench", "heartbeat", "--clients", "20000"}, "--clients 20000: give 1 to 10000"},
		{"zero duration", []string{"bench", "open", "--duration", "0s"}, "--duration 0s: give a positive duration"},
		{"zero total", []string{"bench", "open", "--total", "0"}, "--total 0: give 1 or more operations"},
		{"duration and total", []string{"bench", "open", "--duration", "5s", "--total", "10"}, "--duration and --total both given"},
		{"no sessions", []string{"bench", "heartbeat", "--sessions", "0"}, "--sessions 0: give 1 to 1000000 sessions"},
		{"sessions of open", []string{"bench", "open", "--sessions", "10"}, "--sessions does not apply to workload open; it applies to heartbeat,"},
		{"total of kill-latency", []string{"bench", "kill-latency", "--total", "10"}, "--total does not apply to workload kill-latency"},
		{"clients of expiry", []string{"bench", "expiry", "--clients", "4"}, "--clients does not apply to workload expiry"},
		{"mix of open", []string{"bench", "open", "--mix", "open=1"}, "--mix does not apply to workload open; it applies to mixed"},
		{"leader change of open", []string{"bench", "open", "--leader-change"}, "--leader-change does not apply to workload open; it applies to expiry"},
		{"zero rounds", []string{"bench", "open", "--rounds", "0"}, "--rounds 0: give 1 to 100 rounds"},
		{"unknown baseline", []string{"bench", "open", "--baseline", "redis"}, `--baseline "redis": the only baseline is etcd`},
		{"etcd endpoints alone", []string{"bench", "open", etcd}, "--etcd-endpoints is only used with --baseline etcd or --leader-change"},
		{"etcd endpoint without scheme", []string{"bench", "open", "--baseline", "etcd", "--etcd-endpoints", "127.0.0.1:7401"}, `--etcd-endpoints: "127.0.0.1:7401" has no scheme: write http://127.0.0.1:7401`},
		{"etcd endpoint with TLS", []string{"bench", "open", "--baseline", "etcd", "--etcd-endpoints", "https://10.0.0.1:7401"}, "TLS is not supported"},
		{"etcd endpoint without port", []string{"bench", "open", "--baseline", "etcd", "--etcd-endpoints", "http://10.0.0.1"}, "give host and port"},
		{"batch too big", []string{"bench", "batch-heartbeat", "--batch-size", "10001"}, "--batch-size 10001: give 1 to 10000 sessions per call"},
		{"page too big", []string{"bench", "list", "--page-size", "1001"}, "--page-size 1001: give 1 to 1000 sessions per page"},
		{"ttl not whole seconds", []string{"bench", "expiry", "--ttl", "1500ms"}, "--ttl 1.5s: must be whole seconds"},
		{"ttl shorter than a raw round", []string{"bench", "heartbeat", "--baseline", "etcd", etcd, "--duration", "60s", "--ttl", "60s"},
			"--ttl 1m0s: sessions must not expire within a round, so give at least --duration plus 30s (1m30s)"},
		{"open's ttl shorter than a round", []string{"bench", "open", "--duration", "60s", "--ttl", "60s"}, "--ttl 1m0s: sessions must not expire within a round"},
		{"module with a slash", []string{"bench", "open", "--module", "a/b"}, `--module "a/b": want a name without '/'`},
		{"empty module", []string{"bench", "open", "--module", ""}, "--module is empty"},
		{"unknown mixed operation", []string{"bench", "mixed", "--mix", "open=1,kill=2"}, `unknown operation "kill"; the operations are open, heartbeat, close, list`},
		{"mix without weight", []string{"bench", "mixed", "--mix", "open"}, `"open": want OP=WEIGHT`},
		{"negative weight", []string{"bench", "mixed", "--mix", "open=-1"}, "open=-1: the weight must be a whole number"},
		{"all weights zero", []string{"bench", "mixed", "--mix", "open=0,list=0"}, "every weight is 0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := runCLI(t, nil, tt.args...)
			if code != exitUsage || stdout != "" || !strings.Contains(stderr, tt.want) || !strings.Contains(stderr, "usage: roster bench WORKLOAD [flags]") {
				t.Fatalf("exit %d, stdout %q, stderr:\n%s\nwant exit 2 and %q", code, stdout, stderr, tt.want)
			}
		})
	}
}

// TestBenchDefaults: the defaults that depend on the workload.
func TestBenchDefaults(t *testing.T) {
	tests := []struct {
		name                     string
		args                     []string
		clients, sessions, round int
		ttl                      time.Duration
	}{
		{name: "open", args: []string{"open"}, clients: 64, round: 1, ttl: time.Minute},
		{name: "list", args: []string{"list"}, clients: 8, sessions: 100_000, round: 1, ttl: 30 * time.Minute},
		{name: "batch", args: []string{"batch-heartbeat"}, clients: 1, sessions: 10_000, round: 1, ttl: time.Minute},
		{name: "baseline makes 3 rounds", args: []string{"open", "--baseline", "etcd", "--etcd-endpoints", "http://127.0.0.1:7401"}, clients: 64, round: 3, ttl: time.Minute},
		{name: "a long round lengthens the TTL", args: []string{"heartbeat", "--baseline", "etcd", "--etcd-endpoints", "http://127.0.0.1:7401", "--duration", "2m"},
			clients: 64, sessions: 1000, round: 3, ttl: 150 * time.Second},
		{name: "expiry", args: []string{"expiry"}, sessions: 10, round: 1, ttl: 10 * time.Second},
		{name: "a long open round lengthens the TTL", args: []string{"open", "--duration", "5m"}, clients: 64, round: 1, ttl: 330 * time.Second},
		{name: "a long heartbeat round alone does not", args: []string{"heartbeat", "--duration", "5m"}, clients: 64, sessions: 1000, round: 1, ttl: time.Minute},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := &benchFlags{}
			fs := pflag.NewFlagSet("bench", pflag.ContinueOnError)
			f.define(fs)
			if err := fs.Parse(tt.args[1:]); err != nil {
				t.Fatal(err)
			}
			if err := f.check(tt.args[0]); err != nil {
				t.Fatal(err)
			}
			if f.clients != tt.clients || f.sessions != tt.sessions || f.rounds != tt.round || f.ttl != tt.ttl {
				t.Errorf("clients %d, sessions %d, rounds %d, ttl %s; want %d, %d, %d, %s", f.clients, f.sessions, f.rounds, f.ttl, tt.clients, tt.sessions, tt.round, tt.ttl)
			}
		})
	}
}

func TestParseMix(t *testing.T) {
	got, err := parseMix("open=30, heartbeat=55,close=0")
	if err != nil {
		t.Fatal(err)
	}
	if got["open"] != 30 || got["heartbeat"] != 55 || got["close"] != 0 || got["list"] != 0 {
		t.Errorf("parseMix = %v", got)
	}
	if _, err := parseMix("open=1,open=2"); err == nil || !strings.Contains(err.Error(), "open given twice") {
		t.Errorf("a repeated operation: %v", err)
	}
}

func TestErrorCodes(t *testing.T) {
	tests := []struct {
		name string
		err  error
		code func(error) string
		want string
	}{
		{name: "API error", err: fmt.Errorf("wrapped: %w", &client.APIError{Status: 409, Code: "pool_inactive"}), code: apiErrorCode, want: "pool_inactive"},
		{name: "ended session", err: &client.EndedError{Reason: "killed"}, code: apiErrorCode, want: "killed"},
		{name: "bench's own", err: &codeError{codeNoEvent, "x"}, code: apiErrorCode, want: "no_event"},
		{name: "interrupted", err: fmt.Errorf("client: %w", context.Canceled), code: apiErrorCode, want: "canceled"},
		{name: "deadline", err: context.DeadlineExceeded, code: apiErrorCode, want: "timeout"},
		{name: "connection refused", err: &net.OpError{Op: "dial", Err: errors.New("connection refused")}, code: apiErrorCode, want: "transport"},
		{name: "etcd error", err: rpctypes.ErrLeaseNotFound, code: etcdErrorCode, want: "etcd_not_found"},
		{name: "gRPC status", err: status.Error(codes.Unavailable, "no leader"), code: etcdErrorCode, want: "etcd_unavailable"},
		{name: "gRPC deadline", err: status.Error(codes.DeadlineExceeded, "slow"), code: etcdErrorCode, want: "etcd_deadline_exceeded"},
		{name: "raw lease gone", err: &codeError{codeNotFound, "x"}, code: etcdErrorCode, want: "lease_not_found"},
		{name: "raw transport", err: io.ErrUnexpectedEOF, code: etcdErrorCode, want: "transport"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.code(tt.err); got != tt.want {
				t.Errorf("code of %v = %q, want %q", tt.err, got, tt.want)
			}
		})
	}
}

// TestRunLoad: every operation is counted once, as ok or by its code, in
// total mode exactly total; an operation's own latency wins.
func TestRunLoad(t *testing.T) {
	b := &bench{stderr: io.Discard}
	l := load{what: "test", clients: 4, total: 100, classify: apiErrorCode, all: true}
	got := b.runLoad(context.Background(), l, func(ctx context.Context, w int, seq int64) opResult {
		switch {
		case seq%10 == 0:
			return opResult{phase: "odd", err: &client.APIError{Code: "no_license_seat"}}
		case seq%25 == 1:
			return opResult{phase: "odd", err: &codeError{codeTransport, "reset"}}
		}
		return opResult{phase: "even", lat: ms(5), items: 2}
	})
	all := got["all"]
	if all == nil || all.ops != 100 || all.ok != 86 || all.errs["no_license_seat"] != 10 || all.errs["transport"] != 4 || all.items != 172 {
		t.Fatalf("all = %+v", all)
	}
	if got["even"].ok != 86 || got["odd"].ops != 14 || got["odd"].ok != 0 {
		t.Errorf("phases: even %+v, odd %+v", got["even"], got["odd"])
	}
	for _, d := range all.lat {
		if d != ms(5) {
			t.Fatalf("latency %v, want the operation's own 5ms", d)
		}
	}

	// Duration mode: stops starting operations after the duration.
	l = load{what: "test", clients: 2, duration: 50 * time.Millisecond, classify: apiErrorCode}
	began := time.Now()
	got = b.runLoad(context.Background(), l, func(ctx context.Context, w int, seq int64) opResult {
		time.Sleep(time.Millisecond)
		return opResult{}
	})
	if s := got[""]; s.ops == 0 || s.ok != s.ops || time.Since(began) > 5*time.Second || s.elapsed < 50*time.Millisecond {
		t.Errorf("duration mode: %+v after %s", s, time.Since(began))
	}
}

// TestSummarize: counts add up over rounds, throughput and percentiles are
// the rounds' medians, the max the largest, and the ratio the median of
// the per-round ratios.
func TestSummarize(t *testing.T) {
	round := func(ok int, errs int, lat time.Duration, elapsed time.Duration) map[string]*sample {
		s := newSample()
		for range ok {
			s.record(lat, "")
		}
		for range errs {
			s.record(0, "pool_inactive")
		}
		s.elapsed = elapsed
		return map[string]*sample{"": s}
	}
	ours := []map[string]*sample{round(100, 1, ms(10), time.Second), round(200, 0, ms(20), time.Second), round(300, 2, ms(30), time.Second)}
	raw := []map[string]*sample{round(200, 0, ms(5), time.Second), round(400, 0, ms(5), time.Second), round(300, 0, ms(10), time.Second)}

	res := summarize(resultSpec{workload: wlOpen, unit: "ops/s", ratioOf: ratioThroughput}, []string{""}, ours, raw)
	if len(res) != 1 {
		t.Fatalf("%d results", len(res))
	}
	r := res[0]
	if r.Roster.Ops != 603 || r.Roster.OK != 600 || r.Roster.Errors != 3 || r.Roster.ErrorsByCode["pool_inactive"] != 3 || r.Roster.OK+r.Roster.Errors != r.Roster.Ops {
		t.Errorf("roster counts: %+v", r.Roster)
	}
	if r.Roster.Throughput != 200 || r.Etcd.Throughput != 300 {
		t.Errorf("throughput %v and %v, want the medians 200 and 300", r.Roster.Throughput, r.Etcd.Throughput)
	}
	if r.Roster.Latency.P50 != 20 || r.Roster.Latency.Max != 30 || len(r.Roster.PerRound) != 3 {
		t.Errorf("roster latency %+v", r.Roster.Latency)
	}
	// Per-round throughput ratios 0.5, 0.5, 1: median 0.5.
	if r.Ratio == nil || *r.Ratio != 0.5 || r.RatioOf != ratioThroughput || r.RatioMeans == "" {
		t.Errorf("ratio %v of %q", r.Ratio, r.RatioOf)
	}

	res = summarize(resultSpec{workload: wlKill, unit: "kills/s", ratioOf: ratioP50}, []string{""}, ours, raw)
	// Per-round p50 ratios 2, 4, 3: median 3.
	if res[0].Ratio == nil || *res[0].Ratio != 3 {
		t.Errorf("p50 ratio %v, want 3", res[0].Ratio)
	}

	// mixed: throughput for all, p50 latency for each kind.
	mixed := func(rounds []map[string]*sample) []map[string]*sample {
		var out []map[string]*sample
		for _, r := range rounds {
			out = append(out, map[string]*sample{"all": r[""], "open": r[""]})
		}
		return out
	}
	res = summarize(resultSpec{workload: wlMixed, unit: "ops/s", ratioOf: ratioThroughput, kindRatioOf: ratioP50}, []string{"all", "open"}, mixed(ours), mixed(raw))
	if res[0].RatioOf != ratioThroughput || *res[0].Ratio != 0.5 || res[1].RatioOf != ratioP50 || *res[1].Ratio != 3 {
		t.Errorf("mixed: ratios %v of %s and %v of %s", *res[0].Ratio, res[0].RatioOf, *res[1].Ratio, res[1].RatioOf)
	}

	res = summarize(resultSpec{workload: wlOpen, unit: "ops/s", ratioOf: ratioThroughput}, []string{""}, ours, nil)
	if res[0].Etcd != nil || res[0].Ratio != nil {
		t.Errorf("without a baseline: %+v", res[0])
	}
}

func TestBenchFormats(t *testing.T) {
	tests := []struct {
		name, got, want string
	}{
		{"digits", groupDigits(1234567), "1,234,567"},
		{"small", groupDigits(999), "999"},
		{"negative", groupDigits(-1000), "-1,000"},
		{"sub-ms", formatMS(0.4123), "0.412ms"},
		{"ms", formatMS(12.34), "12.3ms"},
		{"hundreds", formatMS(412.3), "412ms"},
		{"seconds", formatMS(10_400), "10.4s"},
		{"rate", formatRate(12345.6), "12,346"},
		{"slow rate", formatRate(15.46), "15.5"},
		{"codes", formatCodes(map[string]int64{"transport": 2, "pool_inactive": 20, "canceled": 2}), "pool_inactive 20, canceled 2, transport 2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.got != tt.want {
				t.Errorf("got %q, want %q", tt.got, tt.want)
			}
		})
	}
}

func TestBenchHelp(t *testing.T) {
	code, stdout, _ := runCLI(t, nil, "help")
	if code != exitOK || !strings.Contains(stdout, "Cluster:\n  members ") || !strings.Contains(stdout, "  bench WORKLOAD ") {
		t.Errorf("roster help:\n%s", stdout)
	}
	code, stdout, _ = runCLI(t, nil, "bench", "--help")
	for _, want := range []string{"roster bench WORKLOAD [flags]", "kill-latency", "--baseline etcd", "--etcd-endpoints URLS", "--mix OP=W,..."} {
		if code != exitOK || !strings.Contains(stdout, want) {
			t.Errorf("bench --help does not contain %q:\n%s", want, stdout)
		}
	}
}

// TestAwaitEnds: every end is timed from its item's last renewal when it
// comes, the confirmations start only once every item has ended (none
// while ends are still coming), each is given until its end plus
// confirmWithin, a failed one counts under its code, and an item that never
// ends counts as not_gone.
func TestAwaitEnds(t *testing.T) {
	b := &bench{f: &benchFlags{ttl: time.Second}, stderr: io.Discard}
	base := time.Now()
	last := []time.Time{base, base, base, base}
	ends := make(chan goneAt, len(last))
	var sent atomic.Int32 // ends handed to awaitEnds so far
	send := func(i int, after time.Duration) {
		sent.Add(1)
		ends <- goneAt{i: i, at: base.Add(after)}
	}
	send(0, 1100*time.Millisecond)
	send(2, 1300*time.Millisecond)
	go func() {
		time.Sleep(50 * time.Millisecond) // awaitEnds is waiting for more
		send(3, 1200*time.Millisecond)
		send(0, 1500*time.Millisecond) // a second end of the same item counts once
		close(ends)                    // item 1 never ends
	}()
	var mu sync.Mutex
	gives := map[int]time.Time{}
	s, gone, err := b.awaitEnds(context.Background(), "test", last, ends, apiErrorCode, func(ctx context.Context, i int, give time.Time) error {
		if n := sent.Load(); n != 4 {
			t.Errorf("item %d confirmed with %d of 4 ends sent", i, n)
		}
		mu.Lock()
		gives[i] = give
		mu.Unlock()
		if i == 2 {
			return &codeError{codeStillListed, "listed"}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := []bool{true, false, true, true}; !slices.Equal(gone, want) {
		t.Errorf("gone = %v, want %v", gone, want)
	}
	if s.ops != 4 || s.ok != 2 || s.errs[codeStillListed] != 1 || s.errs[codeNotGone] != 1 {
		t.Errorf("ops %d ok %d errors %v; want 4, 2, one still_listed and one not_gone", s.ops, s.ok, s.errs)
	}
	slices.Sort(s.lat)
	if want := []time.Duration{1100 * time.Millisecond, 1200 * time.Millisecond}; !slices.Equal(s.lat, want) {
		t.Errorf("latencies %v, want %v (items 0 and 3, from their first end)", s.lat, want)
	}
	for i, after := range map[int]time.Duration{0: 1100 * time.Millisecond, 2: 1300 * time.Millisecond, 3: 1200 * time.Millisecond} {
		if want := base.Add(after + confirmWithin); !gives[i].Equal(want) {
			t.Errorf("item %d given until %v, want its end plus %s", i, gives[i].Sub(base), confirmWithin)
		}
	}
	if _, ok := gives[1]; ok || len(gives) != 3 {
		t.Errorf("confirmed %v; want items 0, 2 and 3", gives)
	}
}
