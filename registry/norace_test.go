//go:build !race

package registry_test

// raceEnabled: the race detector makes etcd and the registry several times slower, so
// the largest tests scale down.
const raceEnabled = false
