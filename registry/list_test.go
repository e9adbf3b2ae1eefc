package registry_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/roster-dev/roster/registry"
)

// TestPagination2500 opens 2,500 sessions and pages through them with
// every filter: each page is complete, no session is seen twice, totals
// are exact.
func TestPagination2500(t *testing.T) {
	if testing.Short() {
		t.Skip("opens 2,500 sessions")
	}
	r := newRegistry(t)
	ctx := context.Background()
	const n = 2500
	reqs := make(chan registry.OpenRequest)
	var wg sync.WaitGroup
	var failed error
	var mu sync.Mutex
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for req := range reqs {
				if _, err := r.Open(ctx, admin, req); err != nil {
					mu.Lock()
					failed = err
					mu.Unlock()
				}
			}
		}()
	}
	kinds := []registry.ClientKind{registry.KindUI, registry.KindBackground, registry.KindAppServer}
	var all []registry.OpenRequest
	for i := range n {
		// A user appears three times (i, i+1000, i+2000), each time in
		// another module, so the single-login rule lets all of them in.
		all = append(all, registry.OpenRequest{
			Tenant:     []string{"default", "acme"}[i%2],
			User:       fmt.Sprintf("user%04d", i%1000),
			Module:     []string{"sales", "hr", "stock", "fin", "bi"}[(i+i/1000)%5],
			Pool:       []string{"blue", "green"}[i/1250],
			ClientKind: kinds[i%3],
		})
		reqs <- all[i]
	}
	close(reqs)
	// want counts the opened sessions a filter matches.
	want := func(f registry.ListFilter) int {
		c := 0
		for _, q := range all {
			if matches(registry.Session{Tenant: q.Tenant, User: q.User, Module: q.Module, Pool: q.Pool, ClientKind: q.ClientKind, Node: "n1", Site: "fra"}, f) {
				c++
			}
		}
		return c
	}
	wg.Wait()
	if failed != nil {
		t.Fatalf("open: %v", failed)
	}

	tests := []struct {
		name   string
		filter registry.ListFilter
	}{
		{"everything", registry.ListFilter{}},
		{"tenant", registry.ListFilter{Tenant: "acme"}},
		{"user in all tenants", registry.ListFilter{User: "user0007"}},
		{"user in a tenant", registry.ListFilter{Tenant: "acme", User: "user0007"}},
		{"user and module", registry.ListFilter{Tenant: "acme", User: "user0007", Module: "stock"}},
		{"user and module in all tenants", registry.ListFilter{User: "user0007", Module: "fin"}},
		{"module", registry.ListFilter{Module: "sales"}},
		{"module in a tenant", registry.ListFilter{Tenant: "default", Module: "sales"}},
		{"pool", registry.ListFilter{Pool: "green"}},
		{"pool and kind", registry.ListFilter{Pool: "green", ClientKind: registry.KindBackground}},
		{"kind", registry.ListFilter{ClientKind: registry.KindAppServer}},
		{"node and site", registry.ListFilter{Node: "n1", Site: "fra"}},
		{"no match", registry.ListFilter{Node: "n9"}},
	}
	if want(registry.ListFilter{}) != n || want(registry.ListFilter{User: "user0007", Module: "fin"}) != 1 {
		t.Fatal("the test's own counting is wrong")
	}
	for _, tt := range tests {
		tt := struct {
			name   string
			filter registry.ListFilter
			want   int
		}{tt.name, tt.filter, want(tt.filter)}
		for _, limit := range []int{1000, 333} {
			t.Run(fmt.Sprintf("%s/limit %d", tt.name, limit), func(t *testing.T) {
				f := tt.filter
				f.Limit = limit
				seen := map[string]bool{}
				pages := 0
				for {
					page, err := r.List(ctx, admin, f)
					if err != nil {
						t.Fatalf("page %d: %v", pages, err)
					}
					pages++
					if page.Total != tt.want {
						t.Fatalf("total %d, want %d", page.Total, tt.want)
					}
					if page.NextCursor != "" && len(page.Sessions) != limit {
						t.Fatalf("page %d has %d sessions and a next cursor", pages, len(page.Sessions))
					}
					for _, s := range page.Sessions {
						if seen[s.ID] {
							t.Fatalf("session %s listed twice", s.ID)
						}
						seen[s.ID] = true
						if !matches(s, tt.filter) {
							t.Fatalf("session %+v does not match %+v", s, tt.filter)
						}
						if s.ExpiresInSeconds <= 0 {
							t.Fatalf("session %s has expires_in %d", s.ID, s.ExpiresInSeconds)
						}
					}
					if page.NextCursor == "" {
						break
					}
					f.Cursor = page.NextCursor
				}
				if len(seen) != tt.want {
					t.Fatalf("saw %d sessions, want %d", len(seen), tt.want)
				}
				if wantPages := max(1, (tt.want+limit-1)/limit); pages != wantPages {
					t.Fatalf("%d pages, want %d", pages, wantPages)
				}
			})
		}
	}

	t.Run("cursor of another listing", func(t *testing.T) {
		page, err := r.List(ctx, admin, registry.ListFilter{Pool: "blue", Limit: 10})
		if err != nil {
			t.Fatal(err)
		}
		_, err = r.List(ctx, admin, registry.ListFilter{Module: "sales", Cursor: page.NextCursor})
		var fe *registry.FieldError
		if !errors.As(err, &fe) || fe.Field != "cursor" {
			t.Fatalf("err = %v, want a cursor error", err)
		}
	})
}

func matches(s registry.Session, f registry.ListFilter) bool {
	eq := func(want, got string) bool { return want == "" || want == got }
	return eq(f.Tenant, s.Tenant) && eq(f.User, s.User) && eq(f.Module, s.Module) && eq(f.Pool, s.Pool) &&
		eq(f.Site, s.Site) && eq(f.Node, s.Node) && eq(string(f.ClientKind), string(s.ClientKind))
}
