//go:build !linux

package e2e

import "os/exec"

// setDeathSignal does nothing where the kernel cannot kill a child with its
// parent; Cleanup still kills the nodes of a test that ends normally.
func setDeathSignal(*exec.Cmd) {}
