package cluster

import (
	"encoding/json"
	"fmt"

	"github.com/hashicorp/memberlist"
)

// NodeMeta is what a node tells the others about itself through gossip. It travels as
// compact JSON with one- or two-letter keys and must encode to at most 512 bytes,
// memberlist's limit for node metadata.
type NodeMeta struct {
	// Site is the node's site, e.g. "paris".
	Site string
	// Pool is the node's licence pool within the site.
	Pool string
	// API is the node's API URL, e.g. "http://127.0.0.1:7400".
	API string
	// Peer is the etcd peer URL this node uses, or would use as a member; "" in
	// external mode.
	Peer string
	// Client is the etcd client URL of the node's embedded member; "" when it runs none.
	Client string
	// ClusterID is the etcd cluster id in hex; "" until known.
	ClusterID string
	// MemberID is the node's etcd member id in hex; "" when it runs no member.
	MemberID string
	// Role is RoleVoter, RoleLearner, RoleNone or RoleExternal.
	Role string
	// Empty reports that the data dir held no etcd member when the node started: the
	// node is a candidate to bootstrap a new cluster.
	Empty bool
	// Expect is the node's --bootstrap-expect, 0 if none.
	Expect int
	// Want reports that the node wants an etcd member: it runs in embedded mode and is
	// not a member yet.
	Want bool
	// Healthy reports that the node serves: its last read of the cluster succeeded.
	Healthy bool
	// Bootstrapping reports that the node is starting a new cluster: no other node may
	// bootstrap beside it.
	Bootstrapping bool
}

// wireMeta is the encoding of NodeMeta. Leaving is not part of NodeMeta: Gossip.Leave
// sets it to tell the others that the node is about to leave on purpose (see
// Gossip.Leave). Keys are short because the whole encoding must fit in 512 bytes, and
// omitted when zero; unknown keys are ignored on decoding, so a newer node may add some.
type wireMeta struct {
	Site      string `json:"s,omitempty"`
	Pool      string `json:"p,omitempty"`
	API       string `json:"a,omitempty"`
	Peer      string `json:"pu,omitempty"`
	Client    string `json:"cu,omitempty"`
	ClusterID string `json:"c,omitempty"`
	MemberID  string `json:"m,omitempty"`
	Role      string `json:"r,omitempty"`
	Empty     bool   `json:"e,omitempty"`
	Expect    int    `json:"x,omitempty"`
	Want      bool   `json:"w,omitempty"`
	Healthy   bool   `json:"h,omitempty"`
	Leaving   bool   `json:"l,omitempty"`
	Boot      bool   `json:"b,omitempty"`
}

// Encode returns m as gossip carries it. It fails when the encoding is longer than
// memberlist.MetaMaxSize (512 bytes).
func (m NodeMeta) Encode() ([]byte, error) {
	return encodeMeta(m, false)
}

// encodeMeta encodes m, marked as leaving or not.
func encodeMeta(m NodeMeta, leaving bool) ([]byte, error) {
	b, err := json.Marshal(wireMeta{
		Site:      m.Site,
		Pool:      m.Pool,
		API:       m.API,
		Peer:      m.Peer,
		Client:    m.Client,
		ClusterID: m.ClusterID,
		MemberID:  m.MemberID,
		Role:      m.Role,
		Empty:     m.Empty,
		Expect:    m.Expect,
		Want:      m.Want,
		Healthy:   m.Healthy,
		Leaving:   leaving,
		Boot:      m.Bootstrapping,
	})
	if err != nil {
		// Only strings, bools and an int: Marshal cannot fail.
		return nil, fmt.Errorf("cluster: encode node meta: %w", err)
	}
	if len(b) > memberlist.MetaMaxSize {
		return nil, fmt.Errorf("cluster: node meta encodes to %d bytes, more than gossip's limit of %d: shorten the site, pool or URLs",
			len(b), memberlist.MetaMaxSize)
	}
	return b, nil
}

// DecodeMeta decodes metadata encoded by NodeMeta.Encode. Empty input, what a node
// without metadata sends, decodes to the zero NodeMeta.
func DecodeMeta(b []byte) (NodeMeta, error) {
	m, _, err := decodeMeta(b)
	return m, err
}

// decodeMeta decodes b and reports whether the node marked itself as leaving.
func decodeMeta(b []byte) (NodeMeta, bool, error) {
	if len(b) == 0 {
		return NodeMeta{}, false, nil
	}
	var w wireMeta
	if err := json.Unmarshal(b, &w); err != nil {
		return NodeMeta{}, false, fmt.Errorf("cluster: decode node meta %.64q: %w", b, err)
	}
	return NodeMeta{
		Site:          w.Site,
		Pool:          w.Pool,
		API:           w.API,
		Peer:          w.Peer,
		Client:        w.Client,
		ClusterID:     w.ClusterID,
		MemberID:      w.MemberID,
		Role:          w.Role,
		Empty:         w.Empty,
		Expect:        w.Expect,
		Want:          w.Want,
		Healthy:       w.Healthy,
		Bootstrapping: w.Boot,
	}, w.Leaving, nil
}
