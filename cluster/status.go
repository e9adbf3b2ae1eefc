package cluster

// Etcd roles a node reports in its gossip metadata and in MemberStatus.
const (
	RoleVoter    = "voter"    // a voting etcd member runs on the node
	RoleLearner  = "learner"  // a non-voting etcd member (the standby, or one catching up)
	RoleNone     = "none"     // no etcd member: the node serves the API as a client of the voters
	RoleExternal = "external" // the node runs against an external etcd cluster (--etcd-endpoints)
)

// Gossip states of a node as this node sees them.
const (
	GossipAlive   = "alive"
	GossipSuspect = "suspect"
	GossipDead    = "dead"
	GossipLeft    = "left"
	GossipUnknown = "unknown" // an etcd member no gossip peer claims
)

// MemberStatus is one row of 'roster members' (GET /v1/cluster/members).
type MemberStatus struct {
	Name     string `json:"name"`
	Site     string `json:"site"`
	Pool     string `json:"pool"`
	APIURL   string `json:"api_url"`
	Gossip   string `json:"gossip"`    // GossipAlive, GossipSuspect, GossipDead, GossipLeft or GossipUnknown
	EtcdRole string `json:"etcd_role"` // RoleVoter, RoleLearner, RoleNone or RoleExternal
	Leader   bool   `json:"leader"`    // the node runs the etcd leader
	Healthy  bool   `json:"healthy"`   // gossip alive and the node reports that it serves
	// Details for operators; empty when unknown.
	Address      string `json:"address,omitempty"`        // gossip address host:port
	EtcdMemberID string `json:"etcd_member_id,omitempty"` // hex
	PeerURL      string `json:"peer_url,omitempty"`
	// EtcdClientURL is the URL the node's etcd member serves clients on (its
	// --etcd-listen), as the member list has it, else as the node gossips it;
	// empty when the node runs no member or its member has not started.
	EtcdClientURL string `json:"etcd_client_url,omitempty"`
}
