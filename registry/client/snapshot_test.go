package client_test

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/roster-dev/roster/cluster"
	"github.com/roster-dev/roster/registry"
	"github.com/roster-dev/roster/registry/client"
)

// TestRealSnapshot: a real node streams its etcd member's snapshot, whole and
// with a valid checksum, after the client skips a dead endpoint; an operator
// token may not take it.
func TestRealSnapshot(t *testing.T) {
	_, n := realClient(t)
	c, _ := realClient(t, deadEndpoint(t), n.URL)
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "backup.db")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	written, err := c.Snapshot(ctx, f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	size, err := cluster.CheckSnapshot(path)
	if err != nil || size != written {
		t.Fatalf("CheckSnapshot = %d, %v; Snapshot wrote %d", size, err, written)
	}
	if c.Endpoint() != n.URL {
		t.Errorf("Endpoint() = %s, want the node %s remembered", c.Endpoint(), n.URL)
	}

	ops, err := c.CreateToken(ctx, registry.TokenRequest{Name: "snapshot-ops", Role: registry.RoleOperator})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if _, err := c.WithToken(ops.Token).Snapshot(ctx, &buf); !errors.Is(err, client.ErrPermissionDenied) || buf.Len() != 0 {
		t.Fatalf("operator's Snapshot: %v, %d bytes; want ErrPermissionDenied and nothing written", err, buf.Len())
	}
}

// streamEndpoint serves GET /v1/cluster/snapshot as data in chunks of size
// chunk, pause apart; after failAfter bytes (when >= 0) it drops the
// connection, or with hang it stops sending until the client goes away.
func streamEndpoint(t *testing.T, data []byte, chunk int, pause time.Duration, failAfter int, hang bool) (string, func() int) {
	t.Helper()
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.Header().Set("Content-Type", "application/octet-stream")
		for off := 0; off < len(data); off += chunk {
			if failAfter >= 0 && off >= failAfter {
				if hang {
					<-r.Context().Done()
					return
				}
				panic(http.ErrAbortHandler)
			}
			w.Write(data[off:min(off+chunk, len(data))])
			w.(http.Flusher).Flush()
			select {
			case <-time.After(pause):
			case <-r.Context().Done():
				return
			}
		}
	}))
	t.Cleanup(srv.Close)
	return srv.URL, func() int { return int(hits.Load()) }
}

func TestSnapshotStreaming(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789abcdef"), 64<<10) // 1 MiB
	const chunk = 64 << 10
	good := func(t *testing.T) (string, func() int) { return streamEndpoint(t, data, chunk, 0, -1, false) }
	tests := []struct {
		name        string
		first       func(t *testing.T) (string, func() int)
		second      func(t *testing.T) (string, func() int) // nil: only first
		timeout     time.Duration                           // the HTTP client's; 0 keeps the default
		wantWritten int
		wantIs      error
		wantErr     string
		wantSecond  bool // the second endpoint was asked
	}{
		{name: "whole", first: good, wantWritten: len(data)},
		{name: "outlasts the client timeout while data flows", timeout: 300 * time.Millisecond,
			first: func(t *testing.T) (string, func() int) {
				return streamEndpoint(t, data[:10*chunk], chunk, 100*time.Millisecond, -1, false)
			}, wantWritten: 10 * chunk},
		{name: "skips a dead endpoint", first: refused, second: good, wantWritten: len(data), wantSecond: true},
		{name: "skips a 503", first: unavailable503, second: good, wantWritten: len(data), wantSecond: true},
		{name: "a 403 is the answer", first: func(t *testing.T) (string, func() int) {
			return statusEndpoint(t, 403, `{"error":{"code":"permission_denied","message":"token \"ops\" (role operator) may not take snapshots"}}`), func() int { return 0 }
		}, second: good, wantIs: client.ErrPermissionDenied, wantErr: "may not take snapshots"},
		{name: "no retry once the request reached a node", first: eofEndpoint, second: good, wantErr: "EOF"},
		{name: "dropped mid-stream", first: func(t *testing.T) (string, func() int) {
			return streamEndpoint(t, data, chunk, 0, 4*chunk, false)
		}, second: good, wantWritten: 4 * chunk, wantErr: "after 262144 bytes: discard them"},
		{name: "stalled mid-stream", timeout: 200 * time.Millisecond, first: func(t *testing.T) (string, func() int) {
			return streamEndpoint(t, data, chunk, 0, 2*chunk, true)
		}, wantWritten: 2 * chunk, wantErr: "no data for 200ms"},
		{name: "every node down", first: refused, second: unavailable503, wantIs: client.ErrUnavailable, wantErr: "cannot reach etcd", wantSecond: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			first, _ := tt.first(t)
			eps := []string{first}
			secondHits := func() int { return 0 }
			if tt.second != nil {
				var second string
				second, secondHits = tt.second(t)
				eps = append(eps, second)
			}
			cfg := client.Config{Endpoints: eps, Token: "rt1.admin"}
			if tt.timeout > 0 {
				cfg.HTTPClient = &http.Client{Timeout: tt.timeout}
			}
			c, err := client.New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer c.CloseIdleConnections()
			var buf bytes.Buffer
			written, err := c.Snapshot(context.Background(), &buf)
			if int(written) != tt.wantWritten || buf.Len() != tt.wantWritten {
				t.Errorf("wrote %d bytes (buffer %d), want %d", written, buf.Len(), tt.wantWritten)
			}
			if tt.wantWritten == len(data) && !bytes.Equal(buf.Bytes(), data) {
				t.Error("the bytes differ from the snapshot sent")
			}
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Snapshot: %v", err)
				}
			} else if err == nil || !strings.Contains(err.Error(), tt.wantErr) ||
				(tt.wantIs != nil && !errors.Is(err, tt.wantIs)) {
				t.Fatalf("Snapshot error %v; want one matching %v containing %q", err, tt.wantIs, tt.wantErr)
			}
			if asked := secondHits() > 0; tt.second != nil && asked != tt.wantSecond {
				t.Errorf("second endpoint asked: %v, want %v", asked, tt.wantSecond)
			}
		})
	}
}

func TestSnapshotCancel(t *testing.T) {
	data := bytes.Repeat([]byte{1}, 1<<20)
	ep, _ := streamEndpoint(t, data, 1024, 50*time.Millisecond, -1, false)
	c := newClient(t, ep)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	var buf bytes.Buffer
	if _, err := c.Snapshot(ctx, &buf); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Snapshot error %v, want one matching context.DeadlineExceeded", err)
	}
}
