package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/roster-dev/roster/registry"
	"github.com/roster-dev/roster/registry/liveness"
)

// MaxBodyBytes is the largest request body the API reads.
const MaxBodyBytes = 1 << 20

// Config configures the API handler.
type Config struct {
	Registry *registry.Registry // required
	Node     string             // this node's name, shown by /healthz and /readyz
	// Cluster serves the /v1/cluster endpoints; nil makes them answer 503
	// unavailable.
	Cluster Cluster
	// Duties names the node that runs the singleton duties (the ha leader),
	// shown by GET /v1/cluster/members; nil leaves it out.
	Duties DutyLeader
	Logger *slog.Logger // nil discards
	// EventKeepAlive is how often an idle event stream sends a keepalive
	// comment; 0 means DefaultEventKeepAlive.
	EventKeepAlive time.Duration
	// Liveness receives the other nodes' liveness pushes (POST
	// /v1/internal/beats); nil makes that endpoint answer 503 unavailable.
	Liveness *liveness.View
}

type server struct {
	reg       *registry.Registry
	node      string
	cluster   Cluster
	duties    DutyLeader
	log       *slog.Logger
	keepAlive time.Duration
	shutdownState
	liveness *liveness.View
}

// New returns the API's http.Handler.
func New(cfg Config) http.Handler {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	s := &server{reg: cfg.Registry, node: cfg.Node, cluster: cfg.Cluster, duties: cfg.Duties, log: log, keepAlive: cfg.EventKeepAlive}
	s.liveness = cfg.Liveness
	if s.keepAlive <= 0 {
		s.keepAlive = DefaultEventKeepAlive
	}
	s.shutdown = map[*http.Server]context.Context{}
	mux := http.NewServeMux()
	for _, rt := range s.routes() {
		mux.HandleFunc(rt.Pattern, rt.handler)
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "not_found", fmt.Sprintf("no endpoint %s %s; see docs/api.md", r.Method, r.URL.Path))
	})
	return mux
}

// Route is one endpoint of the API: its method and path pattern.
type Route struct {
	Pattern string // e.g. "POST /v1/sessions/{id}/kill"
	handler http.HandlerFunc
}

// routes is the API's whole surface; docs/api.md documents exactly these
// (a test holds the two together).
func (s *server) routes() []Route {
	return []Route{
		{"GET /healthz", s.healthz},
		{"GET /readyz", s.readyz},
		{"POST /v1/sessions", s.authedBy(s.reg.AuthenticateFromCopy, s.openSession)},
		{"GET /v1/sessions", s.authed(s.listSessions)},
		{"GET /v1/sessions/{id}", s.authed(s.getSession)},
		{"GET /v1/sessions/{id}/events", s.authed(s.sessionEvents)},
		{"DELETE /v1/sessions/{id}", s.authedBy(s.reg.AuthenticateFromCopy, s.closeSession)},
		{"POST /v1/sessions/{id}/heartbeat", s.authed(s.heartbeat)},
		{"POST /v1/sessions/{id}/kill", s.authedBy(s.reg.AuthenticateFromCopy, s.killSession)},
		{"GET /v1/users", s.authed(s.listUsers)},
		{"PUT /v1/users/{tenant}/{user}", s.authed(s.putUser)},
		{"GET /v1/users/{tenant}/{user}", s.authed(s.getUser)},
		{"DELETE /v1/users/{tenant}/{user}", s.authed(s.deleteUser)},
		{"POST /v1/tokens", s.authed(s.createToken)},
		{"GET /v1/tokens", s.authed(s.listTokens)},
		{"DELETE /v1/tokens/{name}", s.authed(s.deleteToken)},
		{"POST /v1/shutdowns", s.authed(s.requestShutdown)},
		{"GET /v1/shutdowns", s.authed(s.listShutdowns)},
		{"GET /v1/shutdowns/{id}", s.authed(s.getShutdown)},
		{"DELETE /v1/shutdowns/{id}", s.authed(s.cancelShutdown)},
		{"GET /v1/pools", s.authed(s.listPools)},
		{"GET /v1/pools/{name}", s.authed(s.getPool)},
		{"POST /v1/pools/{name}/deactivate", s.authed(s.deactivatePool)},
		{"POST /v1/pools/{name}/activate", s.authed(s.activatePool)},
		{"GET /v1/licenses", s.authed(s.listLicenses)},
		{"GET /v1/licenses/{tenant}/{module}", s.authed(s.getLicense)},
		{"PUT /v1/licenses/{tenant}/{module}", s.authed(s.putLicense)},
		{"DELETE /v1/licenses/{tenant}/{module}", s.authed(s.deleteLicense)},
		{"GET /v1/history", s.authed(s.history)},
		{"GET /v1/audit", s.authed(s.audit)},
		{"GET /v1/connections", s.authed(s.listConnections)},
		{"POST /v1/connections", s.authed(s.registerConnection)},
		{"GET /v1/connections/{id}", s.authed(s.getConnection)},
		{"DELETE /v1/connections/{id}", s.authed(s.deleteConnection)},
		{"POST /v1/heartbeats", s.authed(s.batchHeartbeat)},
		{"GET /v1/policies", s.authed(s.listPolicies)},
		{"GET /v1/policies/{scope}/{name}", s.authed(s.getPolicy)},
		{"PUT /v1/policies/{scope}/{name}", s.authed(s.putPolicy)},
		{"DELETE /v1/policies/{scope}/{name}", s.authed(s.deletePolicy)},
		{"POST /v1/cleanup", s.authed(s.cleanup)},
		{"GET /v1/events", s.authed(s.events)},
		{"GET /v1/cluster/members", s.authedLocal(s.listMembers)},
		{"GET /v1/cluster/snapshot", s.authedLocal(s.snapshot)},
		{"POST /v1/internal/beats", s.internalBeats},
	}
}

// Routes lists the patterns the API serves, in the order of docs/api.md.
func Routes() []string {
	var out []string
	for _, rt := range (&server{}).routes() {
		out = append(out, rt.Pattern)
	}
	return out
}

// statusOf maps each error code (registry.Code) to an HTTP status; an
// ended session (code: its end reason) is 410 Gone.
var statusOf = map[string]int{
	"invalid_argument":    http.StatusBadRequest,
	"unauthenticated":     http.StatusUnauthorized,
	"permission_denied":   http.StatusForbidden,
	"service_not_allowed": http.StatusForbidden,
	"not_found":           http.StatusNotFound,
	"already_logged_in":   http.StatusConflict,
	"pool_inactive":       http.StatusConflict,
	"maintenance":         http.StatusConflict,
	"no_license_seat":     http.StatusConflict,
	"already_finished":    http.StatusConflict,
	"already_exists":      http.StatusConflict,
	"connection_gone":     http.StatusConflict,
	"direct_connection":   http.StatusConflict,
	"unavailable":         http.StatusServiceUnavailable,
}

type errorBody struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	var b errorBody
	b.Error.Code, b.Error.Message = code, msg
	writeJSON(w, status, b)
}

// fail answers err with the status and code of its sentinel; anything else
// is a 500, logged.
func (s *server) fail(w http.ResponseWriter, r *http.Request, err error) {
	if status, code, msg, ok := classify(err); ok {
		if status >= 500 {
			s.log.Warn("request failed", "method", r.Method, "path", r.URL.Path, "error", err)
		}
		writeError(w, status, code, msg)
		return
	}
	if errors.Is(err, context.Canceled) && r.Context().Err() != nil {
		// The client went away (gave up, or moved to another node): nothing failed here.
		s.log.Debug("request abandoned by the client", "method", r.Method, "path", r.URL.Path)
		return
	}
	s.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "error", err)
	writeError(w, http.StatusInternalServerError, "internal", "internal error; the node's log has the details")
}

// classify finds err's sentinel in the error table and returns its status,
// its code (an ended session's is its end reason) and the message to show;
// ok is false for an error of no sentinel (a bug).
func classify(err error) (status int, code, msg string, ok bool) {
	msg = strings.TrimPrefix(err.Error(), "registry: ")
	code, sentinel, ok := registry.Code(err)
	if !ok {
		return http.StatusInternalServerError, "internal", "internal error; the node's log has the details", false
	}
	// The code already says what the sentinel says.
	msg = strings.TrimPrefix(msg, strings.TrimPrefix(sentinel.Error(), "registry: ")+": ")
	status, known := statusOf[code]
	if errors.Is(sentinel, registry.ErrSessionEnded) {
		status, known = http.StatusGone, true
	}
	if !known {
		return http.StatusInternalServerError, "internal", "internal error; the node's log has the details", false
	}
	return status, code, msg, true
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v)
}

// decode reads a JSON body of at most MaxBodyBytes into v, refusing
// unknown fields and trailing data. An empty body is allowed only when
// optional is true (v is left as is).
func (s *server) decode(w http.ResponseWriter, r *http.Request, v any, optional bool) bool {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			writeError(w, http.StatusBadRequest, "body_too_large", fmt.Sprintf("request body is over %d bytes", MaxBodyBytes))
			return false
		}
		writeError(w, http.StatusBadRequest, "invalid_json", "could not read the request body: "+err.Error())
		return false
	}
	if len(bytes.TrimSpace(body)) == 0 {
		if optional {
			return true
		}
		writeError(w, http.StatusBadRequest, "invalid_json", "request body is empty; send a JSON object")
		return false
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		writeError(w, http.StatusBadRequest, "invalid_json", describeJSONError(err))
		return false
	}
	if dec.More() {
		writeError(w, http.StatusBadRequest, "invalid_json", "request body has data after the JSON object; send exactly one object")
		return false
	}
	return true
}

func describeJSONError(err error) string {
	var typeErr *json.UnmarshalTypeError
	var syntaxErr *json.SyntaxError
	switch {
	case errors.As(err, &typeErr):
		return fmt.Sprintf("%s: must be %s, not a JSON %s", typeErr.Field, typeErr.Type, typeErr.Value)
	case errors.As(err, &syntaxErr):
		return fmt.Sprintf("request body is not valid JSON at byte %d: %v", syntaxErr.Offset, err)
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		return "unknown field " + strings.TrimPrefix(err.Error(), "json: unknown field ") + "; see docs/api.md for the fields"
	}
	return "request body is not valid JSON: " + err.Error()
}

type handler func(w http.ResponseWriter, r *http.Request, p registry.Principal)

// authed authenticates the bearer token before h runs.
func (s *server) authed(h handler) http.HandlerFunc {
	return s.authedBy(s.reg.Authenticate, h)
}

// authedLocal is authed for the cluster endpoints, which must answer when
// the cluster has lost quorum: it checks API tokens without the etcd leader
// (registry.AuthenticateLocal).
func (s *server) authedLocal(h handler) http.HandlerFunc {
	return s.authedBy(s.reg.AuthenticateLocal, h)
}

func (s *server) authedBy(authenticate func(context.Context, string) (registry.Principal, error), h handler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		remote := r.RemoteAddr
		if host, _, err := net.SplitHostPort(remote); err == nil {
			remote = host
		}
		r = r.WithContext(registry.WithRemote(r.Context(), remote))
		auth := r.Header.Get("Authorization")
		token, ok := strings.CutPrefix(auth, "Bearer ")
		if auth != "" && !ok {
			err := fmt.Errorf("%w: the Authorization header must be 'Bearer <token>'", registry.ErrUnauthenticated)
			s.reg.RecordAuthFailure(r.Context(), r.Method, r.URL.Path, err)
			s.fail(w, r, err)
			return
		}
		p, err := authenticate(r.Context(), strings.TrimSpace(token))
		if err != nil {
			s.log.Debug("authentication failed", "path", r.URL.Path, "remote", r.RemoteAddr, "error", err)
			if errors.Is(err, registry.ErrUnauthenticated) {
				s.reg.RecordAuthFailure(r.Context(), r.Method, r.URL.Path, err)
			}
			s.fail(w, r, err)
			return
		}
		h(w, r, p)
	}
}

// query reads the allowed query parameters and refuses any other.
func query(r *http.Request, allowed ...string) (url.Values, error) {
	q := r.URL.Query()
	for k, v := range q {
		ok := false
		for _, a := range allowed {
			ok = ok || k == a
		}
		if !ok && len(allowed) == 0 {
			return nil, &registry.FieldError{Field: k, Problem: "is not a query parameter here; this endpoint takes none"}
		}
		if !ok {
			return nil, &registry.FieldError{Field: k, Problem: fmt.Sprintf("is not a query parameter here; allowed: %s", strings.Join(allowed, ", "))}
		}
		if len(v) > 1 {
			return nil, &registry.FieldError{Field: k, Problem: "is given more than once"}
		}
		if v[0] == "" {
			return nil, &registry.FieldError{Field: k, Problem: "is empty; give a value or leave the parameter out"}
		}
	}
	return q, nil
}

func (s *server) healthz(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok", "node": s.node})
}

func (s *server) readyz(w http.ResponseWriter, r *http.Request) {
	if err := s.reg.Ready(r.Context()); err != nil {
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "not ready", "node": s.node, "reason": err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready", "node": s.node})
}

func (s *server) openSession(w http.ResponseWriter, r *http.Request, p registry.Principal) {
	var req registry.OpenRequest
	if !s.decode(w, r, &req, false) {
		return
	}
	opened, err := s.reg.Open(r.Context(), p, req)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, opened)
}

func (s *server) listSessions(w http.ResponseWriter, r *http.Request, p registry.Principal) {
	q, err := query(r, "tenant", "user", "module", "pool", "site", "node", "client_kind", "connection", "limit", "cursor")
	if err != nil {
		s.fail(w, r, err)
		return
	}
	f := registry.ListFilter{
		Tenant: q.Get("tenant"), User: q.Get("user"), Module: q.Get("module"), Pool: q.Get("pool"),
		Site: q.Get("site"), Node: q.Get("node"), ClientKind: registry.ClientKind(q.Get("client_kind")), Cursor: q.Get("cursor"),
		Connection: q.Get("connection"),
	}
	if l := q.Get("limit"); l != "" {
		if f.Limit, err = strconv.Atoi(l); err != nil || f.Limit < 1 {
			s.fail(w, r, &registry.FieldError{Field: "limit", Problem: fmt.Sprintf("%q is not a number from 1 to %d", l, registry.MaxListLimit)})
			return
		}
	}
	page, err := s.reg.List(r.Context(), p, f)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, page)
}

func (s *server) getSession(w http.ResponseWriter, r *http.Request, p registry.Principal) {
	sess, err := s.reg.Get(r.Context(), p, r.PathValue("id"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, sess)
}

func (s *server) heartbeat(w http.ResponseWriter, r *http.Request, p registry.Principal) {
	var req registry.HeartbeatRequest
	if !s.decode(w, r, &req, true) {
		return
	}
	res, err := s.reg.HeartbeatWith(r.Context(), p, r.PathValue("id"), req)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

func (s *server) closeSession(w http.ResponseWriter, r *http.Request, p registry.Principal) {
	ended, err := s.reg.Logout(r.Context(), p, r.PathValue("id"))
	if err != nil {
		s.failFromCopy(w, r, p, err)
		return
	}
	writeJSON(w, http.StatusOK, ended)
}

func (s *server) killSession(w http.ResponseWriter, r *http.Request, p registry.Principal) {
	var body struct {
		Reason string `json:"reason"`
	}
	if !s.decode(w, r, &body, true) {
		return
	}
	ended, err := s.reg.Kill(r.Context(), p, r.PathValue("id"), body.Reason)
	if err != nil {
		s.failFromCopy(w, r, p, err)
		return
	}
	writeJSON(w, http.StatusOK, ended)
}

// failFromCopy answers the failure of a call authenticated by
// AuthenticateFromCopy other than an open (which records its own refusals).
// An API token that the node's copy still had but etcd no longer has is
// found out only there, as ErrUnauthenticated: that is recorded as a failed
// authentication, as authedBy records one found by reading the token.
func (s *server) failFromCopy(w http.ResponseWriter, r *http.Request, p registry.Principal, err error) {
	if p.SessionID == "" && errors.Is(err, registry.ErrUnauthenticated) {
		s.log.Debug("authentication failed", "path", r.URL.Path, "remote", r.RemoteAddr, "error", err)
		s.reg.RecordAuthFailure(r.Context(), r.Method, r.URL.Path, err)
	}
	s.fail(w, r, err)
}

func (s *server) putUser(w http.ResponseWriter, r *http.Request, p registry.Principal) {
	var spec registry.UserSpec
	if !s.decode(w, r, &spec, false) {
		return
	}
	u, err := s.reg.PutUser(r.Context(), p, r.PathValue("tenant"), r.PathValue("user"), spec)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, u)
}

func (s *server) getUser(w http.ResponseWriter, r *http.Request, p registry.Principal) {
	u, err := s.reg.GetUser(r.Context(), p, r.PathValue("tenant"), r.PathValue("user"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, u)
}

func (s *server) listUsers(w http.ResponseWriter, r *http.Request, p registry.Principal) {
	q, err := query(r, "tenant")
	if err != nil {
		s.fail(w, r, err)
		return
	}
	users, err := s.reg.ListUsers(r.Context(), p, q.Get("tenant"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"users": users})
}

func (s *server) deleteUser(w http.ResponseWriter, r *http.Request, p registry.Principal) {
	tenant, user := r.PathValue("tenant"), r.PathValue("user")
	if err := s.reg.DeleteUser(r.Context(), p, tenant, user); err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"tenant": tenant, "user": user, "deleted": true})
}

func (s *server) createToken(w http.ResponseWriter, r *http.Request, p registry.Principal) {
	var req registry.TokenRequest
	if !s.decode(w, r, &req, false) {
		return
	}
	t, err := s.reg.CreateToken(r.Context(), p, req)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, t)
}

func (s *server) listTokens(w http.ResponseWriter, r *http.Request, p registry.Principal) {
	tokens, err := s.reg.ListTokens(r.Context(), p)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"tokens": tokens})
}

func (s *server) deleteToken(w http.ResponseWriter, r *http.Request, p registry.Principal) {
	name := r.PathValue("name")
	if err := s.reg.DeleteToken(r.Context(), p, name); err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"name": name, "deleted": true})
}

func (s *server) listPools(w http.ResponseWriter, r *http.Request, p registry.Principal) {
	if _, err := query(r); err != nil {
		s.fail(w, r, err)
		return
	}
	pools, err := s.reg.Pools(r.Context(), p)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"pools": pools})
}

func (s *server) getPool(w http.ResponseWriter, r *http.Request, p registry.Principal) {
	pool, err := s.reg.Pool(r.Context(), p, r.PathValue("name"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, pool)
}

func (s *server) deactivatePool(w http.ResponseWriter, r *http.Request, p registry.Principal) {
	var body struct {
		Message string `json:"message"`
	}
	if !s.decode(w, r, &body, true) {
		return
	}
	pool, err := s.reg.DeactivatePool(r.Context(), p, r.PathValue("name"), body.Message)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, pool)
}

func (s *server) activatePool(w http.ResponseWriter, r *http.Request, p registry.Principal) {
	var body struct{}
	if !s.decode(w, r, &body, true) {
		return
	}
	pool, err := s.reg.ActivatePool(r.Context(), p, r.PathValue("name"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, pool)
}

func (s *server) requestShutdown(w http.ResponseWriter, r *http.Request, p registry.Principal) {
	var req registry.ShutdownRequest
	if !s.decode(w, r, &req, false) {
		return
	}
	sd, err := s.reg.RequestShutdown(r.Context(), p, req)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, sd)
}

func (s *server) listShutdowns(w http.ResponseWriter, r *http.Request, p registry.Principal) {
	if _, err := query(r); err != nil {
		s.fail(w, r, err)
		return
	}
	all, err := s.reg.Shutdowns(r.Context(), p)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"shutdowns": all})
}

func (s *server) getShutdown(w http.ResponseWriter, r *http.Request, p registry.Principal) {
	sd, err := s.reg.Shutdown(r.Context(), p, r.PathValue("id"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, sd)
}

func (s *server) cancelShutdown(w http.ResponseWriter, r *http.Request, p registry.Principal) {
	sd, err := s.reg.CancelShutdown(r.Context(), p, r.PathValue("id"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, sd)
}
