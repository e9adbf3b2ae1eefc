//go:build unix

// Package proc reads what the operating system counts of this process, for
// the benchmarks' CPU-time-per-operation figures.
package proc

import (
	"syscall"
	"time"
)

// CPUTime is the CPU time (user and system) this process has used so far:
// in a benchmark, the registry, the embedded etcd and the clients together.
// It is 0 when the system cannot say.
func CPUTime() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
