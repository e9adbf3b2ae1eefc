package registry_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/roster-dev/roster/registry"
)

func TestPoolDeactivateRefusesLoginsOnly(t *testing.T) {
	r := newRegistry(t)
	ctx := context.Background()
	held := open(t, r, admin, registry.OpenRequest{User: "alice", Module: "sales", Pool: "blue"})
	open(t, r, admin, registry.OpenRequest{User: "bob", Module: "sales", Pool: "green"})

	pl, err := r.DeactivatePool(ctx, admin, "blue", "Release 26.4 goes live at 18:00")
	if err != nil || pl.State != registry.PoolInactive || pl.Sessions != 1 || pl.By != "admin" || pl.Since == nil {
		t.Fatalf("DeactivatePool = %+v, %v", pl, err)
	}
	_, err = r.Open(ctx, admin, registry.OpenRequest{User: "carol", Module: "sales", Pool: "blue"})
	var inactive *registry.PoolInactiveError
	if !errors.As(err, &inactive) || !errors.Is(err, registry.ErrPoolInactive) {
		t.Fatalf("open into the inactive pool: %v, want a PoolInactiveError", err)
	}
	want := "pool blue is inactive and accepts no new logins: Release 26.4 goes live at 18:00; active pools: green"
	if err.Error() != want {
		t.Fatalf("refusal:\n got %q\nwant %q", err.Error(), want)
	}
	// The session already open is untouched; other pools take logins.
	if _, err := r.Get(ctx, admin, held.ID); err != nil {
		t.Fatalf("the session open in blue: %v", err)
	}
	open(t, r, admin, registry.OpenRequest{User: "carol", Module: "sales", Pool: "green"})

	pools, err := r.Pools(ctx, admin)
	if err != nil {
		t.Fatal(err)
	}
	if len(pools) != 2 {
		t.Fatalf("Pools = %+v", pools)
	}
	if got := fmt.Sprintf("%s %s %d, %s %s %d", pools[0].Name, pools[0].State, pools[0].Sessions, pools[1].Name, pools[1].State, pools[1].Sessions); got != "blue inactive 1, green active 2" {
		t.Fatalf("Pools = %+v", pools)
	}

	if pl, err := r.ActivatePool(ctx, admin, "blue"); err != nil || pl.State != registry.PoolActive || pl.Message != "" {
		t.Fatalf("ActivatePool = %+v, %v", pl, err)
	}
	open(t, r, admin, registry.OpenRequest{User: "dave", Module: "sales", Pool: "blue"})
}

// TestPoolDeactivateRacesOpens: opens racing a deactivation either succeed before it or
// are refused; none succeeds after it.
func TestPoolDeactivateRacesOpens(t *testing.T) {
	r := newRegistry(t)
	ctx := context.Background()
	var wg sync.WaitGroup
	var mu sync.Mutex
	opened, refused := 0, 0
	start := make(chan struct{})
	for i := range 50 {
		wg.Go(func() {
			<-start
			_, err := r.Open(ctx, admin, registry.OpenRequest{User: fmt.Sprintf("u%d", i), Module: "sales", Pool: "blue"})
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				opened++
			case errors.Is(err, registry.ErrPoolInactive):
				refused++
			default:
				t.Errorf("open: %v", err)
			}
		})
	}
	close(start)
	if _, err := r.DeactivatePool(ctx, admin, "blue", ""); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	pl, err := r.Pool(ctx, admin, "blue")
	if err != nil {
		t.Fatal(err)
	}
	if opened+refused != 50 || pl.Sessions != opened {
		t.Fatalf("opened %d, refused %d, pool holds %d sessions", opened, refused, pl.Sessions)
	}
	if _, err := r.Open(ctx, admin, registry.OpenRequest{User: "late", Module: "sales", Pool: "blue"}); !errors.Is(err, registry.ErrPoolInactive) {
		t.Fatalf("open after the deactivation: %v", err)
	}
}

func TestPoolRulesAndInput(t *testing.T) {
	r := newRegistry(t)
	ctx := context.Background()
	client := registry.Principal{Role: registry.RoleClient, Name: "app"}
	if _, err := r.DeactivatePool(ctx, client, "blue", ""); !errors.Is(err, registry.ErrPermissionDenied) {
		t.Errorf("a client token deactivated a pool: %v", err)
	}
	if _, err := r.Pools(ctx, client); !errors.Is(err, registry.ErrPermissionDenied) {
		t.Errorf("a client token listed pools: %v", err)
	}
	if _, err := r.DeactivatePool(ctx, admin, "a/b", ""); err == nil || !strings.Contains(err.Error(), "pool: must not contain '/'") {
		t.Errorf("bad pool name: %v", err)
	}
	if _, err := r.DeactivatePool(ctx, admin, "blue", strings.Repeat("x", 2000)); err == nil || !strings.Contains(err.Error(), "message: is 2000 bytes long") {
		t.Errorf("long message: %v", err)
	}
	if pools, err := r.Pools(ctx, admin); err != nil || len(pools) != 0 {
		t.Errorf("refused changes left pools behind: %+v, %v", pools, err)
	}
}
