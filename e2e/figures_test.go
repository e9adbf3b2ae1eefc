package e2e_test

import (
	"context"
	"errors"
	"math"
	"slices"
	"testing"
	"time"

	"github.com/roster-dev/roster/registry"
	"github.com/roster-dev/roster/registry/client"
)

// The figures of docs/performance.md about failover. They are benchmarks,
// so `go test` (and CI) never runs them; each iteration forms a new
// three-node cluster of real processes and takes tens of seconds:
//
//	go test -run '^$' -bench 'Failover|ExpiryAcrossLeaderChange' -benchtime 5x -timeout 30m ./e2e/
//
// (testing runs one iteration before the -benchtime ones.)

// medianMS returns the median of ds in milliseconds.
func medianMS(ds []time.Duration) float64 {
	s := slices.Clone(ds)
	slices.Sort(s)
	n := len(s)
	m := s[n/2]
	if n%2 == 0 {
		m = (s[n/2-1] + s[n/2]) / 2
	}
	return float64(m) / float64(time.Millisecond)
}

// percentileMS returns the q-quantile (0 < q ≤ 1, nearest rank) of ds in
// milliseconds; q 1 is the maximum.
func percentileMS(ds []time.Duration, q float64) float64 {
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(math.Ceil(q*float64(len(s)))) - 1
	return float64(s[max(i, 0)]) / float64(time.Millisecond)
}

// BenchmarkFailover: a three-node cluster holds 300 sessions (TTL 10 s,
// heartbeated by Go client handles); the node of the etcd leader is
// SIGKILLed. Reported: the medians, over the iterations, of the time from
// starting three processes with --bootstrap-expect 3 to three voters
// (form-ms), of the time from the kill to the first successful open (open-ms) and heartbeat
// (heartbeat-ms) through a survivor, and the number of sessions lost over
// two TTLs after the kill (lost, which must be 0).
func BenchmarkFailover(b *testing.B) {
	var forms, opens, beats []time.Duration
	lost := 0
	for range b.N {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		begin := time.Now()
		c := threeVoters(ctx, b)
		forms = append(forms, time.Since(begin))
		h := openHeld(ctx, b, clientsFor(b, c, c.Running()), 300, int64(failoverTTL/time.Second))
		leader := c.Leader(ctx)
		killed := time.Now()
		c.Kill(leader)
		ft, err := probeFailover(ctx, c, c.Running(), h.sessions[0], killed)
		if err != nil {
			b.Fatal(err)
		}
		opens, beats = append(opens, ft.open), append(beats, ft.heartbeat)
		b.Logf("kill of %s to open %s, to heartbeat %s", leader.Name, ft.open.Round(time.Millisecond), ft.heartbeat.Round(time.Millisecond))
		select {
		case <-ctx.Done():
		case <-time.After(time.Until(killed.Add(2 * failoverTTL))):
		}
		lost += len(h.ended())
		h.close()
		c.Close()
		cancel()
	}
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(medianMS(forms), "form-ms")
	b.ReportMetric(medianMS(opens), "open-ms")
	b.ReportMetric(medianMS(beats), "heartbeat-ms")
	b.ReportMetric(float64(lost), "lost")
}

// BenchmarkExpiryAcrossLeaderChange: a session opened with TTL 10 s and
// never heartbeated (its client died) while, 3 s later, the node of the
// etcd leader is SIGKILLed. Reported: the median of how long past its TTL
// the session was still served (extra-ms, from the open request's sending
// plus the TTL to the first GET through a survivor that answers 404 or
// 410; polled every 100 ms), which is what a leader change adds to a dead
// client's session.
func BenchmarkExpiryAcrossLeaderChange(b *testing.B) {
	const ttl = 10 * time.Second
	var extras []time.Duration
	for range b.N {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		c := threeVoters(ctx, b)
		leader := c.Leader(ctx)
		survivors := others(c.Running(), leader)
		cl := c.Client(survivors...)
		sent := time.Now()
		opened, err := openRaw(ctx, cl, registry.OpenRequest{User: "ghost", Module: "sales", TTLSeconds: int64(ttl / time.Second)})
		if err != nil {
			b.Fatal(err)
		}
		select {
		case <-ctx.Done():
			b.Fatal(ctx.Err())
		case <-time.After(3 * time.Second):
		}
		c.Kill(leader)
		var gone time.Time
		for gone.IsZero() {
			_, err := cl.Get(ctx, opened.ID)
			var ended *client.EndedError
			switch {
			case errors.Is(err, client.ErrNotFound), errors.As(err, &ended):
				gone = time.Now()
			case ctx.Err() != nil:
				b.Fatalf("session %s still served %s after it was opened: %v", opened.ID, time.Since(sent), err)
			default:
				select {
				case <-ctx.Done():
				case <-time.After(100 * time.Millisecond):
				}
			}
		}
		extras = append(extras, gone.Sub(sent.Add(ttl)))
		b.Logf("session with TTL %s gone %s after it was opened (leader %s killed after 3 s)", ttl, gone.Sub(sent).Round(time.Millisecond), leader.Name)
		c.Close()
		cancel()
	}
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(medianMS(extras), "extra-ms")
}
