package api_test

import (
	"context"
	"encoding/json"
	"net/http"
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
	deadline := time.Now().Add(5 * time.Second)
	for {
		a := call(t, "GET", "/v1/history?user=hist-alice&reason=killed&since=2000-01-01T00:00:00Z", adminToken, nil)
		if a.status != 200 || json.Unmarshal(a.body, &page) != nil {
			t.Fatalf("history: %d %s", a.status, a.body)
		}
		if len(page.History) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no history record within 5 s: %s", a.body)
		}
		time.Sleep(50 * time.Millisecond)
	}
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
