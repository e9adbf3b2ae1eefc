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
	clientv3 "go.etcd.io/etcd/client/v3"
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

// TestListExpiresIn: a listing takes expires_in_seconds from what its node
// has seen of each session's lease, and asks etcd nothing: the node that
// opened or renewed a session counts down from then, another node shows
// the full TTL until it renews the session itself or reads it with Get,
// which asks etcd and is exact.
func TestListExpiresIn(t *testing.T) {
	r := newRegistry(t)
	r2 := secondNode(t)
	ctx := context.Background()
	s := open(t, r, admin, registry.OpenRequest{User: "alice", Module: "sales", TTLSeconds: 30})
	listed := func(r *registry.Registry) int64 {
		t.Helper()
		page, err := r.List(ctx, admin, registry.ListFilter{})
		if err != nil || len(page.Sessions) != 1 || page.Sessions[0].ID != s.ID {
			t.Fatalf("List = %+v, %v", page, err)
		}
		return page.Sessions[0].ExpiresInSeconds
	}
	// Not a poll: the test needs whole seconds to pass between the open
	// and the listing.
	time.Sleep(2100 * time.Millisecond)
	opened := listed(r)
	if opened > 27 || opened < 20 {
		t.Errorf("the opening node lists %d s left 2.1 s after the open of a 30 s session, want 27 (less on a slow machine)", opened)
	}
	if got := listed(r2); got != 30 {
		t.Errorf("a node that saw no renewal lists %d s left, want the TTL, 30", got)
	}
	if _, err := r2.Heartbeat(ctx, admin, s.ID); err != nil {
		t.Fatal(err)
	}
	if got := listed(r2); got <= opened {
		t.Errorf("the node that renewed it lists %d s left, want more than the %d s the opening node listed before", got, opened)
	}
	unseen := listed(r)
	if unseen > opened {
		t.Errorf("the opening node lists %d s left after a renewal it did not see, want its own count, at most %d", unseen, opened)
	}
	g, err := r.Get(ctx, admin, s.ID)
	if err != nil || g.ExpiresInSeconds <= unseen {
		t.Fatalf("Get = %+v, %v: want etcd's TTL since the renewal, more than %d", g, err, unseen)
	}
	if got := listed(r); got < g.ExpiresInSeconds-1 {
		t.Errorf("after Get, the node lists %d s left, want what etcd said, %d", got, g.ExpiresInSeconds)
	}
}

// TestListUncached: a node that has cached none or some of the sessions
// (they were opened through another node) lists exactly what the node
// that opened them lists, page for page, whichever way it reads the
// records: ranges of a tenant's records (two tenants interleaved, so a
// range holds only some of a page), key by key, from its cache.
func TestListUncached(t *testing.T) {
	r := newRegistry(t)
	ctx := context.Background()
	for i := range 600 {
		open(t, r, admin, registry.OpenRequest{Tenant: []string{"default", "acme"}[i%2], User: fmt.Sprintf("u%d", i),
			Module: []string{"sales", "hr", "stock"}[i%3], Labels: map[string]string{"i": fmt.Sprint(i)}})
	}
	all := func(r *registry.Registry, f registry.ListFilter) []registry.Session {
		t.Helper()
		var out []registry.Session
		for {
			page, err := r.List(ctx, admin, f)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, page.Sessions...)
			if page.NextCursor == "" {
				return out
			}
			f.Cursor = page.NextCursor
		}
	}
	same := func(a, b []registry.Session) bool {
		if len(a) != len(b) {
			return false
		}
		for i := range a {
			x, y := a[i], b[i]
			x.ExpiresInSeconds, y.ExpiresInSeconds = 0, 0
			if fmt.Sprint(x) != fmt.Sprint(y) {
				return false
			}
		}
		return true
	}
	tests := []struct {
		name   string
		filter registry.ListFilter
	}{
		{"everything", registry.ListFilter{Limit: 70}},
		{"tenant", registry.ListFilter{Tenant: "acme", Limit: 70}},
		{"module", registry.ListFilter{Module: "hr", Limit: 70}},
		{"kind", registry.ListFilter{ClientKind: registry.KindUI, Limit: 70}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			other := secondNode(t)
			// It opens a few itself, which r has not cached.
			for i := range 5 {
				open(t, other, admin, registry.OpenRequest{User: fmt.Sprintf("o-%s-%d", tt.name, i), Module: "hr"})
			}
			want := all(r, tt.filter)
			for pass := range 2 { // uncached, then cached
				if got := all(other, tt.filter); !same(got, want) {
					t.Fatalf("pass %d: another node lists %d sessions, the opening node %d, or they differ", pass, len(got), len(want))
				}
			}
		})
	}
}

// TestListOlderIndexValues: index values an earlier version wrote as JSON
// (a cluster upgraded node by node holds both forms) filter a listing as
// the compact ones do.
func TestListOlderIndexValues(t *testing.T) {
	r := newRegistry(t)
	ctx := context.Background()
	kinds := []registry.ClientKind{registry.KindUI, registry.KindBackground, registry.KindAppServer}
	byID := map[string]registry.Session{}
	for i := range 12 {
		s := open(t, r, admin, registry.OpenRequest{User: fmt.Sprintf("old%02d", i), Module: "sales", ClientKind: kinds[i%3]})
		byID[s.ID] = s.Session
	}
	resp, err := etcd.Client().Get(ctx, "/roster/v1/ix/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	rewritten := 0
	for i, kv := range resp.Kvs {
		if i%2 == 1 {
			continue
		}
		s := byID[string(kv.Key[strings.LastIndexByte(string(kv.Key), '/')+1:])]
		old := fmt.Sprintf(`{"t":%q,"u":%q,"m":%q,"p":%q,"s":%q,"n":%q,"k":%q,"o":%q}`,
			s.Tenant, s.User, s.Module, s.Pool, s.Site, s.Node, s.ClientKind, "")
		if _, err := etcd.Client().Put(ctx, string(kv.Key), old, clientv3.WithLease(clientv3.LeaseID(kv.Lease))); err != nil {
			t.Fatal(err)
		}
		rewritten++
	}
	if rewritten < 30 {
		t.Fatalf("rewrote %d index values of %d", rewritten, len(resp.Kvs))
	}
	for _, f := range []registry.ListFilter{
		{ClientKind: registry.KindBackground},
		{Module: "sales", ClientKind: registry.KindAppServer},
		{Pool: "default", Node: "n1", Site: "fra"},
		{User: "old04", ClientKind: registry.KindBackground},
		{User: "old04", ClientKind: registry.KindUI},
	} {
		want := 0
		for _, s := range byID {
			if matches(s, f) {
				want++
			}
		}
		page, err := r.List(ctx, admin, f)
		if err != nil {
			t.Fatalf("List(%+v): %v", f, err)
		}
		if page.Total != want || len(page.Sessions) != want {
			t.Fatalf("List(%+v): total %d, %d sessions; want %d", f, page.Total, len(page.Sessions), want)
		}
		for _, s := range page.Sessions {
			if !matches(s, f) {
				t.Fatalf("List(%+v) shows %+v", f, s)
			}
		}
	}
}
