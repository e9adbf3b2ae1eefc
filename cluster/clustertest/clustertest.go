// Package clustertest starts real embedded etcd members on free loopback
// ports for the tests of other packages. It never fakes etcd.
package clustertest

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/roster-dev/roster/cluster"
	"github.com/roster-dev/roster/cluster/clustertest/loopback"
)

// FreeAddr returns a loopback address whose port was free a moment ago and
// that no other caller in this process got (see package loopback).
func FreeAddr() (string, error) { return loopback.Addr() }

// NewConfig returns a member config with data in dir/etcd (which etcd
// creates with mode 0700) and free ports.
func NewConfig(dir string) (cluster.Config, error) {
	cfg := cluster.DefaultConfig()
	cfg.Name = "test"
	cfg.DataDir = filepath.Join(dir, "etcd")
	cfg.StartTimeout = 30 * time.Second
	var err error
	if cfg.ClientListen, err = FreeAddr(); err != nil {
		return cfg, err
	}
	cfg.PeerListen, err = FreeAddr()
	return cfg, err
}

// StartIn starts a member with data in dir, retrying once on a port taken
// between picking and binding it. The caller closes it.
func StartIn(ctx context.Context, dir string) (*cluster.Member, error) {
	var last error
	for range 3 {
		cfg, err := NewConfig(dir)
		if err != nil {
			return nil, err
		}
		m, err := cluster.Start(ctx, cfg)
		if err == nil {
			return m, nil
		}
		last = err
	}
	return nil, last
}

// Start starts a member in a temporary directory and closes it when the
// test ends.
func Start(tb testing.TB) *cluster.Member {
	tb.Helper()
	m, err := StartIn(context.Background(), tb.TempDir())
	if err != nil {
		tb.Fatalf("start etcd: %v", err)
	}
	tb.Cleanup(func() { m.Close() })
	return m
}
