package client_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/roster-dev/roster/cluster/clustertest"
	"github.com/roster-dev/roster/registry"
	"github.com/roster-dev/roster/registry/client"
)

func realClient(t *testing.T, endpoints ...string) (*client.Client, *realNode) {
	t.Helper()
	n, err := sharedNode()
	if err != nil {
		t.Fatal(err)
	}
	if len(endpoints) == 0 {
		endpoints = []string{n.URL}
	}
	c, err := client.New(client.Config{Endpoints: endpoints, Token: n.AdminToken})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.CloseIdleConnections)
	return c, n
}

// TestRealKillEndsSession: against a real node, a killed session's handle
// ends with ErrKilled and the reason, at its next heartbeat.
func TestRealKillEndsSession(t *testing.T) {
	c, _ := realClient(t)
	ctx := context.Background()
	s, err := c.OpenSession(ctx, registry.OpenRequest{User: "real-kill", Module: "sales", TTLSeconds: 3})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(ctx)
	// It outlives its TTL because it heartbeats.
	time.Sleep(4 * time.Second)
	if _, err := c.Get(ctx, s.ID()); err != nil {
		t.Fatalf("heartbeated session gone: %v", err)
	}
	if _, err := c.Kill(ctx, s.ID(), "PC crashed"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the handle did not notice the kill")
	}
	var ended *client.EndedError
	if !errors.Is(s.Err(), client.ErrKilled) || !errors.As(s.Err(), &ended) || ended.Reason != registry.EndKilled {
		t.Fatalf("Err = %v", s.Err())
	}
}

// TestRealFailover: the first endpoint is dead (nothing listens), the
// client moves to the real node for opens and heartbeats.
func TestRealFailover(t *testing.T) {
	dead, err := clustertest.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	n, err := sharedNode()
	if err != nil {
		t.Fatal(err)
	}
	c, _ := realClient(t, "http://"+dead, n.URL)
	ctx := context.Background()
	s, err := c.OpenSession(ctx, registry.OpenRequest{User: "real-failover", Module: "sales", TTLSeconds: 2})
	if err != nil {
		t.Fatalf("open past a dead endpoint: %v", err)
	}
	time.Sleep(3 * time.Second)
	if _, err := c.Get(ctx, s.ID()); err != nil {
		t.Fatalf("session lost while heartbeating past a dead endpoint: %v", err)
	}
	if err := s.Close(ctx); err != nil || !errors.Is(s.Err(), client.ErrClosed) {
		t.Fatalf("Close = %v, Err = %v", err, s.Err())
	}
	if _, err := c.Get(ctx, s.ID()); !errors.Is(err, client.ErrClosed) {
		t.Fatalf("Get after close: %v", err)
	}
}

// TestRealExpiry: a session whose handle stopped heartbeating (the
// process "died") expires after its TTL.
func TestRealExpiry(t *testing.T) {
	c, _ := realClient(t)
	ctx := context.Background()
	// A raw open with no handle: nothing heartbeats it.
	if _, err := c.Do(ctx, "POST", "/v1/sessions", nil, registry.OpenRequest{User: "real-expiry", Module: "sales", TTLSeconds: 1}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		page, err := c.List(ctx, registry.ListFilter{User: "real-expiry"})
		if err != nil {
			t.Fatal(err)
		}
		if page.Total == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a TTL-1 session without heartbeats did not expire")
		}
		time.Sleep(100 * time.Millisecond)
	}
}
