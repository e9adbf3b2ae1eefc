package api

import (
	"context"
	"fmt"
	"io"
	"mime"
	"net/http"
	"time"

	"github.com/roster-dev/roster/cluster"
	"github.com/roster-dev/roster/registry"
)

// Cluster is what the API needs from the node's cluster layer.
type Cluster interface {
	// Members lists the cluster's nodes as this node sees them, sorted by name.
	Members(ctx context.Context) ([]cluster.MemberStatus, error)
	// Snapshot writes a point-in-time etcd snapshot (etcd's Maintenance.Snapshot stream) to w.
	Snapshot(ctx context.Context, w io.Writer) error
}

// DutyLeader tells which node runs the singleton duties (ha.Runner).
type DutyLeader interface {
	Leader(ctx context.Context) (string, error)
}

// errNoCluster answers the cluster endpoints of a node configured without a
// cluster layer.
var errNoCluster = fmt.Errorf("%w: node serves no cluster endpoints (it was started without a cluster layer); ask another node", registry.ErrUnavailable)

// clusterFailed makes an error of the cluster layer a 503: the layer fails
// when it cannot reach etcd or its peers, and another node may do better.
func clusterFailed(what string, err error) error {
	return fmt.Errorf("%w: %s: %v", registry.ErrUnavailable, what, err)
}

// clusterCall checks what every cluster route needs: one of roles, no query
// parameters, a cluster layer. It answers the error and returns false when
// one is missing.
func (s *server) clusterCall(w http.ResponseWriter, r *http.Request, p registry.Principal, action string, roles ...registry.Role) bool {
	err := registry.RequireRole(p, action, roles...)
	if err == nil {
		_, err = query(r)
	}
	if err == nil && s.cluster == nil {
		err = errNoCluster
	}
	if err != nil {
		s.fail(w, r, err)
		return false
	}
	return true
}

func (s *server) listMembers(w http.ResponseWriter, r *http.Request, p registry.Principal) {
	if !s.clusterCall(w, r, p, "list the cluster's members", registry.RoleOperator, registry.RoleAdmin) {
		return
	}
	members, err := s.cluster.Members(r.Context())
	if err != nil {
		s.fail(w, r, clusterFailed("list members", err))
		return
	}
	if members == nil {
		members = []cluster.MemberStatus{} // [] rather than null
	}
	answer := map[string]any{"members": members}
	if s.duties != nil {
		// Best effort: during quorum loss the members still answer.
		ctx, cancel := context.WithTimeout(r.Context(), time.Second)
		defer cancel()
		if name, err := s.duties.Leader(ctx); err == nil {
			answer["duty_leader"] = name
		}
	}
	writeJSON(w, http.StatusOK, answer)
}

// snapshot streams an etcd snapshot. The status and headers go out with the
// first byte, so a Snapshot that fails before it gets a JSON error; one that
// fails later can only abort the connection, which the client sees as a
// truncated body. The stream may take long: it is exempt from the server's
// read and write timeouts, and ends when the client goes away.
func (s *server) snapshot(w http.ResponseWriter, r *http.Request, p registry.Principal) {
	if !s.clusterCall(w, r, p, "take snapshots", registry.RoleAdmin) {
		return
	}
	rc := http.NewResponseController(w)
	// Errors mean the writer has no deadlines to clear (a test recorder).
	_ = rc.SetReadDeadline(time.Time{})
	_ = rc.SetWriteDeadline(time.Time{})

	begin := time.Now()
	name := "roster-" + s.node + "-" + begin.UTC().Format("20060102T150405Z") + ".db"
	sw := &streamWriter{w: w, start: func(h http.Header) {
		h.Set("Content-Type", "application/octet-stream")
		h.Set("Content-Disposition", mime.FormatMediaType("attachment", map[string]string{"filename": name}))
		h.Set("Cache-Control", "no-store")
	}}
	err := s.cluster.Snapshot(r.Context(), sw)
	switch {
	case err != nil && !sw.started:
		s.fail(w, r, clusterFailed("take snapshot", err))
	case err != nil:
		s.log.Warn("snapshot stream failed; aborting the connection",
			"remote", r.RemoteAddr, "bytes-sent", sw.n, "error", err)
		panic(http.ErrAbortHandler)
	case !sw.started:
		s.fail(w, r, clusterFailed("take snapshot", fmt.Errorf("the snapshot is empty")))
	default:
		s.log.Debug("snapshot sent", "remote", r.RemoteAddr, "bytes", sw.n, "took", time.Since(begin))
	}
}

// streamWriter calls start to set the headers, and sends them with status
// 200, when the first byte is written. n counts the bytes written.
type streamWriter struct {
	w       http.ResponseWriter
	start   func(http.Header)
	started bool
	n       int64
}

func (sw *streamWriter) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if !sw.started {
		sw.started = true
		sw.start(sw.w.Header())
		sw.w.WriteHeader(http.StatusOK)
	}
	n, err := sw.w.Write(p)
	sw.n += int64(n)
	return n, err
}
