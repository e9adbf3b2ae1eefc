package client

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
	"sync/atomic"
	"syscall"
	"time"
)

// maxAnswer bounds how much of an answer the client reads: a page of 1000
// sessions is well under a megabyte, so anything near this is not the API.
const maxAnswer = 32 << 20

// Client calls the Roster HTTP API (docs/api.md) on a list of nodes. It is
// safe for concurrent use. It starts no goroutines of its own (an
// EventStream and a Session run theirs, and own them); the connections it
// keeps open belong to its HTTP client.
//
// A call is sent to the endpoint that last worked. When that endpoint cannot
// be reached (dial refused, connection reset, EOF, timeout) or answers 503,
// the call moves on to the next endpoint, once round the list, and the first
// endpoint that answers becomes the one to use next time. An HTTP error
// answer other than 503 is the answer: it is returned as an *APIError and not
// retried. Calls that are not idempotent — opening a session, creating a
// token — move on only after a dial error, when the request certainly did
// not reach a server, so that one call never opens two sessions.
//
// Every method takes a context first. Cancelling it aborts the request in
// flight and the failover, and the method returns an error that matches the
// context's error with errors.Is. An error answer is an *APIError
// (errors.Is matches ErrNotFound, ErrAlreadyLoggedIn and the other code
// sentinels), or an *EndedError for a session that has ended; when no node
// could serve a call the error matches ErrUnavailable.
type Client struct {
	endpoints []string
	token     string
	hc        *http.Client
	log       *slog.Logger
	// cur is the index of the endpoint that last worked; WithToken copies
	// share it.
	cur *atomic.Int32
}

// New builds a Client from cfg after validating it. It does no I/O.
func New(cfg Config) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	c := &Client{
		token: cfg.Token,
		hc:    cfg.HTTPClient,
		log:   cfg.Logger,
		cur:   new(atomic.Int32),
	}
	for _, ep := range cfg.Endpoints {
		base, _ := parseEndpoint(ep) // checked by Validate
		c.endpoints = append(c.endpoints, base)
	}
	if c.hc == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.DialContext = (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext
		c.hc = &http.Client{Transport: t, Timeout: 30 * time.Second}
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	return c, nil
}

// WithToken returns a Client that sends token instead of c's token and
// otherwise shares everything with c, including which endpoint works.
func (c *Client) WithToken(token string) *Client {
	cp := *c
	cp.token = token
	return &cp
}

// Endpoint returns the endpoint the next call goes to first: the one that
// last answered.
func (c *Client) Endpoint() string {
	return c.endpoints[int(c.cur.Load())%len(c.endpoints)]
}

// CloseIdleConnections closes the connections the client keeps open for
// reuse. The client stays usable.
func (c *Client) CloseIdleConnections() {
	c.hc.CloseIdleConnections()
}

// Do sends one API call and returns the body of a 2xx answer unchanged, so a
// caller can show exactly the JSON the API sent. path is the escaped API
// path, e.g. "/v1/sessions/"+url.PathEscape(id); query may be nil. body is
// sent as JSON: nil sends no body, a []byte or json.RawMessage is sent as is,
// anything else is marshalled.
//
// An error answer comes back as an *APIError, or as an *EndedError for a 410
// that says a session ended. Do fails over between endpoints as the Client
// doc describes; a POST counts as idempotent only on the heartbeat and kill
// paths (repeating them is harmless: a repeated kill answers 410 killed).
//
// Cancelling ctx aborts the request in flight and stops the failover; Do
// then returns an error that matches ctx's error with errors.Is.
func (c *Client) Do(ctx context.Context, method, path string, query url.Values, body any) ([]byte, error) {
	return c.do(ctx, call{
		method:     method,
		path:       path,
		query:      query,
		body:       body,
		token:      c.token,
		idempotent: idempotent(method, path),
	})
}

// call is one API call as the failover loop sees it.
type call struct {
	method, path string
	query        url.Values
	body         any
	// token is sent as the bearer token unless empty.
	token string
	// idempotent calls fail over on every connection error and on 503; the
	// others only on dial errors.
	idempotent bool
	// attemptTimeout, if set, bounds each endpoint's attempt so that a node
	// that swallows packets leaves time for the next one.
	attemptTimeout time.Duration
}

func idempotent(method, path string) bool {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodPut, http.MethodDelete, http.MethodOptions:
		return true
	case http.MethodPost:
		return strings.HasSuffix(path, "/heartbeat") || strings.HasSuffix(path, "/kill")
	}
	return false
}

func (c *Client) do(ctx context.Context, r call) ([]byte, error) {
	if !strings.HasPrefix(r.path, "/") {
		return nil, fmt.Errorf("client: %s %q: path must start with /", r.method, r.path)
	}
	payload, err := encodeBody(r.body)
	if err != nil {
		return nil, fmt.Errorf("client: %s %s: encode body: %w", r.method, r.path, err)
	}
	var data []byte
	_, err = c.round(int(c.cur.Load()), r.method, r.path, func(ep string) (bool, bool, error) {
		body, status, err := c.attempt(ctx, ep, r, payload)
		if err == nil && status != http.StatusServiceUnavailable {
			if status >= 200 && status < 300 {
				data = body
				return true, false, nil
			}
			return true, false, decodeError(status, body)
		}
		if ctx.Err() != nil {
			return false, false, fmt.Errorf("client: %s %s: %w", r.method, r.path, ctx.Err())
		}
		if err == nil {
			// 503: this node cannot reach etcd; another may.
			return false, r.idempotent, decodeError(status, body)
		}
		if !failoverable(err, r.idempotent) {
			if r.idempotent || !isTransient(err) {
				return false, false, fmt.Errorf("client: %s %s at %s: %w", r.method, r.path, ep, err)
			}
			return false, false, fmt.Errorf("client: %s %s at %s: %w (not retried on another node: the request may have reached the server)",
				r.method, r.path, ep, err)
		}
		return false, true, err
	})
	return data, err
}

// round tries the endpoints once round, from index first. try reports whether the
// endpoint served the call (it becomes the one calls go to first) and whether to move on
// to the next endpoint after its error; when it does not move on, the round ends with
// that endpoint's index and error. When every endpoint failed, the error is an
// *unavailableError naming them.
func (c *Client) round(first int, method, path string, try func(ep string) (served, moveOn bool, err error)) (int, error) {
	n := len(c.endpoints)
	var tried []string
	var errs []error
	for i := range n {
		idx := (first + i) % n
		ep := c.endpoints[idx]
		served, moveOn, err := try(ep)
		if cur := int(c.cur.Load()) % n; served && cur != idx {
			c.cur.Store(int32(idx))
			c.log.Debug("switched endpoint", "endpoint", ep, "previous", c.endpoints[cur])
		}
		if !moveOn {
			return idx, err
		}
		c.log.Debug("endpoint failed", "endpoint", ep, "method", method, "path", path, "err", err)
		tried = append(tried, ep)
		errs = append(errs, err)
	}
	return first % n, &unavailableError{tried: tried, errs: errs}
}

// attempt sends the call to one endpoint. It returns the answer's body and
// status, or the transport error.
func (c *Client) attempt(ctx context.Context, ep string, r call, payload []byte) ([]byte, int, error) {
	if r.attemptTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, r.attemptTimeout)
		defer cancel()
	}
	req, err := newRequest(ctx, ep, r, payload)
	if err != nil {
		return nil, 0, err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, 0, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer+1))
	if err != nil {
		return nil, 0, err
	}
	if len(data) > maxAnswer {
		return nil, 0, fmt.Errorf("answer larger than %d bytes", maxAnswer)
	}
	return data, resp.StatusCode, nil
}

// newRequest builds the request of call r to endpoint ep.
func newRequest(ctx context.Context, ep string, r call, payload []byte) (*http.Request, error) {
	u := ep + r.path
	if len(r.query) > 0 {
		u += "?" + r.query.Encode()
	}
	var body io.Reader
	if payload != nil {
		body = bytes.NewReader(payload)
	}
	req, err := http.NewRequestWithContext(ctx, r.method, u, body)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	if payload != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if r.token != "" {
		req.Header.Set("Authorization", "Bearer "+r.token)
	}
	return req, nil
}

func encodeBody(body any) ([]byte, error) {
	switch b := body.(type) {
	case nil:
		return nil, nil
	case []byte:
		return b, nil
	case json.RawMessage:
		return b, nil
	}
	return json.Marshal(body)
}

// failoverable reports whether err, from one endpoint, lets the call move on
// to the next endpoint.
func failoverable(err error, idempotent bool) bool {
	if isDialError(err) {
		return true
	}
	return idempotent && isTransient(err)
}

// isDialError reports whether the connection could not be made, so the
// request certainly did not reach a server.
func isDialError(err error) bool {
	op, ok := errors.AsType[*net.OpError](err)
	return ok && op.Op == "dial"
}

// isTransient reports whether err is a connection failure that another node
// might not have: reset, refused, broken pipe, EOF, timeout.
func isTransient(err error) bool {
	if _, ok := errors.AsType[*net.OpError](err); ok {
		return true
	}
	if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
		return true
	}
	for _, target := range []error{io.EOF, io.ErrUnexpectedEOF, syscall.ECONNRESET, syscall.ECONNREFUSED, syscall.ECONNABORTED, syscall.EPIPE} {
		if errors.Is(err, target) {
			return true
		}
	}
	return false
}

// statusCodes names the code of an error answer that did not carry the
// API's error envelope (a health check, a proxy's page).
var statusCodes = map[int]string{
	http.StatusBadRequest:          "invalid_argument",
	http.StatusUnauthorized:        "unauthenticated",
	http.StatusForbidden:           "permission_denied",
	http.StatusNotFound:            "not_found",
	http.StatusConflict:            "already_exists",
	http.StatusGone:                "gone",
	http.StatusInternalServerError: "internal",
	http.StatusServiceUnavailable:  "unavailable",
}

// decodeError turns an error answer into an *APIError, or an *EndedError for
// a 410 that says a session ended.
func decodeError(status int, data []byte) error {
	var env struct {
		Error *struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if json.Unmarshal(data, &env) == nil && env.Error != nil && env.Error.Code != "" {
		e := &APIError{Status: status, Code: env.Error.Code, Message: env.Error.Message}
		if status == http.StatusGone {
			return endedFromAPI("", e)
		}
		return e
	}
	code, ok := statusCodes[status]
	if !ok {
		code = "http_" + strconv.Itoa(status)
	}
	return &APIError{Status: status, Code: code, Message: plainMessage(status, data)}
}

// plainMessage makes a message out of an answer without the error envelope.
func plainMessage(status int, data []byte) string {
	var health Health
	if json.Unmarshal(data, &health) == nil && health.Status != "" {
		msg := health.Status
		if health.Node != "" {
			msg = "node " + health.Node + " " + msg
		}
		if health.Reason != "" {
			msg += ": " + health.Reason
		}
		return msg
	}
	text := strings.TrimSpace(string(data))
	if len(text) > 200 {
		text = text[:200] + "…"
	}
	if text == "" {
		return http.StatusText(status)
	}
	return http.StatusText(status) + ": " + text
}
