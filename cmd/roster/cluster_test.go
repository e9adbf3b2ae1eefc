package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/roster-dev/roster/cluster/clustertest"
)

// fakeSnapshot is a file in etcd's snapshot layout, whole database pages and
// their SHA-256, so that snapshot save's check passes without an etcd.
func fakeSnapshot(pages int) []byte {
	db := make([]byte, pages*4096)
	for i := range db {
		db[i] = byte(i * 7)
	}
	sum := sha256.Sum256(db)
	return append(db, sum[:]...)
}

func TestSnapshotSave(t *testing.T) {
	good := fakeSnapshot(64)
	digest := sha256.Sum256(good)
	damaged := append([]byte(nil), good...)
	damaged[100] ^= 1
	tests := []struct {
		name       string
		snapshot   []byte
		pace       time.Duration // between chunks of 16 KiB
		existing   bool          // FILE exists before the save
		args       []string      // after FILE
		wantCode   int
		wantStdout string
		wantStderr string
		wantSaved  bool
	}{
		{
			name: "saved", snapshot: good, wantSaved: true,
			wantStdout: "(262176 bytes) from ", wantStderr: "",
		},
		{name: "force replaces FILE", snapshot: good, existing: true, args: []string{"--force"}, wantSaved: true, wantStdout: "sha256 " + hex.EncodeToString(digest[:])},
		{name: "json", snapshot: good, args: []string{"-o", "json"}, wantSaved: true, wantStdout: `"sha256":"` + hex.EncodeToString(digest[:]) + `"`},
		{name: "progress on a long download", snapshot: good, pace: 100 * time.Millisecond, wantSaved: true, wantStderr: "roster: snapshot: "},
		{name: "a damaged snapshot is not saved", snapshot: damaged, wantCode: exitError, wantStderr: "failed its check, nothing was saved: not a valid etcd snapshot"},
		{name: "a truncated snapshot is not saved", snapshot: good[:len(good)-1], wantCode: exitError, wantStderr: "is truncated, or not a snapshot"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeAPI(t)
			f.mu.Lock()
			f.snapshot, f.chunk, f.pace = tt.snapshot, 16<<10, tt.pace
			f.mu.Unlock()
			path := filepath.Join(t.TempDir(), "backup.db")
			if tt.existing {
				if err := os.WriteFile(path, []byte("older"), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			code, stdout, stderr := runCLI(t, f.env(), append([]string{"snapshot", "save", path}, tt.args...)...)
			if code != tt.wantCode {
				t.Fatalf("exit status %d, want %d; stderr:\n%s", code, tt.wantCode, stderr)
			}
			if !strings.Contains(stdout, tt.wantStdout) || !strings.Contains(stderr, tt.wantStderr) {
				t.Errorf("stdout:\n%s\nstderr:\n%s\nwant %q and %q in them", stdout, stderr, tt.wantStdout, tt.wantStderr)
			}
			if _, err := os.Stat(path + ".part"); !os.IsNotExist(err) {
				t.Errorf("%s.part left behind: %v", path, err)
			}
			got, err := os.ReadFile(path)
			switch {
			case tt.wantSaved && (err != nil || string(got) != string(tt.snapshot)):
				t.Errorf("FILE holds %d bytes (%v), want the %d of the snapshot", len(got), err, len(tt.snapshot))
			case !tt.wantSaved && !os.IsNotExist(err):
				t.Errorf("FILE was written: %v", err)
			}
			if fi, err := os.Stat(path); tt.wantSaved && (err != nil || fi.Mode().Perm() != 0o600) {
				t.Errorf("FILE mode %v (%v), want 0600", fi.Mode(), err)
			}
		})
	}

	t.Run("json shape", func(t *testing.T) {
		f := newFakeAPI(t)
		f.mu.Lock()
		f.snapshot = good
		f.mu.Unlock()
		path := filepath.Join(t.TempDir(), "backup.db")
		code, stdout, stderr := runCLI(t, f.env(), "snapshot", "save", path, "-o", "json")
		var res struct {
			File     string `json:"file"`
			Bytes    int64  `json:"bytes"`
			SHA256   string `json:"sha256"`
			Endpoint string `json:"endpoint"`
		}
		if code != exitOK || json.Unmarshal([]byte(stdout), &res) != nil || res.File != path || res.Bytes != int64(len(good)) || res.Endpoint != f.URL {
			t.Fatalf("exit %d, stdout %s, stderr %s", code, stdout, stderr)
		}
	})
}

// TestSnapshotRestore restores a real etcd snapshot with the command and
// checks what it tells the operator; cluster's own tests start the member.
func TestSnapshotRestore(t *testing.T) {
	m := clustertest.Start(t)
	if _, err := m.Client().Put(t.Context(), "/roster/k", "v"); err != nil {
		t.Fatal(err)
	}
	snap := filepath.Join(t.TempDir(), "backup.db")
	rc, err := m.Client().Snapshot(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	data, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(snap, data, 0o600); err != nil {
		t.Fatal(err)
	}
	dataDir := filepath.Join(t.TempDir(), "roster-data")
	args := []string{"snapshot", "restore", snap, "--data-dir", dataDir, "--name", "n1", "--peer-listen", "127.0.0.1:17402", "--etcd-listen", "127.0.0.1:17401"}

	code, stdout, stderr := runCLI(t, nil, args...)
	if code != exitOK {
		t.Fatalf("exit status %d; stderr:\n%s", code, stderr)
	}
	for _, want := range []string{
		"restored " + snap + " into " + filepath.Join(dataDir, "etcd") + " as member n1 of a new one-member cluster",
		"roster serve --data-dir " + dataDir + " --name n1 --peer-listen 127.0.0.1:17402 --etcd-listen 127.0.0.1:17401\n",
		"--join",
	} {
		if !strings.Contains(stdout, want) {
			t.Errorf("stdout does not contain %q:\n%s", want, stdout)
		}
	}
	if wal, err := os.ReadDir(filepath.Join(dataDir, "etcd", "member", "wal")); err != nil || len(wal) == 0 {
		t.Errorf("no WAL in the restored member: %v", err)
	}

	code, _, stderr = runCLI(t, nil, args...)
	if code != exitError || !strings.Contains(stderr, "roster: data dir holds an etcd member: "+filepath.Join(dataDir, "etcd")+" exists") ||
		!strings.Contains(stderr, "move it aside first") {
		t.Errorf("second restore: exit status %d, stderr:\n%s\nwant 1 and advice to move the member aside", code, stderr)
	}
}
