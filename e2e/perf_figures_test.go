package e2e_test

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/roster-dev/roster/e2e"
)

// figuresDoc, when set, is the Markdown file whose figures section
// BenchmarkClusterFigures rewrites (between figuresBegin and figuresEnd).
var figuresDoc = flag.String("figures-doc", "", "BenchmarkClusterFigures: rewrite the figures section of this Markdown file")

const (
	figuresBegin = "<!-- cluster-figures:begin (written by ./perf.sh; do not edit by hand) -->"
	figuresEnd   = "<!-- cluster-figures:end -->"
)

// figureRun is one roster bench run of the figures: a row group of the table.
type figureRun struct {
	name string   // what the rows show
	args []string // after "bench"
	// target says what issue 6 asks of the rows.
	target string
}

// figureRuns are the workloads of the figures table. FIGURES_QUICK=1 makes
// every run small and short, to check the runner itself (its figures mean
// nothing).
func figureRuns() []figureRun {
	d, listSessions, storm, streams := "10s", "100000", "10000", "1000"
	if os.Getenv("FIGURES_QUICK") == "1" {
		d, listSessions, storm, streams = "2s", "2000", "500", "100"
	}
	return []figureRun{
		{"open", []string{"open", "--clients", "64", "--duration", d}, "throughput ratio ≥ 0.9"},
		{"heartbeat", []string{"heartbeat", "--sessions", "1000", "--clients", "64", "--duration", d}, "throughput ratio ≥ 0.6"},
		{"batch-heartbeat", []string{"batch-heartbeat", "--sessions", "10000", "--duration", d}, "—"},
		{"kill-latency", []string{"kill-latency", "--sessions", streams, "--clients", "8"}, "Roster p99 ≤ 50 ms"},
		{"expiry", []string{"expiry", "--sessions", "100", "--ttl", "10s"}, "Roster p99 ≤ TTL + 2 s = 12 s"},
		{"expiry, leader change", []string{"expiry", "--sessions", "100", "--ttl", "10s", "--leader-change"}, "Roster p99 ≤ 12 s"},
		// A TTL of 60 s: opening 10,000 sessions and keeping them alive one
		// heartbeat each takes the 2-core machine longer than a 10 s TTL.
		{"expiry, " + storm + " at once", []string{"expiry", "--sessions", storm, "--ttl", "60s"}, "Roster p99 ≤ TTL + 2 s = 62 s"},
		{"mixed", []string{"mixed", "--clients", "64", "--duration", d}, "—"},
		// Last, and kept open: the node RSS and the database size are read with them.
		{"list, " + listSessions + " sessions", []string{"list", "--sessions", listSessions, "--clients", "8", "--duration", d, "--keep"}, "filtered page p99 ≤ 100 ms"},
	}
}

// BenchmarkClusterFigures runs roster bench with the raw etcd baseline for
// every workload (figureRuns), 3 interleaved rounds each, and prints the
// table of medians and ratios; with -figures-doc it also rewrites that
// file's figures section. Each workload runs on a fresh 3-node cluster of
// real processes on loopback (every node with GOMEMLIMIT
// -list100k-gomemlimit, 600MiB by default), stopped after it, so that no
// row carries the history the rows before it left in etcd (an hour of it
// stays uncompacted); FIGURES_SHARED=1 runs them all on one cluster, as
// before 2026-11-22. Each node's RSS and the etcd database size are taken
// after the list run, with its sessions still open. ./perf.sh runs it:
//
//	go test -run '^$' -bench ClusterFigures -benchtime 1x -timeout 4h ./e2e/ -args -figures-doc "$PWD/docs/performance.md"
func BenchmarkClusterFigures(b *testing.B) {
	shared := os.Getenv("FIGURES_SHARED") == "1"
	var c *e2e.Cluster
	start := func() {
		wctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		c = memLimitedVoters(wctx, b, *list100kMemLimit)
		cancel()
	}
	if shared {
		start()
	}
	var table bytes.Buffer
	fmt.Fprintf(&table, "%s\n\n", figuresBegin)
	where := "each workload on a fresh cluster"
	if shared {
		where = "every workload on the same cluster, one after another"
	}
	fmt.Fprintf(&table, "Measured %s on 3 nodes on loopback (this 2-core machine, shared; each node with GOMEMLIMIT=%s as README \"Memory\" advises), %s, %d rounds each, Roster and raw etcd interleaved; medians of the rounds.\n\n",
		time.Now().UTC().Format("2006-01-02"), *list100kMemLimit, where, 3)
	fmt.Fprintln(&table, "| workload | phase | Roster | raw etcd | ratio | Roster p50 / p99 / max | raw p50 / p99 | errors | target |")
	fmt.Fprintln(&table, "|---|---|---|---|---|---|---|---|---|")
	var resources string
	for range b.N {
		from, only := os.Getenv("FIGURES_FROM"), os.Getenv("FIGURES_ONLY")
		for _, fr := range figureRuns() {
			if from != "" && !strings.HasPrefix(fr.name, from) {
				continue // FIGURES_FROM=name: resume at the run named so, after a failed one
			}
			from = ""
			if only != "" && !slices.ContainsFunc(strings.Split(only, "|"), func(p string) bool { return strings.HasPrefix(fr.name, p) }) {
				continue // FIGURES_ONLY="name|name": only the runs named so (again after a change)
			}
			if !shared {
				start()
			}
			var etcdURLs []string
			for _, n := range c.Nodes() {
				etcdURLs = append(etcdURLs, "http://"+n.Etcd)
			}
			env := []string{"ROSTER_ENDPOINTS=" + strings.Join(c.URLs(), ","), "ROSTER_TOKEN=" + c.Token()}
			args := append([]string{"bench"}, fr.args...)
			args = append(args, "--baseline", "etcd", "--etcd-endpoints", strings.Join(etcdURLs, ","), "--rounds", "3", "-o", "json")
			ctx, cancel := context.WithTimeout(context.Background(), 90*time.Minute)
			b.Logf("roster %s", strings.Join(args, " "))
			res, err := bin.Run(ctx, c.Nodes()[0].Dir, env, args...)
			cancel()
			if err != nil || res.ExitCode != 0 {
				b.Fatalf("roster %s: %v, exit %d\n%s", strings.Join(args, " "), err, res.ExitCode, res.Stderr)
			}
			for line := range strings.Lines(res.Stderr) {
				if strings.Contains(line, "tried again") { // the raw set-up met a stall of etcd
					b.Logf("%s: %s", fr.name, strings.TrimSpace(line))
				}
			}
			var rep benchJSON
			if err := json.Unmarshal([]byte(res.Stdout), &rep); err != nil {
				b.Fatalf("roster %s: %v\n%s", strings.Join(args, " "), err, res.Stdout)
			}
			for _, r := range rep.Results {
				row := figureRow(fr, r.Phase, r.Unit, r.Roster, r.Etcd, r.Ratio, r.RatioOf)
				b.Logf("%s", strings.TrimSuffix(row, "\n")) // kept in the log should a later run fail
				b.Logf("%s %s: rounds in the order run (Roster first in rounds 1 and 3): %s", fr.name, r.Phase, perRound(r.Roster, r.Etcd))
				table.WriteString(row)
			}
			if strings.HasPrefix(fr.name, "list") {
				resources = clusterResources(b, c, shared)
			}
			if !shared {
				c.Close()
			}
		}
	}
	fmt.Fprintf(&table, "\n%s\n\n%s\n", resources, figuresEnd)
	fmt.Println(table.String())
	if *figuresDoc != "" {
		if err := spliceFigures(*figuresDoc, table.String()); err != nil {
			b.Fatal(err)
		}
	}
}

// perRound gives each round's throughput and p50 / p99, Roster's and raw
// etcd's, for the log: the table's medians hide a round that went astray.
func perRound(ours, raw *benchSide) string {
	one := func(s *benchSide, k int) string {
		if s == nil || k >= len(s.PerRound) {
			return "—"
		}
		pr := s.PerRound[k]
		out := ""
		if pr.Throughput > 0 {
			out = fmt.Sprintf("%.0f/s ", pr.Throughput)
		}
		if l := pr.Latency; l != nil {
			out += fmt.Sprintf("%.1f / %.1f ms", l.P50, l.P99)
		}
		return out
	}
	if ours == nil {
		return "—"
	}
	var parts []string
	for k := range len(ours.PerRound) {
		parts = append(parts, fmt.Sprintf("round %d: Roster %s, raw %s", k+1, one(ours, k), one(raw, k)))
	}
	return strings.Join(parts, "; ")
}

// figureRow is one row of the figures table.
func figureRow(fr figureRun, phase, unit string, ours, raw *benchSide, ratio *float64, ratioOf string) string {
	thr := func(s *benchSide) string {
		if s == nil || unit == "" {
			return "—"
		}
		return fmt.Sprintf("%s %s", strconv.FormatFloat(s.Throughput, 'f', 0, 64), unit)
	}
	lat := func(s *benchSide, withMax bool) string {
		if s == nil || s.Latency == nil {
			return "—"
		}
		l := s.Latency
		if withMax {
			return fmt.Sprintf("%.1f / %.1f / %.1f ms", l.P50, l.P99, l.Max)
		}
		return fmt.Sprintf("%.1f / %.1f ms", l.P50, l.P99)
	}
	r := "—"
	if ratio != nil {
		r = fmt.Sprintf("%.2f (%s)", *ratio, strings.ReplaceAll(ratioOf, "_", " "))
	}
	errs := "0"
	if ours != nil && ours.Errors > 0 {
		errs = fmt.Sprintf("%d of %d", ours.Errors, ours.Ops)
		for code, n := range ours.ErrorsByCode {
			errs += fmt.Sprintf(" %s:%d", code, n)
		}
	}
	if phase == "" {
		phase = "—"
	}
	return fmt.Sprintf("| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", fr.name, phase, thr(ours), thr(raw), r, lat(ours, true), lat(raw, false), errs, fr.target)
}

// clusterResources reports each node's resident memory and the etcd
// database size (the largest member's, as etcd's status reports it) as the
// run left it (with shared, with the history of every workload before it),
// and once that history is compacted and every member defragmented (see
// dbSizes).
func clusterResources(b *testing.B, c *e2e.Cluster, shared bool) string {
	var parts []string
	for _, n := range c.Nodes() {
		status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", n.PID()))
		if err != nil {
			b.Fatal(err)
		}
		for _, line := range strings.Split(string(status), "\n") {
			if strings.HasPrefix(line, "VmRSS:") {
				kb, _ := strconv.Atoi(strings.Fields(line)[1])
				parts = append(parts, fmt.Sprintf("%s %d MiB", n.Name, kb/1024))
			}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	before, after, err := dbSizes(ctx, c.Nodes())
	if err != nil {
		b.Fatal(err)
	}
	what := "the list run"
	if shared {
		what = "the list run, the last on a cluster that ran every workload,"
	}
	return fmt.Sprintf("With the list run's sessions open (and the raw baseline's records deleted): node RSS %s (target ≤ 1 GiB each); etcd database %.0f MiB as "+what+" left it "+
		"(etcd compacts hourly, keeping an hour of history, so a run of under an hour is not compacted; its file does not shrink by itself), "+
		"%.0f MiB once compacted to the latest revision and defragmented, an operator's call (target ≤ 300 MiB).",
		strings.Join(parts, ", "), before, after)
}

// spliceFigures replaces the figures section of the Markdown file path
// with section (which holds its own markers).
func spliceFigures(path, section string) error {
	doc, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	s := string(doc)
	i, j := strings.Index(s, figuresBegin), strings.Index(s, figuresEnd)
	if i < 0 || j < i {
		return fmt.Errorf("%s has no figures section (%q … %q)", path, figuresBegin, figuresEnd)
	}
	s = s[:i] + strings.TrimRight(section, "\n") + s[j+len(figuresEnd):]
	return os.WriteFile(path, []byte(s), 0o644)
}
