// Package liveness keeps a node's view of when each session was last heard from, on any
// node of the cluster, without a raft write per heartbeat.
//
// Every node notes the heartbeats it answers (Note: a map write under one of 64 locks).
// Every Interval (200 ms) it seals the notes taken since the last seal into an epoch and
// pushes, to every other live node, the epochs that node has not acknowledged yet: the
// session ids with each beat's age. An empty push is sent too: it says "still reporting".
// The receiver keeps, per session, the latest beat heard anywhere (converted to its own
// clock so that the time is never earlier than the real beat) and, per sender, how far its
// knowledge of that sender's beats is complete.
//
// Check applies the rule the duty that ends sessions, and every heartbeat, relies on: a
// session has lapsed only if its TTL has run out since its latest known beat F and every
// live node has reported everything it answered up to F + TTL. So a heartbeat answered
// before the session's TTL ran out is always in the view that ends it. A node that is
// alive (by gossip) but silent holds every such verdict back: the etcd lease decides
// meanwhile. A node that has just started treats every session as beaten when it started.
//
// No clocks are compared: a beat's age is measured by the node that noted it and counted
// back from when the push arrived (never earlier than the real beat); how far a sender's
// pushes reach is bounded below by the receiver's own time, which the receiver stamps on
// each answer and the sender echoes back with the time it waited since.
//
// A View is wired by its owner (cmd): New, then Start with the cluster's peer secret once
// it is known, and Close at the end. The registry calls Note and Check; the HTTP API passes
// pushes to Receive.
//
//	v, _ := liveness.New(liveness.Config{Node: "n1", Peers: peers})
//	v.Start(secret)
//	defer v.Close()
//	v.Note(sessionID)                               // a heartbeat was answered
//	if v.Check(sessionID, ttl, knownAt).State == liveness.Lapsed { /* end it */ }
package liveness
