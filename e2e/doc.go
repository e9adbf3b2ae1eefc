// Package e2e drives real roster processes on loopback: it builds the
// binary once, starts nodes on free ports with their own data dirs, waits
// for the "roster node ready" log line, and can SIGTERM, SIGKILL and
// restart them on their data dirs.
//
//	bin, _ := e2e.Build(dir)
//	n := e2e.NewNode(bin, "n1", t.TempDir())
//	if err := n.Start(); err != nil { … }
//	defer n.Kill()
//	out, err := bin.Run(ctx, env, "session", "list")
//
// A Cluster runs several nodes for one test (at most MaxNodes at once),
// each with its own gossip address, reads the admin token from the node
// that bootstrapped, and waits for states of GET /v1/cluster/members with
// a deadline. It kills every node when the test ends and logs the nodes'
// output when the test failed:
//
//	c := e2e.StartCluster(t, bin, 3, "--bootstrap-expect", "3")
//	c.WaitFor(ctx, "3 voters", c.Formed(3, 0))
//	c.Kill(c.Leader(ctx))
package e2e
