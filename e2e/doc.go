// Package e2e drives real roster processes on loopback: it builds the
// binary once, starts nodes on free ports with their own data dirs, waits
// for the "roster node ready" log line, and can SIGTERM, SIGKILL and
// restart them on their data dirs. The tests in this package use it; later
// cluster tests reuse it.
//
//	bin, _ := e2e.Build(dir)
//	n := e2e.NewNode(bin, "n1", t.TempDir())
//	if err := n.Start(); err != nil { … }
//	defer n.Kill()
//	out, err := bin.Run(ctx, env, "session", "list")
package e2e
