package api

import (
	"net/http"

	"github.com/roster-dev/roster/registry"
)

func (s *server) registerConnection(w http.ResponseWriter, r *http.Request, p registry.Principal) {
	var req registry.ConnectionRequest
	if !s.decode(w, r, &req, false) {
		return
	}
	c, err := s.reg.RegisterConnection(r.Context(), p, req)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, c)
}

func (s *server) listConnections(w http.ResponseWriter, r *http.Request, p registry.Principal) {
	q, err := query(r, "kind", "service", "state")
	if err != nil {
		s.fail(w, r, err)
		return
	}
	all, err := s.reg.Connections(r.Context(), p, registry.ConnectionFilter{
		Kind: registry.ConnectionKind(q.Get("kind")), Service: q.Get("service"), State: q.Get("state"),
	})
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"connections": all})
}

func (s *server) getConnection(w http.ResponseWriter, r *http.Request, p registry.Principal) {
	if _, err := query(r); err != nil {
		s.fail(w, r, err)
		return
	}
	c, err := s.reg.GetConnection(r.Context(), p, r.PathValue("id"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, c)
}

func (s *server) deleteConnection(w http.ResponseWriter, r *http.Request, p registry.Principal) {
	if _, err := query(r); err != nil {
		s.fail(w, r, err)
		return
	}
	c, err := s.reg.DeleteConnection(r.Context(), p, r.PathValue("id"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, c)
}

func (s *server) batchHeartbeat(w http.ResponseWriter, r *http.Request, p registry.Principal) {
	var req registry.BatchHeartbeatRequest
	if !s.decode(w, r, &req, false) {
		return
	}
	res, err := s.reg.HeartbeatBatch(r.Context(), p, req)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	out := registry.BatchHeartbeatAnswer{Connection: res.Connection, Results: make([]registry.BatchResult, len(res.Sessions))}
	for i, sr := range res.Sessions {
		out.Results[i] = registry.BatchResult{ID: sr.ID, ExpiresInSeconds: sr.ExpiresInSeconds, Shutdown: sr.Shutdown}
		if sr.Err == nil {
			out.Renewed++
			continue
		}
		out.Failed++
		_, code, msg, ok := classify(sr.Err)
		if !ok {
			s.log.Error("batch heartbeat: a session failed", "session-id", sr.ID, "error", sr.Err)
		}
		out.Results[i].Error = &registry.BatchError{Code: code, Message: msg}
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *server) listPolicies(w http.ResponseWriter, r *http.Request, p registry.Principal) {
	if _, err := query(r); err != nil {
		s.fail(w, r, err)
		return
	}
	all, err := s.reg.Policies(r.Context(), p)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"policies": all})
}

func (s *server) getPolicy(w http.ResponseWriter, r *http.Request, p registry.Principal) {
	if _, err := query(r); err != nil {
		s.fail(w, r, err)
		return
	}
	pol, err := s.reg.GetPolicy(r.Context(), p, registry.PolicyScope(r.PathValue("scope")), r.PathValue("name"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, pol)
}

func (s *server) putPolicy(w http.ResponseWriter, r *http.Request, p registry.Principal) {
	var spec registry.PolicySpec
	if !s.decode(w, r, &spec, false) {
		return
	}
	pol, err := s.reg.SetPolicy(r.Context(), p, registry.PolicyScope(r.PathValue("scope")), r.PathValue("name"), spec)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, pol)
}

func (s *server) deletePolicy(w http.ResponseWriter, r *http.Request, p registry.Principal) {
	if _, err := query(r); err != nil {
		s.fail(w, r, err)
		return
	}
	scope, name := r.PathValue("scope"), r.PathValue("name")
	if err := s.reg.DeletePolicy(r.Context(), p, registry.PolicyScope(scope), name); err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"scope": scope, "name": name, "deleted": true})
}

func (s *server) cleanup(w http.ResponseWriter, r *http.Request, p registry.Principal) {
	if _, err := query(r); err != nil {
		s.fail(w, r, err)
		return
	}
	var req registry.CleanupRequest
	if !s.decode(w, r, &req, true) {
		return
	}
	rep, err := s.reg.Cleanup(r.Context(), p, req)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, rep)
}
