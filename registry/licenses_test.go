package registry_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/roster-dev/roster/registry"
)

func setSeats(t *testing.T, r *registry.Registry, tenant, module string, seats int) {
	t.Helper()
	if _, err := r.SetLicense(context.Background(), admin, tenant, module, registry.LicenseSpec{Seats: seats}); err != nil {
		t.Fatal(err)
	}
}

func inUse(t *testing.T, r *registry.Registry, tenant, module string) int {
	t.Helper()
	l, err := r.License(context.Background(), admin, tenant, module)
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Holders) != l.InUse {
		t.Fatalf("licence %s/%s: in use %d, holders %d", tenant, module, l.InUse, len(l.Holders))
	}
	return l.InUse
}

// TestSeatsRace: 200 simultaneous opens of distinct users against 50 seats, through
// two nodes: exactly 50 win, the others are refused with no_license_seat.
func TestSeatsRace(t *testing.T) {
	r := newRegistry(t)
	r2 := secondNode(t)
	setSeats(t, r, "default", "sales", 50)
	var mu sync.Mutex
	won, refused := 0, 0
	var other []error
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range 200 {
		reg := r
		if i%2 == 1 {
			reg = r2
		}
		wg.Go(func() {
			<-start
			_, err := reg.Open(context.Background(), admin, registry.OpenRequest{User: fmt.Sprintf("u%03d", i), Module: "sales", TTLSeconds: 60})
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				won++
			case errors.Is(err, registry.ErrNoLicenseSeat):
				refused++
			default:
				other = append(other, err)
			}
		})
	}
	close(start)
	wg.Wait()
	if won != 50 || refused != 150 || len(other) > 0 {
		t.Fatalf("%d won, %d refused, other errors %v; want 50 and 150", won, refused, other)
	}
	if n := inUse(t, r, "default", "sales"); n != 50 {
		t.Fatalf("in use %d, want 50", n)
	}
	page, err := r.List(context.Background(), admin, registry.ListFilter{Module: "sales"})
	if err != nil || page.Total != 50 {
		t.Fatalf("sessions: %d, %v", page.Total, err)
	}
}

// TestSeatFreedByEveryEnd: logout, kill and expiry each free the seat; the refusal
// names module, seats and holders.
func TestSeatFreedByEveryEnd(t *testing.T) {
	r := newRegistry(t)
	ctx := context.Background()
	setSeats(t, r, "default", "sales", 1)
	a := open(t, r, admin, registry.OpenRequest{User: "alice", Module: "sales", Host: "PC-17", TTLSeconds: 60})
	_, err := r.Open(ctx, admin, registry.OpenRequest{User: "bob", Module: "sales", TTLSeconds: 60})
	var ns *registry.NoSeatError
	if !errors.As(err, &ns) || ns.Seats != 1 || ns.InUse != 1 || !strings.Contains(err.Error(), "module sales: 1 of 1 seats in use, held by alice@PC-17") {
		t.Fatalf("open with no free seat: %v", err)
	}
	// Unlicensed modules are not counted.
	open(t, r, admin, registry.OpenRequest{User: "bob", Module: "crm", TTLSeconds: 60})

	if _, err := r.Kill(ctx, admin, a.ID, "hung"); err != nil {
		t.Fatal(err)
	}
	b := open(t, r, admin, registry.OpenRequest{User: "bob", Module: "sales", TTLSeconds: 60})
	if _, err := r.Logout(ctx, admin, b.ID); err != nil {
		t.Fatal(err)
	}
	open(t, r, admin, registry.OpenRequest{User: "carol", Module: "sales", TTLSeconds: 1}) // not heartbeated: it expires
	if n := inUse(t, r, "default", "sales"); n != 1 {
		t.Fatalf("in use %d, want carol's 1", n)
	}
	eventually(t, 15*time.Second, "the expired session's seat is free", func() bool {
		_, err := r.Open(ctx, admin, registry.OpenRequest{User: "dave", Module: "sales", TTLSeconds: 60})
		return err == nil
	})
}

// TestSeatsPerTenant: the same module's licences in two tenants are independent.
func TestSeatsPerTenant(t *testing.T) {
	r := newRegistry(t)
	ctx := context.Background()
	setSeats(t, r, "t1", "sales", 1)
	setSeats(t, r, "t2", "sales", 1)
	open(t, r, admin, registry.OpenRequest{Tenant: "t1", User: "alice", Module: "sales", TTLSeconds: 60})
	open(t, r, admin, registry.OpenRequest{Tenant: "t2", User: "alice", Module: "sales", TTLSeconds: 60})
	if _, err := r.Open(ctx, admin, registry.OpenRequest{Tenant: "t1", User: "bob", Module: "sales", TTLSeconds: 60}); !errors.Is(err, registry.ErrNoLicenseSeat) ||
		!strings.Contains(err.Error(), "in tenant t1") {
		t.Fatalf("second open in t1: %v", err)
	}
	all, err := r.Licenses(ctx, admin, "")
	if err != nil || len(all) != 2 || all[0].Tenant != "t1" || all[0].InUse != 1 || all[1].Tenant != "t2" || all[1].InUse != 1 {
		t.Fatalf("licences: %+v, %v", all, err)
	}
}

// TestSeatsLowered: lowering the seats below use ends nobody and blocks new logins
// until use drops below the new number, whichever seats are freed.
func TestSeatsLowered(t *testing.T) {
	r := newRegistry(t)
	ctx := context.Background()
	setSeats(t, r, "default", "sales", 4)
	var ids []string
	for i := range 4 {
		ids = append(ids, open(t, r, admin, registry.OpenRequest{User: fmt.Sprintf("u%d", i), Module: "sales", TTLSeconds: 60}).ID)
	}
	setSeats(t, r, "default", "sales", 2)
	if n := inUse(t, r, "default", "sales"); n != 4 {
		t.Fatalf("lowering the seats ended sessions: %d in use", n)
	}
	tryOpen := func(user string) error {
		_, err := r.Open(ctx, admin, registry.OpenRequest{User: user, Module: "sales", TTLSeconds: 60})
		return err
	}
	for i, id := range ids[:2] {
		if _, err := r.Logout(ctx, admin, id); err != nil {
			t.Fatal(err)
		}
		if err := tryOpen(fmt.Sprintf("new%d", i)); !errors.Is(err, registry.ErrNoLicenseSeat) {
			t.Fatalf("with %d of 2 seats in use an open gave %v", 3-i, err)
		}
	}
	if _, err := r.Logout(ctx, admin, ids[2]); err != nil {
		t.Fatal(err)
	}
	if err := tryOpen("new2"); err != nil {
		t.Fatalf("with 1 of 2 seats in use: %v", err)
	}
	if err := tryOpen("new3"); !errors.Is(err, registry.ErrNoLicenseSeat) {
		t.Fatalf("with 2 of 2 seats in use: %v", err)
	}
}

func TestLicenseInput(t *testing.T) {
	r := newRegistry(t)
	ctx := context.Background()
	_, op := token(t, r, "ops", registry.RoleOperator)
	for _, tc := range []struct {
		p              registry.Principal
		tenant, module string
		seats          int
		want           string
	}{
		{admin, "default", "sales", -1, "seats: is -1; give 0 to 100000"},
		{admin, "default", "sales", registry.MaxSeats + 1, "seats: is 100001"},
		{admin, "a/b", "sales", 1, "tenant"},
		{admin, "default", "", 1, "module"},
		{op, "default", "sales", 1, "may not set licences"},
	} {
		if _, err := r.SetLicense(ctx, tc.p, tc.tenant, tc.module, registry.LicenseSpec{Seats: tc.seats}); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("SetLicense(%q, %q, %d): %v, want %q", tc.tenant, tc.module, tc.seats, err, tc.want)
		}
	}
	if all, err := r.Licenses(ctx, op, ""); err != nil || len(all) != 0 {
		t.Fatalf("refused licences were stored: %+v, %v", all, err)
	}
	if err := r.DeleteLicense(ctx, admin, "default", "sales"); !errors.Is(err, registry.ErrLicenseNotFound) {
		t.Fatalf("delete of a missing licence: %v", err)
	}
	setSeats(t, r, "default", "sales", 0)
	if _, err := r.Open(ctx, admin, registry.OpenRequest{User: "alice", Module: "sales"}); !errors.Is(err, registry.ErrNoLicenseSeat) {
		t.Fatalf("open with 0 seats: %v", err)
	}
	if err := r.DeleteLicense(ctx, admin, "default", "sales"); err != nil {
		t.Fatal(err)
	}
	open(t, r, admin, registry.OpenRequest{User: "alice", Module: "sales"})
}
