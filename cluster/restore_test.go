package cluster_test

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/roster-dev/roster/cluster"
	"github.com/roster-dev/roster/cluster/clustertest"
)

// saveSnapshot writes m's etcd snapshot, as Maintenance.Snapshot streams it, to path.
func saveSnapshot(t *testing.T, m *cluster.Member, path string) {
	t.Helper()
	rc, err := m.Client().Snapshot(t.Context())
	if err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	defer rc.Close()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := io.Copy(f, rc); err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
}

// TestRestore takes a snapshot of a real member, restores it into a new data dir and
// starts a member there: the keys and the lease of the snapshot are back, later writes
// are not, the member is alone in its cluster, and the revision moved forward.
func TestRestore(t *testing.T) {
	ctx := t.Context()
	cfg, err := clustertest.NewConfig(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cfg.Name = "n1"
	old, err := cluster.Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	cli := old.Client()
	for _, k := range []string{"/roster/a", "/roster/b"} {
		if _, err := cli.Put(ctx, k, "v"+k); err != nil {
			t.Fatal(err)
		}
	}
	lease, err := cli.Grant(ctx, 600)
	if err != nil {
		t.Fatal(err)
	}
	last, err := cli.Put(ctx, "/roster/leased", "x", clientv3.WithLease(lease.ID))
	if err != nil {
		t.Fatal(err)
	}
	snapRev := last.Header.Revision
	snap := filepath.Join(t.TempDir(), "backup.db")
	saveSnapshot(t, old, snap)
	if _, err := cli.Put(ctx, "/roster/after", "not in the snapshot"); err != nil {
		t.Fatal(err)
	}
	if err := old.Close(); err != nil {
		t.Fatal(err)
	}

	dataDir := filepath.Join(t.TempDir(), "roster-data")
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join(dataDir, "cluster.json")
	if err := os.WriteFile(stale, []byte(`{"cluster_id":"1","member_id":"2"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	peer, err := clustertest.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	rcfg := cluster.RestoreConfig{SnapshotPath: snap, DataDir: dataDir, Name: "n1", PeerListen: peer}
	if err := cluster.Restore(rcfg); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	if _, err := os.Stat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the old cluster's state file is still there: %v", err)
	}
	if entries, _ := filepath.Glob(filepath.Join(dataDir, "etcd.restoring-*")); len(entries) > 0 {
		t.Errorf("temporary directories left behind: %q", entries)
	}

	// A second Restore into the same data dir refuses: the member it built is there.
	if err := cluster.Restore(rcfg); !errors.Is(err, cluster.ErrMemberExists) || !strings.Contains(err.Error(), "move it aside first") {
		t.Errorf("second Restore: %v, want ErrMemberExists telling to move the member aside", err)
	}

	ncfg := cluster.DefaultConfig()
	ncfg.Name, ncfg.DataDir, ncfg.PeerListen = "n1", filepath.Join(dataDir, "etcd"), peer
	ncfg.StartTimeout = 30 * time.Second
	if ncfg.ClientListen, err = clustertest.FreeAddr(); err != nil {
		t.Fatal(err)
	}
	m, err := cluster.Start(ctx, ncfg)
	if err != nil {
		t.Fatalf("start the restored member: %v", err)
	}
	defer m.Close()
	cli = m.Client()
	for k, want := range map[string]string{"/roster/a": "v/roster/a", "/roster/b": "v/roster/b", "/roster/leased": "x", "/roster/after": ""} {
		resp, err := cli.Get(ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		got := ""
		if len(resp.Kvs) == 1 {
			got = string(resp.Kvs[0].Value)
		}
		if got != want {
			t.Errorf("%s = %q after restore, want %q", k, got, want)
		}
		if resp.Header.Revision != snapRev+1_000_000_000 {
			t.Errorf("revision %d after restore, want the snapshot's %d moved forward by 1e9", resp.Header.Revision, snapRev)
		}
	}
	// The revisions of the old cluster read as compacted, not as a different history.
	if _, err := cli.Get(ctx, "/roster/a", clientv3.WithRev(snapRev)); !errors.Is(err, rpctypes.ErrCompacted) {
		t.Errorf("read at the old revision %d: %v, want %v", snapRev, err, rpctypes.ErrCompacted)
	}
	ttl, err := cli.TimeToLive(ctx, lease.ID)
	if err != nil || ttl.TTL <= 0 {
		t.Errorf("lease after restore: TTL %v, %v; want it restored", ttl, err)
	}
	members, err := cli.MemberList(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(members.Members) != 1 || members.Members[0].Name != "n1" ||
		len(members.Members[0].PeerURLs) != 1 || members.Members[0].PeerURLs[0] != "http://"+peer {
		t.Errorf("members after restore = %v, want n1 alone at http://%s", members.Members, peer)
	}
	if _, err := cli.Put(ctx, "/roster/new", "writable"); err != nil {
		t.Errorf("the restored member does not take writes: %v", err)
	}
}

// TestRestoreRefuses covers the inputs Restore refuses before it writes anything.
func TestRestoreRefuses(t *testing.T) {
	m := clustertest.Start(t)
	if _, err := m.Client().Put(context.Background(), "/roster/k", "v"); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	good := filepath.Join(dir, "good.db")
	saveSnapshot(t, m, good)
	data, err := os.ReadFile(good)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	truncated := write("truncated.db", data[:len(data)-100])
	damaged := append([]byte(nil), data...)
	damaged[len(damaged)/2] ^= 0xff
	damagedPath := write("damaged.db", damaged)
	occupied := t.TempDir()
	if err := os.Mkdir(filepath.Join(occupied, "etcd"), 0o700); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name    string
		cfg     cluster.RestoreConfig
		wantIs  error
		wantErr string
	}{
		{name: "no snapshot path", cfg: cluster.RestoreConfig{Name: "n1", PeerListen: "127.0.0.1:7402"}, wantErr: "snapshot path is empty"},
		{name: "no data dir", cfg: cluster.RestoreConfig{SnapshotPath: good, Name: "n1", PeerListen: "127.0.0.1:7402"}, wantErr: "data dir is empty"},
		{name: "bad name", cfg: cluster.RestoreConfig{SnapshotPath: good, Name: "n 1", PeerListen: "127.0.0.1:7402"}, wantErr: `name "n 1": character ' ' not allowed`},
		{name: "unspecified peer host", cfg: cluster.RestoreConfig{SnapshotPath: good, Name: "n1", PeerListen: "0.0.0.0:7402"}, wantErr: `peer listen "0.0.0.0:7402": host 0.0.0.0 is unspecified`},
		{name: "peer without port", cfg: cluster.RestoreConfig{SnapshotPath: good, Name: "n1", PeerListen: "10.0.0.1"}, wantErr: `peer listen "10.0.0.1": must be host:port`},
		{name: "member exists", cfg: cluster.RestoreConfig{SnapshotPath: good, DataDir: occupied, Name: "n1", PeerListen: "127.0.0.1:7402"},
			wantIs: cluster.ErrMemberExists, wantErr: "move it aside first"},
		{name: "no such snapshot", cfg: cluster.RestoreConfig{SnapshotPath: filepath.Join(dir, "missing.db"), Name: "n1", PeerListen: "127.0.0.1:7402"},
			wantIs: os.ErrNotExist},
		{name: "truncated snapshot", cfg: cluster.RestoreConfig{SnapshotPath: truncated, Name: "n1", PeerListen: "127.0.0.1:7402"},
			wantIs: cluster.ErrBadSnapshot, wantErr: "truncated"},
		{name: "damaged snapshot", cfg: cluster.RestoreConfig{SnapshotPath: damagedPath, Name: "n1", PeerListen: "127.0.0.1:7402"},
			wantIs: cluster.ErrBadSnapshot, wantErr: "checksum mismatch"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := tt.cfg
			if cfg.DataDir == "" && tt.name != "no data dir" {
				cfg.DataDir = filepath.Join(t.TempDir(), "roster-data")
			}
			err := cluster.Restore(cfg)
			if err == nil || (tt.wantIs != nil && !errors.Is(err, tt.wantIs)) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Restore = %v; want an error matching %v containing %q", err, tt.wantIs, tt.wantErr)
			}
			if cfg.DataDir != "" && cfg.DataDir != occupied {
				if entries, _ := os.ReadDir(cfg.DataDir); len(entries) > 0 {
					t.Errorf("a refused Restore left %v in the data dir", entries)
				}
			}
		})
	}
}
