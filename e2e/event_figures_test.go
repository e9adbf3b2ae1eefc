package e2e_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/roster-dev/roster/e2e"
	"github.com/roster-dev/roster/registry"
	"github.com/roster-dev/roster/registry/client"
)

// Figures about event streams and shutdown deadlines, measured on real
// processes on loopback. They are benchmarks, so `go test` (and CI) never
// runs them:
//
//	go test -run '^$' -bench KillToEvent -benchtime 1x -timeout 30m ./e2e/
//	go test -run '^$' -bench ShutdownDeadlineLateness -benchtime 20x -timeout 60m -v ./e2e/
//
// (testing runs one iteration before the -benchtime ones unless -benchtime
// is 1x, so 20x makes 21 runs; the figures printed are those of the 20.
// Without -v testing prints only the first 10 lines a benchmark logs.)

// BenchmarkKillToEvent: a three-node cluster holds 1,000 sessions (TTL
// 60 s, heartbeated by Go client handles), each followed by its own event
// stream (GET /v1/sessions/{id}/events with the session's token), the
// streams spread evenly over the nodes (stream i on node i mod 3, through a
// client that knows that node alone). The sessions are then killed, 8 in
// flight, each through the next node (i+1 mod 3), never the one its stream
// is on. Reported: the p50, p99 and max, over every kill of every
// iteration, of the time from sending the kill to the arrival of the
// killed event on the session's stream (p50-ms, p99-ms, max-ms); events
// that never came within a minute (missing, which must be 0); the growth
// of the nodes' summed VmRSS from before to 2 s after opening the streams,
// per stream (rss-kib/stream); and the growth of this process's HeapInuse
// over the same span, per stream (client-heap-kib/stream).
func BenchmarkKillToEvent(b *testing.B) {
	const (
		sessions = 1000
		inFlight = 8
		settle   = 2 * time.Second
	)
	var lats []time.Duration
	var rssPer, heapPer []float64
	missing := 0
	for range b.N {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		c := threeVoters(ctx, b)
		nodes := c.Running()
		begin := time.Now()
		h := openHeld(ctx, b, clientsFor(b, c, nodes), sessions, 60)
		b.Logf("opened %d sessions in %s", sessions, time.Since(begin).Round(time.Millisecond))
		// One client per node that knows that node alone: the streams stay
		// where they are put, and a kill goes where it is sent.
		single := make([]*client.Client, len(nodes))
		for i, nd := range nodes {
			single[i] = c.Client(nd)
		}
		sleepCtx(ctx, settle)
		rssBefore := sumRSS(b, nodes)
		heapBefore, stackBefore := memInuse()

		// Open the streams, 16 at a time, each with a reader that notes
		// when its killed event arrives.
		begin = time.Now()
		streams := make([]*client.EventStream, sessions)
		arrived := make([]chan time.Time, sessions)
		errs := make([]error, sessions)
		var readers sync.WaitGroup
		sem := make(chan struct{}, 16)
		var wg sync.WaitGroup
		for i, s := range h.sessions {
			arrived[i] = make(chan time.Time, 1)
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				st, err := single[i%len(single)].SessionEvents(ctx, s.ID(), s.Token(), 0)
				if err != nil {
					errs[i] = fmt.Errorf("stream of %s on %s: %w", s.ID(), nodes[i%len(nodes)].Name, err)
					return
				}
				streams[i] = st
				readers.Go(func() {
					for e := range st.Events() {
						if e.Type == registry.EventKilled {
							arrived[i] <- time.Now()
						}
					}
				})
			})
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			b.Fatal(err)
		}
		b.Logf("opened %d event streams in %s", sessions, time.Since(begin).Round(time.Millisecond))
		sleepCtx(ctx, settle)
		rssAfter := sumRSS(b, nodes)
		heapAfter, stackAfter := memInuse()
		rssPer = append(rssPer, float64(rssAfter-rssBefore)/sessions)
		heapPer = append(heapPer, float64(int64(heapAfter)-int64(heapBefore))/1024/sessions)
		b.Logf("nodes' VmRSS %d KiB before the streams, %d KiB after: %.1f KiB per stream; client HeapInuse %+.1f KiB and StackInuse %+.1f KiB per stream",
			rssBefore, rssAfter, rssPer[len(rssPer)-1], heapPer[len(heapPer)-1], float64(int64(stackAfter)-int64(stackBefore))/1024/sessions)

		// Kill them, inFlight at a time, each through the node after its
		// stream's.
		lat := make([]time.Duration, sessions)
		answered := make([]time.Duration, sessions)
		got := make([]bool, sessions)
		killErrs := make([]error, sessions)
		next := make(chan int)
		begin = time.Now()
		for range inFlight {
			wg.Go(func() {
				for i := range next {
					s := h.sessions[i]
					sent := time.Now()
					_, err := single[(i+1)%len(single)].Kill(ctx, s.ID(), "bench")
					answered[i] = time.Since(sent)
					if err != nil {
						killErrs[i] = fmt.Errorf("kill %s through %s: %w", s.ID(), nodes[(i+1)%len(nodes)].Name, err)
						continue
					}
					select {
					case at := <-arrived[i]:
						lat[i], got[i] = at.Sub(sent), true
					case <-time.After(time.Minute):
					case <-ctx.Done():
					}
				}
			})
		}
		for i := range sessions {
			next <- i
		}
		close(next)
		wg.Wait()
		killed := time.Since(begin)
		if err := errors.Join(killErrs...); err != nil {
			b.Fatal(err)
		}
		var these []time.Duration
		for i := range sessions {
			if got[i] {
				these = append(these, lat[i])
			} else {
				missing++
				b.Logf("no killed event for %s on %s within a minute (stream err: %v)", h.sessions[i].ID(), nodes[i%len(nodes)].Name, streams[i].Err())
			}
		}
		lats = append(lats, these...)
		b.Logf("killed %d sessions in %s (%.0f/s); kill answered: p50 %.1f ms, p99 %.1f ms, max %.1f ms",
			sessions, killed.Round(time.Millisecond), sessions/killed.Seconds(), medianMS(answered), percentileMS(answered, 0.99), percentileMS(answered, 1))
		if len(these) > 0 {
			b.Logf("kill sent to killed event: p50 %.1f ms, p99 %.1f ms, max %.1f ms", medianMS(these), percentileMS(these, 0.99), percentileMS(these, 1))
		}
		for _, st := range streams {
			st.Close()
		}
		readers.Wait()
		h.close()
		c.Close()
		cancel()
	}
	b.ReportMetric(0, "ns/op")
	if len(lats) > 0 {
		b.ReportMetric(medianMS(lats), "p50-ms")
		b.ReportMetric(percentileMS(lats, 0.99), "p99-ms")
		b.ReportMetric(percentileMS(lats, 1), "max-ms")
	}
	b.ReportMetric(float64(missing), "missing")
	b.ReportMetric(median(rssPer), "rss-kib/stream")
	b.ReportMetric(median(heapPer), "client-heap-kib/stream")
}

// BenchmarkShutdownDeadlineLateness: a five-node cluster (5 voters, so that
// two nodes may die and quorum stays) holds 30 sessions (TTL 60 s,
// heartbeated by Go client handles, opened round robin on every node). A
// survivor's client follows the feed (GET /v1/events); an "all" shutdown
// request with 5 s grace is posted through node A, a node other than the
// duty leader; 2 s later A and the duty leader are SIGKILLed. The lateness
// of a run is the time from the request's deadline (as the POST answered
// it) to the arrival on the feed of the last of the 30 shutdown events.
// Then both nodes are restarted on their data dirs and the next run waits
// for five healthy voters. One cluster serves every iteration, each one
// run. Reported: the median and max lateness over the runs (late-p50-ms,
// late-max-ms); the median time from the kill to a survivor taking the
// duty lead, from the nodes' logs (takeover-p50-ms); and how many sessions
// did not end as shutdown within a minute of their deadline (missing,
// which must be 0).
func BenchmarkShutdownDeadlineLateness(b *testing.B) {
	const (
		sessions = 30
		grace    = int64(5)
		killAt   = 2 * time.Second
	)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute+time.Duration(b.N)*2*time.Minute)
	defer cancel()
	c := e2e.StartCluster(b, bin, 5, "--bootstrap-expect", "5", "--voters", "5")
	c.WaitFor(ctx, "5 voters", c.Formed(5, 0))
	var lates, takeovers []time.Duration
	missing := 0
	for run := range b.N {
		c.WaitFor(ctx, "5 healthy voters", c.Formed(5, 0))
		etcdLeader := c.Leader(ctx)
		duty := c.DutyLeader(ctx)
		nodes := c.Running()
		rest := others(nodes, duty)
		a := rest[run%len(rest)]
		survivors := others(rest, a)
		feedNode := survivors[run%len(survivors)]
		feedNodes := append([]*e2e.Node{feedNode}, others(survivors, feedNode)...)

		h := openHeld(ctx, b, clientsFor(b, c, nodes), sessions, 60)
		ids := map[string]bool{}
		for _, s := range h.sessions {
			ids[s.ID()] = true
		}
		feed, err := c.Client(feedNodes...).Events(ctx, registry.EventFilter{}, 0)
		if err != nil {
			b.Fatal(err)
		}
		var mu sync.Mutex
		ends := map[string]time.Time{}
		var odd []string // end events of our sessions other than shutdown
		all := make(chan struct{})
		fed := make(chan struct{})
		go func() {
			defer close(fed)
			for e := range feed.Events() {
				if !e.Type.IsEnd() || !ids[e.Session.ID] {
					continue
				}
				at := time.Now()
				mu.Lock()
				if e.Type != registry.EventShutdown {
					odd = append(odd, fmt.Sprintf("%s %s by %s", e.Session.ID, e.Type, e.By))
				} else if _, dup := ends[e.Session.ID]; !dup {
					ends[e.Session.ID] = at
					if len(ends) == sessions {
						close(all)
					}
				}
				mu.Unlock()
			}
		}()

		g := grace
		data, err := c.Client(a).Do(ctx, http.MethodPost, "/v1/shutdowns", nil,
			registry.ShutdownRequest{Scope: registry.ScopeAll, GraceSeconds: &g, Message: "bench"})
		if err != nil {
			b.Fatalf("POST /v1/shutdowns through %s: %v", a.Name, err)
		}
		posted := time.Now()
		var sd registry.Shutdown
		if err := json.Unmarshal(data, &sd); err != nil {
			b.Fatal(err)
		}
		sleepCtx(ctx, time.Until(posted.Add(killAt)))
		c.Kill(a)
		c.Kill(duty)
		killed := time.Now()

		select {
		case <-all:
		case <-time.After(time.Until(sd.Deadline.Add(time.Minute))):
		case <-ctx.Done():
		}
		feed.Close()
		<-fed
		mu.Lock()
		var last time.Time
		for _, at := range ends {
			if at.After(last) {
				last = at
			}
		}
		n, oddEnds := len(ends), slices.Clone(odd)
		mu.Unlock()
		missing += sessions - n
		finished := shutdownOutcome(ctx, c.Client(feedNodes...), sd.ID)
		newDuty := c.DutyLeader(ctx) // waits for a survivor to take the lead
		how, takeover := enforcement(survivors, killed, sd.Deadline)
		finished += "; " + how
		if takeover > 0 {
			takeovers = append(takeovers, takeover)
		} else {
			finished += fmt.Sprintf(" (duty leader now %s)", newDuty.Name)
		}
		role := func(nd *e2e.Node) string {
			if nd == etcdLeader {
				return nd.Name + " (etcd leader)"
			}
			return nd.Name
		}
		if n == 0 {
			b.Logf("run %d: no shutdown event on %s's feed; killed A=%s and duty leader %s %s after the POST; %s; other ends: %v",
				run+1, feedNode.Name, role(a), role(duty), killed.Sub(posted).Round(time.Millisecond), finished, oddEnds)
		} else {
			late := last.Sub(sd.Deadline)
			lates = append(lates, late)
			b.Logf("run %d: last of %d/%d shutdown events on %s's feed %s after the deadline %s (POST answered %s before it); killed A=%s and duty leader %s %s after the POST; %s; other ends: %v",
				run+1, n, sessions, feedNode.Name, late.Round(time.Millisecond), sd.Deadline.Format(time.TimeOnly),
				sd.Deadline.Sub(posted).Round(time.Millisecond), role(a), role(duty), killed.Sub(posted).Round(time.Millisecond), finished, oddEnds)
		}
		h.close()
		c.Restart(a)
		c.Restart(duty)
	}
	reportLateness(b, lates)
	if len(takeovers) > 0 {
		b.ReportMetric(medianMS(takeovers), "takeover-p50-ms")
	}
	b.ReportMetric(float64(missing), "missing")
}

var shutdownSessions = flag.Int("shutdown-sessions", 5000, "sessions BenchmarkShutdownManySessions opens")

// BenchmarkShutdownManySessions: a fresh three-node cluster each run holds
// -shutdown-sessions sessions (5,000 unless told; opened by roster bench open
// --keep with a TTL of 10 minutes, so none expires); a client follows the
// feed (GET /v1/events) through every node, and an "all" shutdown request
// with 5 s grace is posted. The lateness of a run is the time from the
// request's deadline (as the POST answered it) to the arrival on the feed of
// the last shutdown event. Reported: the median and max lateness over the
// runs (late-p50-ms, late-max-ms) and how many sessions did not end as
// shutdown within 2 minutes of the deadline (missing, which must be 0).
//
//	go test -run '^$' -bench ShutdownManySessions -benchtime 3x -timeout 60m -v ./e2e/
//	... -args -shutdown-sessions 10000
func BenchmarkShutdownManySessions(b *testing.B) {
	sessions := *shutdownSessions
	const grace = int64(5)
	var lates []time.Duration
	missing := 0
	for run := range b.N {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
		c := memLimitedVoters(ctx, b, "")
		nodes := c.Running()
		env := []string{"ROSTER_ENDPOINTS=" + strings.Join(c.URLs(nodes...), ","), "ROSTER_TOKEN=" + c.Token()}
		res, err := bin.Run(ctx, b.TempDir(), env, "bench", "open", "--total", strconv.Itoa(sessions), "--clients", "64",
			"--module", "shut", "--keep", "--ttl", "10m", "-o", "json")
		if err != nil || res.ExitCode != 0 {
			b.Fatalf("roster bench open: %v, exit %d\n%s", err, res.ExitCode, res.Stderr)
		}
		var rep benchJSON
		if err := json.Unmarshal([]byte(res.Stdout), &rep); err != nil || len(rep.Results) == 0 || rep.Results[0].Roster == nil {
			b.Fatalf("roster bench open -o json: %v\n%s", err, res.Stdout)
		}
		opened := int(rep.Results[0].Roster.OK)

		feed, err := c.Client(nodes...).Events(ctx, registry.EventFilter{Module: "shut"}, 0)
		if err != nil {
			b.Fatal(err)
		}
		var mu sync.Mutex
		var last time.Time
		ended := map[string]bool{}
		odd := 0 // end events other than shutdown
		fed := make(chan struct{})
		all := make(chan struct{})
		go func() {
			defer close(fed)
			for e := range feed.Events() {
				if !e.Type.IsEnd() {
					continue
				}
				mu.Lock()
				switch {
				case e.Type != registry.EventShutdown:
					odd++
				case !ended[e.Session.ID]:
					ended[e.Session.ID], last = true, time.Now()
					if len(ended) == opened {
						close(all)
					}
				}
				mu.Unlock()
			}
		}()

		g := grace
		data, err := c.Client(nodes...).Do(ctx, http.MethodPost, "/v1/shutdowns", nil,
			registry.ShutdownRequest{Scope: registry.ScopeAll, GraceSeconds: &g, Message: "bench"})
		if err != nil {
			b.Fatalf("POST /v1/shutdowns: %v", err)
		}
		var sd registry.Shutdown
		if err := json.Unmarshal(data, &sd); err != nil {
			b.Fatal(err)
		}
		select {
		case <-all:
		case <-time.After(time.Until(sd.Deadline.Add(2 * time.Minute))):
		case <-ctx.Done():
		}
		feed.Close()
		<-fed
		mu.Lock()
		n, lastAt, others := len(ended), last, odd
		mu.Unlock()
		missing += opened - n
		outcome := shutdownOutcome(ctx, c.Client(nodes...), sd.ID)
		if n > 0 {
			lates = append(lates, lastAt.Sub(sd.Deadline))
		}
		b.Logf("run %d: %d sessions opened, %d shutdown events, the last %s after the deadline; %d other ends; %s",
			run+1, opened, n, lastAt.Sub(sd.Deadline).Round(time.Millisecond), others, outcome)
		c.Close()
		cancel()
	}
	reportLateness(b, lates)
	b.ReportMetric(float64(missing), "missing")
}

// reportLateness reports a shutdown benchmark's lateness figures, the median and
// the largest of lates (none when no run got as far), instead of time per op.
func reportLateness(b *testing.B, lates []time.Duration) {
	b.ReportMetric(0, "ns/op")
	if len(lates) > 0 {
		b.ReportMetric(medianMS(lates), "late-p50-ms")
		b.ReportMetric(percentileMS(lates, 1), "late-max-ms")
	}
}

// shutdownOutcome describes shutdown request id as cl's node answers it
// once it is no longer pending (or after 10 s): its state, who finished
// it and how many it terminated.
func shutdownOutcome(ctx context.Context, cl *client.Client, id string) string {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var s registry.Shutdown
	for {
		data, err := cl.Do(ctx, http.MethodGet, "/v1/shutdowns/"+url.PathEscape(id), nil, nil)
		if err != nil {
			return fmt.Sprintf("request %s: %v", id, err)
		}
		if err := json.Unmarshal(data, &s); err != nil {
			return fmt.Sprintf("request %s: %v", id, err)
		}
		if s.State != registry.ShutdownPending || ctx.Err() != nil {
			break
		}
		sleepCtx(ctx, 100*time.Millisecond)
	}
	fin := ""
	if s.FinishedAt != nil {
		fin = " at " + s.FinishedAt.Format(time.TimeOnly)
	}
	return fmt.Sprintf("request %s, %d in scope, %d terminated, finished by %q%s", s.State, s.InScope, s.Terminated, s.By, fin)
}

// enforcement says, from the logs of nodes, which node took the duty lead
// after killed and when, and which nodes enforced the deadline (the duty
// leader or the backstop every node runs) with the lateness and count each
// logged. It also returns the time from killed to the first takeover (0 if
// none is logged).
func enforcement(nodes []*e2e.Node, killed, deadline time.Time) (string, time.Duration) {
	var takeover, enforced []string
	var first time.Duration
	for _, n := range nodes {
		for _, l := range n.LogLines() {
			ts, _ := l["ts"].(string)
			at, err := time.Parse(time.RFC3339Nano, ts)
			if err != nil || at.Before(killed) {
				continue
			}
			switch l["msg"] {
			case "duty leader: this node leads":
				d := at.Sub(killed)
				if first == 0 || d < first {
					first = d
				}
				takeover = append(takeover, fmt.Sprintf("%s took the duty lead %s after the kill (%s after the deadline)",
					n.Name, d.Round(time.Millisecond), at.Sub(deadline).Round(time.Millisecond)))
			case "shutdown deadline reached":
				enforced = append(enforced, fmt.Sprintf("%s late %v terminated %v", n.Name, l["late"], l["terminated"]))
			}
		}
	}
	if len(takeover) == 0 {
		takeover = []string{"no survivor logged taking the duty lead"}
	}
	return strings.Join(takeover, ", ") + "; enforced by " + strings.Join(enforced, ", "), first
}

// median returns the median of xs.
func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 0 {
		return (s[n/2-1] + s[n/2]) / 2
	}
	return s[n/2]
}

// sleepCtx waits for d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(max(d, 0))
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// memInuse returns this process's HeapInuse and StackInuse after a
// garbage collection.
func memInuse() (heap, stack uint64) {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse, ms.StackInuse
}

// sumRSS returns the sum of the nodes' VmRSS in KiB.
func sumRSS(tb testing.TB, nodes []*e2e.Node) int64 {
	tb.Helper()
	var sum int64
	for _, n := range nodes {
		kib, err := vmRSS(n.PID())
		if err != nil {
			tb.Fatal(err)
		}
		sum += kib
	}
	return sum
}

// vmRSS reads VmRSS of process pid, in KiB.
func vmRSS(pid int) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			return strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
}
