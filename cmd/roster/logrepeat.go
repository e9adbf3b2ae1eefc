package main

import (
	"sync"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// An overloaded etcd warns about every slow request ("request stats", "apply request
// took too long"), and its client about every retry: in one run of 100,000 logouts on
// an overloaded 3-node cluster that was 54,640 lines of a node's 56,768. The lines are
// the same few messages over and over, so repeatLimit writes the first repeatFirst of a
// message in each repeatWindow and counts the rest, and at the end of that window writes
// one line saying how many it left out. The first lines keep what is wrong visible.
const (
	repeatWindow = 10 * time.Second
	repeatFirst  = 5
)

// leftOutMsg is the message of the line that counts the left-out repeats.
const leftOutMsg = "repeats of an etcd message left out"

// repeatLimit is a zapcore.Core that limits repeated warnings and errors (not panics)
// by logger and message, as above; other entries pass unchanged.
type repeatLimit struct {
	zapcore.Core
	st *repeatState
}

// repeatState is shared by a repeatLimit and the cores derived from it with fields.
type repeatState struct {
	out    zapcore.Core // where the counting lines go
	window time.Duration
	first  int

	mu   sync.Mutex
	seen map[repeatKey]*repeatCount
}

type repeatKey struct{ logger, msg string }

// repeatCount is one message's current window.
type repeatCount struct {
	start   time.Time
	written int
	left    int // repeats left out since start
	level   zapcore.Level
}

// newRepeatLimit wraps c (see repeatLimit).
func newRepeatLimit(c zapcore.Core, window time.Duration, first int) zapcore.Core {
	return &repeatLimit{Core: c, st: &repeatState{out: c, window: window, first: first, seen: map[repeatKey]*repeatCount{}}}
}

// With keeps the limit, shared, on a core derived with fields.
func (c *repeatLimit) With(fields []zapcore.Field) zapcore.Core {
	return &repeatLimit{Core: c.Core.With(fields), st: c.st}
}

// Check drops ent when its message has been written repeatFirst times in the
// current window.
func (c *repeatLimit) Check(ent zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if ent.Level < zapcore.WarnLevel || ent.Level >= zapcore.DPanicLevel || !c.Enabled(ent.Level) {
		return c.Core.Check(ent, ce)
	}
	now := ent.Time
	if now.IsZero() {
		now = time.Now()
	}
	if !c.st.admit(repeatKey{ent.LoggerName, ent.Message}, ent.Level, now) {
		return ce
	}
	return c.Core.Check(ent, ce)
}

// admit reports whether an entry of key at level, at now, is written, and counts
// it if not. The first one left out in a window sets a timer that writes the count
// at the window's end.
func (s *repeatState) admit(key repeatKey, level zapcore.Level, now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	rc := s.seen[key]
	if rc == nil || (rc.left == 0 && now.Sub(rc.start) >= s.window) {
		if len(s.seen) >= 1000 {
			s.prune(now)
		}
		s.seen[key] = &repeatCount{start: now, written: 1, level: level}
		return true
	}
	if rc.written < s.first {
		rc.written++
		return true
	}
	if rc.left == 0 {
		time.AfterFunc(max(s.window-now.Sub(rc.start), 0), func() { s.flush(key) })
	}
	rc.left++
	rc.level = max(rc.level, level)
	return false
}

// prune forgets the windows that are over and left nothing out (those that did
// are forgotten by their flush).
func (s *repeatState) prune(now time.Time) {
	for k, rc := range s.seen {
		if rc.left == 0 && now.Sub(rc.start) >= s.window {
			delete(s.seen, k)
		}
	}
}

// flush ends key's window: it writes how many repeats were left out, and the next
// entry of key starts a new window.
func (s *repeatState) flush(key repeatKey) {
	s.mu.Lock()
	rc := s.seen[key]
	delete(s.seen, key)
	s.mu.Unlock()
	if rc == nil || rc.left == 0 {
		return
	}
	ent := zapcore.Entry{Level: rc.level, Time: time.Now(), LoggerName: key.logger, Message: leftOutMsg}
	if ce := s.out.Check(ent, nil); ce != nil {
		ce.Write(zap.String("repeated_msg", key.msg), zap.Int("left_out", rc.left),
			zap.Int("written", rc.written), zap.Duration("within", time.Since(rc.start).Round(time.Millisecond)))
	}
}
