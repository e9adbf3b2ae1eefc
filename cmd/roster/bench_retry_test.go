package main

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

// TestRawTransient: the errors etcd gives while it stalls or changes
// leader are worth another try of a set-up call; a refusal, a compaction,
// a bad request or a cancelled run are not.
func TestRawTransient(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{rpctypes.ErrTimeout, true},
		{rpctypes.ErrTimeoutDueToLeaderFail, true},
		{rpctypes.ErrLeaderChanged, true},
		{rpctypes.ErrNoLeader, true},
		{rpctypes.ErrTooManyRequests, true},
		{fmt.Errorf("txn: %w", context.DeadlineExceeded), true},
		{errors.New("connection reset by peer"), true},
		{rpctypes.ErrCompacted, false},
		{rpctypes.ErrLeaseNotFound, false},
		{rpctypes.ErrTooManyOps, false},
		{&codeError{codeConflict, "user u already holds a key in m"}, false},
		{context.Canceled, false},
	} {
		if got := rawTransient(tc.err); got != tc.want {
			t.Errorf("rawTransient(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

// TestRawSetupTriesAgain: a set-up call that meets a transient error is
// tried again (and counted) until it passes; one refused for good is not
// tried again, nor one whose run is cancelled.
func TestRawSetupTriesAgain(t *testing.T) {
	ctx := t.Context()
	var tried atomic.Int64
	calls := 0
	err := rawSetup(ctx, &tried, func() error {
		calls++
		if calls == 1 {
			return rpctypes.ErrTimeout
		}
		return nil
	})
	if err != nil || calls != 2 || tried.Load() != 1 {
		t.Fatalf("after one timeout: err %v, %d calls, %d tried again; want nil, 2, 1", err, calls, tried.Load())
	}

	calls = 0
	err = rawSetup(ctx, &tried, func() error { calls++; return rpctypes.ErrCompacted })
	if !errors.Is(err, rpctypes.ErrCompacted) || calls != 1 || tried.Load() != 1 {
		t.Fatalf("a lasting error: err %v, %d calls, %d tried again; want ErrCompacted, 1, 1", err, calls, tried.Load())
	}

	// A cancelled run gives up during the pause, with the last error.
	cctx, cancel := context.WithCancel(ctx)
	calls = 0
	err = rawSetup(cctx, &tried, func() error { calls++; cancel(); return rpctypes.ErrLeaderChanged })
	if !errors.Is(err, rpctypes.ErrLeaderChanged) || calls != 1 {
		t.Fatalf("cancelled: err %v, %d calls; want ErrLeaderChanged, 1", err, calls)
	}
}
