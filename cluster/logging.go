package cluster

import (
	"log/slog"
	"sync/atomic"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// etcd logs some lines as warnings or errors that are expected in the way Roster runs it.
// quietLogger demotes them to info, so that a healthy node logging etcd at warn is quiet;
// they still show when etcd logs at info. Matching is on etcd's exact messages: if etcd
// rewords one, the line comes back at its own level, which is noisy but harmless.
var (
	// expectedMessages are expected at any time.
	expectedMessages = map[string]bool{
		// Only this node's own gRPC client uses the client port; there is no HTTP gateway.
		"Running http and grpc server on single port. This is not recommended for production.": true,
		// Roster does not enable etcd authentication, so no token is issued.
		"simple token is not cryptographically signed": true,
		// A member that has just joined has no raft term in its backend until it applies
		// its first entries; etcd's version monitor retries.
		"Failed to detect schema version":  true,
		"failed to update storage version": true,
	}
	// closingMessages are expected once Close has started: etcd reports its own
	// listeners, closed by Close, as serving failures.
	closingMessages = map[string]bool{
		"setting up serving from embedded etcd failed.": true,
		"stopping insecure grpc server due to error":    true,
		"stopped insecure grpc server due to error":     true,
	}
)

// orDiscard returns log, or a logger that discards everything when log is nil.
func orDiscard(log *slog.Logger) *slog.Logger {
	if log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return log
}

// orNop returns lg, or a logger that discards everything when lg is nil.
func orNop(lg *zap.Logger) *zap.Logger {
	if lg == nil {
		return zap.NewNop()
	}
	return lg
}

// quietLogger returns lg with expected etcd warnings and errors demoted to info. The
// closing ones are demoted only after closing is set.
func quietLogger(lg *zap.Logger, closing *atomic.Bool) *zap.Logger {
	return lg.WithOptions(zap.WrapCore(func(c zapcore.Core) zapcore.Core {
		return &quietCore{Core: c, closing: closing}
	}))
}

// quietCore is the zapcore.Core behind quietLogger.
type quietCore struct {
	zapcore.Core
	closing *atomic.Bool
}

// With keeps the demotion on loggers derived with fields.
func (c *quietCore) With(fields []zapcore.Field) zapcore.Core {
	return &quietCore{Core: c.Core.With(fields), closing: c.closing}
}

// Check lowers the level of an expected entry before the wrapped core decides whether
// it is enabled. Panic and fatal entries are never touched.
func (c *quietCore) Check(ent zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if ent.Level > zapcore.InfoLevel && ent.Level < zapcore.DPanicLevel &&
		(expectedMessages[ent.Message] || closingMessages[ent.Message] && c.closing.Load()) {
		ent.Level = zapcore.InfoLevel
	}
	return c.Core.Check(ent, ce)
}
