//go:build !unix

package api_test

import "time"

// cpuTime is not measured here: the cpu-us/op metric reads 0.
func cpuTime() time.Duration { return 0 }
