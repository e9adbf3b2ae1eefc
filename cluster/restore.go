package cluster

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"go.etcd.io/etcd/etcdutl/v3/snapshot"
	"go.uber.org/zap"
)

// restoreRevisionBump is how far Restore moves etcd's revision forward; the revisions in
// between are marked compacted. A client that still holds a revision of the old cluster,
// such as the session watch of a node that was not restarted, then gets a compaction
// error instead of a history that silently went backwards. etcd's disaster-recovery guide
// uses the same figure.
const restoreRevisionBump = 1_000_000_000

// RestoreConfig configures Restore. Every string field is required.
type RestoreConfig struct {
	// SnapshotPath is the snapshot file, as 'roster snapshot save' (GET
	// /v1/cluster/snapshot) or etcd's own snapshot save writes it.
	SnapshotPath string
	// DataDir is the node's data dir (roster serve --data-dir); the member is built in
	// DataDir/etcd, which must not exist. DataDir is created, mode 0700, if missing.
	DataDir string
	// Name is the member's name: the name the node will start with.
	Name string
	// PeerListen is the host:port the member will serve peers on. It is written into the
	// new cluster's membership, so the node must start with the same peer address.
	PeerListen string
	// Logger receives this package's logs and EtcdLogger etcd's; nil discards them.
	Logger     *slog.Logger
	EtcdLogger *zap.Logger
}

// Validate reports the first problem with c, naming the field. It changes nothing and
// reads no file.
func (c *RestoreConfig) Validate() error {
	if c.SnapshotPath == "" {
		return errors.New("cluster: snapshot path is empty")
	}
	if c.DataDir == "" {
		return errors.New("cluster: data dir is empty")
	}
	if err := validateName(c.Name); err != nil {
		return fmt.Errorf("cluster: name %q: %w", c.Name, err)
	}
	if err := validateListen(c.PeerListen); err != nil {
		return fmt.Errorf("cluster: peer listen %q: %w", c.PeerListen, err)
	}
	return nil
}

// Restore builds a new etcd member in cfg.DataDir/etcd from a snapshot, to recover from
// the loss of quorum: a cluster of one voting member, cfg.Name at http://cfg.PeerListen,
// that holds the snapshot's keys and leases with the revision moved forward (see
// restoreRevisionBump). Starting the node on cfg.DataDir with the same name and peer
// address runs it; the other nodes then join it with empty data dirs.
//
// Restore works offline and contacts no one; no node may be using cfg.DataDir meanwhile.
// It refuses, with an error matching ErrMemberExists, when cfg.DataDir/etcd exists: that
// is the old member's data, and moving it aside is the operator's decision. It checks the
// snapshot's checksum (CheckSnapshot) before it writes anything, builds the member in a
// temporary directory beside cfg.DataDir/etcd and renames it into place only once it is
// complete, so a failed Restore leaves nothing behind. Last, it removes the node's state
// file cfg.DataDir/cluster.json, which names the old cluster; the node writes a new one
// when it starts.
func Restore(cfg RestoreConfig) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	log, elog := orDiscard(cfg.Logger), orNop(cfg.EtcdLogger)
	begin := time.Now()
	target := filepath.Join(cfg.DataDir, "etcd")
	if _, err := os.Lstat(target); err == nil {
		return fmt.Errorf("%w: %s exists and holds the old member's data: move it aside first (mv %s %s.old)",
			ErrMemberExists, target, target, target)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("cluster: restore: %w", err)
	}
	size, err := CheckSnapshot(cfg.SnapshotPath)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("cluster: restore: data dir: %w", err)
	}
	tmp, err := os.MkdirTemp(cfg.DataDir, "etcd.restoring-") // mode 0700, as etcd wants
	if err != nil {
		return fmt.Errorf("cluster: restore: %w", err)
	}
	defer func() {
		if tmp != "" {
			os.RemoveAll(tmp)
		}
	}()

	peer := peerURL(Config{PeerListen: cfg.PeerListen}).String()
	err = snapshot.NewV3(elog.Named("restore")).Restore(snapshot.RestoreConfig{
		SnapshotPath:        cfg.SnapshotPath,
		Name:                cfg.Name,
		OutputDataDir:       tmp,
		PeerURLs:            []string{peer},
		InitialCluster:      cfg.Name + "=" + peer,
		InitialClusterToken: initialClusterToken,
		RevisionBump:        restoreRevisionBump,
		MarkCompacted:       true,
	})
	if err != nil {
		return fmt.Errorf("cluster: restore %s: %w", cfg.SnapshotPath, err)
	}
	if err := os.Remove(filepath.Join(cfg.DataDir, stateFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("cluster: restore: remove the old cluster's state file: %w", err)
	}
	if err := os.Rename(tmp, target); err != nil {
		return fmt.Errorf("cluster: restore: %w", err)
	}
	tmp = ""
	if err := syncDir(cfg.DataDir); err != nil {
		return fmt.Errorf("cluster: restore: %w", err)
	}
	log.Info("restored etcd member from snapshot",
		slog.String("name", cfg.Name),
		slog.String("peer-url", peer),
		slog.String("data-dir", target),
		slog.String("snapshot", cfg.SnapshotPath),
		slog.Int64("snapshot-bytes", size),
		slog.Duration("took", time.Since(begin)))
	return nil
}

// CheckSnapshot checks that the file at path is a whole etcd snapshot: whole database
// pages followed by the SHA-256 checksum etcd appends to every snapshot it sends, and that
// the checksum matches. It returns the file's size. A file that fails the check gives an
// error matching ErrBadSnapshot; a database file copied out of a data dir fails it too, as
// it carries no checksum.
func CheckSnapshot(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, fmt.Errorf("cluster: snapshot: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, fmt.Errorf("cluster: snapshot: %w", err)
	}
	size := fi.Size()
	if !fi.Mode().IsRegular() {
		return 0, fmt.Errorf("%w: %s is not a regular file", ErrBadSnapshot, path)
	}
	// etcd's own test for a checksum (etcdutl's hasChecksum): database pages are
	// multiples of 512 bytes, so only the checksum makes the size uneven.
	if size <= sha256.Size || size%512 != sha256.Size {
		return size, fmt.Errorf("%w: %s (%d bytes) is not whole database pages and a checksum: it is truncated, or not a snapshot",
			ErrBadSnapshot, path, size)
	}
	h := sha256.New()
	if _, err := io.CopyN(h, f, size-sha256.Size); err != nil {
		return size, fmt.Errorf("cluster: snapshot %s: %w", path, err)
	}
	want := make([]byte, sha256.Size)
	if _, err := io.ReadFull(f, want); err != nil {
		return size, fmt.Errorf("cluster: snapshot %s: %w", path, err)
	}
	if !bytes.Equal(h.Sum(nil), want) {
		return size, fmt.Errorf("%w: %s: checksum mismatch: the file is damaged", ErrBadSnapshot, path)
	}
	return size, nil
}

// syncDir flushes a directory's entries, such as a rename within it, to disk.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
