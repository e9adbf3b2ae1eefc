package client_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/roster-dev/roster/registry"
	"github.com/roster-dev/roster/registry/client"
)

func TestMain(m *testing.M) {
	code := m.Run()
	if node != nil {
		node.Close()
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

func newClient(t *testing.T, endpoints ...string) *client.Client {
	t.Helper()
	c, err := client.New(client.Config{Endpoints: endpoints, Token: "rt1.admin"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.CloseIdleConnections)
	return c
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name      string
		endpoints []string
		wantErr   string // substring; "" means valid
	}{
		{name: "default", endpoints: client.DefaultConfig().Endpoints},
		{name: "several with path prefix", endpoints: []string{"http://a:7400", "https://lb.example/roster/"}},
		{name: "none", endpoints: nil, wantErr: "no endpoints"},
		{name: "empty string", endpoints: []string{""}, wantErr: "empty endpoint"},
		{name: "no scheme", endpoints: []string{"127.0.0.1:7400"}, wantErr: "has no scheme: write http://127.0.0.1:7400"},
		{name: "not a URL", endpoints: []string{"http://a b"}, wantErr: "is not a URL"},
		{name: "other scheme", endpoints: []string{"ftp://a"}, wantErr: "scheme must be http or https"},
		{name: "no host", endpoints: []string{"http://"}, wantErr: "has no host"},
		{name: "query", endpoints: []string{"http://a/?x=1"}, wantErr: "only scheme, host, port and path"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := client.Config{Endpoints: tt.endpoints}
			err := cfg.Validate()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Validate = %v, want an error containing %q", err, tt.wantErr)
			}
			if _, err := client.New(cfg); err == nil {
				t.Fatal("New accepted an invalid config")
			}
		})
	}
}

func TestFailover(t *testing.T) {
	// fails is an endpoint that does not serve; the good node comes after it.
	tests := []struct {
		name      string
		fails     func(t *testing.T) (string, func() int)
		open      bool // POST /v1/sessions (not idempotent) instead of GET /v1/sessions/{id}
		wantOK    bool
		wantIs    error
		wantInErr string
	}{
		{name: "get skips refused endpoint", fails: refused, wantOK: true},
		{name: "get skips 503 endpoint", fails: unavailable503, wantOK: true},
		{name: "get skips endpoint that drops the connection", fails: eofEndpoint, wantOK: true},
		{name: "open skips refused endpoint", fails: refused, open: true, wantOK: true},
		{name: "open does not retry after EOF", fails: eofEndpoint, open: true, wantInErr: "may have reached the server"},
		{name: "open does not retry after 503", fails: unavailable503, open: true, wantIs: client.ErrUnavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			good := newFakeNode(t)
			bad, hits := tt.fails(t)
			c := newClient(t, bad, good.URL)
			ctx := context.Background()

			// Open a session directly on the good node to have something to get.
			seed := newClient(t, good.URL)
			if _, err := seed.Do(ctx, http.MethodPost, "/v1/sessions", nil, registry.OpenRequest{User: "bob", Module: "crm"}); err != nil {
				t.Fatal(err)
			}
			var err error
			if tt.open {
				_, err = c.Do(ctx, http.MethodPost, "/v1/sessions", nil, registry.OpenRequest{User: "alice", Module: "sales"})
			} else {
				_, err = c.Get(ctx, "00000000000000000000000000000001")
			}
			if tt.wantOK {
				if err != nil {
					t.Fatalf("call failed: %v", err)
				}
				if c.Endpoint() != good.URL {
					t.Errorf("Endpoint() = %s, want the good node %s remembered", c.Endpoint(), good.URL)
				}
				// The next call goes straight to the good node.
				before := hits()
				if _, err := c.Get(ctx, "00000000000000000000000000000001"); err != nil {
					t.Fatal(err)
				}
				if hits() != before {
					t.Error("the failed endpoint was tried again although another one worked")
				}
				return
			}
			if err == nil {
				t.Fatal("call succeeded, want an error")
			}
			if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
				t.Errorf("error %v does not match %v", err, tt.wantIs)
			}
			if tt.wantInErr != "" && !strings.Contains(err.Error(), tt.wantInErr) {
				t.Errorf("error %q does not contain %q", err, tt.wantInErr)
			}
			if n := good.count("POST /v1/sessions"); n != 1 {
				t.Errorf("good node got %d opens, want only the seed: the open was retried", n)
			}
		})
	}
}

func refused(t *testing.T) (string, func() int) { return deadEndpoint(t), func() int { return 0 } }

func unavailable503(t *testing.T) (string, func() int) {
	t.Helper()
	var n atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		writeError(w, http.StatusServiceUnavailable, "unavailable", "node n9 cannot reach etcd; try another node")
	}))
	t.Cleanup(srv.Close)
	return srv.URL, func() int { return int(n.Load()) }
}

func TestAllEndpointsDown(t *testing.T) {
	a, b := deadEndpoint(t), deadEndpoint(t)
	c := newClient(t, a, b)
	_, err := c.Get(context.Background(), "x")
	if !errors.Is(err, client.ErrUnavailable) {
		t.Fatalf("error %v does not match ErrUnavailable", err)
	}
	for _, ep := range []string{a, b} {
		if !strings.Contains(err.Error(), ep) {
			t.Errorf("error %q does not name endpoint %s", err, ep)
		}
	}
}

func TestCancelStopsFailover(t *testing.T) {
	hang := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done()
	}))
	defer hang.Close()
	other := newFakeNode(t)
	c := newClient(t, hang.URL, other.URL)

	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := c.Get(ctx, "x")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("error %v does not match context.DeadlineExceeded", err)
	}
	if _, _, reqs := other.snapshot(); len(reqs) != 0 {
		t.Errorf("the call went on to the next endpoint after ctx was done (%v)", reqs)
	}
}

func TestErrorDecoding(t *testing.T) {
	tests := []struct {
		name       string
		status     int
		body       string
		wantCode   string
		wantStatus int
		wantText   string // Error()
		wantIs     []error
		wantEnded  registry.EndReason
	}{
		{
			name:   "already logged in",
			status: 409, body: `{"error":{"code":"already_logged_in","message":"user alice is already logged in to module sales"}}`,
			wantCode: "already_logged_in", wantStatus: 409,
			wantText: "already_logged_in: user alice is already logged in to module sales",
			wantIs:   []error{client.ErrAlreadyLoggedIn},
		},
		{
			name:   "not found",
			status: 404, body: `{"error":{"code":"not_found","message":"no session x"}}`,
			wantCode: "not_found", wantStatus: 404, wantText: "not_found: no session x",
			wantIs: []error{client.ErrNotFound},
		},
		{
			name:   "killed",
			status: 410, body: `{"error":{"code":"killed","message":"session x was killed by admin at 2026-11-21T11:00:00Z: PC crashed"}}`,
			wantCode: "killed", wantStatus: 410, wantEnded: registry.EndKilled,
			wantText: "session x was killed by admin at 2026-11-21T11:00:00Z: PC crashed",
			wantIs:   []error{client.ErrKilled},
		},
		{
			name:   "expired",
			status: 410, body: `{"error":{"code":"expired","message":"session x expired"}}`,
			wantCode: "expired", wantStatus: 410, wantEnded: registry.EndExpired,
			wantIs: []error{client.ErrExpired},
		},
		{
			name:   "closed",
			status: 410, body: `{"error":{"code":"closed","message":"session x was closed"}}`,
			wantCode: "closed", wantStatus: 410, wantEnded: registry.EndClosed,
			wantIs: []error{client.ErrClosed},
		},
		{
			name:   "permission denied",
			status: 403, body: `{"error":{"code":"permission_denied","message":"operator tokens may not open sessions"}}`,
			wantCode: "permission_denied", wantStatus: 403,
			wantIs: []error{client.ErrPermissionDenied},
		},
		{
			name:   "no envelope",
			status: 502, body: "bad gateway from proxy",
			wantCode: "http_502", wantStatus: 502, wantText: "http_502: Bad Gateway: bad gateway from proxy",
		},
		{
			name:   "not ready",
			status: 503, body: `{"status":"not ready","node":"n1","reason":"etcd read timed out"}`,
			wantCode: "unavailable", wantStatus: 503,
			wantText: "client: no node available",
			wantIs:   []error{client.ErrUnavailable},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newClient(t, statusEndpoint(t, tt.status, tt.body))
			_, err := c.Get(context.Background(), "x")
			if err == nil {
				t.Fatal("no error")
			}
			apiErr, ok := errors.AsType[*client.APIError](err)
			if !ok {
				t.Fatalf("error %v (%T) has no *APIError", err, err)
			}
			if apiErr.Code != tt.wantCode || apiErr.Status != tt.wantStatus {
				t.Errorf("APIError = %d %s, want %d %s", apiErr.Status, apiErr.Code, tt.wantStatus, tt.wantCode)
			}
			if tt.wantText != "" && !strings.HasPrefix(err.Error(), tt.wantText) {
				t.Errorf("Error() = %q, want prefix %q", err, tt.wantText)
			}
			for _, target := range tt.wantIs {
				if !errors.Is(err, target) {
					t.Errorf("errors.Is(%v, %v) = false", err, target)
				}
			}
			ended, ok := errors.AsType[*client.EndedError](err)
			if tt.wantEnded == "" {
				if ok {
					t.Errorf("got *EndedError %v for a non-410 answer", ended)
				}
				return
			}
			if !ok {
				t.Fatalf("error %v is not an *EndedError", err)
			}
			if ended.Reason != tt.wantEnded || ended.ID != "x" {
				t.Errorf("EndedError = {ID %q, Reason %q}, want {x, %s}", ended.ID, ended.Reason, tt.wantEnded)
			}
			for _, other := range []error{client.ErrKilled, client.ErrExpired, client.ErrClosed} {
				if other != tt.wantIs[0] && errors.Is(err, other) {
					t.Errorf("errors.Is(%v, %v) = true, want false", err, other)
				}
			}
		})
	}
}

func TestEndedErrorText(t *testing.T) {
	at := time.Date(2026, 11, 21, 11, 0, 0, 0, time.UTC)
	tests := []struct {
		name string
		err  *client.EndedError
		want string
	}{
		{
			name: "all facts",
			err:  &client.EndedError{ID: "0193", Reason: registry.EndKilled, By: "admin", At: at, Message: "PC crashed"},
			want: "session 0193 was killed by admin at 2026-11-21T11:00:00Z: PC crashed",
		},
		{
			name: "server sentence only",
			err:  &client.EndedError{ID: "0193", Reason: registry.EndExpired, Message: "session 0193 expired at 11:00"},
			want: "session 0193 expired at 11:00",
		},
		{
			name: "nothing but the reason",
			err:  &client.EndedError{ID: "0193", Reason: registry.EndClosed},
			want: "session 0193 was closed",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.err.Error(); got != tt.want {
				t.Errorf("Error() = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestDoReturnsRawJSON(t *testing.T) {
	body := `{"id":"abc", "odd_spacing" : true}` + "\n"
	c := newClient(t, statusEndpoint(t, 200, body))
	got, err := c.Do(context.Background(), http.MethodGet, "/v1/sessions/abc", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != body {
		t.Errorf("Do = %q, want the answer unchanged %q", got, body)
	}
}

func TestListQuery(t *testing.T) {
	tests := []struct {
		name    string
		filter  registry.ListFilter
		want    url.Values
		wantErr string
	}{
		{name: "empty", filter: registry.ListFilter{}, want: url.Values{}},
		{
			name: "every field",
			filter: registry.ListFilter{Tenant: "t", User: "u", Module: "m", Pool: "p", Site: "s", Node: "n",
				ClientKind: registry.KindAppServer, Limit: 50, Cursor: "c1"},
			want: url.Values{"tenant": {"t"}, "user": {"u"}, "module": {"m"}, "pool": {"p"}, "site": {"s"},
				"node": {"n"}, "client_kind": {"appserver"}, "limit": {"50"}, "cursor": {"c1"}},
		},
		{name: "opened by is not an API parameter", filter: registry.ListFilter{OpenedByToken: "x"}, wantErr: "OpenedByToken"},
		{name: "negative limit", filter: registry.ListFilter{Limit: -1}, wantErr: "negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := client.ListQuery(tt.filter)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ListQuery = %v, want error containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.Encode() != tt.want.Encode() {
				t.Errorf("ListQuery = %s, want %s", got.Encode(), tt.want.Encode())
			}
		})
	}
}

func TestListSendsQuery(t *testing.T) {
	queries := make(chan string, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		queries <- r.URL.RawQuery
		writeJSON(w, 200, registry.SessionPage{Sessions: []registry.Session{{ID: "a"}}, Total: 3, NextCursor: "n"})
	}))
	defer srv.Close()
	c := newClient(t, srv.URL)
	page, err := c.List(context.Background(), registry.ListFilter{User: "alice", Limit: 1})
	if err != nil {
		t.Fatal(err)
	}
	if got := <-queries; got != "limit=1&user=alice" {
		t.Errorf("query = %q", got)
	}
	if len(page.Sessions) != 1 || page.Total != 3 || page.NextCursor != "n" {
		t.Errorf("page = %+v", page)
	}
}

func TestHistoryQuery(t *testing.T) {
	since := time.Date(2026, 11, 21, 10, 0, 0, 0, time.FixedZone("CET", 3600))
	tests := []struct {
		name    string
		filter  registry.HistoryFilter
		want    url.Values
		wantErr string
	}{
		{name: "empty", filter: registry.HistoryFilter{}, want: url.Values{}},
		{
			name: "every field, times in UTC",
			filter: registry.HistoryFilter{Tenant: "t", User: "u", Module: "m", Reason: registry.EndKilled,
				Since: since, Until: since.Add(90 * time.Minute), Limit: 50, Cursor: "c1"},
			want: url.Values{"tenant": {"t"}, "user": {"u"}, "module": {"m"}, "reason": {"killed"},
				"since": {"2026-11-21T09:00:00Z"}, "until": {"2026-11-21T10:30:00Z"}, "limit": {"50"}, "cursor": {"c1"}},
		},
		{name: "negative limit", filter: registry.HistoryFilter{Limit: -1}, wantErr: "negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := client.HistoryQuery(tt.filter)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("HistoryQuery = %v, want error containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.Encode() != tt.want.Encode() {
				t.Errorf("HistoryQuery = %s, want %s", got.Encode(), tt.want.Encode())
			}
		})
	}
}
