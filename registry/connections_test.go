package registry_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/roster-dev/roster/registry"
)

func seconds(n int64) *int64 { return &n }

// allow puts users into the user master with the services and rights given.
func allow(t testing.TB, r *registry.Registry, tenant string, users []string, services []string, rights ...registry.Right) {
	t.Helper()
	for _, u := range users {
		if _, err := r.PutUser(context.Background(), admin, tenant, u, registry.UserSpec{Rights: rights, Services: services}); err != nil {
			t.Fatal(err)
		}
	}
}

// register registers a shared connection or fails the test.
func register(t testing.TB, r *registry.Registry, p registry.Principal, req registry.ConnectionRequest) registry.Connection {
	t.Helper()
	c, err := r.RegisterConnection(context.Background(), p, req)
	if err != nil {
		t.Fatalf("register %+v: %v", req, err)
	}
	return c
}

// TestServiceRights: an open over a connection whose service the user lacks is
// refused naming user and service, direct or shared; allowed once the user
// master grants the service, refused again once it is taken away.
func TestServiceRights(t *testing.T) {
	r := newRegistry(t)
	ctx := context.Background()
	_, app := token(t, r, "app-1", registry.RoleClient)
	conn := register(t, r, app, registry.ConnectionRequest{Service: "erp-app", Host: "app-1", PID: 77, TTLSeconds: 60})

	direct := registry.OpenRequest{User: "alice", Module: "sales", Host: "PC-17", Connection: &registry.DirectConnection{Service: "erp-ui"}}
	_, err := r.Open(ctx, admin, direct)
	var se *registry.ServiceNotAllowedError
	if !errors.As(err, &se) || se.User != "alice" || se.Service != "erp-ui" || !errors.Is(err, registry.ErrServiceNotAllowed) ||
		!strings.Contains(err.Error(), "user alice of tenant default may not use service erp-ui") ||
		!strings.Contains(err.Error(), "roster user set default/alice --service erp-ui") {
		t.Fatalf("direct open without the service: %v", err)
	}
	shared := registry.OpenRequest{User: "alice", Module: "crm", Connections: []string{conn.ID}}
	_, err = r.Open(ctx, app, shared)
	if !errors.As(err, &se) || se.Service != "erp-app" || se.Connection != conn.ID ||
		!strings.Contains(err.Error(), "may not use service erp-app (shared connection "+conn.ID+")") {
		t.Fatalf("shared open without the service: %v", err)
	}
	if page, _ := r.List(ctx, admin, registry.ListFilter{User: "alice"}); page.Total != 0 {
		t.Fatalf("a refused open left %d sessions", page.Total)
	}

	u, err := r.PutUser(ctx, admin, "default", "alice", registry.UserSpec{Services: []string{"erp-ui", "erp-app", "erp-ui"}})
	if err != nil || !slices.Equal(u.Services, []string{"erp-app", "erp-ui"}) {
		t.Fatalf("put user: %+v, %v", u, err)
	}
	if got, err := r.GetUser(ctx, admin, "default", "alice"); err != nil || !slices.Equal(got.Services, u.Services) {
		t.Fatalf("get user: %+v, %v", got, err)
	}
	s := open(t, r, admin, direct)
	if len(s.Connections) != 1 || s.Connections[0].Kind != registry.ConnDirect || s.Connections[0].Service != "erp-ui" {
		t.Fatalf("direct session's connections: %+v", s.Connections)
	}
	dc, err := r.GetConnection(ctx, admin, s.Connections[0].ID)
	if err != nil || dc.Host != "PC-17" || dc.Session != s.ID || dc.Sessions != 1 || dc.State != registry.ConnLive {
		t.Fatalf("direct connection: %+v, %v", dc, err)
	}
	sh := open(t, r, app, shared)
	if len(sh.Connections) != 1 || sh.Connections[0].ID != conn.ID || sh.Connections[0].Kind != registry.ConnShared {
		t.Fatalf("shared session's connections: %+v", sh.Connections)
	}
	got, err := r.Get(ctx, admin, sh.ID)
	if err != nil || len(got.Connections) != 1 || got.Connections[0].ServiceTimeoutSeconds != registry.DefaultServiceTimeoutSeconds {
		t.Fatalf("the record does not say its connections: %+v, %v", got, err)
	}

	if _, err := r.PutUser(ctx, admin, "default", "alice", registry.UserSpec{Services: []string{"erp-ui"}}); err != nil {
		t.Fatal(err)
	}
	shared.Module = "hr"
	if _, err := r.Open(ctx, app, shared); !errors.Is(err, registry.ErrServiceNotAllowed) {
		t.Fatalf("open after the service was taken away: %v", err)
	}
}

// TestSharedConnectionDies: the owner of a shared connection stops renewing it.
// Clean-up leaves its sessions alone until the service timeout has run out
// since its death; a manual logout before that is allowed and warns; after it
// the clean-up duty ends the rest with reason cleanup.
func TestSharedConnectionDies(t *testing.T) {
	r := newRegistry(t, func(c *registry.Config) { c.CleanupInterval = 200 * time.Millisecond })
	ctx := context.Background()
	_, app := token(t, r, "app-1", registry.RoleClient)
	_, ops := token(t, r, "ops", registry.RoleOperator)
	users := []string{"u0", "u1", "u2", "u3"}
	allow(t, r, "default", users, []string{"web"})
	conn := register(t, r, app, registry.ConnectionRequest{Service: "web", Host: "app-1", TTLSeconds: 2, ServiceTimeoutSeconds: seconds(3)})
	var ids []string
	for _, u := range users {
		ids = append(ids, open(t, r, app, registry.OpenRequest{User: u, Module: "sales", TTLSeconds: 60, Connections: []string{conn.ID}}).ID)
	}
	if c, err := r.GetConnection(ctx, ops, conn.ID); err != nil || c.Sessions != 4 || c.State != registry.ConnLive || c.ExpiresInSeconds <= 0 {
		t.Fatalf("live connection: %+v, %v", c, err)
	}
	if page, err := r.List(ctx, admin, registry.ListFilter{Connection: conn.ID}); err != nil || page.Total != 4 {
		t.Fatalf("sessions of the connection: %d, %v", page.Total, err)
	}

	// The owner dies: nobody renews the connection any more.
	var dead registry.Connection
	eventually(t, 15*time.Second, "the connection's death is recorded", func() bool {
		c, err := r.GetConnection(ctx, ops, conn.ID)
		dead = c
		return err == nil && c.State == registry.ConnDead
	})
	if dead.DiedAt == nil || dead.CleanupAt == nil || dead.CleanupAt.Sub(*dead.DiedAt) != 3*time.Second || dead.EndedBy != "lease" || dead.Sessions != 4 {
		t.Fatalf("dead connection: %+v", dead)
	}
	rep, err := r.Cleanup(ctx, ops, registry.CleanupRequest{})
	if time.Now().Before(*dead.CleanupAt) {
		if err != nil || len(rep.Ended) != 0 || len(rep.Skipped) != 4 || !strings.Contains(rep.Skipped[0].Why, "service timeout of 3s runs until") {
			t.Fatalf("clean-up before the service timeout ran out: %+v, %v", rep, err)
		}
	}
	ended, err := r.Logout(ctx, app, ids[0])
	if time.Now().Before(*dead.CleanupAt) && (err != nil || !strings.Contains(ended.Warning, "its service timeout runs until")) {
		t.Fatalf("a manual logout before the service timeout ran out: %+v, %v", ended, err)
	}
	if err == nil && ended.Reason != registry.EndClosed {
		t.Fatalf("logout: %+v", ended)
	}
	_, err = r.Open(ctx, app, registry.OpenRequest{User: "u0", Module: "crm", Connections: []string{conn.ID}})
	var gone *registry.ConnectionGoneError
	if !errors.As(err, &gone) || gone.ID != conn.ID || gone.DiedAt == nil || !strings.Contains(err.Error(), "shared connection "+conn.ID+" died at") {
		t.Fatalf("open through the dead connection: %v", err)
	}
	if _, err := r.HeartbeatBatch(ctx, app, registry.BatchHeartbeatRequest{Connection: conn.ID, Sessions: ids[1:]}); !errors.Is(err, registry.ErrConnectionGone) {
		t.Fatalf("batch heartbeat of the dead connection: %v", err)
	}

	// The clean-up duty ends the rest once the service timeout has run out.
	dctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { r.RunCleanup(dctx) })
	defer func() { stop(); wg.Wait() }()
	for _, id := range ids[1:] {
		eventually(t, 10*time.Second, "clean-up ends session "+id, func() bool {
			_, err := r.Heartbeat(ctx, app, id)
			return errors.Is(err, registry.ErrSessionEnded)
		})
		_, err := r.Heartbeat(ctx, app, id)
		var ee *registry.EndedError
		if !errors.As(err, &ee) || ee.Ended.Reason != registry.EndCleanup || ee.Ended.By != "cleanup" ||
			!strings.Contains(ee.Ended.Message, "its shared connection "+conn.ID) || !strings.Contains(err.Error(), "was ended by clean-up") {
			t.Fatalf("heartbeat after clean-up: %v", err)
		}
		if time.Now().Before(*dead.CleanupAt) {
			t.Fatalf("session %s was cleaned up before the service timeout ran out at %s", id, dead.CleanupAt)
		}
	}
	// A logout now no longer warns: the timeout has run out.
	if c, err := r.GetConnection(ctx, ops, conn.ID); err != nil || c.Sessions != 0 {
		t.Fatalf("dead connection after clean-up: %+v, %v", c, err)
	}
}

// TestDeleteSharedConnection: the owner deletes its connection; its sessions
// stay until the service timeout runs out, a kill before that warns, and a
// direct connection cannot be deleted on its own.
func TestDeleteSharedConnection(t *testing.T) {
	r := newRegistry(t)
	ctx := context.Background()
	_, app := token(t, r, "app-1", registry.RoleClient)
	_, other := token(t, r, "app-2", registry.RoleClient)
	_, ops := token(t, r, "ops", registry.RoleOperator)
	allow(t, r, "default", []string{"alice"}, []string{"web", "ui"})
	conn := register(t, r, app, registry.ConnectionRequest{Service: "web", TTLSeconds: 60, ServiceTimeoutSeconds: seconds(600)})
	s := open(t, r, app, registry.OpenRequest{User: "alice", Module: "sales", Connections: []string{conn.ID}})
	if _, err := r.Open(ctx, other, registry.OpenRequest{User: "alice", Module: "crm", Connections: []string{conn.ID}}); !errors.Is(err, registry.ErrPermissionDenied) ||
		!strings.Contains(err.Error(), "only the token that registered it (app-1)") {
		t.Fatalf("open through another token's connection: %v", err)
	}
	if _, err := r.DeleteConnection(ctx, other, conn.ID); !errors.Is(err, registry.ErrPermissionDenied) {
		t.Fatalf("delete by another client token: %v", err)
	}
	if all, err := r.Connections(ctx, other, registry.ConnectionFilter{}); err != nil || len(all) != 0 {
		t.Fatalf("another client token sees %+v, %v", all, err)
	}
	c, err := r.DeleteConnection(ctx, app, conn.ID)
	if err != nil || c.State != registry.ConnDead || c.EndedBy != "app-1" || c.Sessions != 1 {
		t.Fatalf("delete: %+v, %v", c, err)
	}
	ended, err := r.Kill(ctx, ops, s.ID, "user gone")
	if err != nil || !strings.Contains(ended.Warning, "shared connection "+conn.ID+" (service web) died at") {
		t.Fatalf("kill before the service timeout ran out: %+v, %v", ended, err)
	}

	d := open(t, r, admin, registry.OpenRequest{User: "alice", Module: "crm", Connection: &registry.DirectConnection{Service: "ui"}})
	if _, err := r.DeleteConnection(ctx, ops, d.Connections[0].ID); !errors.Is(err, registry.ErrDirectConnection) ||
		!strings.Contains(err.Error(), "roster session kill "+d.ID) {
		t.Fatalf("delete of a direct connection: %v", err)
	}
	if _, err := r.DeleteConnection(ctx, ops, strings.Repeat("ab", 16)); !errors.Is(err, registry.ErrConnectionNotFound) {
		t.Fatalf("delete of an unknown connection: %v", err)
	}
	if _, err := r.Open(ctx, admin, registry.OpenRequest{User: "alice", Module: "hr", Connections: []string{d.Connections[0].ID}}); !errors.Is(err, registry.ErrInvalidArgument) ||
		!strings.Contains(err.Error(), "is the direct connection of session "+d.ID) {
		t.Fatalf("naming a direct connection as shared: %v", err)
	}
	unknown := strings.Repeat("cd", 16)
	if _, err := r.Open(ctx, admin, registry.OpenRequest{User: "alice", Module: "hr", Connections: []string{unknown}}); !errors.Is(err, registry.ErrConnectionGone) ||
		!strings.Contains(err.Error(), "shared connection "+unknown+" does not exist") {
		t.Fatalf("naming an unknown connection: %v", err)
	}
}

// TestCleanupSkipsDirectConnections: clean-up never takes a session on a live
// direct connection, and says why; a kill ends it and its connection.
func TestCleanupSkipsDirectConnections(t *testing.T) {
	r := newRegistry(t)
	ctx := context.Background()
	allow(t, r, "default", []string{"alice"}, []string{"erp-ui"})
	if _, err := r.SetPolicy(ctx, admin, registry.PolicyModule, "sales", registry.PolicySpec{MaxLifetimeSeconds: 1}); err != nil {
		t.Fatal(err)
	}
	a := open(t, r, admin, registry.OpenRequest{User: "alice", Module: "sales", Host: "PC-17",
		Connection: &registry.DirectConnection{Service: "erp-ui", Parameters: map[string]string{"db": "prod"}}})
	b := open(t, r, admin, registry.OpenRequest{User: "bob", Module: "sales"})
	all, err := r.Connections(ctx, admin, registry.ConnectionFilter{Kind: registry.ConnDirect})
	if err != nil || len(all) != 1 || all[0].Session != a.ID || all[0].Sessions != 1 || all[0].Parameters["db"] != "prod" || all[0].Host != "PC-17" {
		t.Fatalf("direct connections: %+v, %v", all, err)
	}
	var rep registry.CleanupReport
	eventually(t, 10*time.Second, "clean-up ends bob's session", func() bool {
		rep, err = r.Cleanup(ctx, admin, registry.CleanupRequest{})
		return err == nil && len(rep.Ended) == 1
	})
	if rep.Ended[0].Session != b.ID || rep.Ended[0].Reason != registry.EndCleanup || !strings.Contains(rep.Ended[0].Why, "max lifetime of 1s (policy of module sales)") {
		t.Fatalf("ended: %+v", rep.Ended)
	}
	if len(rep.Skipped) != 1 || rep.Skipped[0].Session != a.ID || !strings.Contains(rep.Skipped[0].Why, "held by its live direct connection "+a.Connections[0].ID) ||
		!strings.Contains(rep.Skipped[0].Why, "only a kill ends it") {
		t.Fatalf("skipped: %+v", rep.Skipped)
	}
	if _, err := r.Heartbeat(ctx, admin, a.ID); err != nil {
		t.Fatalf("the direct session was touched: %v", err)
	}
	if _, err := r.Kill(ctx, admin, a.ID, "hung"); err != nil {
		t.Fatal(err)
	}
	if all, err := r.Connections(ctx, admin, registry.ConnectionFilter{}); err != nil || len(all) != 0 {
		t.Fatalf("connections after the kill: %+v, %v", all, err)
	}
}

// TestIdleAndMaxLifetime: a session that heartbeats but whose user is idle past
// its module's idle timeout is ended as idle; an active one stays; a tenant's
// max lifetime ends old sessions unless the module's policy sets its own.
// Active heartbeats write etcd at most once per tenth of the idle timeout.
func TestIdleAndMaxLifetime(t *testing.T) {
	r := newRegistry(t)
	ctx := context.Background()
	if _, err := r.SetPolicy(ctx, admin, registry.PolicyModule, "crm", registry.PolicySpec{IdleTimeoutSeconds: 2}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "the node sees the policy", func() bool { return r.HasIdlePolicy("default", "crm") })
	active := open(t, r, admin, registry.OpenRequest{User: "active", Module: "crm", TTLSeconds: 60})
	idle := open(t, r, admin, registry.OpenRequest{User: "idle", Module: "crm", TTLSeconds: 60})

	rev := func() int64 { return r.ActivityRevision(t.Context(), active.ID) }
	for range 10 {
		if _, err := r.HeartbeatWith(ctx, admin, active.ID, registry.HeartbeatRequest{Active: true}); err != nil {
			t.Fatal(err)
		}
	}
	first := rev()
	if first == 0 {
		t.Fatal("an active heartbeat recorded no activity")
	}
	for range 10 {
		if _, err := r.HeartbeatWith(ctx, admin, active.ID, registry.HeartbeatRequest{Active: true}); err != nil {
			t.Fatal(err)
		}
	}
	if rev() != first {
		t.Fatal("active heartbeats within a tenth of the idle timeout wrote etcd again")
	}

	deadline := time.Now().Add(15 * time.Second)
	var rep registry.CleanupReport
	for {
		if time.Now().After(deadline) {
			t.Fatalf("the idle session was not ended; last round %+v", rep)
		}
		if _, err := r.HeartbeatWith(ctx, admin, active.ID, registry.HeartbeatRequest{Active: true}); err != nil {
			t.Fatalf("the active session: %v", err)
		}
		if _, err := r.Heartbeat(ctx, admin, idle.ID); err != nil {
			break // ended
		}
		var err error
		if rep, err = r.Cleanup(ctx, admin, registry.CleanupRequest{}); err != nil {
			t.Fatal(err)
		}
		for _, e := range rep.Ended {
			if e.Session == active.ID {
				t.Fatalf("the active session was ended: %+v", e)
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	_, err := r.Heartbeat(ctx, admin, idle.ID)
	var ee *registry.EndedError
	if !errors.As(err, &ee) || ee.Ended.Reason != registry.EndIdle || !strings.Contains(ee.Ended.Message, "idle timeout of 2s (policy of module crm)") {
		t.Fatalf("the idle session: %v", err)
	}
	if time.Since(idle.StartedAt) < 2*time.Second {
		t.Fatalf("ended after %s, before its idle timeout", time.Since(idle.StartedAt))
	}

	// Max lifetime: the tenant's, unless the module's policy sets its own.
	for _, p := range []struct {
		scope registry.PolicyScope
		name  string
		spec  registry.PolicySpec
	}{
		{registry.PolicyTenant, "t1", registry.PolicySpec{MaxLifetimeSeconds: 1}},
		{registry.PolicyModule, "reports", registry.PolicySpec{MaxLifetimeSeconds: 3600}},
	} {
		if _, err := r.SetPolicy(ctx, admin, p.scope, p.name, p.spec); err != nil {
			t.Fatal(err)
		}
	}
	old := open(t, r, admin, registry.OpenRequest{Tenant: "t1", User: "old", Module: "sales", TTLSeconds: 60})
	report := open(t, r, admin, registry.OpenRequest{Tenant: "t1", User: "old", Module: "reports", TTLSeconds: 60})
	eventually(t, 10*time.Second, "the session older than the max lifetime ends", func() bool {
		rep, err := r.Cleanup(ctx, admin, registry.CleanupRequest{})
		return err == nil && slices.ContainsFunc(rep.Ended, func(e registry.CleanupItem) bool { return e.Session == old.ID })
	})
	if _, err := r.Heartbeat(ctx, admin, old.ID); !errors.As(err, &ee) || ee.Ended.Reason != registry.EndCleanup ||
		!strings.Contains(ee.Ended.Message, "max lifetime of 1s (policy of tenant t1)") {
		t.Fatalf("the old session: %v", err)
	}
	if _, err := r.Heartbeat(ctx, admin, report.ID); err != nil {
		t.Fatalf("the module's longer max lifetime did not win over the tenant's: %v", err)
	}
	pols, err := r.Policies(ctx, admin)
	if err != nil || len(pols) != 3 || pols[0].Scope != registry.PolicyModule || pols[2].Name != "t1" {
		t.Fatalf("policies: %+v, %v", pols, err)
	}
	if err := r.DeletePolicy(ctx, admin, registry.PolicyTenant, "t1"); err != nil {
		t.Fatal(err)
	}
	if err := r.DeletePolicy(ctx, admin, registry.PolicyTenant, "t1"); !errors.Is(err, registry.ErrPolicyNotFound) {
		t.Fatalf("second delete: %v", err)
	}
}

// TestBatchHeartbeat10000: one call renews a shared connection and 10,000
// sessions, with the right result for each: renewed, killed, closed, not
// through this connection, unknown.
func TestBatchHeartbeat10000(t *testing.T) {
	r := newRegistry(t)
	ctx := context.Background()
	_, app := token(t, r, "app-1", registry.RoleClient)
	_, other := token(t, r, "app-2", registry.RoleClient)
	allow(t, r, "default", []string{"web-user"}, []string{"web"}, registry.RightMultiLogin)
	// TTLs of 10 minutes: opening 10,000 sessions under -race on a busy
	// machine has taken over a minute.
	const ttl = 600
	conn := register(t, r, app, registry.ConnectionRequest{Service: "web", TTLSeconds: ttl})
	const n = registry.MaxBatchSessions - 2
	ids := make([]string, n)
	var wg sync.WaitGroup
	var failed error
	var mu sync.Mutex
	work := make(chan int)
	for range 32 {
		wg.Go(func() {
			for i := range work {
				s, err := r.Open(ctx, app, registry.OpenRequest{User: "web-user", Module: "sales", TTLSeconds: ttl, Connections: []string{conn.ID}})
				if err != nil {
					mu.Lock()
					failed = err
					mu.Unlock()
					continue
				}
				ids[i] = s.ID
			}
		})
	}
	for i := range n {
		work <- i
	}
	close(work)
	wg.Wait()
	if failed != nil {
		t.Fatal(failed)
	}
	if c, err := r.GetConnection(ctx, app, conn.ID); err != nil || c.Sessions != n {
		t.Fatalf("connection: %d sessions, %v", c.Sessions, err)
	}
	killed, closed := ids[17], ids[4242]
	if _, err := r.Kill(ctx, admin, killed, "hung"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Logout(ctx, app, closed); err != nil {
		t.Fatal(err)
	}
	elsewhere := open(t, r, other, registry.OpenRequest{User: "bob", Module: "sales"}).ID
	unknown := strings.Repeat("0", 31) + "1"
	batch := append(slices.Clone(ids), elsewhere, unknown)

	begin := time.Now()
	res, err := r.HeartbeatBatch(ctx, app, registry.BatchHeartbeatRequest{Connection: conn.ID, Sessions: batch, Active: ids[:100]})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("one batch of %d sessions took %s", len(batch), time.Since(begin).Round(time.Millisecond))
	if res.Connection.ID != conn.ID || res.Connection.ExpiresInSeconds != ttl || len(res.Sessions) != registry.MaxBatchSessions {
		t.Fatalf("connection %+v, %d results", res.Connection, len(res.Sessions))
	}
	renewed := 0
	for i, sr := range res.Sessions {
		if sr.ID != batch[i] {
			t.Fatalf("result %d is of %s, want %s", i, sr.ID, batch[i])
		}
		var ee *registry.EndedError
		switch sr.ID {
		case killed:
			if !errors.As(sr.Err, &ee) || ee.Ended.Reason != registry.EndKilled || ee.Ended.Message != "hung" {
				t.Errorf("killed session: %v", sr.Err)
			}
		case closed:
			if !errors.As(sr.Err, &ee) || ee.Ended.Reason != registry.EndClosed {
				t.Errorf("closed session: %v", sr.Err)
			}
		case elsewhere:
			if !errors.Is(sr.Err, registry.ErrPermissionDenied) || !strings.Contains(sr.Err.Error(), "was not opened through connection "+conn.ID) {
				t.Errorf("session of another token: %v", sr.Err)
			}
		case unknown:
			if !errors.Is(sr.Err, registry.ErrSessionNotFound) {
				t.Errorf("unknown session: %v", sr.Err)
			}
		default:
			if sr.Err != nil || sr.ExpiresInSeconds != ttl {
				t.Errorf("session %s: %d, %v", sr.ID, sr.ExpiresInSeconds, sr.Err)
			}
			renewed++
		}
	}
	if renewed != n-2 {
		t.Fatalf("%d renewed, want %d", renewed, n-2)
	}
	if _, err := r.HeartbeatBatch(ctx, other, registry.BatchHeartbeatRequest{Connection: conn.ID}); !errors.Is(err, registry.ErrPermissionDenied) {
		t.Fatalf("batch by another token: %v", err)
	}
	if res, err := r.HeartbeatBatch(ctx, admin, registry.BatchHeartbeatRequest{Connection: conn.ID}); err != nil || res.Connection.ExpiresInSeconds != ttl {
		t.Fatalf("batch of the connection alone, by an admin: %+v, %v", res, err)
	}
}

// TestConnectionInput: every new field and filter is validated, naming the field.
func TestConnectionInput(t *testing.T) {
	r := newRegistry(t)
	ctx := context.Background()
	_, app := token(t, r, "app-1", registry.RoleClient)
	_, ops := token(t, r, "ops", registry.RoleOperator)
	many := func(n int) map[string]string {
		m := map[string]string{}
		for i := range n {
			m[fmt.Sprintf("k%d", i)] = "v"
		}
		return m
	}
	id := strings.Repeat("ab", 16)
	regs := []struct {
		name string
		p    registry.Principal
		req  registry.ConnectionRequest
		want string
	}{
		{"direct kind", app, registry.ConnectionRequest{Kind: registry.ConnDirect, Service: "web"}, "kind: direct connections are created with their session"},
		{"unknown kind", app, registry.ConnectionRequest{Kind: "pooled", Service: "web"}, `kind: "pooled" is not a connection kind`},
		{"no service", app, registry.ConnectionRequest{}, "service: is required"},
		{"slash in service", app, registry.ConnectionRequest{Service: "a/b"}, "service: must not contain '/'"},
		{"long host", app, registry.ConnectionRequest{Service: "web", Host: strings.Repeat("h", 129)}, "host: is 129 bytes long"},
		{"control char in os", app, registry.ConnectionRequest{Service: "web", OS: "li\nux"}, "os: must not contain control"},
		{"negative pid", app, registry.ConnectionRequest{Service: "web", PID: -1}, "pid: must not be negative"},
		{"too many parameters", app, registry.ConnectionRequest{Service: "web", Parameters: many(33)}, "parameters: has 33 entries; at most 32"},
		{"long parameter key", app, registry.ConnectionRequest{Service: "web", Parameters: map[string]string{strings.Repeat("k", 65): "v"}}, "parameters: key"},
		{"bad parameter key", app, registry.ConnectionRequest{Service: "web", Parameters: map[string]string{"a b": "v"}}, `parameters: key "a b" must be 1-64 characters`},
		{"long parameter value", app, registry.ConnectionRequest{Service: "web", Parameters: map[string]string{"k": strings.Repeat("v", 257)}}, "parameters[k]: is 257 bytes long; at most 256"},
		{"control char in a value", app, registry.ConnectionRequest{Service: "web", Parameters: map[string]string{"k": "a\x00"}}, "parameters[k]: must not contain control"},
		{"ttl too long", app, registry.ConnectionRequest{Service: "web", TTLSeconds: 86401}, "ttl_seconds: 86401 is out of range"},
		{"negative service timeout", app, registry.ConnectionRequest{Service: "web", ServiceTimeoutSeconds: seconds(-1)}, "service_timeout_seconds: is -1; give 0 to 86400"},
		{"service timeout too long", app, registry.ConnectionRequest{Service: "web", ServiceTimeoutSeconds: seconds(86401)}, "service_timeout_seconds: is 86401"},
		{"operator may not register", ops, registry.ConnectionRequest{Service: "web"}, "may not register connections"},
	}
	for _, tc := range regs {
		t.Run("register/"+tc.name, func(t *testing.T) {
			if _, err := r.RegisterConnection(ctx, tc.p, tc.req); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("%v, want %q", err, tc.want)
			}
		})
	}
	if all, err := r.Connections(ctx, admin, registry.ConnectionFilter{}); err != nil || len(all) != 0 {
		t.Fatalf("refused registrations stored %+v, %v", all, err)
	}
	opens := []struct {
		name string
		req  registry.OpenRequest
		want string
	}{
		{"direct without service", registry.OpenRequest{Connection: &registry.DirectConnection{}}, "connection.service: is required"},
		{"direct with bad parameters", registry.OpenRequest{Connection: &registry.DirectConnection{Service: "ui", Parameters: many(40)}}, "connection.parameters: has 40 entries"},
		{"direct with negative pid", registry.OpenRequest{Connection: &registry.DirectConnection{Service: "ui", PID: -5}}, "connection.pid: must not be negative"},
		{"too many shared", registry.OpenRequest{Connections: slices.Repeat([]string{id}, 9)}, "connections: names 9 connections; a session may use at most 8"},
		{"bad shared id", registry.OpenRequest{Connections: []string{"app-1"}}, `connections[0]: "app-1" is not a connection id`},
		{"shared twice", registry.OpenRequest{Connections: []string{id, id}}, "connections[1]: names connection " + id + " a second time"},
	}
	for _, tc := range opens {
		t.Run("open/"+tc.name, func(t *testing.T) {
			tc.req.User, tc.req.Module = "alice", "sales"
			if _, err := r.Open(ctx, admin, tc.req); !errors.Is(err, registry.ErrInvalidArgument) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("%v, want %q", err, tc.want)
			}
		})
	}
	conn := register(t, r, app, registry.ConnectionRequest{Service: "web", TTLSeconds: 60})
	s1, s2 := strings.Repeat("1", 32), strings.Repeat("2", 32)
	batches := []struct {
		name string
		req  registry.BatchHeartbeatRequest
		want string
	}{
		{"no connection", registry.BatchHeartbeatRequest{}, `connection: "" is not a connection id`},
		{"too many sessions", registry.BatchHeartbeatRequest{Connection: conn.ID, Sessions: make([]string, registry.MaxBatchSessions+1)}, "sessions: has 10001 ids; at most 10000"},
		{"bad session id", registry.BatchHeartbeatRequest{Connection: conn.ID, Sessions: []string{s1, "x"}}, `sessions[1]: "x" is not a session id`},
		{"session twice", registry.BatchHeartbeatRequest{Connection: conn.ID, Sessions: []string{s1, s1}}, "sessions[1]: names session " + s1 + " a second time"},
		{"active not in sessions", registry.BatchHeartbeatRequest{Connection: conn.ID, Sessions: []string{s1}, Active: []string{s2}}, "active[0]: session \"" + s2 + "\" is not in sessions"},
	}
	for _, tc := range batches {
		t.Run("batch/"+tc.name, func(t *testing.T) {
			if _, err := r.HeartbeatBatch(ctx, app, tc.req); !errors.Is(err, registry.ErrInvalidArgument) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("%v, want %q", err, tc.want)
			}
		})
	}
	if _, err := r.HeartbeatBatch(ctx, app, registry.BatchHeartbeatRequest{Connection: id}); !errors.Is(err, registry.ErrConnectionGone) {
		t.Fatalf("batch of an unknown connection: %v", err)
	}
	policies := []struct {
		name  string
		scope registry.PolicyScope
		pname string
		spec  registry.PolicySpec
		want  string
	}{
		{"bad scope", "pool", "blue", registry.PolicySpec{IdleTimeoutSeconds: 60}, `scope: "pool" is not a policy scope`},
		{"bad name", registry.PolicyModule, "a/b", registry.PolicySpec{IdleTimeoutSeconds: 60}, "module: must not contain '/'"},
		{"negative idle", registry.PolicyTenant, "acme", registry.PolicySpec{IdleTimeoutSeconds: -1}, "idle_timeout_seconds: is -1"},
		{"lifetime too long", registry.PolicyTenant, "acme", registry.PolicySpec{MaxLifetimeSeconds: registry.MaxPolicySeconds + 1}, "max_lifetime_seconds: is 2592001"},
		{"nothing set", registry.PolicyTenant, "acme", registry.PolicySpec{}, "set at least one (or delete the policy)"},
	}
	for _, tc := range policies {
		t.Run("policy/"+tc.name, func(t *testing.T) {
			if _, err := r.SetPolicy(ctx, admin, tc.scope, tc.pname, tc.spec); !errors.Is(err, registry.ErrInvalidArgument) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("%v, want %q", err, tc.want)
			}
		})
	}
	if _, err := r.SetPolicy(ctx, ops, registry.PolicyTenant, "acme", registry.PolicySpec{IdleTimeoutSeconds: 60}); !errors.Is(err, registry.ErrPermissionDenied) {
		t.Fatalf("operator sets a policy: %v", err)
	}
	if _, err := r.PutUser(ctx, admin, "default", "alice", registry.UserSpec{Services: []string{"ok", ""}}); err == nil || !strings.Contains(err.Error(), "services[1]: is required") {
		t.Fatalf("empty service: %v", err)
	}
	if _, err := r.PutUser(ctx, admin, "default", "alice", registry.UserSpec{Services: slices.Repeat([]string{"s"}, 65)}); err == nil || !strings.Contains(err.Error(), "services: has 65 entries; at most 64") {
		t.Fatalf("too many services: %v", err)
	}
	filters := []struct {
		f    registry.ConnectionFilter
		want string
	}{
		{registry.ConnectionFilter{Kind: "pooled"}, `kind: "pooled" is not a connection kind`},
		{registry.ConnectionFilter{State: "zombie"}, `state: "zombie" is not a connection state`},
		{registry.ConnectionFilter{Service: "a/b"}, "service: must not contain '/'"},
	}
	for _, tc := range filters {
		if _, err := r.Connections(ctx, admin, tc.f); !errors.Is(err, registry.ErrInvalidArgument) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Connections(%+v): %v, want %q", tc.f, err, tc.want)
		}
	}
	if _, err := r.List(ctx, admin, registry.ListFilter{Connection: "nope"}); err == nil || !strings.Contains(err.Error(), `connection: "nope" is not a connection id`) {
		t.Errorf("list by a bad connection id: %v", err)
	}
	if _, err := r.GetConnection(ctx, admin, "nope"); err == nil || !strings.Contains(err.Error(), `id: "nope" is not a connection id`) {
		t.Errorf("get a bad connection id: %v", err)
	}
	if _, err := r.GetConnection(ctx, admin, id); !errors.Is(err, registry.ErrConnectionNotFound) {
		t.Errorf("get an unknown connection: %v", err)
	}
	if _, err := r.Cleanup(ctx, app, registry.CleanupRequest{}); !errors.Is(err, registry.ErrPermissionDenied) {
		t.Errorf("clean-up by a client token: %v", err)
	}
}

// TestUnseenConnectionDeath: a shared connection whose death no node recorded
// (here: its record of death is removed behind the registry's back) is found
// by clean-up, which records it, so its service timeout runs from then.
func TestUnseenConnectionDeath(t *testing.T) {
	r := newRegistry(t)
	ctx := context.Background()
	_, app := token(t, r, "app-1", registry.RoleClient)
	allow(t, r, "default", []string{"u0", "u1"}, []string{"web"})
	conn := register(t, r, app, registry.ConnectionRequest{Service: "web", TTLSeconds: 60, ServiceTimeoutSeconds: seconds(600)})
	for _, u := range []string{"u0", "u1"} {
		open(t, r, app, registry.OpenRequest{User: u, Module: "sales", Connections: []string{conn.ID}})
	}
	if _, err := r.DeleteConnection(ctx, app, conn.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := etcd.Client().Delete(ctx, "/roster/v1/conntombs/"+conn.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := r.GetConnection(ctx, app, conn.ID); !errors.Is(err, registry.ErrConnectionNotFound) {
		t.Fatalf("the connection is still known: %v", err)
	}
	rep, err := r.Cleanup(ctx, admin, registry.CleanupRequest{})
	if err != nil || len(rep.Ended) != 0 || len(rep.Skipped) != 2 || !strings.Contains(rep.Skipped[0].Why, "its death was not recorded; its service timeout of 10m0s runs from now") {
		t.Fatalf("clean-up: %+v, %v", rep, err)
	}
	c, err := r.GetConnection(ctx, app, conn.ID)
	if err != nil || c.State != registry.ConnDead || c.EndedBy != "cleanup" || c.Sessions != 2 {
		t.Fatalf("the death was not recorded: %+v, %v", c, err)
	}
	if rep, err := r.Cleanup(ctx, admin, registry.CleanupRequest{}); err != nil || len(rep.Skipped) != 2 || !strings.Contains(rep.Skipped[1].Why, "service timeout of 10m0s runs until") {
		t.Fatalf("the next round: %+v, %v", rep, err)
	}
}
