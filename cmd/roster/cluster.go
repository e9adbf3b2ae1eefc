package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spf13/pflag"

	"github.com/roster-dev/roster/cluster"
)

// progressEvery is how often snapshot save reports the bytes received so far.
const progressEvery = time.Second

func clusterCommands() []*command {
	return []*command{
		{
			path: "members", summary: "list the cluster's nodes: gossip state, etcd role, leader, health",
			help: `List the cluster's nodes as the answering node sees them, sorted by name. Needs an
operator or admin token.

Columns:
  GOSSIP   alive, suspect, dead or left; unknown for an etcd member that no node claims
  ETCD     voter, learner, none (no etcd member: a client of the voters) or external
  LEADER   yes on the node that runs the etcd leader
  HEALTHY  yes when gossip says alive and the node reports that it serves
  API      the node's API URL

-o json adds each node's gossip address, etcd member id and peer URL.`,
			setup: func(fs *pflag.FlagSet) action { return runMembers },
		},
		{
			path: "snapshot save", args: "FILE", nargs: 1, summary: "save a snapshot of the cluster's etcd data (a backup)",
			help: `Save a point-in-time snapshot of the cluster's etcd data - every session, user and
token hash - to FILE. Needs an admin token. The first node in --endpoints that answers
takes it from its etcd client; etcd serves snapshots without a leader, so this works
from a surviving node after quorum is lost too. Save regularly while the cluster is
healthy: a snapshot is what 'roster snapshot restore' recovers from.

The snapshot is written to FILE.part, its etcd checksum checked, synced to disk and
renamed to FILE, so FILE is whole or absent. An existing FILE is kept unless --force.
Progress goes to stderr every second; the last line gives the size and the SHA-256 of
FILE. FILE holds token hashes and every session: it is created with mode 0600.`,
			setup: func(fs *pflag.FlagSet) action {
				force := fs.Bool("force", false, "replace FILE if it exists")
				return func(ctx context.Context, inv *invocation) error { return runSnapshotSave(ctx, inv, *force) }
			},
		},
		{
			path: "snapshot restore", args: "FILE --data-dir DIR --name NAME --peer-listen HOST:PORT", nargs: 1,
			summary: "build a one-member cluster from a snapshot, offline (quorum-loss recovery)",
			help: `Build a new etcd member in DIR/etcd from the snapshot FILE: a cluster of one voting
member that holds the snapshot's sessions, users and tokens. It works offline: it
contacts no node and needs no token. Stop the node that uses DIR first.

DIR/etcd must not exist: move the old member's data aside first
(mv DIR/etcd DIR/etcd.old). --name and --peer-listen must be the values the node will
run with: the peer address is written into the new cluster's membership. The node's
state file DIR/cluster.json, which names the old cluster, is removed.

Then start the node with 'roster serve --data-dir DIR --name NAME --peer-listen
HOST:PORT' and its other flags: it runs as a one-member cluster. On every other node,
move DIR/etcd aside and start it with --join: the nodes join as learners and are
promoted to voters automatically.`,
			setup: func(fs *pflag.FlagSet) action {
				f := &restoreFlags{}
				fs.StringVar(&f.dataDir, "data-dir", "", "the node's data `DIR` (roster serve --data-dir); the member goes to DIR/etcd (required)")
				fs.StringVar(&f.name, "name", "", "the node's `NAME` (roster serve --name) (required)")
				fs.StringVar(&f.peerListen, "peer-listen", "", "the node's etcd peer address `HOST:PORT` (roster serve --peer-listen) (required)")
				fs.StringVar(&f.etcdListen, "etcd-listen", "", "the node's etcd client address `HOST:PORT`, to check it and show it in the serve command")
				return func(ctx context.Context, inv *invocation) error { return runSnapshotRestore(inv, f) }
			},
		},
	}
}

func runMembers(ctx context.Context, inv *invocation) error {
	data, err := inv.do(ctx, http.MethodGet, "/v1/cluster/members", nil, nil)
	return show(inv, data, err, func(res struct {
		Members    []cluster.MemberStatus `json:"members"`
		DutyLeader *string                `json:"duty_leader"`
	}) {
		renderMembers(inv.stdout, res.Members)
		if res.DutyLeader != nil {
			leader := *res.DutyLeader
			if leader == "" {
				leader = "none (being elected)"
			}
			fmt.Fprintf(inv.stdout, "\nduty leader (shutdown deadlines): %s\n", leader)
		}
	})
}

// runSnapshotSave downloads the snapshot to FILE.part and renames it to FILE
// once it is whole, checked and on disk.
func runSnapshotSave(ctx context.Context, inv *invocation, force bool) error {
	path := inv.args[0]
	if path == "" {
		return usagef(inv.cmd.path, "FILE is empty")
	}
	if !force && exists(path) {
		return usagef(inv.cmd.path, "%s exists: give --force to replace it, or another FILE", path)
	}
	c, err := inv.apiClient()
	if err != nil {
		return err
	}
	part := path + ".part"
	f, err := os.OpenFile(part, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	saved := false
	defer func() {
		if !saved {
			f.Close()
			os.Remove(part)
		}
	}()

	sum := sha256.New()
	var got atomic.Int64
	stop := inv.reportProgress(&got)
	_, err = c.Snapshot(ctx, io.MultiWriter(f, sum, countTo{&got}))
	stop()
	if err != nil {
		return inv.hint(err)
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	size, err := cluster.CheckSnapshot(part)
	if err != nil {
		return fmt.Errorf("the snapshot from %s failed its check, nothing was saved: %s", c.Endpoint(), strings.TrimPrefix(err.Error(), "cluster: "))
	}
	if !force && exists(path) {
		return fmt.Errorf("%s appeared during the download: give --force to replace it, or another FILE; nothing was saved", path)
	}
	if err := os.Rename(part, path); err != nil {
		return err
	}
	saved = true
	if err := syncDir(filepath.Dir(path)); err != nil {
		return err
	}
	digest := hex.EncodeToString(sum.Sum(nil))
	if inv.g.json() {
		b, _ := json.Marshal(map[string]any{"file": path, "bytes": size, "sha256": digest, "endpoint": c.Endpoint()})
		inv.printJSON(b)
		return nil
	}
	fmt.Fprintf(inv.stdout, "saved %s: %s (%d bytes) from %s, sha256 %s\n", path, formatBytes(size), size, c.Endpoint(), digest)
	return nil
}

// reportProgress prints the bytes counted in got to stderr every
// progressEvery, once some have come, until the returned stop is called;
// stop waits for the printer to finish. A download shorter than
// progressEvery prints nothing.
func (inv *invocation) reportProgress(got *atomic.Int64) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(progressEvery)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				if n := got.Load(); n > 0 {
					fmt.Fprintf(inv.stderr, "roster: snapshot: %s received\n", formatBytes(n))
				}
			}
		}
	})
	return func() {
		close(done)
		wg.Wait()
	}
}

// countTo is a writer that only adds the number of bytes written to n.
type countTo struct{ n *atomic.Int64 }

func (c countTo) Write(p []byte) (int, error) {
	c.n.Add(int64(len(p)))
	return len(p), nil
}

// restoreFlags are the flags of snapshot restore.
type restoreFlags struct {
	dataDir, name, peerListen, etcdListen string
}

// restoreFlagNames names the flag behind each field in cluster's
// validation errors. Where two names match at one place the first wins.
var restoreFlagNames = strings.NewReplacer(
	"cluster: client listen and peer listen are both ", "--etcd-listen and --peer-listen are both ",
	"cluster: client listen ", "--etcd-listen ",
	"cluster: peer listen ", "--peer-listen ",
	"cluster: name ", "--name ",
)

func runSnapshotRestore(inv *invocation, f *restoreFlags) error {
	path := inv.cmd.path
	switch {
	case inv.args[0] == "":
		return usagef(path, "FILE is empty")
	case f.dataDir == "":
		return usagef(path, "--data-dir is required: the data dir the node runs with (roster serve --data-dir)")
	case f.name == "":
		return usagef(path, "--name is required: the name the node runs with (roster serve --name)")
	case f.peerListen == "":
		return usagef(path, "--peer-listen is required: the etcd peer address the node runs with (roster serve --peer-listen)")
	}
	rc := cluster.RestoreConfig{SnapshotPath: inv.args[0], DataDir: f.dataDir, Name: f.name, PeerListen: f.peerListen}
	if err := rc.Validate(); err != nil {
		return usagef(path, "%s", restoreFlagNames.Replace(err.Error()))
	}
	if f.etcdListen != "" {
		// The member must start with these: check them as the node will.
		mc := cluster.DefaultConfig()
		mc.Name, mc.DataDir, mc.ClientListen, mc.PeerListen = f.name, filepath.Join(f.dataDir, "etcd"), f.etcdListen, f.peerListen
		if err := mc.Validate(); err != nil {
			return usagef(path, "%s", restoreFlagNames.Replace(err.Error()))
		}
	}
	if err := cluster.Restore(rc); err != nil {
		if errors.Is(err, cluster.ErrMemberExists) {
			return errors.New(strings.TrimPrefix(err.Error(), "cluster: "))
		}
		return err
	}
	serve := "roster serve --data-dir " + f.dataDir + " --name " + f.name + " --peer-listen " + f.peerListen
	if f.etcdListen != "" {
		serve += " --etcd-listen " + f.etcdListen
	}
	fmt.Fprintf(inv.stdout, `restored %s into %s as member %s of a new one-member cluster
next, start this node with the same name and peer address (and its other flags):
  %s
then, on every other node, move its etcd data aside (mv <data-dir>/etcd <data-dir>/etcd.old)
and start it with --join <this node's gossip address>
`, inv.args[0], filepath.Join(f.dataDir, "etcd"), f.name, serve)
	return nil
}

// exists reports whether something is at path (a dangling symlink counts).
func exists(path string) bool {
	_, err := os.Lstat(path)
	return !errors.Is(err, fs.ErrNotExist)
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
