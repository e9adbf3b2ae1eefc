package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/roster-dev/roster/registry"
)

// Health is the answer of GET /healthz and GET /readyz.
type Health struct {
	// Status is "ok" (healthz), "ready" or "not ready" (readyz).
	Status string `json:"status"`
	// Node is the name of the node that answered.
	Node string `json:"node"`
	// Reason says why a node is not ready.
	Reason string `json:"reason,omitempty"`
}

// Open opens a session with a new Client built from cfg and starts
// heartbeating it, as Client.OpenSession does. Closing the Session also
// closes the Client's idle connections.
func Open(ctx context.Context, cfg Config, req registry.OpenRequest, opts ...SessionOption) (*Session, error) {
	c, err := New(cfg)
	if err != nil {
		return nil, err
	}
	s, err := c.OpenSession(ctx, req, opts...)
	if err != nil {
		c.CloseIdleConnections()
		return nil, err
	}
	s.ownsClient = true
	return s, nil
}

// OpenSession opens (logs in) a session with POST /v1/sessions and returns a
// handle that heartbeats it in the background until Close or until it ends.
// ctx bounds only the open request: the heartbeats run until Session.Close.
//
// Open is not idempotent, so it moves to another endpoint only after a dial
// error; after any other connection failure the session may or may not have
// been opened, and the error says so. A refused login (single-login rule)
// matches ErrAlreadyLoggedIn.
func (c *Client) OpenSession(ctx context.Context, req registry.OpenRequest, opts ...SessionOption) (*Session, error) {
	sent := time.Now()
	var opened registry.OpenedSession
	if err := c.callJSON(ctx, call{method: http.MethodPost, path: "/v1/sessions", body: req, token: c.token}, &opened); err != nil {
		return nil, err
	}
	return c.attach(opened, sent, opts)
}

// Heartbeat renews session id's lease once. token authorizes it: the
// session's own token, or "" for the client's token (the client token that
// opened the session, or an admin token). A session that has ended answers
// with an *EndedError while its tombstone lasts, then with ErrNotFound.
func (c *Client) Heartbeat(ctx context.Context, id, token string) (registry.HeartbeatResult, error) {
	return c.heartbeat(ctx, id, token, false, 0)
}

// HeartbeatWith is Heartbeat with a body: req.Active says that the session's
// user did something since the last heartbeat (idle clean-up counts from the
// last such heartbeat).
func (c *Client) HeartbeatWith(ctx context.Context, id, token string, req registry.HeartbeatRequest) (registry.HeartbeatResult, error) {
	return c.heartbeat(ctx, id, token, req.Active, 0)
}

func (c *Client) heartbeat(ctx context.Context, id, token string, active bool, attemptTimeout time.Duration) (registry.HeartbeatResult, error) {
	var res registry.HeartbeatResult
	p, err := sessionPath(id, "/heartbeat")
	if err != nil {
		return res, err
	}
	var body any // none unless active, as older servers expect
	if active {
		body = registry.HeartbeatRequest{Active: true}
	}
	err = c.callJSON(ctx, call{
		method: http.MethodPost, path: p, token: c.pick(token), body: body,
		idempotent: true, attemptTimeout: attemptTimeout,
	}, &res)
	return res, withID(id, err)
}

// RegisterConnection registers a shared connection (POST /v1/connections)
// owned by the client's token, which must be a client or admin token. It is
// not idempotent, so it moves to another endpoint only after a dial error.
func (c *Client) RegisterConnection(ctx context.Context, req registry.ConnectionRequest) (registry.Connection, error) {
	var res registry.Connection
	err := c.callJSON(ctx, call{method: http.MethodPost, path: "/v1/connections", body: req, token: c.token}, &res)
	return res, err
}

// HeartbeatBatch renews a shared connection and up to 10,000 sessions opened
// through it in one call (POST /v1/heartbeats), with the client's token,
// which must own the connection (or be an admin token). Each session's
// result is in the answer; the call fails as a whole only when the
// connection is not live (ErrConnectionGone) or the request is wrong.
func (c *Client) HeartbeatBatch(ctx context.Context, req registry.BatchHeartbeatRequest) (registry.BatchHeartbeatAnswer, error) {
	var res registry.BatchHeartbeatAnswer
	err := c.callJSON(ctx, call{method: http.MethodPost, path: "/v1/heartbeats", body: req, token: c.token, idempotent: true}, &res)
	return res, err
}

// CloseSession logs session id out: its keys are deleted and its lease
// revoked. token authorizes it as for Heartbeat ("" uses the client's token).
// A session that has already ended answers with an *EndedError.
func (c *Client) CloseSession(ctx context.Context, id, token string) (registry.Ended, error) {
	var res registry.Ended
	p, err := sessionPath(id, "")
	if err != nil {
		return res, err
	}
	err = c.callJSON(ctx, call{method: http.MethodDelete, path: p, token: c.pick(token), idempotent: true}, &res)
	return res, withID(id, err)
}

// Kill cuts session id; reason (optional) is recorded and shown to whoever
// held the session. It needs an admin or operator token, or a session token
// of the same user or of a user with the interrupt-sessions right. Killing a
// session that has already ended answers with an *EndedError.
func (c *Client) Kill(ctx context.Context, id, reason string) (registry.Ended, error) {
	var res registry.Ended
	p, err := sessionPath(id, "/kill")
	if err != nil {
		return res, err
	}
	body := struct {
		Reason string `json:"reason,omitempty"`
	}{reason}
	err = c.callJSON(ctx, call{method: http.MethodPost, path: p, body: body, token: c.token, idempotent: true}, &res)
	return res, withID(id, err)
}

// Get returns session id as the registry sees it now (without its token).
func (c *Client) Get(ctx context.Context, id string) (registry.Session, error) {
	var res registry.Session
	p, err := sessionPath(id, "")
	if err != nil {
		return res, err
	}
	err = c.callJSON(ctx, c.get(p, nil), &res)
	return res, withID(id, err)
}

// List returns one page of the sessions that match f; pass the page's
// NextCursor as f.Cursor for the next one. f.OpenedByToken is not part of the
// HTTP API (the server applies it from the token) and must be empty.
func (c *Client) List(ctx context.Context, f registry.ListFilter) (registry.SessionPage, error) {
	var res registry.SessionPage
	q, err := ListQuery(f)
	if err != nil {
		return res, err
	}
	err = c.callJSON(ctx, c.get("/v1/sessions", q), &res)
	return res, err
}

// ListQuery returns the query parameters of GET /v1/sessions for f, for
// callers of Do.
func ListQuery(f registry.ListFilter) (url.Values, error) {
	if f.OpenedByToken != "" {
		return nil, errors.New("client: ListFilter.OpenedByToken cannot be sent: the server restricts a client token's listing to the sessions it opened by itself")
	}
	if f.Limit < 0 {
		return nil, fmt.Errorf("client: ListFilter.Limit %d is negative", f.Limit)
	}
	q := url.Values{}
	for _, kv := range [][2]string{
		{"tenant", f.Tenant}, {"user", f.User}, {"module", f.Module}, {"pool", f.Pool},
		{"site", f.Site}, {"node", f.Node}, {"client_kind", string(f.ClientKind)}, {"cursor", f.Cursor},
		{"connection", f.Connection},
	} {
		if kv[1] != "" {
			q.Set(kv[0], kv[1])
		}
	}
	if f.Limit > 0 {
		q.Set("limit", strconv.Itoa(f.Limit))
	}
	return q, nil
}

// History returns one page of the history of ended sessions that match f,
// newest first; pass the page's NextCursor as f.Cursor for the next one
// (only an empty NextCursor ends the listing: a filtered page may hold fewer
// than f.Limit records). It needs an operator or admin token.
func (c *Client) History(ctx context.Context, f registry.HistoryFilter) (registry.HistoryPage, error) {
	var res registry.HistoryPage
	q, err := HistoryQuery(f)
	if err != nil {
		return res, err
	}
	err = c.callJSON(ctx, c.get("/v1/history", q), &res)
	return res, err
}

// HistoryQuery returns the query parameters of GET /v1/history for f, for
// callers of Do.
func HistoryQuery(f registry.HistoryFilter) (url.Values, error) {
	if f.Limit < 0 {
		return nil, fmt.Errorf("client: HistoryFilter.Limit %d is negative", f.Limit)
	}
	return logQuery([][2]string{{"tenant", f.Tenant}, {"user", f.User}, {"module", f.Module}, {"reason", string(f.Reason)},
		{"cursor", f.Cursor}}, f.Since, f.Until, f.Limit), nil
}

// Audit returns one page of the audit log, newest first (see
// registry.AuditFilter); pass NextCursor as f.Cursor for the next page.
// It needs an operator or admin token.
func (c *Client) Audit(ctx context.Context, f registry.AuditFilter) (registry.AuditPage, error) {
	var res registry.AuditPage
	q, err := AuditQuery(f)
	if err != nil {
		return res, err
	}
	err = c.callJSON(ctx, c.get("/v1/audit", q), &res)
	return res, err
}

// AuditQuery returns the query parameters of GET /v1/audit for f, for
// callers of Do.
func AuditQuery(f registry.AuditFilter) (url.Values, error) {
	if f.Limit < 0 {
		return nil, fmt.Errorf("client: AuditFilter.Limit %d is negative", f.Limit)
	}
	return logQuery([][2]string{{"action", string(f.Action)}, {"actor", f.Actor}, {"tenant", f.Tenant}, {"user", f.User},
		{"module", f.Module}, {"session", f.Session}, {"code", f.Code}, {"cursor", f.Cursor}}, f.Since, f.Until, f.Limit), nil
}

// logQuery returns the query parameters of a log's page: the non-empty
// fields, the time window and the page size.
func logQuery(fields [][2]string, since, until time.Time, limit int) url.Values {
	q := url.Values{}
	for _, kv := range fields {
		if kv[1] != "" {
			q.Set(kv[0], kv[1])
		}
	}
	if !since.IsZero() {
		q.Set("since", since.UTC().Format(time.RFC3339Nano))
	}
	if !until.IsZero() {
		q.Set("until", until.UTC().Format(time.RFC3339Nano))
	}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	return q
}

// PutUser sets the rights of user in tenant, creating the user master entry
// if needed. It needs an admin token.
func (c *Client) PutUser(ctx context.Context, tenant, user string, spec registry.UserSpec) (registry.User, error) {
	var res registry.User
	p, err := userPath(tenant, user)
	if err != nil {
		return res, err
	}
	if spec.Rights == nil {
		spec.Rights = []registry.Right{} // "no rights", not a missing field
	}
	err = c.callJSON(ctx, call{method: http.MethodPut, path: p, body: spec, token: c.token, idempotent: true}, &res)
	return res, err
}

// GetUser returns the user master entry of user in tenant. A user who is
// not in the master has no rights, and the error matches ErrNotFound.
func (c *Client) GetUser(ctx context.Context, tenant, user string) (registry.User, error) {
	var res registry.User
	p, err := userPath(tenant, user)
	if err != nil {
		return res, err
	}
	err = c.callJSON(ctx, c.get(p, nil), &res)
	return res, err
}

// ListUsers returns the user master entries of tenant; "" leaves the
// choice of tenants to the server.
func (c *Client) ListUsers(ctx context.Context, tenant string) ([]registry.User, error) {
	var q url.Values
	if tenant != "" {
		q = url.Values{"tenant": {tenant}}
	}
	var res struct {
		Users []registry.User `json:"users"`
	}
	err := c.callJSON(ctx, c.get("/v1/users", q), &res)
	return res.Users, err
}

// DeleteUser removes user in tenant from the user master; the user keeps
// no rights. It needs an admin token.
func (c *Client) DeleteUser(ctx context.Context, tenant, user string) error {
	p, err := userPath(tenant, user)
	if err != nil {
		return err
	}
	_, err = c.do(ctx, call{method: http.MethodDelete, path: p, token: c.token, idempotent: true})
	return err
}

// CreateToken creates an API token. The answer is the only time its secret
// is shown. It needs an admin token. It is not idempotent (a repeat answers
// already_exists and the first secret would be lost), so it fails over only
// after dial errors.
func (c *Client) CreateToken(ctx context.Context, req registry.TokenRequest) (registry.NewToken, error) {
	var res registry.NewToken
	err := c.callJSON(ctx, call{method: http.MethodPost, path: "/v1/tokens", body: req, token: c.token}, &res)
	return res, err
}

// ListTokens returns every API token (names and roles, never secrets). It
// needs an admin token.
func (c *Client) ListTokens(ctx context.Context) ([]registry.TokenInfo, error) {
	var res struct {
		Tokens []registry.TokenInfo `json:"tokens"`
	}
	err := c.callJSON(ctx, c.get("/v1/tokens", nil), &res)
	return res.Tokens, err
}

// DeleteToken revokes the API token called name. It needs an admin token.
func (c *Client) DeleteToken(ctx context.Context, name string) error {
	if name == "" {
		return errors.New("client: empty token name")
	}
	_, err := c.do(ctx, call{method: http.MethodDelete, path: "/v1/tokens/" + url.PathEscape(name), token: c.token, idempotent: true})
	return err
}

// Health asks GET /healthz whether a node's process serves. It sends no token.
func (c *Client) Health(ctx context.Context) (Health, error) {
	var res Health
	err := c.callJSON(ctx, call{method: http.MethodGet, path: "/healthz", idempotent: true}, &res)
	return res, err
}

// Ready asks GET /readyz whether a node can read etcd. A node that is not
// ready answers 503, so the call moves on to the next endpoint; it returns
// the first ready node's answer, or an error matching ErrUnavailable that
// says why each node was not ready. To ask one particular node, use a
// Client with that one endpoint.
func (c *Client) Ready(ctx context.Context) (Health, error) {
	var res Health
	err := c.callJSON(ctx, call{method: http.MethodGet, path: "/readyz", idempotent: true}, &res)
	return res, err
}

func (c *Client) get(path string, q url.Values) call {
	return call{method: http.MethodGet, path: path, query: q, token: c.token, idempotent: true}
}

// pick returns token, or the client's token when token is empty.
func (c *Client) pick(token string) string {
	if token != "" {
		return token
	}
	return c.token
}

func (c *Client) callJSON(ctx context.Context, r call, out any) error {
	data, err := c.do(ctx, r)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("client: %s %s: decode answer: %w", r.method, r.path, err)
	}
	return nil
}

func sessionPath(id, suffix string) (string, error) {
	if id == "" {
		return "", errors.New("client: empty session id")
	}
	return "/v1/sessions/" + url.PathEscape(id) + suffix, nil
}

func userPath(tenant, user string) (string, error) {
	if tenant == "" || user == "" {
		return "", fmt.Errorf("client: user %q in tenant %q: both must be given", user, tenant)
	}
	return "/v1/users/" + url.PathEscape(tenant) + "/" + url.PathEscape(user), nil
}

// withID fills in the session id of an *EndedError built from an answer.
func withID(id string, err error) error {
	if e, ok := errors.AsType[*EndedError](err); ok && e.ID == "" {
		e.ID = id
	}
	return err
}
