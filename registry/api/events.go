package api

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/roster-dev/roster/registry"
)

// DefaultEventKeepAlive is how often an idle event stream sends a comment,
// so that proxies and clients can tell a quiet stream from a dead one.
const DefaultEventKeepAlive = 15 * time.Second

func (s *server) events(w http.ResponseWriter, r *http.Request, p registry.Principal) {
	q, err := query(r, "tenant", "pool", "module", "since")
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.stream(w, r, p, registry.EventFilter{Tenant: q.Get("tenant"), Pool: q.Get("pool"), Module: q.Get("module")}, q)
}

func (s *server) sessionEvents(w http.ResponseWriter, r *http.Request, p registry.Principal) {
	q, err := query(r, "since")
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.stream(w, r, p, registry.EventFilter{SessionID: r.PathValue("id")}, q)
}

// resumeFrom is the first revision a stream sends: after the Last-Event-ID
// header, which a reconnecting EventSource sends, or else after the since
// parameter; 0 (from now on) when neither is given.
func resumeFrom(r *http.Request, q url.Values) (int64, error) {
	v, field := r.Header.Get("Last-Event-ID"), "Last-Event-ID"
	if v == "" {
		v, field = q.Get("since"), "since"
	}
	if v == "" {
		return 0, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return 0, &registry.FieldError{Field: field, Problem: fmt.Sprintf("%q is not an event id (a revision: a number from 0)", v)}
	}
	return n + 1, nil
}

// stream serves an event stream as Server-Sent Events. Errors of the setup
// (permission, filter, not found, an ended session resumed after its end)
// are JSON answers; once the stream runs it ends only by closing: when the
// client goes away, the server shuts down, the session's end was sent, or
// the node's watch failed (the client then resumes on another node with
// Last-Event-ID). Like the snapshot, the stream is exempt from the server's
// read and write timeouts.
func (s *server) stream(w http.ResponseWriter, r *http.Request, p registry.Principal, f registry.EventFilter, q url.Values) {
	from, err := resumeFrom(r, q)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	stop := context.AfterFunc(s.shutdownContext(r), cancel)
	defer stop()
	st, err := s.reg.Events(ctx, p, f, from)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	defer st.Close()

	rc := http.NewResponseController(w)
	// Errors mean the writer has no deadlines to clear (a test recorder).
	_ = rc.SetReadDeadline(time.Time{})
	_ = rc.SetWriteDeadline(time.Time{})
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no") // nginx: pass each event on at once
	w.WriteHeader(http.StatusOK)

	// The stream's start is the client's Last-Event-ID until an event comes,
	// so a stream broken before its first event resumes without a gap.
	sent := st.Start()
	if fmt.Fprintf(w, "id: %d\n\n", sent); rc.Flush() != nil {
		return
	}
	keepAlive := time.NewTicker(s.keepAlive)
	defer keepAlive.Stop()
	var buf, data bytes.Buffer
	enc := json.NewEncoder(&data)
	enc.SetEscapeHTML(false)
	for {
		buf.Reset()
		data.Reset()
		select {
		case e, ok := <-st.Events():
			if !ok {
				if err := st.Err(); err != nil {
					s.log.Debug("event stream ended; the client resumes elsewhere", "path", r.URL.Path, "error", err)
				}
				return
			}
			_ = enc.Encode(e) // one line: JSON escapes every line break
			if !e.More {
				// The id only once every event of its revision is sent: a
				// client resumes after it.
				fmt.Fprintf(&buf, "id: %d\n", e.Rev)
				sent = e.Rev
			}
			fmt.Fprintf(&buf, "event: %s\ndata: %s\n\n", e.Type, bytes.TrimSuffix(data.Bytes(), []byte("\n")))
		case <-keepAlive.C:
			// Every event up to the stream's progress has been sent: a
			// quiet filtered stream moves its id on, so a resume need not
			// reach back into history etcd may have compacted.
			if p := st.Progress(); p > sent {
				fmt.Fprintf(&buf, "id: %d\n\n", p)
				sent = p
			}
			buf.WriteString(": keepalive\n\n")
		}
		if _, err := w.Write(buf.Bytes()); err != nil {
			return
		}
		if rc.Flush() != nil {
			return
		}
	}
}

// shutdownContext returns a context that ends when the http.Server serving
// r shuts down: Shutdown waits for every active request, and a stream would
// otherwise hold it until its deadline. The client sees the stream close
// and resumes on another node.
func (s *server) shutdownContext(r *http.Request) context.Context {
	srv, ok := r.Context().Value(http.ServerContextKey).(*http.Server)
	if !ok {
		return context.Background()
	}
	s.shutdownMu.Lock()
	defer s.shutdownMu.Unlock()
	if ctx, ok := s.shutdown[srv]; ok {
		return ctx
	}
	ctx, cancel := context.WithCancel(context.Background())
	srv.RegisterOnShutdown(cancel)
	s.shutdown[srv] = ctx
	return ctx
}

// shutdownState is the part of server that shutdownContext keeps.
type shutdownState struct {
	shutdownMu sync.Mutex
	shutdown   map[*http.Server]context.Context
}
