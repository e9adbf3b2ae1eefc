package registry_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/roster-dev/roster/cluster"
	"github.com/roster-dev/roster/cluster/clustertest"
	"github.com/roster-dev/roster/registry"
)

func TestUsers(t *testing.T) {
	r := newRegistry(t)
	ctx := context.Background()
	_, operator := token(t, r, "ops", registry.RoleOperator)
	u, err := r.PutUser(ctx, admin, "acme", "alice", registry.UserSpec{Rights: []registry.Right{registry.RightMultiLogin, registry.RightInterruptSessions, registry.RightMultiLogin}})
	if err != nil || len(u.Rights) != 2 {
		t.Fatalf("PutUser = %+v, %v (duplicates should fold)", u, err)
	}
	if _, err := r.PutUser(ctx, operator, "acme", "bob", registry.UserSpec{}); !errors.Is(err, registry.ErrPermissionDenied) {
		t.Fatalf("operator changed a user: %v", err)
	}
	if _, err := r.PutUser(ctx, admin, "acme", "bob", registry.UserSpec{Rights: []registry.Right{"root"}}); !errors.Is(err, registry.ErrInvalidArgument) {
		t.Fatalf("unknown right accepted: %v", err)
	}
	if got, err := r.GetUser(ctx, operator, "acme", "alice"); err != nil || len(got.Rights) != 2 {
		t.Fatalf("GetUser = %+v, %v", got, err)
	}
	if _, err := r.GetUser(ctx, admin, "acme", "nobody"); !errors.Is(err, registry.ErrUserNotFound) {
		t.Fatalf("GetUser of an unknown user: %v", err)
	}
	if _, err := r.PutUser(ctx, admin, "other", "carol", registry.UserSpec{}); err != nil {
		t.Fatal(err)
	}
	if all, err := r.ListUsers(ctx, admin, ""); err != nil || len(all) != 2 {
		t.Fatalf("ListUsers all = %v, %v", all, err)
	}
	if acme, err := r.ListUsers(ctx, admin, "acme"); err != nil || len(acme) != 1 {
		t.Fatalf("ListUsers acme = %v, %v", acme, err)
	}
	if err := r.DeleteUser(ctx, admin, "acme", "alice"); err != nil {
		t.Fatal(err)
	}
	if err := r.DeleteUser(ctx, admin, "acme", "alice"); !errors.Is(err, registry.ErrUserNotFound) {
		t.Fatalf("second delete: %v", err)
	}
}

func TestTokens(t *testing.T) {
	r := newRegistry(t)
	ctx := context.Background()
	tok, p := token(t, r, "app", registry.RoleClient)
	if p.Role != registry.RoleClient || p.Name != "app" {
		t.Fatalf("principal = %+v", p)
	}
	if _, err := r.CreateToken(ctx, admin, registry.TokenRequest{Name: "app", Role: registry.RoleAdmin}); !errors.Is(err, registry.ErrTokenExists) {
		t.Fatalf("duplicate name: %v", err)
	}
	if _, err := r.CreateToken(ctx, p, registry.TokenRequest{Name: "x", Role: registry.RoleAdmin}); !errors.Is(err, registry.ErrPermissionDenied) {
		t.Fatalf("client created a token: %v", err)
	}
	if _, err := r.CreateToken(ctx, admin, registry.TokenRequest{Name: "x", Role: "root"}); !errors.Is(err, registry.ErrInvalidArgument) {
		t.Fatalf("bad role: %v", err)
	}
	list, err := r.ListTokens(ctx, admin)
	if err != nil || len(list) != 1 || list[0].Name != "app" {
		t.Fatalf("ListTokens = %v, %v", list, err)
	}
	for _, bad := range []string{"", "rt1.nope", "Basic abc", "rs1.nope", "rs1." + "0123456789abcdef0123456789abcdef" + ".x", tok + "x"} {
		if _, err := r.Authenticate(ctx, bad); err == nil {
			t.Errorf("token %q authenticated", bad)
		}
	}
	if err := r.DeleteToken(ctx, admin, "app"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Authenticate(ctx, tok); !errors.Is(err, registry.ErrUnauthenticated) {
		t.Fatalf("revoked token: %v", err)
	}
	if err := r.DeleteToken(ctx, admin, "app"); !errors.Is(err, registry.ErrTokenNotFound) {
		t.Fatalf("second revoke: %v", err)
	}
	adminTok := registry.NewAPIToken()
	if ok, err := r.EnsureAdminToken(ctx, adminTok); err != nil || !ok {
		t.Fatalf("EnsureAdminToken = %v %v", ok, err)
	}
	if p, err := r.Authenticate(ctx, adminTok); err != nil || p.Role != registry.RoleAdmin || p.Name != registry.AdminTokenName {
		t.Fatalf("the admin token authenticates as %+v, %v", p, err)
	}
	// The same token again (a start that crashed after creating it) is
	// still the admin token; another one is not made.
	if ok, err := r.EnsureAdminToken(ctx, adminTok); err != nil || !ok {
		t.Fatalf("EnsureAdminToken with the same token = %v %v", ok, err)
	}
	other := registry.NewAPIToken()
	if ok, err := r.EnsureAdminToken(ctx, other); err != nil || ok {
		t.Fatalf("EnsureAdminToken made a second admin token: %v %v", ok, err)
	}
	if _, err := r.Authenticate(ctx, other); !errors.Is(err, registry.ErrUnauthenticated) {
		t.Fatalf("the refused admin token authenticates: %v", err)
	}
}

// TestRestartKeepsSessions stops etcd under live sessions and starts it
// again on the same data dir: every session whose lease had not run out is
// still there and still heartbeats.
func TestRestartKeepsSessions(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "etcd")
	cfg, err := clustertest.NewConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	m, err := cluster.Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	rcfg := registry.DefaultConfig()
	rcfg.Client, rcfg.Node, rcfg.MinTTL = m.Client(), "n1", time.Second
	r, err := registry.New(rcfg)
	if err != nil {
		t.Fatal(err)
	}
	r.Start()
	var ids []string
	for _, u := range []string{"alice", "bob", "carol"} {
		ids = append(ids, open(t, r, admin, registry.OpenRequest{User: u, Module: "sales", TTLSeconds: 60}).ID)
	}
	short := open(t, r, admin, registry.OpenRequest{User: "dave", Module: "sales", TTLSeconds: 1})
	r.Close()
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); err != nil {
		t.Fatal(err)
	}

	m, err = cluster.Start(ctx, cfg)
	if err != nil {
		t.Fatalf("restart: %v", err)
	}
	defer m.Close()
	rcfg.Client = m.Client()
	r, err = registry.New(rcfg)
	if err != nil {
		t.Fatal(err)
	}
	r.Start()
	defer r.Close()
	for _, id := range ids {
		if _, err := r.Heartbeat(ctx, admin, id); err != nil {
			t.Fatalf("session %s after restart: %v", id, err)
		}
	}
	// The short session's lease still runs out after the restart.
	eventually(t, 15*time.Second, "expiry of the TTL-1 session after restart", func() bool {
		_, err := r.Get(ctx, admin, short.ID)
		return errors.Is(err, registry.ErrSessionEnded) || errors.Is(err, registry.ErrSessionNotFound)
	})
	if _, err := r.Open(ctx, admin, registry.OpenRequest{User: "alice", Module: "sales"}); !errors.Is(err, registry.ErrAlreadyLoggedIn) {
		t.Fatalf("single login after restart: %v", err)
	}
}
