package e2e_test

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/roster-dev/roster/e2e"
	"github.com/roster-dev/roster/registry"
)

// benchJSON is what roster bench -o json prints, as far as the tests read it.
type benchJSON struct {
	Workload string `json:"workload"`
	RunID    string `json:"run_id"`
	Rounds   int    `json:"rounds"`
	Total    int64  `json:"total"`
	Results  []struct {
		Workload   string     `json:"workload"`
		Phase      string     `json:"phase"`
		Unit       string     `json:"unit"`
		Latency    string     `json:"latency"`
		Roster     *benchSide `json:"roster"`
		Etcd       *benchSide `json:"etcd"`
		Ratio      *float64   `json:"ratio"`
		RatioOf    string     `json:"ratio_of"`
		RatioMeans string     `json:"ratio_means"`
	} `json:"results"`
	EtcdEndpoints []string `json:"etcd_endpoints"`
}

type benchSide struct {
	Ops             int64            `json:"ops"`
	OK              int64            `json:"ok"`
	Errors          int64            `json:"errors"`
	ErrorsByCode    map[string]int64 `json:"errors_by_code"`
	Throughput      float64          `json:"throughput"`
	Latency         *benchLatency    `json:"latency_ms"`
	SessionsRenewed int64            `json:"sessions_renewed"`
	PerRound        []struct {
		Ops        int64         `json:"ops"`
		OK         int64         `json:"ok"`
		Errors     int64         `json:"errors"`
		Throughput float64       `json:"throughput"`
		Latency    *benchLatency `json:"latency_ms"`
	} `json:"per_round"`
}

type benchLatency struct {
	P50 float64 `json:"p50"`
	P90 float64 `json:"p90"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
}

// runBench runs roster bench args -o json through run, decodes the report
// and checks what must hold of every report: each side's ok and errors add
// up to its ops, its errors by code to its errors, its rounds to its
// totals; latencies exist when something succeeded and are ordered; a
// baseline has as many rounds as Roster.
func runBench(t *testing.T, run func(int, ...string) e2e.Result, args ...string) benchJSON {
	t.Helper()
	res := run(0, append(append([]string{"bench"}, args...), "-o", "json")...)
	var rep benchJSON
	if err := json.Unmarshal([]byte(res.Stdout), &rep); err != nil {
		t.Fatalf("roster bench %s -o json: %v\n%s", strings.Join(args, " "), err, res.Stdout)
	}
	if len(rep.Results) == 0 || rep.RunID == "" || rep.Rounds < 1 {
		t.Fatalf("roster bench %s: no results:\n%s", strings.Join(args, " "), res.Stdout)
	}
	for _, r := range rep.Results {
		for name, s := range map[string]*benchSide{"roster": r.Roster, "etcd": r.Etcd} {
			if s == nil {
				continue
			}
			what := fmt.Sprintf("%s %s %s", r.Workload, r.Phase, name)
			var byCode, ops, ok, errs int64
			for _, n := range s.ErrorsByCode {
				byCode += n
			}
			for _, pr := range s.PerRound {
				ops, ok, errs = ops+pr.Ops, ok+pr.OK, errs+pr.Errors
			}
			switch {
			case s.OK+s.Errors != s.Ops:
				t.Errorf("%s: ok %d + errors %d != ops %d", what, s.OK, s.Errors, s.Ops)
			case byCode != s.Errors:
				t.Errorf("%s: errors by code %v add up to %d, not errors %d", what, s.ErrorsByCode, byCode, s.Errors)
			case ops != s.Ops || ok != s.OK || errs != s.Errors || len(s.PerRound) != rep.Rounds:
				t.Errorf("%s: %d rounds add up to %d ops, %d ok, %d errors; the totals are %d, %d, %d over %d rounds",
					what, len(s.PerRound), ops, ok, errs, s.Ops, s.OK, s.Errors, rep.Rounds)
			case s.OK > 0 && (s.Latency == nil || s.Latency.P50 <= 0 || s.Latency.P50 > s.Latency.P90 || s.Latency.P90 > s.Latency.P99 || s.Latency.P99 > s.Latency.Max):
				t.Errorf("%s: latency %+v", what, s.Latency)
			case s.OK > 0 && r.Unit != "" && s.Throughput <= 0:
				t.Errorf("%s: throughput %v", what, s.Throughput)
			}
		}
		if r.Etcd != nil && (r.RatioOf == "" || r.RatioMeans == "") {
			t.Errorf("%s %s: a baseline without ratio_of and ratio_means", r.Workload, r.Phase)
		}
		if r.Latency == "" {
			t.Errorf("%s %s: no latency description", r.Workload, r.Phase)
		}
	}
	return rep
}

// listed returns the sessions of module that session list shows.
func listed(t *testing.T, run func(int, ...string) e2e.Result, module string) registry.SessionPage {
	t.Helper()
	var page registry.SessionPage
	res := run(0, "session", "list", "--module", module, "--limit", "1000", "-o", "json")
	if err := json.Unmarshal([]byte(res.Stdout), &page); err != nil {
		t.Fatalf("session list: %v\n%s", err, res.Stdout)
	}
	return page
}

// TestBenchCounts: roster bench open --total N does exactly N opens, which
// are real sessions, closed afterwards (or left open with --keep); failed
// opens are counted by the API's error code, exactly.
func TestBenchCounts(t *testing.T) {
	run := singleNode(t)

	rep := runBench(t, run, "open", "--total", "50", "--clients", "8", "--module", "m1")
	r := rep.Results[0]
	if rep.Workload != "open" || rep.Total != 50 || r.Roster.Ops != 50 || r.Roster.OK != 50 || len(r.Roster.ErrorsByCode) != 0 || r.Etcd != nil || r.Ratio != nil {
		t.Fatalf("open --total 50: %+v %+v", rep, r.Roster)
	}
	if page := listed(t, run, "m1"); page.Total != 0 {
		t.Errorf("%d sessions of m1 still open after the bench", page.Total)
	}
	// They were real sessions: each is in the history, ended as closed.
	deadline := time.Now().Add(30 * time.Second)
	for {
		var hist registry.HistoryPage
		res := run(0, "history", "--module", "m1", "--reason", "closed", "--limit", "1000", "-o", "json")
		if err := json.Unmarshal([]byte(res.Stdout), &hist); err != nil {
			t.Fatal(err)
		}
		users := map[string]bool{}
		for _, h := range hist.History {
			users[h.User] = true
		}
		if len(hist.History) == 50 && len(users) == 50 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("history of m1: %d closed sessions of %d users, want 50 of 50", len(hist.History), len(users))
		}
		time.Sleep(200 * time.Millisecond)
	}

	rep = runBench(t, run, "open", "--total", "30", "--clients", "4", "--module", "m2", "--keep")
	if r := rep.Results[0].Roster; r.OK != 30 {
		t.Fatalf("open --keep: %+v", r)
	}
	page := listed(t, run, "m2")
	users := map[string]bool{}
	for _, s := range page.Sessions {
		users[s.User] = true
	}
	if page.Total != 30 || len(users) != 30 {
		t.Errorf("after open --keep: %d sessions of %d users in m2, want 30 of 30", page.Total, len(users))
	}

	// Opens into an inactive pool all fail with pool_inactive.
	run(0, "pool", "deactivate", "blue")
	rep = runBench(t, run, "open", "--total", "20", "--clients", "4", "--module", "m3", "--pool", "blue")
	if r := rep.Results[0].Roster; r.Ops != 20 || r.OK != 0 || !maps.Equal(r.ErrorsByCode, map[string]int64{"pool_inactive": 20}) || r.Latency != nil {
		t.Errorf("opens into an inactive pool: %+v", r)
	}
	// A licence of 5 seats: exactly 5 of 20 opens win.
	run(0, "license", "set", "m4", "--seats", "5")
	rep = runBench(t, run, "open", "--total", "20", "--clients", "4", "--module", "m4")
	if r := rep.Results[0].Roster; r.OK != 5 || !maps.Equal(r.ErrorsByCode, map[string]int64{"no_license_seat": 15}) {
		t.Errorf("opens against 5 seats: %+v", r)
	}
	if page := listed(t, run, "m4"); page.Total != 0 {
		t.Errorf("%d sessions of m4 still open after the bench", page.Total)
	}

	// The table: a row per side, the errors by code below.
	res := run(0, "bench", "open", "--total", "3", "--clients", "1", "--module", "m3", "--pool", "blue")
	if !strings.Contains(res.Stdout, "WORKLOAD  PHASE  SIDE") || !strings.Contains(res.Stdout, "open, roster: pool_inactive 3") ||
		strings.Contains(res.Stdout, "RATIO") || !strings.Contains(res.Stderr, "roster: bench open: run ") {
		t.Errorf("bench open printed:\n%s%s", res.Stdout, res.Stderr)
	}
}

// TestBenchBaseline: with --baseline etcd every workload runs on Roster and
// on the node's etcd, round for round, and gives a ratio; the raw keys and
// the sessions are gone afterwards. The etcd endpoints come from GET
// /v1/cluster/members, or from --etcd-endpoints, which overrides them.
func TestBenchBaseline(t *testing.T) {
	node, dir, env := startSingle(t)
	ctx := testContext(t, 3*time.Minute)
	run := func(wantCode int, args ...string) e2e.Result {
		t.Helper()
		res, err := bin.Run(ctx, dir, env, args...)
		if err != nil || res.ExitCode != wantCode {
			t.Fatalf("roster %s: %v, exit %d (want %d)\n%s%s", strings.Join(args, " "), err, res.ExitCode, wantCode, res.Stdout, res.Stderr)
		}
		return res
	}
	etcd := "--etcd-endpoints=http://" + node.Etcd
	base := []string{"--baseline", "etcd", "--module", "bb"}
	bench := func(args ...string) benchJSON {
		t.Helper()
		rep := runBench(t, run, append(args, base...)...)
		if len(rep.EtcdEndpoints) != 1 || rep.EtcdEndpoints[0] != "http://"+node.Etcd {
			t.Errorf("%s: baseline etcd at %v, want the node's http://%s", rep.Workload, rep.EtcdEndpoints, node.Etcd)
		}
		for _, r := range rep.Results {
			if r.Etcd == nil || r.Ratio == nil || *r.Ratio <= 0 {
				t.Errorf("%s %s: no baseline or ratio: etcd %+v, ratio %v", r.Workload, r.Phase, r.Etcd, r.Ratio)
			}
		}
		return rep
	}
	ok := func(what string, s *benchSide, want int64) {
		t.Helper()
		if s == nil || s.OK != want || s.Errors != 0 {
			t.Errorf("%s: %+v, want %d ok and no errors", what, s, want)
		}
	}

	rep := bench("open", "--total", "30", "--clients", "4", "--rounds", "2", etcd)
	r := rep.Results[0]
	ok("open roster", r.Roster, 60)
	ok("open etcd", r.Etcd, 60)
	if r.RatioOf != "throughput" || rep.Rounds != 2 {
		t.Errorf("open: ratio of %q over %d rounds", r.RatioOf, rep.Rounds)
	}

	r = bench("heartbeat", "--sessions", "20", "--total", "200", "--clients", "4", "--rounds", "1").Results[0]
	ok("heartbeat roster", r.Roster, 200)
	ok("heartbeat etcd", r.Etcd, 200)

	r = bench("batch-heartbeat", "--sessions", "30", "--batch-size", "10", "--total", "6", "--rounds", "1").Results[0]
	ok("batch-heartbeat roster", r.Roster, 6)
	ok("batch-heartbeat etcd", r.Etcd, 6)
	if r.Unit != "sessions/s" || r.Roster.SessionsRenewed != 60 || r.Etcd.SessionsRenewed != 60 {
		t.Errorf("batch-heartbeat renewed %d and %d sessions (%s), want 60 each", r.Roster.SessionsRenewed, r.Etcd.SessionsRenewed, r.Unit)
	}

	r = bench("kill-latency", "--sessions", "10", "--clients", "2", "--rounds", "1").Results[0]
	ok("kill-latency roster", r.Roster, 10)
	ok("kill-latency etcd", r.Etcd, 10)
	if r.RatioOf != "p50_latency" {
		t.Errorf("kill-latency: ratio of %q", r.RatioOf)
	}

	rep = bench("list", "--sessions", "50", "--page-size", "10", "--total", "12", "--clients", "2", "--rounds", "1")
	if len(rep.Results) != 2 || rep.Results[0].Phase != "unfiltered" || rep.Results[1].Phase != "filtered" {
		t.Fatalf("list: %d results", len(rep.Results))
	}
	for _, r := range rep.Results {
		ok("list "+r.Phase+" roster", r.Roster, 12)
		ok("list "+r.Phase+" etcd", r.Etcd, 12)
	}

	// Even weights: each kind surely gets some of the 100 operations.
	rep = bench("mixed", "--sessions", "20", "--total", "100", "--clients", "4", "--rounds", "1", "--mix", "open=1,heartbeat=1,close=1,list=1")
	phases := map[string]*benchSide{}
	for _, r := range rep.Results {
		phases[r.Phase] = r.Roster
	}
	ok("mixed all roster", phases["all"], 100)
	ok("mixed all etcd", rep.Results[0].Etcd, 100)
	for _, r := range rep.Results {
		if want := map[bool]string{true: "throughput", false: "p50_latency"}[r.Phase == "all"]; r.RatioOf != want {
			t.Errorf("mixed %s: ratio of %q, want %q", r.Phase, r.RatioOf, want)
		}
	}
	if sum := phases["open"].Ops + phases["heartbeat"].Ops + phases["close"].Ops + phases["list"].Ops; sum != 100 {
		t.Errorf("mixed: the kinds add up to %d operations, want 100 (%v)", sum, slices.Collect(maps.Keys(phases)))
	}

	r = bench("expiry", "--sessions", "3", "--ttl", "5s", "--rounds", "1").Results[0]
	ok("expiry roster", r.Roster, 3)
	ok("expiry etcd", r.Etcd, 3)

	// Everything the runs made is gone: the sessions (closed, killed or
	// expired), batch-heartbeat's user, and the raw keys.
	var page registry.SessionPage
	if err := json.Unmarshal([]byte(run(0, "session", "list", "-o", "json").Stdout), &page); err != nil || page.Total != 0 {
		t.Errorf("sessions left after the runs: %v %+v", err, page)
	}
	var users struct {
		Users []registry.User `json:"users"`
	}
	if err := json.Unmarshal([]byte(run(0, "user", "list", "-o", "json").Stdout), &users); err != nil || len(users.Users) != 0 {
		t.Errorf("users left after the runs: %v %+v", err, users)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{"http://" + node.Etcd}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	gctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := cli.Get(gctx, "/roster-bench/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || resp.Count != 0 {
		t.Errorf("raw keys left under /roster-bench/: %v, %d", err, resp.Count)
	}
}
