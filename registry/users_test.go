package registry_test

import (
	"context"
	"errors"
	"strings"
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

// node is a registry on its own etcd member that a test can stop and
// start again on the same data dir and ports.
type node struct {
	t    *testing.T
	cfg  cluster.Config
	rcfg registry.Config
	m    *cluster.Member
	r    *registry.Registry
}

func newNode(t *testing.T, aliveInterval time.Duration) *node {
	cfg, err := clustertest.NewConfig(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	rcfg := registry.DefaultConfig()
	rcfg.Node, rcfg.MinTTL, rcfg.AliveInterval = "n1", time.Second, aliveInterval
	n := &node{t: t, cfg: cfg, rcfg: rcfg}
	n.start()
	t.Cleanup(n.stop)
	return n
}

func (n *node) start() {
	n.t.Helper()
	m, err := cluster.Start(context.Background(), n.cfg)
	if err != nil {
		n.t.Fatalf("start etcd: %v", err)
	}
	n.rcfg.Client = m.Client()
	r, err := registry.New(n.rcfg)
	if err != nil {
		m.Close()
		n.t.Fatal(err)
	}
	if err := r.Start(context.Background()); err != nil {
		m.Close()
		n.t.Fatalf("registry.Start: %v", err)
	}
	n.m, n.r = m, r
}

func (n *node) stop() {
	if n.r != nil {
		n.r.Close()
		n.m.Close()
		n.r, n.m = nil, nil
	}
}

// TestRestartKeepsSessions stops etcd under live sessions and starts it
// again on the same data dir: every session whose lease had not run out is
// still there and still heartbeats.
func TestRestartKeepsSessions(t *testing.T) {
	ctx := context.Background()
	n := newNode(t, registry.DefaultConfig().AliveInterval)
	var ids []string
	for _, u := range []string{"alice", "bob", "carol"} {
		ids = append(ids, open(t, n.r, admin, registry.OpenRequest{User: u, Module: "sales", TTLSeconds: 60}).ID)
	}
	short := open(t, n.r, admin, registry.OpenRequest{User: "dave", Module: "sales", TTLSeconds: 1})
	n.stop()
	n.start()
	for _, id := range ids {
		if _, err := n.r.Heartbeat(ctx, admin, id); err != nil {
			t.Fatalf("session %s after restart: %v", id, err)
		}
	}
	// The short session's lease still runs out after the restart.
	eventually(t, 15*time.Second, "expiry of the TTL-1 session after restart", func() bool {
		_, err := n.r.Get(ctx, admin, short.ID)
		return errors.Is(err, registry.ErrSessionEnded) || errors.Is(err, registry.ErrSessionNotFound)
	})
	if _, err := n.r.Open(ctx, admin, registry.OpenRequest{User: "alice", Module: "sales"}); !errors.Is(err, registry.ErrAlreadyLoggedIn) {
		t.Fatalf("single login after restart: %v", err)
	}
}

// TestOutageExpiresShortSessions: etcd renews every lease when it starts
// again, but a session whose TTL ran out while the whole cluster was down
// is ended as expired at the start, before anyone can use it; a session
// with a TTL longer than the outage stays.
func TestOutageExpiresShortSessions(t *testing.T) {
	ctx := context.Background()
	n := newNode(t, 500*time.Millisecond)
	short := open(t, n.r, admin, registry.OpenRequest{User: "dave", Module: "sales", TTLSeconds: 2})
	long := open(t, n.r, admin, registry.OpenRequest{User: "erin", Module: "sales", TTLSeconds: 60})
	n.stop()
	time.Sleep(4 * time.Second) // the outage: longer than the short TTL plus an interval
	n.start()
	_, err := n.r.Get(ctx, admin, short.ID)
	var ended *registry.EndedError
	if !errors.As(err, &ended) || ended.Ended.Reason != registry.EndExpired || !strings.Contains(ended.Ended.Message, "cluster was down") {
		t.Fatalf("the TTL-2 session after a 4 s outage: %v", err)
	}
	if _, err := n.r.Open(ctx, admin, registry.OpenRequest{User: "dave", Module: "sales"}); err != nil {
		t.Fatalf("dave cannot log in again after the outage: %v", err)
	}
	if _, err := n.r.Heartbeat(ctx, admin, long.ID); err != nil {
		t.Fatalf("the TTL-60 session after a 4 s outage: %v", err)
	}
}
