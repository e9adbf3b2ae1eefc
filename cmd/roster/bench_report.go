package main

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"
)

// benchReport is what roster bench prints: with -o json exactly this.
type benchReport struct {
	Workload      string   `json:"workload"`
	RunID         string   `json:"run_id"`
	Endpoints     []string `json:"endpoints"`
	EtcdEndpoints []string `json:"etcd_endpoints,omitempty"`
	Baseline      string   `json:"baseline,omitempty"`
	Clients       int      `json:"clients,omitempty"`
	Sessions      int      `json:"sessions,omitempty"`
	Rounds        int      `json:"rounds"`
	// DurationSeconds or Total bound each round of a timed workload.
	DurationSeconds float64       `json:"duration_seconds,omitempty"`
	Total           int64         `json:"total,omitempty"`
	TTLSeconds      int64         `json:"ttl_seconds"`
	StartedAt       time.Time     `json:"started_at"`
	Interrupted     bool          `json:"interrupted,omitempty"`
	Results         []benchResult `json:"results"`
}

// benchResult is one workload (or one phase of it) measured on Roster and,
// with a baseline, on raw etcd.
type benchResult struct {
	Workload string `json:"workload"`
	// Phase is the part of the workload: unfiltered or filtered (list);
	// all, open, heartbeat, close or list (mixed); empty otherwise.
	Phase string `json:"phase,omitempty"`
	// Unit is the unit of throughput, e.g. ops/s or sessions/s.
	Unit string `json:"unit"`
	// Latency says what one latency measures.
	Latency string     `json:"latency"`
	Roster  *sideStats `json:"roster"`
	Etcd    *sideStats `json:"etcd,omitempty"`
	// Ratio is Roster's figure divided by raw etcd's, the median of the
	// per-round ratios; RatioOf names the figure and RatioMeans says how
	// to read it. Left out without a baseline, or when no round has both.
	Ratio      *float64 `json:"ratio,omitempty"`
	RatioOf    string   `json:"ratio_of,omitempty"`
	RatioMeans string   `json:"ratio_means,omitempty"`
}

// sideStats sums up one side over its rounds: the counts summed, the
// throughput and percentiles the medians of the rounds', the max the
// largest.
type sideStats struct {
	measured
	PerRound []roundStats `json:"per_round"`
}

// roundStats is one side's measurement in one round.
type roundStats struct {
	Round int `json:"round"`
	measured
	Notes []string `json:"notes,omitempty"`
}

// measured is what a side and each of its rounds report (flattened into
// their JSON objects).
type measured struct {
	Ops            int64            `json:"ops"`
	OK             int64            `json:"ok"`
	Errors         int64            `json:"errors"`
	ErrorsByCode   map[string]int64 `json:"errors_by_code"`
	ElapsedSeconds float64          `json:"elapsed_seconds"`
	Throughput     float64          `json:"throughput"`
	Latency        *latencyMS       `json:"latency_ms,omitempty"`
	// SessionsRenewed and SessionErrorsByCode: batch-heartbeat only.
	SessionsRenewed     int64            `json:"sessions_renewed,omitempty"`
	SessionErrorsByCode map[string]int64 `json:"session_errors_by_code,omitempty"`
}

// latencyMS holds latency percentiles in milliseconds, of the successful
// operations only.
type latencyMS struct {
	P50 float64 `json:"p50"`
	P90 float64 `json:"p90"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
}

// What a ratio is of.
const (
	ratioThroughput = "throughput"
	ratioP50        = "p50_latency"
)

// resultSpec describes how a workload's samples become results.
type resultSpec struct {
	workload string
	unit     string // of throughput; "" when throughput means nothing (expiry)
	latency  string // what one latency measures on Roster
	// rawLatency is what it measures on raw etcd.
	rawLatency string
	perItem    bool // throughput counts items (sessions renewed), not operations
	ratioOf    string
	// kindRatioOf, when set, is what the ratio is of for the phases other
	// than "all" (mixed: each kind's share of the throughput is fixed by
	// the mix, so its latency says more).
	kindRatioOf string
}

var ratioMeanings = map[string]string{
	ratioThroughput: "Roster's throughput divided by raw etcd's (median of the per-round ratios): below 1 Roster does fewer per second, e.g. 0.5 is half as many",
	ratioP50:        "Roster's p50 latency divided by raw etcd's (median of the per-round ratios): above 1 Roster takes longer, e.g. 2 is twice as long",
}

// roundOf sums up one sample.
func roundOf(round int, s *sample, spec resultSpec) roundStats {
	rs := roundStats{Round: round, Notes: s.notes, measured: measured{
		Ops: s.ops, OK: s.ok, Errors: s.errorCount(), ErrorsByCode: nonNil(s.errs), ElapsedSeconds: s.elapsed.Seconds(),
	}}
	if spec.perItem {
		rs.SessionsRenewed = s.items
		rs.SessionErrorsByCode = nonNil(s.itemErrs)
	}
	if spec.unit != "" && s.elapsed > 0 {
		n := s.ok
		if spec.perItem {
			n = s.items
		}
		rs.Throughput = float64(n) / s.elapsed.Seconds()
	}
	if len(s.lat) > 0 {
		sorted := slices.Clone(s.lat)
		slices.Sort(sorted)
		ms := func(q float64) float64 { return float64(percentile(sorted, q)) / float64(time.Millisecond) }
		rs.Latency = &latencyMS{P50: ms(0.5), P90: ms(0.9), P99: ms(0.99), Max: ms(1)}
	}
	return rs
}

func nonNil(m map[string]int64) map[string]int64 {
	if m == nil {
		return map[string]int64{}
	}
	return m
}

// sideOf sums up one side's rounds (samples of one phase, in round order).
func sideOf(samples []*sample, spec resultSpec) *sideStats {
	st := &sideStats{measured: measured{ErrorsByCode: map[string]int64{}}, PerRound: []roundStats{}}
	var tput, p50, p90, p99 []float64
	for i, s := range samples {
		rs := roundOf(i+1, s, spec)
		st.PerRound = append(st.PerRound, rs)
		st.Ops += rs.Ops
		st.OK += rs.OK
		st.Errors += rs.Errors
		st.ElapsedSeconds += rs.ElapsedSeconds
		st.SessionsRenewed += rs.SessionsRenewed
		for k, v := range rs.ErrorsByCode {
			st.ErrorsByCode[k] += v
		}
		if spec.perItem {
			if st.SessionErrorsByCode == nil {
				st.SessionErrorsByCode = map[string]int64{}
			}
			for k, v := range rs.SessionErrorsByCode {
				st.SessionErrorsByCode[k] += v
			}
		}
		tput = append(tput, rs.Throughput)
		if rs.Latency != nil {
			p50, p90, p99 = append(p50, rs.Latency.P50), append(p90, rs.Latency.P90), append(p99, rs.Latency.P99)
			if st.Latency == nil {
				st.Latency = &latencyMS{}
			}
			st.Latency.Max = max(st.Latency.Max, rs.Latency.Max)
		}
	}
	st.Throughput = median(tput)
	if st.Latency != nil {
		st.Latency.P50, st.Latency.P90, st.Latency.P99 = median(p50), median(p90), median(p99)
	}
	return st
}

// ratioOf returns the median over the rounds both sides measured of
// Roster's figure divided by raw etcd's, and whether any round had both.
func ratioOf(ours, raw *sideStats, of string) (float64, bool) {
	var rs []float64
	for i := range min(len(ours.PerRound), len(raw.PerRound)) {
		o, r := ours.PerRound[i], raw.PerRound[i]
		switch of {
		case ratioThroughput:
			if o.OK > 0 && r.Throughput > 0 {
				rs = append(rs, o.Throughput/r.Throughput)
			}
		case ratioP50:
			if o.Latency != nil && r.Latency != nil && r.Latency.P50 > 0 {
				rs = append(rs, o.Latency.P50/r.Latency.P50)
			}
		}
	}
	return median(rs), len(rs) > 0
}

// summarize turns each side's samples (one map of phases per round) into
// one result per phase. raw is nil without a baseline.
func summarize(spec resultSpec, phases []string, ours, raw []map[string]*sample) []benchResult {
	var out []benchResult
	for _, ph := range phases {
		pick := func(rounds []map[string]*sample) []*sample {
			var ss []*sample
			for _, r := range rounds {
				s := r[ph]
				if s == nil {
					s = newSample()
				}
				ss = append(ss, s)
			}
			return ss
		}
		res := benchResult{Workload: spec.workload, Phase: ph, Unit: spec.unit, Latency: spec.latency, Roster: sideOf(pick(ours), spec)}
		if raw != nil {
			res.Latency += "; raw etcd: " + spec.rawLatency
			res.Etcd = sideOf(pick(raw), spec)
			of := spec.ratioOf
			if spec.kindRatioOf != "" && ph != "all" {
				of = spec.kindRatioOf
			}
			res.RatioOf, res.RatioMeans = of, ratioMeanings[of]
			if r, ok := ratioOf(res.Roster, res.Etcd, of); ok {
				res.Ratio = &r
			}
		}
		out = append(out, res)
	}
	return out
}

// printJSON writes the report as one JSON object.
func (r *benchReport) printJSON(w io.Writer) error {
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", data)
	return err
}

// printTable writes the report for people: one row per result and side,
// then the errors by code and what the ratio and the latency mean.
func (r *benchReport) printTable(w io.Writer) {
	baseline := slices.ContainsFunc(r.Results, func(res benchResult) bool { return res.Etcd != nil })
	tw := newTable(w)
	header := "WORKLOAD\tPHASE\tSIDE\tOPS\tOK\tERRORS\tTHROUGHPUT\tP50\tP90\tP99\tMAX"
	if baseline {
		header += "\tRATIO"
	}
	fmt.Fprintln(tw, header)
	for _, res := range r.Results {
		row := func(side string, st *sideStats, ratio string) {
			tput := "-"
			if res.Unit != "" {
				tput = formatRate(st.Throughput) + " " + res.Unit
			}
			p50, p90, p99, mx := "-", "-", "-", "-"
			if st.Latency != nil {
				p50, p90, p99, mx = formatMS(st.Latency.P50), formatMS(st.Latency.P90), formatMS(st.Latency.P99), formatMS(st.Latency.Max)
			}
			line := strings.Join([]string{res.Workload, cell(res.Phase), side, groupDigits(st.Ops), groupDigits(st.OK), groupDigits(st.Errors),
				tput, p50, p90, p99, mx}, "\t")
			if baseline {
				line += "\t" + ratio
			}
			fmt.Fprintln(tw, line)
		}
		ratio := ""
		if res.Etcd != nil {
			ratio = "-"
			if res.Ratio != nil {
				ratio = fmt.Sprintf("%.2f", *res.Ratio)
			}
		}
		row("roster", res.Roster, ratio)
		if res.Etcd != nil {
			row("etcd", res.Etcd, "")
		}
	}
	tw.Flush()

	var errLines []string
	for _, res := range r.Results {
		name := res.Workload
		if res.Phase != "" {
			name += " " + res.Phase
		}
		for _, sd := range []struct {
			side string
			st   *sideStats
		}{{"roster", res.Roster}, {"etcd", res.Etcd}} {
			if sd.st == nil {
				continue
			}
			if len(sd.st.ErrorsByCode) > 0 {
				errLines = append(errLines, fmt.Sprintf("  %s, %s: %s", name, sd.side, formatCodes(sd.st.ErrorsByCode)))
			}
			if len(sd.st.SessionErrorsByCode) > 0 {
				errLines = append(errLines, fmt.Sprintf("  %s, %s, sessions not renewed: %s", name, sd.side, formatCodes(sd.st.SessionErrorsByCode)))
			}
		}
	}
	if len(errLines) > 0 {
		fmt.Fprintf(w, "\nerrors by code:\n%s\n", strings.Join(errLines, "\n"))
	}
	fmt.Fprintln(w)
	if len(r.Results) > 0 {
		fmt.Fprintf(w, "latency: %s; percentiles of the successful operations (median over %d round(s); max over all)\n", r.Results[0].Latency, r.Rounds)
		if r.Results[0].Unit != "" {
			fmt.Fprintf(w, "throughput: successful %s, median over the rounds\n", r.Results[0].Unit)
		}
		var meanings []string
		for _, res := range r.Results {
			if res.RatioMeans != "" && !slices.Contains(meanings, res.RatioMeans) {
				meanings = append(meanings, res.RatioMeans)
			}
		}
		for i, m := range meanings {
			if len(meanings) > 1 {
				m = fmt.Sprintf("%s (%s)", m, ratioRows(r.Results, m))
			}
			if i == 0 {
				fmt.Fprintf(w, "ratio: %s\n", m)
			} else {
				fmt.Fprintf(w, "       %s\n", m)
			}
		}
	}
	for _, res := range r.Results {
		for _, st := range []*sideStats{res.Roster, res.Etcd} {
			if st == nil {
				continue
			}
			for _, rs := range st.PerRound {
				for _, n := range rs.Notes {
					fmt.Fprintf(w, "note: %s\n", n)
				}
			}
		}
	}
	if r.Interrupted {
		fmt.Fprintln(w, "interrupted: the figures above are partial")
	}
}

// ratioRows names the phases whose ratio has the meaning m.
func ratioRows(results []benchResult, m string) string {
	var phases []string
	for _, res := range results {
		if res.RatioMeans == m {
			phases = append(phases, cell(res.Phase))
		}
	}
	return strings.Join(phases, ", ")
}

// formatCodes writes error counts as "code n, code n", the most frequent first.
func formatCodes(m map[string]int64) string {
	codes := slices.Sorted(maps.Keys(m))
	slices.SortStableFunc(codes, func(a, b string) int { return int(m[b] - m[a]) })
	parts := make([]string, len(codes))
	for i, c := range codes {
		parts[i] = fmt.Sprintf("%s %s", c, groupDigits(m[c]))
	}
	return strings.Join(parts, ", ")
}

// formatRate writes a per-second rate: whole numbers from 100 up, else
// one decimal.
func formatRate(x float64) string {
	if x >= 100 {
		return groupDigits(int64(x + 0.5))
	}
	return fmt.Sprintf("%.1f", x)
}

// formatMS writes a latency given in milliseconds with about three
// significant digits: 0.412ms, 12.3ms, 412ms, 10.4s.
func formatMS(ms float64) string {
	switch {
	case ms >= 10_000:
		return fmt.Sprintf("%.1fs", ms/1000)
	case ms >= 100:
		return fmt.Sprintf("%.0fms", ms)
	case ms >= 10:
		return fmt.Sprintf("%.1fms", ms)
	case ms >= 1:
		return fmt.Sprintf("%.2fms", ms)
	}
	return fmt.Sprintf("%.3fms", ms)
}
