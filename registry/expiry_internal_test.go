package registry

import (
	"slices"
	"testing"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestTakeSessionWatch: of a response of the session watch, only the session
// deletions without a tombstone put at their revision are expiries to write a
// tombstone for; every session deletion is evicted from the cache, and
// nothing else of the watched range (an open, a tombstone, a shutdown
// request) is either. An expiry carries the record this node had cached (the
// watch asks for no previous values), else nil for recordExpiries to read.
func TestTakeSessionWatch(t *testing.T) {
	del := func(id string, rev int64) *clientv3.Event {
		return &clientv3.Event{Type: mvccpb.DELETE, Kv: &mvccpb.KeyValue{Key: []byte(sessionKey(id)), ModRevision: rev}}
	}
	put := func(key string, rev int64) *clientv3.Event {
		return &clientv3.Event{Type: mvccpb.PUT, Kv: &mvccpb.KeyValue{Key: []byte(key), Value: []byte("{}"), CreateRevision: rev, ModRevision: rev}}
	}
	tests := []struct {
		name    string
		events  []*clientv3.Event
		expired []string // the deletions taken as expiries
		evicted []string // the cached sessions gone from the cache
	}{
		{"a kill: its tombstone comes at its revision", []*clientv3.Event{del("a", 10), put(tombstoneKey("a"), 10)}, nil, []string{"a"}},
		{"the tombstone first", []*clientv3.Event{put(tombstoneKey("a"), 10), del("a", 10)}, nil, []string{"a"}},
		{"a lease expiry", []*clientv3.Event{del("a", 10)}, []string{"a"}, []string{"a"}},
		{"another session's tombstone", []*clientv3.Event{del("a", 10), put(tombstoneKey("b"), 10)}, []string{"a"}, []string{"a"}},
		{"a tombstone of a later revision", []*clientv3.Event{del("a", 10), put(tombstoneKey("a"), 11)}, []string{"a"}, []string{"a"}},
		{"ends in one transaction", []*clientv3.Event{del("a", 10), del("b", 10), put(tombstoneKey("a"), 10), put(tombstoneKey("b"), 10)}, nil, []string{"a", "b"}},
		{"an open", []*clientv3.Event{put(sessionKey("a"), 10)}, nil, nil},
		{"a shutdown request and a token", []*clientv3.Event{put(shutdownKey("x"), 10), put(tokenHashKey("h"), 11)}, nil, nil},
		{"a tombstone's lease ran out", []*clientv3.Event{{Type: mvccpb.DELETE, Kv: &mvccpb.KeyValue{Key: []byte(tombstoneKey("a")), ModRevision: 10}}}, nil, nil},
		{"a lease expiry of a session not cached", []*clientv3.Event{del("c", 10)}, []string{"c"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &Registry{live: map[string]*record{}}
			for _, id := range []string{"a", "b"} {
				r.live[id] = &record{Session: Session{ID: id, User: "u-" + id}}
			}
			var ended []deletion
			var next int64
			done, _ := r.takeSessionWatch(clientv3.WatchResponse{Events: tt.events}, &ended, &next)
			if done {
				t.Fatal("done after an ordinary response")
			}
			var expired []string
			for _, d := range ended {
				expired = append(expired, d.id)
				// The record comes from the cache as it was before the eviction.
				if want := "u-" + d.id; d.id == "c" && d.rec != nil || d.id != "c" && (d.rec == nil || d.rec.User != want) {
					t.Fatalf("expiry of %s carries record %+v, want the cached one (none for c)", d.id, d.rec)
				}
			}
			if !slices.Equal(expired, tt.expired) {
				t.Fatalf("taken as expiries %v, want %v", expired, tt.expired)
			}
			var evicted []string
			for _, id := range []string{"a", "b"} {
				if r.live[id] == nil {
					evicted = append(evicted, id)
				}
			}
			if !slices.Equal(evicted, tt.evicted) {
				t.Fatalf("evicted %v, want %v", evicted, tt.evicted)
			}
			if want := tt.events[len(tt.events)-1].Kv.ModRevision + 1; next != want {
				t.Fatalf("next %d, want %d", next, want)
			}
		})
	}
}
