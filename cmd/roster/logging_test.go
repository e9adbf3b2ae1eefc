package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"testing/slogtest"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/roster-dev/roster/cluster/clustertest/syncbuf"
)

// logLines parses buf as JSON lines.
func logLines(t *testing.T, buf *bytes.Buffer) []map[string]any {
	t.Helper()
	var lines []map[string]any
	for line := range strings.Lines(buf.String()) {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line %q is not JSON: %v", line, err)
		}
		lines = append(lines, m)
	}
	return lines
}

func TestNewLoggingLevels(t *testing.T) {
	tests := []struct {
		name  string
		level string
		want  []string // "logger msg" of the lines written, in order
	}{
		{name: "debug", level: "debug", want: []string{
			" roster debug", " roster info", " roster warn", " roster error",
			"etcd etcd info", "etcd etcd warn", "etcd etcd error",
		}},
		{name: "info", level: "info", want: []string{
			" roster info", " roster warn", " roster error",
			"etcd etcd warn", "etcd etcd error",
		}},
		{name: "warn", level: "warn", want: []string{
			" roster warn", " roster error",
			"etcd etcd warn", "etcd etcd error",
		}},
		{name: "error", level: "error", want: []string{
			" roster error",
			"etcd etcd error",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			log, etcdLog, err := newLogging(tt.level, &buf)
			if err != nil {
				t.Fatalf("newLogging(%q): %v", tt.level, err)
			}
			log.Debug("roster debug")
			log.Info("roster info")
			log.Warn("roster warn")
			log.Error("roster error")
			etcdLog.Debug("etcd debug")
			etcdLog.Info("etcd info")
			etcdLog.Warn("etcd warn")
			etcdLog.Error("etcd error")

			var got []string
			for _, l := range logLines(t, &buf) {
				logger, _ := l["logger"].(string)
				got = append(got, logger+" "+l["msg"].(string))
				if want := strings.Fields(l["msg"].(string))[1]; l["level"] != want {
					t.Errorf("line %v: level %v, want %s", l, l["level"], want)
				}
			}
			if strings.Join(got, "|") != strings.Join(tt.want, "|") {
				t.Errorf("lines written:\n%q\nwant\n%q", got, tt.want)
			}
		})
	}
}

func TestNewLoggingBadLevel(t *testing.T) {
	for _, level := range []string{"", "verbose", "INFO", "fatal"} {
		_, _, err := newLogging(level, &bytes.Buffer{})
		if err == nil || !strings.Contains(err.Error(), "--log-level") {
			t.Errorf("newLogging(%q) error = %v, want one naming --log-level", level, err)
		}
	}
}

func TestSlogAttrs(t *testing.T) {
	var buf bytes.Buffer
	log, _, err := newLogging("debug", &buf)
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 11, 21, 10, 2, 0, 0, time.UTC)
	log.With("node", "n1").WithGroup("session").With("session-id", "s1").Info("opened",
		"ttl", 30*time.Second,
		"pid", 4711,
		"shards", uint64(3),
		"ratio", 0.5,
		"ok", true,
		"at", at,
		"err", errors.New("boom"),
		"labels", map[string]string{"pool": "a"},
		slog.Group("client", "host", "PC-17", slog.Group("os", "name", "linux")),
		slog.Group("empty"),
		slog.Group("", "inlined", 1),
	)
	lines := logLines(t, &buf)
	if len(lines) != 1 {
		t.Fatalf("got %d lines, want 1", len(lines))
	}
	got := lines[0]
	want := map[string]any{
		"level":                  "info",
		"msg":                    "opened",
		"node":                   "n1",
		"session.session-id":     "s1",
		"session.ttl":            "30s",
		"session.pid":            4711.0,
		"session.shards":         3.0,
		"session.ratio":          0.5,
		"session.ok":             true,
		"session.at":             "2026-11-21T10:02:00.000000Z",
		"session.err":            "boom",
		"session.labels":         map[string]any{"pool": "a"},
		"session.client.host":    "PC-17",
		"session.client.os.name": "linux",
		"session.inlined":        1.0,
	}
	for k, v := range want {
		gv, ok := got[k]
		if !ok {
			t.Errorf("key %q missing", k)
			continue
		}
		gj, _ := json.Marshal(gv)
		wj, _ := json.Marshal(v)
		if !bytes.Equal(gj, wj) {
			t.Errorf("%s = %s, want %s", k, gj, wj)
		}
	}
	for _, k := range []string{"ts", "caller"} {
		if _, ok := got[k]; !ok {
			t.Errorf("key %q missing", k)
		}
	}
	if c, _ := got["caller"].(string); !strings.Contains(c, "logging_test.go:") {
		t.Errorf("caller = %q, want this file", c)
	}
	if _, ok := got["logger"]; ok {
		t.Errorf("roster line has a logger name: %v", got["logger"])
	}
	for k := range got {
		if strings.Contains(k, "empty") {
			t.Errorf("empty group written as %q", k)
		}
	}
}

// TestSlogHandlerConformance runs the standard library's handler tests. Groups are key
// prefixes in our output; the result function nests them back into maps as slogtest wants.
func TestSlogHandlerConformance(t *testing.T) {
	var buf bytes.Buffer
	newHandler := func(t *testing.T) slog.Handler {
		buf.Reset()
		log, _, err := newLogging("debug", &buf)
		if err != nil {
			t.Fatal(err)
		}
		return log.Handler()
	}
	result := func(t *testing.T) map[string]any {
		lines := logLines(t, &buf)
		if len(lines) != 1 {
			t.Fatalf("got %d lines, want 1", len(lines))
		}
		out := map[string]any{}
		for k, v := range lines[0] {
			switch k {
			case "ts":
				k = slog.TimeKey
			case "caller":
				continue
			}
			m := out
			parts := strings.Split(k, ".")
			for _, p := range parts[:len(parts)-1] {
				sub, ok := m[p].(map[string]any)
				if !ok {
					sub = map[string]any{}
					m[p] = sub
				}
				m = sub
			}
			m[parts[len(parts)-1]] = v
		}
		return out
	}
	slogtest.Run(t, newHandler, result)
}

// bufferLines parses what was written to b so far as JSON lines.
func bufferLines(t *testing.T, b *syncbuf.Buffer) []map[string]any {
	return logLines(t, bytes.NewBuffer(b.Bytes()))
}

func TestRepeatLimit(t *testing.T) {
	var out syncbuf.Buffer
	core := zapcore.NewCore(zapcore.NewJSONEncoder(encoderConfig()), zapcore.Lock(zapcore.AddSync(&out)), zapcore.DebugLevel)
	lg := zap.New(newRepeatLimit(core, 300*time.Millisecond, 3)).Named("etcd")
	for i := range 12 {
		if i == 10 {
			lg.Error("slow", zap.Int("i", i)) // left out too, and the count says error
			continue
		}
		lg.Warn("slow", zap.Int("i", i))
	}
	lg.Warn("other")
	lg.With(zap.String("member", "n1")).Warn("other") // a derived logger shares the count
	for range 10 {
		lg.Info("chatty") // below warn: never limited
	}
	count := func(lines []map[string]any, msg string) int {
		n := 0
		for _, l := range lines {
			if l["msg"] == msg {
				n++
			}
		}
		return n
	}
	var summary map[string]any
	deadline := time.Now().Add(10 * time.Second)
	for summary == nil && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
		for _, l := range bufferLines(t, &out) {
			if l["msg"] == leftOutMsg {
				summary = l
			}
		}
	}
	if summary == nil {
		t.Fatalf("no %q line after the window; the log:\n%s", leftOutMsg, out.String())
	}
	lines := bufferLines(t, &out)
	if got := count(lines, "slow"); got != 3 {
		t.Errorf("%d lines of the repeated warning written, want the first 3", got)
	}
	for i, l := range lines[:3] {
		if l["msg"] != "slow" || l["i"] != float64(i) {
			t.Errorf("line %d = %v, want the warning number %d", i, l, i)
		}
	}
	if got := count(lines, "other"); got != 2 {
		t.Errorf("%d lines of another message, want both: each message has its own count", got)
	}
	if got := count(lines, "chatty"); got != 10 {
		t.Errorf("%d info lines, want all 10", got)
	}
	if summary["repeated_msg"] != "slow" || summary["left_out"] != float64(9) || summary["written"] != float64(3) ||
		summary["level"] != "error" || summary["logger"] != "etcd" || summary["within"] == nil {
		t.Errorf("count line = %v, want repeated_msg slow, left_out 9, written 3, level error (the worst left out), logger etcd, within", summary)
	}
	if got := count(lines, leftOutMsg); got != 1 {
		t.Errorf("%d count lines, want 1 (nothing of \"other\" was left out)", got)
	}

	// After the count a new window starts: the message is written again.
	lg.Warn("slow", zap.Int("i", 99))
	lines = bufferLines(t, &out)
	if last := lines[len(lines)-1]; last["msg"] != "slow" || last["i"] != float64(99) {
		t.Errorf("the first repeat after the count = %v, want it written", last)
	}
}

// TestNewLoggingLimitsEtcdRepeats checks that the node's etcd logger limits repeats
// and its own logger does not.
func TestNewLoggingLimitsEtcdRepeats(t *testing.T) {
	var buf syncbuf.Buffer
	log, etcdLog, err := newLogging("info", &buf)
	if err != nil {
		t.Fatal(err)
	}
	for range 2 * repeatFirst {
		etcdLog.Warn("apply request took too long")
		log.Warn("request failed")
	}
	lines := bufferLines(t, &buf)
	etcdN, ownN := 0, 0
	for _, l := range lines {
		switch l["msg"] {
		case "apply request took too long":
			etcdN++
		case "request failed":
			ownN++
		}
	}
	if etcdN != repeatFirst || ownN != 2*repeatFirst {
		t.Errorf("etcd's repeated warning written %d times, Roster's %d; want %d and %d", etcdN, ownN, repeatFirst, 2*repeatFirst)
	}
}
