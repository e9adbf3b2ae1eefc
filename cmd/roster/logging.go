package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"runtime"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// newLogging builds the node's loggers writing JSON lines to w at the given level
// ("debug","info","warn","error"; anything else is an error naming the flag --log-level).
// etcdLog is for etcd: at level info (and warn/error) etcd's own logs are raised to warn so
// a healthy node is quiet; at debug etcd logs at info. An etcd warning or error repeated
// more than repeatFirst times in repeatWindow is counted instead of written (see
// repeatLimit). log is the slog logger for Roster.
//
// Both loggers write through one zap core, so the lines share one format and one
// serialised writer; etcd's lines carry "logger":"etcd".
func newLogging(level string, w io.Writer) (log *slog.Logger, etcdLog *zap.Logger, err error) {
	var lvl, etcdLvl zapcore.Level
	switch level {
	case "debug":
		lvl, etcdLvl = zapcore.DebugLevel, zapcore.InfoLevel
	case "info":
		lvl, etcdLvl = zapcore.InfoLevel, zapcore.WarnLevel
	case "warn":
		lvl, etcdLvl = zapcore.WarnLevel, zapcore.WarnLevel
	case "error":
		lvl, etcdLvl = zapcore.ErrorLevel, zapcore.ErrorLevel
	default:
		return nil, nil, fmt.Errorf("--log-level %q: must be debug, info, warn or error", level)
	}

	sink := zapcore.Lock(zapcore.AddSync(w))
	core := zapcore.NewCore(zapcore.NewJSONEncoder(encoderConfig()), sink, lvl)
	etcdCore, err := zapcore.NewIncreaseLevelCore(core, etcdLvl)
	if err != nil {
		return nil, nil, fmt.Errorf("etcd log level: %w", err)
	}
	etcdLog = zap.New(newRepeatLimit(etcdCore, repeatWindow, repeatFirst), zap.AddCaller(), zap.ErrorOutput(sink)).Named("etcd")
	return slog.New(&zapHandler{core: core}), etcdLog, nil
}

// encoderConfig is etcd's own JSON layout, so etcd's lines read as they would from a
// standalone etcd and ours read the same: ts, level, logger, caller, msg, fields.
func encoderConfig() zapcore.EncoderConfig {
	return zapcore.EncoderConfig{
		TimeKey:        "ts",
		LevelKey:       "level",
		NameKey:        "logger",
		CallerKey:      "caller",
		MessageKey:     "msg",
		StacktraceKey:  "stacktrace",
		LineEnding:     zapcore.DefaultLineEnding,
		EncodeLevel:    zapcore.LowercaseLevelEncoder,
		EncodeTime:     zapcore.TimeEncoderOfLayout("2006-01-02T15:04:05.000000Z0700"),
		EncodeDuration: zapcore.StringDurationEncoder,
		EncodeCaller:   zapcore.ShortCallerEncoder,
	}
}

// zapHandler is a slog.Handler that writes records to a zapcore.Core. Groups become key
// prefixes: attribute "id" in group "session" is written as "session.id".
type zapHandler struct {
	core   zapcore.Core
	prefix string // of keys added from now on: the open groups, each followed by "."
}

// Enabled reports whether the core writes records at level l.
func (h *zapHandler) Enabled(_ context.Context, l slog.Level) bool {
	return h.core.Enabled(zapLevel(l))
}

// Handle writes r with its attributes, the caller taken from r.PC if set.
func (h *zapHandler) Handle(_ context.Context, r slog.Record) error {
	ent := zapcore.Entry{Level: zapLevel(r.Level), Time: r.Time, Message: r.Message}
	if r.PC != 0 {
		f, _ := runtime.CallersFrames([]uintptr{r.PC}).Next()
		ent.Caller = zapcore.EntryCaller{Defined: true, PC: f.PC, File: f.File, Line: f.Line, Function: f.Function}
	}
	ce := h.core.Check(ent, nil)
	if ce == nil {
		return nil
	}
	fields := make([]zapcore.Field, 0, r.NumAttrs())
	r.Attrs(func(a slog.Attr) bool {
		fields = appendAttr(fields, h.prefix, a)
		return true
	})
	ce.Write(fields...)
	return nil
}

// WithAttrs returns a handler that writes attrs, in h's groups, with every record.
func (h *zapHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	var fields []zapcore.Field
	for _, a := range attrs {
		fields = appendAttr(fields, h.prefix, a)
	}
	if len(fields) == 0 {
		return h
	}
	return &zapHandler{core: h.core.With(fields), prefix: h.prefix}
}

// WithGroup returns a handler that puts the attributes added later in group name.
func (h *zapHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	return &zapHandler{core: h.core, prefix: h.prefix + name + "."}
}

// zapLevel maps a slog level to the zap level at or below it; custom levels between two
// named ones round down, as slog's own handlers print them (e.g. INFO+2 is info).
func zapLevel(l slog.Level) zapcore.Level {
	switch {
	case l >= slog.LevelError:
		return zapcore.ErrorLevel
	case l >= slog.LevelWarn:
		return zapcore.WarnLevel
	case l >= slog.LevelInfo:
		return zapcore.InfoLevel
	default:
		return zapcore.DebugLevel
	}
}

// appendAttr appends a as zap fields with keys under prefix, following slog's rules:
// values are resolved, empty attributes and empty groups are dropped, and a group with
// an empty key is inlined.
func appendAttr(fields []zapcore.Field, prefix string, a slog.Attr) []zapcore.Field {
	a.Value = a.Value.Resolve()
	if a.Equal(slog.Attr{}) {
		return fields
	}
	key := prefix + a.Key
	v := a.Value
	switch v.Kind() {
	case slog.KindGroup:
		if a.Key != "" {
			prefix = key + "."
		}
		for _, ga := range v.Group() {
			fields = appendAttr(fields, prefix, ga)
		}
		return fields
	case slog.KindString:
		return append(fields, zap.String(key, v.String()))
	case slog.KindInt64:
		return append(fields, zap.Int64(key, v.Int64()))
	case slog.KindUint64:
		return append(fields, zap.Uint64(key, v.Uint64()))
	case slog.KindFloat64:
		return append(fields, zap.Float64(key, v.Float64()))
	case slog.KindBool:
		return append(fields, zap.Bool(key, v.Bool()))
	case slog.KindDuration:
		return append(fields, zap.Duration(key, v.Duration()))
	case slog.KindTime:
		return append(fields, zap.Time(key, v.Time()))
	default: // KindAny: errors as strings, other values as zap encodes them (JSON)
		return append(fields, zap.Any(key, v.Any()))
	}
}
