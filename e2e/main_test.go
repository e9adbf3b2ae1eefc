package e2e_test

import (
	"fmt"
	"os"
	"testing"

	"github.com/roster-dev/roster/e2e"
)

// bin is the roster binary, built once for every test of the package.
var bin e2e.Binary

func TestMain(m *testing.M) {
	if os.Getenv(etcdHelperEnv) == "1" {
		// This process is TestExternalEtcd's etcd, not a test run.
		os.Exit(runEtcdHelper())
	}
	dir, err := os.MkdirTemp("", "roster-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bin, err = e2e.Build(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}
