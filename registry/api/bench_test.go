package api_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/roster-dev/roster/registry"
	"github.com/roster-dev/roster/registry/internal/proc"
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
	cpu0 := proc.CPUTime()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			body := fmt.Appendf(nil, `{"user":"bench-%d-%d","module":"sales","host":"PC"}`, run, seq.Add(1))
			post(b, c, "/v1/sessions", adminToken, body, http.StatusCreated)
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "opens/s")
	reportCPU(b, cpu0)
}

// reportCPU reports the CPU time the process used per op since cpu0
// (cpu-us/op): server, registry, embedded etcd and clients together.
func reportCPU(b *testing.B, cpu0 time.Duration) {
	b.ReportMetric(float64(proc.CPUTime()-cpu0)/float64(time.Microsecond)/float64(b.N), "cpu-us/op")
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
	cpu0 := proc.CPUTime()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			s := sessions[seq.Add(1)%int64(len(sessions))]
			post(b, c, "/v1/sessions/"+s.ID+"/heartbeat", s.Token, nil, http.StatusOK)
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "heartbeats/s")
	reportCPU(b, cpu0)
}

// BenchmarkHTTPBatchHeartbeat: an application server keeps 10,000 sessions
// alive over HTTP, in sessions renewed per second (sessions/s): batch is one
// POST /v1/heartbeats with all of them (an op is one call); single is one
// POST /v1/sessions/{id}/heartbeat per session with its own token from 64
// concurrent clients (an op is one request).
//
//	go test -run '^$' -bench HTTPBatchHeartbeat -benchtime 3s -count 5 ./registry/api/
func BenchmarkHTTPBatchHeartbeat(b *testing.B) {
	ctx := b.Context()
	admin := registry.AdminPrincipal("admin")
	run := benchRun.Add(1)
	user := fmt.Sprintf("batch-%d", run)
	if _, err := reg.PutUser(ctx, admin, "default", user, registry.UserSpec{Rights: []registry.Right{registry.RightMultiLogin}, Services: []string{"web"}}); err != nil {
		b.Fatal(err)
	}
	conn, err := reg.RegisterConnection(ctx, admin, registry.ConnectionRequest{Service: "web", TTLSeconds: 600})
	if err != nil {
		b.Fatal(err)
	}
	sessions := make([]registry.OpenedSession, registry.MaxBatchSessions)
	var seq atomic.Int64
	var wg sync.WaitGroup
	for range 32 {
		wg.Go(func() {
			for i := seq.Add(1) - 1; i < int64(len(sessions)); i = seq.Add(1) - 1 {
				s, err := reg.Open(ctx, admin, registry.OpenRequest{User: user, Module: "sales", TTLSeconds: 600, Connections: []string{conn.ID}})
				if err != nil {
					b.Error(err)
					return
				}
				sessions[i] = s
			}
		})
	}
	wg.Wait()
	if b.Failed() {
		return
	}
	ids := make([]string, len(sessions))
	for i, s := range sessions {
		ids[i] = s.ID
	}
	body, _ := json.Marshal(registry.BatchHeartbeatRequest{Connection: conn.ID, Sessions: ids})
	c := benchClient()
	b.Run("batch", func(b *testing.B) {
		for b.Loop() {
			var res registry.BatchHeartbeatAnswer
			if err := json.Unmarshal(post(b, c, "/v1/heartbeats", adminToken, body, http.StatusOK), &res); err != nil || res.Renewed != len(ids) {
				b.Fatalf("%d renewed, %v", res.Renewed, err)
			}
		}
		b.ReportMetric(float64(b.N*len(ids))/b.Elapsed().Seconds(), "sessions/s")
	})
	b.Run("single", func(b *testing.B) {
		var seq atomic.Int64
		b.SetParallelism(max(1, 64/runtime.GOMAXPROCS(0)))
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				s := sessions[seq.Add(1)%int64(len(sessions))]
				post(b, c, "/v1/sessions/"+s.ID+"/heartbeat", s.Token, nil, http.StatusOK)
			}
		})
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "sessions/s")
	})
}

// BenchmarkHTTPFloor: POST /v1/sessions/{id}/heartbeat with a session token
// to a handler that only answers a heartbeat-sized JSON body: what the HTTP
// request and its answer alone cost, client and server, on this machine. An
// HTTP heartbeat can be no cheaper.
func BenchmarkHTTPFloor(b *testing.B) {
	floor := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"id":"0123456789abcdef0123456789abcdef","ttl_seconds":60,"expires_in_seconds":60}`+"\n")
	}))
	defer floor.Close()
	c := benchClient()
	token := "rs1.0123456789abcdef0123456789abcdef." + strings.Repeat("x", 43)
	b.SetParallelism(max(1, 64/runtime.GOMAXPROCS(0)))
	b.ResetTimer()
	cpu0 := proc.CPUTime()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			req, _ := http.NewRequest("POST", floor.URL+"/v1/sessions/0123456789abcdef0123456789abcdef/heartbeat", bytes.NewReader(nil))
			req.Header.Set("Authorization", "Bearer "+token)
			resp, err := c.Do(req)
			if err != nil {
				b.Error(err)
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "requests/s")
	reportCPU(b, cpu0)
}
