package e2e_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/roster-dev/roster/registry"
	"github.com/roster-dev/roster/registry/client"
)

// TestHistoryExactlyOnceAcrossKills: on three voters, 2,000 sessions end by
// mixed reasons (500 each logged out, killed, expired and terminated by a
// pool's shutdown request) while the duty leader, which records the
// history, is SIGKILLed twice. Once the ends are done, the history holds
// each session exactly once, with its reason.
func TestHistoryExactlyOnceAcrossKills(t *testing.T) {
	ctx := testContext(t, 3*time.Minute)
	c := threeVoters(ctx, t, "--min-ttl", "1s")
	cl := c.Client() // every node; calls move on when one dies
	begin := time.Now()

	const per = 500
	groups := []struct {
		reason registry.EndReason
		pool   string
		ttl    int64
	}{
		{registry.EndClosed, "", 120},
		{registry.EndKilled, "", 120},
		{registry.EndExpired, "", 8}, // never heartbeated: they expire while the duty leaders die
		{registry.EndShutdown, "histsd", 120},
	}
	want := make(map[string]registry.EndReason, per*len(groups))
	ids := make([][]string, len(groups))
	var mu sync.Mutex
	var openErrs []error
	sem := make(chan struct{}, 32)
	var wg sync.WaitGroup
	for g, grp := range groups {
		ids[g] = make([]string, per)
		for i := range per {
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				s, err := openRaw(ctx, cl, registry.OpenRequest{User: fmt.Sprintf("%s-%03d", grp.reason, i), Module: "hist",
					Pool: grp.pool, TTLSeconds: grp.ttl})
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					openErrs = append(openErrs, err)
					return
				}
				ids[g][i] = s.ID
				want[s.ID] = grp.reason
			})
		}
	}
	wg.Wait()
	if err := errors.Join(openErrs...); err != nil {
		t.Fatalf("open %d sessions: %v", per*len(groups), err)
	}
	t.Logf("opened %d sessions in %s", len(want), time.Since(begin).Round(time.Millisecond))

	// Logouts and kills, paced over about 15 s, through every node.
	var ended atomic.Int32
	var endErrs []error
	enders := sync.WaitGroup{}
	tick := time.NewTicker(15 * time.Second / (2 * per))
	defer tick.Stop()
	enders.Go(func() {
		for i := range 2 * per {
			<-tick.C
			g, id := i%2, ids[i%2][i/2]
			enders.Go(func() {
				err := retry(ctx, 100*time.Millisecond, 5*time.Second, func(ctx context.Context) error {
					var err error
					if g == 0 {
						_, err = cl.CloseSession(ctx, id, "")
					} else {
						_, err = cl.Kill(ctx, id, "history e2e")
					}
					if errors.Is(err, client.ErrClosed) || errors.Is(err, client.ErrKilled) {
						return nil // an attempt whose answer was lost went through
					}
					return err
				})
				if err != nil {
					mu.Lock()
					endErrs = append(endErrs, fmt.Errorf("end %s: %w", id, err))
					mu.Unlock()
				}
				ended.Add(1)
			})
		}
	})

	// Two duty leaders die while sessions end; the first comes back before
	// the second dies, so the voters keep quorum.
	time.Sleep(2 * time.Second)
	first := c.DutyLeader(ctx)
	t.Logf("SIGKILL of duty leader %s (%d logouts and kills so far)", first.Name, ended.Load())
	c.Kill(first)
	var req registry.Shutdown
	if err := retry(ctx, 200*time.Millisecond, 5*time.Second, func(ctx context.Context) error {
		data, err := cl.Do(ctx, http.MethodPost, "/v1/shutdowns", nil, registry.ShutdownRequest{
			Scope: registry.ScopePool, Pool: "histsd", GraceSeconds: new(int64(3)), Message: "history e2e"})
		if err == nil {
			err = decodeJSON(data, &req)
		}
		return err
	}); err != nil {
		t.Fatalf("shutdown request: %v", err)
	}
	second := c.DutyLeader(ctx)
	t.Logf("duty leader now %s; restarting %s", second.Name, first.Name)
	c.Restart(first)
	t.Logf("SIGKILL of duty leader %s (%d logouts and kills so far)", second.Name, ended.Load())
	c.Kill(second)
	third := c.DutyLeader(ctx)
	t.Logf("duty leader now %s; restarting %s", third.Name, second.Name)
	c.Restart(second)
	enders.Wait()
	if err := errors.Join(endErrs...); err != nil {
		t.Fatalf("logouts and kills: %v", err)
	}
	endsDone := time.Now()
	t.Logf("logouts and kills done %s after the opens", endsDone.Sub(begin).Round(time.Millisecond))

	// Every session is recorded once, with its reason.
	var records []registry.HistoryRecord
	var lastErr error
	for {
		records, lastErr = readHistory(ctx, cl)
		if lastErr == nil && len(records) >= len(want) {
			break
		}
		select {
		case <-ctx.Done():
			recorded := map[string]bool{}
			for _, h := range records {
				recorded[h.ID] = true
			}
			var missing []string
			for id, reason := range want {
				if !recorded[id] {
					missing = append(missing, fmt.Sprintf("%s (%s)", id, reason))
				}
			}
			slices.Sort(missing)
			t.Fatalf("the history holds %d records of %d ended sessions (last error: %v); missing: %s", len(records), len(want), lastErr, strings.Join(missing[:min(len(missing), 20)], ", "))
		case <-time.After(500 * time.Millisecond):
		}
	}
	t.Logf("the history held all %d sessions (the expiries end last) %s after the last logout or kill", len(want), time.Since(endsDone).Round(time.Millisecond))
	seen := map[string]int{}
	for _, h := range records {
		seen[h.ID]++
		switch {
		case seen[h.ID] == 2:
			t.Errorf("session %s is recorded more than once", h.ID)
		case want[h.ID] == "":
			t.Errorf("session %s is recorded but was not ended here", h.ID)
		case h.Reason != want[h.ID]:
			t.Errorf("session %s is recorded as %s, want %s", h.ID, h.Reason, want[h.ID])
		case h.Reason == registry.EndShutdown && h.ShutdownID != req.ID:
			t.Errorf("session %s is recorded as shut down by request %q, want %s", h.ID, h.ShutdownID, req.ID)
		}
	}
	if len(seen) != len(want) || len(records) != len(want) {
		t.Fatalf("%d records of %d sessions, want each of the %d once", len(records), len(seen), len(want))
	}
}

// readHistory reads every page of the history.
func readHistory(ctx context.Context, cl *client.Client) ([]registry.HistoryRecord, error) {
	var out []registry.HistoryRecord
	f := registry.HistoryFilter{Limit: registry.MaxListLimit}
	for {
		page, err := cl.History(ctx, f)
		if err != nil {
			return out, err
		}
		out = append(out, page.History...)
		if page.NextCursor == "" {
			return out, nil
		}
		f.Cursor = page.NextCursor
	}
}
