package api_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"sync/atomic"
	"testing"

	"github.com/roster-dev/roster/registry"
)

// HTTP benchmarks: the same opens and heartbeats as the registry's
// benchmarks, through the HTTP API on loopback with 64 concurrent
// clients, so the difference is what HTTP, JSON and auth cost.
//
//	go test -run '^$' -bench . -benchtime 5000x ./registry/api/

func benchClient() *http.Client {
	return &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 128}}
}

func post(b *testing.B, c *http.Client, path, token string, body []byte, want int) []byte {
	req, _ := http.NewRequest("POST", srv.URL+path, bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := c.Do(req)
	if err != nil {
		b.Error(err)
		return nil
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != want {
		b.Errorf("%s: %d %s", path, resp.StatusCode, out)
	}
	return out
}

var benchRun atomic.Int64

// BenchmarkHTTPOpen: POST /v1/sessions, distinct users.
func BenchmarkHTTPOpen(b *testing.B) {
	c := benchClient()
	run := benchRun.Add(1)
	var seq atomic.Int64
	b.SetParallelism(max(1, 64/runtime.GOMAXPROCS(0)))
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			body := fmt.Appendf(nil, `{"user":"bench-%d-%d","module":"sales","host":"PC"}`, run, seq.Add(1))
			post(b, c, "/v1/sessions", adminToken, body, http.StatusCreated)
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "opens/s")
}

// BenchmarkHTTPHeartbeat: POST /v1/sessions/{id}/heartbeat with each
// session's own token, over 1,000 live sessions.
func BenchmarkHTTPHeartbeat(b *testing.B) {
	c := benchClient()
	run := benchRun.Add(1)
	sessions := make([]registry.OpenedSession, 1000)
	for i := range sessions {
		out := post(b, c, "/v1/sessions", adminToken, fmt.Appendf(nil, `{"user":"hb-%d-%d","module":"sales"}`, run, i), http.StatusCreated)
		if err := json.Unmarshal(out, &sessions[i]); err != nil {
			b.Fatal(err)
		}
	}
	var seq atomic.Int64
	b.SetParallelism(max(1, 64/runtime.GOMAXPROCS(0)))
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			s := sessions[seq.Add(1)%int64(len(sessions))]
			post(b, c, "/v1/sessions/"+s.ID+"/heartbeat", s.Token, nil, http.StatusOK)
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "heartbeats/s")
}
