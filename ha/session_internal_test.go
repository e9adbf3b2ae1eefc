package ha

import (
	"context"
	"errors"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	"github.com/roster-dev/roster/cluster/clustertest"
)

// TestWatchDeletedAfterCompaction: a watch from a compacted revision reads
// the key and watches on while it exists; a key deleted, or deleted and made
// again, counts as deleted.
func TestWatchDeletedAfterCompaction(t *testing.T) {
	m := clustertest.Start(t)
	cli := m.Client()
	ctx := context.Background()
	put := func(key string) int64 {
		t.Helper()
		resp, err := cli.Put(ctx, key, "v")
		if err != nil {
			t.Fatal(err)
		}
		return resp.Header.Revision
	}
	del := func(key string) {
		t.Helper()
		if _, err := cli.Delete(ctx, key); err != nil {
			t.Fatal(err)
		}
	}
	compact := func() {
		t.Helper()
		if _, err := cli.Compact(ctx, put("/other")); err != nil {
			t.Fatal(err)
		}
	}

	alive := put("/alive")
	gone := put("/gone")
	del("/gone")
	again := put("/again")
	del("/again")
	put("/again")
	compact()
	if err := watchDeletedFrom(ctx, cli, "/alive", alive+1); !errors.Is(err, rpctypes.ErrCompacted) {
		t.Fatalf("a watch from before the compaction = %v, want %v", err, rpctypes.ErrCompacted)
	}

	tests := []struct {
		name         string
		key          string
		created      int64
		deleteAfter  bool
		wantDeleted  bool
		wantCanceled bool
	}{
		{name: "still there", key: "/alive", created: alive, wantCanceled: true},
		{name: "deleted later", key: "/alive", created: alive, deleteAfter: true, wantDeleted: true},
		{name: "deleted before", key: "/gone", created: gone, wantDeleted: true},
		{name: "made again", key: "/again", created: again, wantDeleted: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
			defer cancel()
			done := make(chan error, 1)
			go func() { done <- watchDeleted(wctx, cli, tt.key, tt.created, tt.created+1) }()
			if tt.deleteAfter {
				del(tt.key)
			}
			err := <-done
			switch {
			case tt.wantDeleted && !errors.Is(err, errKeyDeleted):
				t.Fatalf("watchDeleted = %v, want the key deleted", err)
			case tt.wantCanceled && !errors.Is(err, context.DeadlineExceeded):
				t.Fatalf("watchDeleted = %v, want it to watch until ctx ends", err)
			}
		})
	}
}
