//go:build !unix

// Package proc reads what the operating system counts of this process, for
// the benchmarks' CPU-time-per-operation figures.
package proc

import "time"

// CPUTime is not measured on this system: it is always 0.
func CPUTime() time.Duration { return 0 }
