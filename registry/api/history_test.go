package api_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/roster-dev/roster/registry"
)

// TestHistoryOverHTTP: a killed session shows up in GET /v1/history with how
// it ended; operators may read the history, client tokens may not.
func TestHistoryOverHTTP(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		reg.RecordHistory(ctx)
	}()
	defer func() { cancel(); <-done }()

	s := openSession(t, "hist-alice", "sales")
	if a := call(t, "POST", "/v1/sessions/"+s.ID+"/kill", adminToken, []byte(`{"reason":"PC crashed"}`)); a.status != 200 {
		t.Fatalf("kill: %d %s", a.status, a.body)
	}
	var page registry.HistoryPage
	pollPage(t, "/v1/history?user=hist-alice&reason=killed&since=2000-01-01T00:00:00Z", &page, func() bool { return len(page.History) == 1 })
	h := page.History[0]
	if h.ID != s.ID || h.Reason != registry.EndKilled || h.By != "admin" || h.Message != "PC crashed" || h.Host != "PC-17" || page.NextCursor != "" {
		t.Fatalf("history record %+v", page)
	}

	for _, tc := range []struct {
		role   string
		status int
	}{{"operator", http.StatusOK}, {"client", http.StatusForbidden}} {
		var tok registry.NewToken
		a := call(t, "POST", "/v1/tokens", adminToken, []byte(`{"name":"hist-`+tc.role+`","role":"`+tc.role+`"}`))
		if a.status != 201 || json.Unmarshal(a.body, &tok) != nil {
			t.Fatalf("create token: %d %s", a.status, a.body)
		}
		if a := call(t, "GET", "/v1/history", tok.Token, nil); a.status != tc.status {
			t.Fatalf("history with a %s token: %d %s, want %d", tc.role, a.status, a.body, tc.status)
		}
	}
}

// TestAuditOverHTTP: requests with bad credentials are recorded with the
// address they came from and the path, never the token; a refused login over
// HTTP carries the address too; GET /v1/audit filters and checks its
// parameters.
func TestAuditOverHTTP(t *testing.T) {
	s := openSession(t, "audit-alice", "sales")
	if a := call(t, "POST", "/v1/sessions", adminToken, []byte(`{"user":"audit-alice","module":"sales","host":"PC-18"}`)); a.status != http.StatusConflict {
		t.Fatalf("second login: %d %s", a.status, a.body)
	}
	secret := "rt1.not-a-real-token-" + s.ID
	if a := call(t, "GET", "/v1/sessions", secret, nil); a.status != http.StatusUnauthorized {
		t.Fatalf("unknown token: %d %s", a.status, a.body)
	}
	// Other tests of the package fail authentication too: find this one's.
	var page registry.AuditPage
	var f registry.AuditRecord
	body := pollPage(t, "/v1/audit?action=auth_failed&limit=1000", &page, func() bool {
		for _, a := range page.Audit {
			if strings.Contains(a.Message, "unknown or revoked API token") && a.Details["path"] == "/v1/sessions" {
				f = a
				return true
			}
		}
		return false
	})
	if strings.Contains(string(body), secret) {
		t.Fatalf("the audit log holds the token sent: %s", body)
	}
	if f.Remote != "127.0.0.1" || f.Details["method"] != "GET" || f.Count != 1 {
		t.Fatalf("auth_failed record %+v", f)
	}
	a := call(t, "GET", "/v1/audit?user=audit-alice&code=already_logged_in", adminToken, nil)
	if a.status != 200 || json.Unmarshal(a.body, &page) != nil || len(page.Audit) != 1 {
		t.Fatalf("refusals of audit-alice: %d %s", a.status, a.body)
	}
	if r := page.Audit[0]; r.Action != registry.AuditLoginRefused || r.Remote != "127.0.0.1" || r.Details["host"] != "PC-18" || r.Actor != "admin" {
		t.Fatalf("refusal record %+v", r)
	}
	for _, c := range []struct{ query, code, text string }{
		{"action=logon", "invalid_argument", "is not an audit action; use one of login, login_refused,"},
		{"since=yesterday", "invalid_argument", "since"},
		{"limit=0", "invalid_argument", "limit"},
		{"reason=killed", "invalid_argument", "reason: is not a query parameter here"},
	} {
		a := call(t, "GET", "/v1/audit?"+c.query, adminToken, nil)
		if a.status != http.StatusBadRequest || !strings.Contains(string(a.body), c.code) || !strings.Contains(string(a.body), c.text) {
			t.Errorf("GET /v1/audit?%s: %d %s, want 400 %s with %q", c.query, a.status, a.body, c.code, c.text)
		}
	}
}

// pollPage GETs path as admin into page until done holds, for at most 5 s,
// and returns the last answer's body.
func pollPage(t *testing.T, path string, page any, done func() bool) []byte {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		a := call(t, "GET", path, adminToken, nil)
		if a.status != 200 || json.Unmarshal(a.body, page) != nil {
			t.Fatalf("GET %s: %d %s", path, a.status, a.body)
		}
		if done() {
			return a.body
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s: not there within 5 s: %s", path, a.body)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
