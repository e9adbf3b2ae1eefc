package registry_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"testing"
	"time"

	"go.uber.org/goleak"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/roster-dev/roster/cluster"
	"github.com/roster-dev/roster/cluster/clustertest"
	"github.com/roster-dev/roster/registry"
)

// etcd is the real embedded etcd member every test of this package uses.
var etcd *cluster.Member

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "roster-registry-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	etcd, err = clustertest.StartIn(context.Background(), dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	etcd.Close()
	os.RemoveAll(dir)
	if code == 0 {
		if err := goleak.Find(goleak.IgnoreCurrent()); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

var admin = registry.AdminPrincipal("admin")

// newRegistry wipes every Roster key and lease and returns a started registry with
// short TTL bounds, closed when the test ends.
func newRegistry(t testing.TB, opts ...func(*registry.Config)) *registry.Registry {
	t.Helper()
	cli := etcd.Client()
	if _, err := cli.Delete(context.Background(), "/roster/", clientv3.WithPrefix()); err != nil {
		t.Fatalf("wipe: %v", err)
	}
	leases, err := cli.Leases(context.Background())
	if err != nil {
		t.Fatalf("wipe: %v", err)
	}
	for _, l := range leases.Leases {
		// A lease may run out between the listing and its revocation: revoking
		// the thousands a test left takes a while on a busy machine.
		if _, err := cli.Revoke(context.Background(), l.ID); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
			t.Fatalf("wipe: revoke: %v", err)
		}
	}
	cfg := registry.DefaultConfig()
	cfg.Client = cli
	cfg.Node, cfg.Site = "n1", "fra"
	cfg.MinTTL = time.Second
	for _, o := range opts {
		o(&cfg)
	}
	r, err := registry.New(cfg)
	if err != nil {
		t.Fatalf("registry.New: %v", err)
	}
	t.Cleanup(r.Close)
	if err := r.Start(context.Background()); err != nil {
		t.Fatalf("registry.Start: %v", err)
	}
	return r
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s did not happen within %s", what, within)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// token creates an API token of a role and returns its principal.
func token(t testing.TB, r *registry.Registry, name string, role registry.Role) (string, registry.Principal) {
	t.Helper()
	nt, err := r.CreateToken(context.Background(), admin, registry.TokenRequest{Name: name, Role: role})
	if err != nil {
		t.Fatalf("create token %s: %v", name, err)
	}
	p, err := r.Authenticate(context.Background(), nt.Token)
	if err != nil {
		t.Fatalf("authenticate %s: %v", name, err)
	}
	return nt.Token, p
}

// open opens a session or fails the test.
func open(t testing.TB, r *registry.Registry, p registry.Principal, req registry.OpenRequest) registry.OpenedSession {
	t.Helper()
	s, err := r.Open(context.Background(), p, req)
	if err != nil {
		t.Fatalf("open %+v: %v", req, err)
	}
	return s
}

// sessionPrincipal authenticates a session's own token.
func sessionPrincipal(t testing.TB, r *registry.Registry, s registry.OpenedSession) registry.Principal {
	t.Helper()
	p, err := r.Authenticate(context.Background(), s.Token)
	if err != nil {
		t.Fatalf("authenticate session token: %v", err)
	}
	return p
}
