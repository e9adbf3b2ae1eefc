package registry

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/roster-dev/roster/cluster/clustertest"
)

// TestRenewerRecoversFromAStuckStream: a renewal whose deadline passes
// cancels its stream, and the next renewal works on a new one.
func TestRenewerRecoversFromAStuckStream(t *testing.T) {
	m := clustertest.Start(t)
	cli := m.Client()
	lease, err := cli.Grant(context.Background(), 30)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := newRenewer(ctx, cli, 1)
	defer func() { cancel(); r.close() }()
	if ttl, err := r.renew(context.Background(), lease.ID); err != nil || ttl != 30 {
		t.Fatalf("renew = %d, %v", ttl, err)
	}
	first := r.streams[0].stream

	// A deadline that has passed stands for an answer that never came.
	dead, stop := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer stop()
	if _, err := r.renew(dead, lease.ID); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("renew past its deadline: %v, want unavailable", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		ttl, err := r.renew(context.Background(), lease.ID)
		if err == nil && ttl == 30 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no renewal after the stuck stream was cancelled: %v", err)
		}
	}
	r.streams[0].mu.Lock()
	second := r.streams[0].stream
	r.streams[0].mu.Unlock()
	if second == first {
		t.Fatal("the stuck stream was not replaced")
	}
	// Its waiters were failed, none is left behind.
	r.streams[0].mu.Lock()
	defer r.streams[0].mu.Unlock()
	if n := len(r.streams[0].waiters); n != 0 {
		t.Fatalf("%d waiters left", n)
	}
}

// TestRenewerStreamsToTheLeader: the renewer opens its streams on a
// connection of its own to the leader's member; when that member cannot be
// reached it falls back to the client's own connection, and the renewal
// still succeeds.
func TestRenewerStreamsToTheLeader(t *testing.T) {
	m := clustertest.Start(t)
	cli := m.Client()
	lease, err := cli.Grant(context.Background(), 30)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		leaderURL  string // pretend etcd named this leader; "" asks it
		wantLeader bool
	}{
		{"the leader answers", "", true},
		{"the leader is unreachable", "http://127.0.0.1:1", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			r := newRenewer(ctx, cli, 1)
			defer func() { cancel(); r.close() }()
			if tt.leaderURL != "" {
				r.leader.url, r.leader.at = tt.leaderURL, time.Now()
			}
			if ttl, err := r.renew(context.Background(), lease.ID); err != nil || ttl != 30 {
				t.Fatalf("renew = %d, %v", ttl, err)
			}
			r.leader.mu.Lock()
			defer r.leader.mu.Unlock()
			avoided := time.Now().Before(r.leader.avoid)
			if tt.wantLeader && (avoided || len(r.leader.conns) != 1 || r.leader.url == "") {
				t.Fatalf("no stream to the leader: url %q, %d connections, avoided %v", r.leader.url, len(r.leader.conns), avoided)
			}
			if !tt.wantLeader && !avoided {
				t.Fatal("the unreachable leader is not avoided")
			}
		})
	}
}
