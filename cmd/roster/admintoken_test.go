package main

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/roster-dev/roster/cluster/clustertest"
	"github.com/roster-dev/roster/registry"
)

// TestEnsureAdminToken runs the admin-token start-up against a real etcd:
// a first start writes the file, a start that died after storing the
// token finishes with the same secret, and a start that finds another
// admin token writes nothing.
func TestEnsureAdminToken(t *testing.T) {
	m := clustertest.Start(t)
	cfg := registry.DefaultConfig()
	cfg.Client, cfg.Node = m.Client(), "n1"
	ctx := context.Background()
	log := slog.New(slog.DiscardHandler)
	newReg := func() *registry.Registry {
		t.Helper()
		if _, err := m.Client().Delete(ctx, "/roster/", clientv3.WithPrefix()); err != nil {
			t.Fatal(err)
		}
		r, err := registry.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(r.Close)
		return r
	}
	readToken := func(dir string) string {
		t.Helper()
		path := filepath.Join(dir, "admin.token")
		fi, err := os.Stat(path)
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("admin.token: %v (mode %v)", err, fi)
		}
		b, _ := os.ReadFile(path)
		if _, err := os.Stat(path + ".new"); !os.IsNotExist(err) {
			t.Fatalf("admin.token.new left behind: %v", err)
		}
		return strings.TrimSpace(string(b))
	}
	admin := func(r *registry.Registry, tok string) bool {
		p, err := r.Authenticate(ctx, tok)
		return err == nil && p.Role == registry.RoleAdmin
	}

	t.Run("first start", func(t *testing.T) {
		r, dir := newReg(), t.TempDir()
		if err := ensureAdminToken(ctx, r, dir, true, log); err != nil {
			t.Fatal(err)
		}
		tok := readToken(dir)
		if !admin(r, tok) {
			t.Fatal("the written token is not an admin token")
		}
		// A restart keeps it and writes no other.
		if err := ensureAdminToken(ctx, r, dir, false, log); err != nil || readToken(dir) != tok {
			t.Fatalf("restart changed the token: %v", err)
		}
	})
	t.Run("crash after storing the token", func(t *testing.T) {
		r, dir := newReg(), t.TempDir()
		tok := registry.NewAPIToken()
		if err := os.WriteFile(filepath.Join(dir, "admin.token.new"), []byte(tok+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if ok, err := r.EnsureAdminToken(ctx, tok); !ok || err != nil {
			t.Fatal(ok, err)
		}
		// The restart did not bootstrap; the pending file finishes anyway.
		if err := ensureAdminToken(ctx, r, dir, false, log); err != nil {
			t.Fatal(err)
		}
		if got := readToken(dir); got != tok {
			t.Fatalf("finished with another token")
		}
	})
	t.Run("the cluster has another admin token", func(t *testing.T) {
		r, dir := newReg(), t.TempDir()
		if ok, err := r.EnsureAdminToken(ctx, registry.NewAPIToken()); !ok || err != nil {
			t.Fatal(ok, err)
		}
		if err := ensureAdminToken(ctx, r, dir, true, log); err != nil {
			t.Fatal(err)
		}
		entries, _ := os.ReadDir(dir)
		if len(entries) != 0 {
			t.Fatalf("files written: %v", entries)
		}
	})
	t.Run("a node that joined writes none", func(t *testing.T) {
		// Even while the cluster has no admin token yet: the node that bootstrapped
		// writes it, whichever node reaches etcd first.
		r, dir := newReg(), t.TempDir()
		if err := ensureAdminToken(ctx, r, dir, false, log); err != nil {
			t.Fatal(err)
		}
		if entries, _ := os.ReadDir(dir); len(entries) != 0 {
			t.Fatalf("files written: %v", entries)
		}
		if ok, err := r.EnsureAdminToken(ctx, registry.NewAPIToken()); !ok || err != nil {
			t.Fatalf("the joining node created an admin token in the cluster: %v %v", ok, err)
		}
	})
}
