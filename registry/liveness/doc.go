// Package liveness keeps a node's view of when each session was last heard from, on any
// node of the cluster, without a raft write per heartbeat.
//
// Every node notes the heartbeats it answers (Note: a map write under one of 64 locks).
// Every Interval (200 ms) it seals the notes taken since the last seal into an epoch and
// pushes, to every other live node, the epochs that node has not acknowledged yet: the
// session ids with each beat's age. An empty push is sent too: it says "still reporting".
// The receiver keeps, per session, the latest beat heard anywhere (converted to its own
// clock so that the time is never earlier than the real beat) and, per sender, up to
// when it has every heartbeat that sender answered.
//
// Check applies the rule that the registry ends sessions by: a session has lapsed only if
// its TTL has run out since its latest known beat F and this node and every live node
// have reported every heartbeat they answered up to F + TTL. So a heartbeat answered
// before the session's TTL ran out is always in the view that ends it. A node that gossip
// shows alive but that does not report holds every such verdict back (the etcd lease
// decides meanwhile). A node whose API refuses connections, or that gossip declares dead
// or left, no longer counts; what it answered in its last moment before it died is lost
// (a live client heartbeats again elsewhere within its TTL). A node that was silent for
// longer than a second before it stopped, or that returns having lost reports, makes
// every session count as beaten then. A node that has just started treats every session
// as beaten when it started, and time this node could not reach etcd (Outage) does not
// count against any TTL.
//
// No clocks are compared: a beat's age is measured by the node that noted it and counted
// back from when the push arrived (never earlier than the real beat); how far a sender's
// pushes reach is bounded below by the receiver's own time, which the receiver stamps on
// each answer and the sender echoes back with the time it waited since.
//
// A View is wired by its owner (cmd): New, then Start with the cluster's peer secret once
// it is known, and Close at the end. The registry calls Note, Check and Outage; the HTTP
// API passes pushes to Receive.
//
//	v, _ := liveness.New(liveness.Config{Node: "n1", Peers: peers})
//	v.Start(secret)
//	defer v.Close()
//	v.Note(sessionID)                               // a heartbeat was answered
//	if v.Check(sessionID, ttl, knownAt).State == liveness.Lapsed { /* end it */ }
package liveness
