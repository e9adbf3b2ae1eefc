package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestServeRejectsBadClusterSettings: a bad cluster or registry setting stops the node before
// anything is created, with an error that names the setting and what to do.
func TestServeRejectsBadClusterSettings(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--voters", "9"}, "voters 9: must be from 1 to 7"},
		{[]string{"--bootstrap", "--bootstrap-expect", "3"}, "exclude each other"},
		{[]string{"--etcd-endpoints", "127.0.0.1:2379"}, "must be a URL like http://10.0.0.5:2379"},
		{[]string{"--gossip-listen", "0.0.0.0:7403"}, "gossip advertise is required"},
		{[]string{"--dead-after", "0s"}, "dead-after 0s: must be positive"},
		{[]string{"--history-retention", "-1h"}, "history retention -1h0m0s must not be negative (0 keeps no history)"},
		{[]string{"--audit-retention", "-1s"}, "audit retention -1s must not be negative (0 keeps no audit log)"},
		{[]string{"--liveness-interval", "10ms"}, "--liveness-interval 10ms: give 50ms to 2s, or 0 to turn the liveness view off"},
		{[]string{"--liveness-interval", "-1s"}, "--liveness-interval -1s: give 50ms to 2s"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			dataDir := filepath.Join(t.TempDir(), "data")
			var stderr bytes.Buffer
			args := append([]string{"--data-dir", dataDir, "--name", "n1"}, tc.args...)
			if code := runServe(context.Background(), args, &stderr); code != 1 {
				t.Fatalf("exit %d, want 1; stderr:\n%s", code, &stderr)
			}
			if !strings.Contains(stderr.String(), tc.want) {
				t.Fatalf("stderr does not say %q:\n%s", tc.want, &stderr)
			}
			if _, err := os.Stat(dataDir); !os.IsNotExist(err) {
				t.Fatalf("the data dir was created by a node that refused to start: %v", err)
			}
		})
	}
}

// TestServePprof: --pprof-listen serves Go's profiles on an address of its
// own, and a taken address stops the node before it starts.
func TestServePprof(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	var stderr bytes.Buffer
	args := []string{"--data-dir", filepath.Join(t.TempDir(), "data"), "--name", "n1", "--listen", "127.0.0.1:0",
		"--pprof-listen", taken.Addr().String()}
	if code := runServe(context.Background(), args, &stderr); code != 1 {
		t.Fatalf("exit %d, want 1; stderr:\n%s", code, &stderr)
	}
	if want := "listen for pprof on " + taken.Addr().String(); !strings.Contains(stderr.String(), want) {
		t.Fatalf("stderr does not say %q:\n%s", want, &stderr)
	}

	ln, err := listenPprof("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- servePprof(ctx, ln, slog.New(slog.NewTextHandler(io.Discard, nil))) }()
	resp, err := http.Get("http://" + ln.Addr().String() + "/debug/pprof/goroutine?debug=1")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "goroutine profile") {
		t.Fatalf("GET /debug/pprof/goroutine: %s\n%.200s", resp.Status, body)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("servePprof after its context ended: %v", err)
	}
}
