package main

import (
	"context"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/roster-dev/roster/cluster/clustertest"
)

// TestSettle: on a real etcd member, settle returns only once the count of
// leases has held still for settleQuiet, here after the last of a series of
// revocations like the ones a side's clean-up leaves behind, and at once
// (after settleQuiet) on a quiet member.
func TestSettle(t *testing.T) {
	m := clustertest.Start(t)
	ctx := t.Context()
	raw, err := dialEtcd(ctx, []string{m.ClientURL()}, "settle", 60)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.close()
	var stderr strings.Builder
	b := &bench{f: &benchFlags{}, wl: "test", stderr: &stderr, raw: raw}

	began := time.Now()
	if note := b.settle(ctx); note != "" {
		t.Errorf("settle on a quiet member noted %q", note)
	}
	if d := time.Since(began); d < settleQuiet || d > 10*settleQuiet {
		t.Errorf("settle on a quiet member took %s, want about %s", d, settleQuiet)
	}

	var ids []clientv3.LeaseID
	for range 4 {
		l, err := m.Client().Grant(ctx, 60)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, l.ID)
	}
	revoked := make(chan time.Time, 1)
	go func() {
		for _, id := range ids {
			time.Sleep(settleQuiet / 2) // each within settleQuiet of the one before
			if _, err := m.Client().Revoke(context.Background(), id); err != nil {
				t.Errorf("revoke: %v", err)
			}
		}
		revoked <- time.Now()
	}()
	note := b.settle(ctx)
	returned := time.Now()
	last := <-revoked
	if returned.Before(last) {
		t.Fatalf("settle returned %s before the last of the revocations", last.Sub(returned))
	}
	if returned.Sub(last) < settleQuiet-settleQuiet/5 { // the count is sampled every settleQuiet/5
		t.Errorf("settle returned %s after the last revocation, want at least about %s", returned.Sub(last), settleQuiet)
	}
	if !strings.Contains(note, "waited") || !strings.Contains(note, "-> 0)") {
		t.Errorf("settle noted %q; want the wait and the count falling to 0", note)
	}
	if strings.Contains(stderr.String(), "still changing") {
		t.Errorf("stderr: %q", stderr.String())
	}
}

// TestSettleUnreachable: when etcd's leases cannot be counted, settle does
// not wait out settleMax; it says why on stderr and in its note at once.
func TestSettleUnreachable(t *testing.T) {
	m := clustertest.Start(t)
	raw, err := dialEtcd(t.Context(), []string{m.ClientURL()}, "settle", 60)
	if err != nil {
		t.Fatal(err)
	}
	raw.close() // every call now fails: the client is closed
	var stderr strings.Builder
	b := &bench{f: &benchFlags{}, wl: "test", stderr: &stderr, raw: raw}
	began := time.Now()
	note := b.settle(t.Context())
	if d := time.Since(began); d > settleMax/2 {
		t.Errorf("settle took %s with etcd unreachable", d)
	}
	if !strings.Contains(note, "could not count etcd's leases") || !strings.Contains(stderr.String(), "without waiting") {
		t.Errorf("note %q, stderr %q; want both to say the leases could not be counted", note, stderr.String())
	}
}
