// Package cluster runs this node's infrastructure: gossip with the other nodes
// (memberlist), the embedded etcd member that stores Roster's state, and the management of
// etcd membership. It is the only package that imports etcd's server; the rest of Roster
// sees one *clientv3.Client per node, Node.Client, whose endpoints follow the voters.
//
// StartNode decides how the node takes part, from its data dir and what gossip shows:
//   - data dir with a member: restart it (unless the running cluster removed it meanwhile:
//     then the data is moved aside to <data dir>/etcd.removed-<time> and the node joins as
//     new);
//   - empty data dir and Bootstrap, or the lowest name of BootstrapExpect nodes with empty
//     data dirs, or no Join addresses at all: bootstrap a new single-member cluster, but
//     never while any peer advertises a cluster id;
//   - otherwise join: the node serves at once as a client of the voters and gossips that
//     it wants a member.
//
// Membership changes are made only by the node whose member is the etcd leader, in one
// reconcile loop (reconcile.go): a node that wants a member is added as a learner, started
// with initial-cluster-state=existing and promoted once caught up, until Voters voters
// and one standby learner exist; further nodes run no member. A member whose node gossip
// reports dead for DeadAfter is removed only if the voters left keep quorum; then the
// standby is promoted. Voters are spread across sites. Quorum loss is never repaired
// automatically: the node logs it and its client's reads fail (so /readyz fails).
//
// With EtcdEndpoints the node runs against an external etcd cluster: no member, no
// membership management, the same client.
package cluster
