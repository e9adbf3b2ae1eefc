package api

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/roster-dev/roster/registry/liveness"
)

// internalBeats applies another node's liveness push (see package liveness): the
// heartbeats it answered since its last push. Nodes authenticate it with the cluster's
// peer secret, not with an API token.
func (s *server) internalBeats(w http.ResponseWriter, r *http.Request) {
	if s.liveness == nil {
		writeError(w, http.StatusServiceUnavailable, "unavailable", "this node keeps no liveness view (it runs with --liveness-interval 0)")
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, liveness.MaxPushBytes))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			writeError(w, http.StatusBadRequest, "body_too_large", fmt.Sprintf("request body is over %d bytes", liveness.MaxPushBytes))
			return
		}
		writeError(w, http.StatusBadRequest, "invalid_argument", "could not read the push: "+err.Error())
		return
	}
	secret, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	reply, err := s.liveness.Receive(strings.TrimSpace(secret), body)
	switch {
	case errors.Is(err, liveness.ErrUnauthenticated):
		s.log.Debug("liveness push refused", "remote", r.RemoteAddr, "error", err)
		writeError(w, http.StatusUnauthorized, "unauthenticated", strings.TrimPrefix(err.Error(), "liveness: "))
	case errors.Is(err, liveness.ErrInvalidPush):
		writeError(w, http.StatusBadRequest, "invalid_argument", strings.TrimPrefix(err.Error(), "liveness: "))
	case errors.Is(err, liveness.ErrNotStarted):
		writeError(w, http.StatusServiceUnavailable, "unavailable", "this node's liveness view is not started yet (or stopping); push again")
	case err != nil:
		s.fail(w, r, err)
	default:
		writeJSON(w, http.StatusOK, reply)
	}
}
