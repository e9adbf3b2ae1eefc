package cluster

import (
	"cmp"
	"context"
	"slices"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// settleTime is how long the leader waits after a membership change before the next:
// etcd's strict reconfiguration check refuses changes until every voter has been
// connected for 5 s.
const settleTime = 6 * time.Second

// replacedAfter is how long a node may advertise that it wants a member while a started
// member still carries its name before the leader takes that member for an old
// incarnation (the node came back with an empty data dir) and removes it.
const replacedAfter = 15 * time.Second

type etcdMember = etcdserverpb.Member

// memberInfo is one etcd member as the reconcile loop sees it.
type memberInfo struct {
	id         uint64
	name       string
	peerURLs   []string
	clientURLs []string
	learner    bool
}

// started reports whether the member's etcd has started and published its name; a
// learner just added has not.
func (m *memberInfo) started() bool { return m.name != "" }

func toMemberInfo(ms []*etcdMember) []*memberInfo {
	out := make([]*memberInfo, 0, len(ms))
	for _, m := range ms {
		out = append(out, &memberInfo{id: m.ID, name: m.Name, peerURLs: m.PeerURLs, clientURLs: m.ClientURLs, learner: m.IsLearner})
	}
	slices.SortFunc(out, func(a, b *memberInfo) int { return cmp.Compare(a.name, b.name) })
	return out
}

// memberView is a member joined with the gossip peer of its node.
type memberView struct {
	*memberInfo
	peer     Peer
	hasPeer  bool
	alive    bool // the node gossips alive or suspect as this very member
	replaced bool // the node came back as a new incarnation
	site     string
}

// reconcile makes at most one membership change, run only by the etcd leader self:
//  1. remove a member whose node has been dead for DeadAfter, came back as a new
//     incarnation, or (a learner) never started; a voter only if the voters left keep
//     quorum;
//  2. remove a voter beyond the target;
//  3. promote a caught-up learner while voters are below the target;
//  4. move a vote out of a site that holds a majority when a learner elsewhere can take it;
//  5. add a node that asks for a member as a learner, up to the voters plus one standby.
//
// Voters and learners are picked so that sites are spread evenly, names breaking ties.
func (n *Node) reconcile(ctx context.Context, members []*memberInfo, self uint64) {
	now := time.Now()
	peers := n.gossip.Peers()
	byName := map[string]Peer{}
	for _, p := range peers {
		byName[p.Name] = p
	}
	views := make([]*memberView, 0, len(members))
	seen := map[uint64]bool{}
	votersInSite := map[string]int{}
	membersInSite := map[string]int{}
	voters, learners, healthyVoters, unstarted := 0, 0, 0, 0
	for _, m := range members {
		seen[m.id] = true
		v := &memberView{memberInfo: m}
		if m.started() {
			v.peer, v.hasPeer = byName[m.name]
		} else {
			for _, p := range peers {
				if p.Meta.Peer != "" && slices.Contains(m.peerURLs, p.Meta.Peer) {
					v.peer, v.hasPeer = p, true
				}
			}
		}
		up := v.hasPeer && (v.peer.State == GossipAlive || v.peer.State == GossipSuspect)
		v.site = v.peer.Meta.Site
		if up && m.started() && m.id != self {
			meta := v.peer.Meta
			switch {
			case meta.Peer != "" && !slices.Contains(m.peerURLs, meta.Peer):
				v.replaced = true // same name, new address
			case meta.MemberID != "" && meta.MemberID != idString(m.id):
				v.replaced = true // same name, a member of its own already
			case meta.Want && meta.MemberID == "":
				// Same name, empty data dir; or the node is just starting this member
				// and has not said so yet: give it replacedAfter.
				if since, ok := n.downSince[m.id]; ok && now.Sub(since) >= replacedAfter {
					v.replaced = true
				} else if !ok {
					n.downSince[m.id] = now
				}
			default:
				delete(n.downSince, m.id)
			}
		}
		v.alive = up && !v.replaced
		if !up {
			since, ok := n.downSince[m.id]
			if !ok {
				since = now
			}
			if v.hasPeer && (v.peer.State == GossipDead || v.peer.State == GossipLeft) && v.peer.Since.Before(since) {
				since = v.peer.Since
			}
			n.downSince[m.id] = since
		}
		if !m.started() {
			if _, ok := n.unstartedSince[m.id]; !ok {
				n.unstartedSince[m.id] = now
			}
			unstarted++
		} else {
			delete(n.unstartedSince, m.id)
		}
		if m.learner {
			learners++
		} else {
			voters++
			votersInSite[v.site]++
			if v.alive {
				healthyVoters++
			}
		}
		membersInSite[v.site]++
		views = append(views, v)
	}
	for id := range n.downSince {
		if !seen[id] {
			delete(n.downSince, id)
		}
	}
	for id := range n.unstartedSince {
		if !seen[id] {
			delete(n.unstartedSince, id)
		}
	}
	if now.Before(n.settledAt) {
		return
	}
	target := n.cfg.Voters
	quorumAfterRemoval := func() bool { return healthyVoters >= (voters-1)/2+1 }

	// 1. Dead, replaced and never-started members; learners first.
	slices.SortStableFunc(views, func(a, b *memberView) int {
		if a.learner != b.learner {
			if a.learner {
				return -1
			}
			return 1
		}
		return 0
	})
	for _, v := range views {
		if v.id == self {
			continue
		}
		why := ""
		switch {
		case v.replaced:
			why = "its node came back as a new incarnation"
		case !v.started() && !v.alive && now.Sub(n.unstartedSince[v.id]) >= staleAdd:
			why = "the learner was added " + staleAdd.String() + " ago and no node started it"
		case v.started() && !v.alive && now.Sub(n.downSince[v.id]) >= n.cfg.DeadAfter:
			why = "its node has been down for " + now.Sub(n.downSince[v.id]).Round(time.Second).String()
		}
		if why == "" {
			continue
		}
		if !v.learner && !quorumAfterRemoval() {
			n.log.Warn("a voter should be removed but the voters left would lose quorum; leaving it",
				"member", v.name, "member-id", idString(v.id), "reason", why, "voters", voters, "healthy-voters", healthyVoters)
			continue
		}
		n.change(ctx, "removed member "+v.name+": "+why, v.memberInfo, func() error {
			_, err := n.client.MemberRemove(ctx, v.id)
			return err
		})
		return
	}

	// 2. Voters beyond the target (the target was lowered, or step 4 moved a vote):
	// remove one from the most crowded site, only while every voter is healthy.
	if voters > target && healthyVoters == voters {
		var pick *memberView
		for _, v := range views {
			if v.learner || v.id == self {
				continue
			}
			if pick == nil || votersInSite[v.site] > votersInSite[pick.site] ||
				(votersInSite[v.site] == votersInSite[pick.site] && v.name > pick.name) {
				pick = v
			}
		}
		if pick != nil {
			n.change(ctx, "removed voter "+pick.name+": more voters than the target; it rejoins as a new member", pick.memberInfo, func() error {
				_, err := n.client.MemberRemove(ctx, pick.id)
				return err
			})
			return
		}
	}

	// Started, alive learners, the best-placed first.
	var ready []*memberView
	for _, v := range views {
		if v.learner && v.started() && v.alive {
			ready = append(ready, v)
		}
	}
	slices.SortFunc(ready, func(a, b *memberView) int {
		return cmp.Or(cmp.Compare(votersInSite[a.site], votersInSite[b.site]), cmp.Compare(a.name, b.name))
	})

	// 3. Promote while voters are below the target. etcd refuses a learner that has not
	// caught up; the next round tries again.
	if voters < target && len(ready) > 0 {
		n.promote(ctx, ready[0], "voters below the target")
		return
	}

	// Nodes that ask for a member and have none.
	clusterID := idString(n.clusterID)
	var cands []Peer
	for _, p := range peers {
		if p.State != GossipAlive || !p.Meta.Want || p.Meta.Peer == "" || p.Meta.Role == RoleExternal {
			continue
		}
		if p.Meta.ClusterID != "" && p.Meta.ClusterID != clusterID {
			continue
		}
		taken := false
		for _, m := range members {
			if slices.Contains(m.peerURLs, p.Meta.Peer) || (m.started() && m.name == p.Name) {
				taken = true
			}
		}
		if !taken {
			cands = append(cands, p)
		}
	}

	// 4. A site holding a majority of the voters gives a vote away: to a learner
	// elsewhere (promoted now; step 2 removes a voter of the crowded site next), or, when
	// the standby sits in the crowded site too, to a node elsewhere that asks for a
	// member (the standby is removed now; step 5 adds that node next).
	if voters == target && healthyVoters == voters && voters > 1 {
		crowded, most := "", 0
		for site, c := range votersInSite {
			if c > most || (c == most && site < crowded) {
				crowded, most = site, c
			}
		}
		if most*2 > voters {
			for _, v := range ready {
				if v.site != crowded && votersInSite[v.site]+1 < most {
					n.promote(ctx, v, "site "+crowded+" holds a majority of the voters")
					return
				}
			}
			better := slices.ContainsFunc(cands, func(p Peer) bool {
				return p.Meta.Site != crowded && votersInSite[p.Meta.Site]+1 < most
			})
			for _, v := range views {
				if better && v.learner && v.site == crowded {
					n.change(ctx, "removed standby learner "+v.name+": a node in another site can take the vote site "+crowded+" holds too many of",
						v.memberInfo, func() error {
							_, err := n.client.MemberRemove(ctx, v.id)
							return err
						})
					return
				}
			}
		}
	}

	// 5. Add a learner for a node that asks, up to the target plus one standby. etcd allows
	// one learner at a time by default: the standby, or the one catching up to be promoted.
	if unstarted > 0 || learners > 0 || voters > target {
		return
	}
	if len(cands) == 0 {
		return
	}
	slices.SortFunc(cands, func(a, b Peer) int {
		return cmp.Or(cmp.Compare(membersInSite[a.Meta.Site], membersInSite[b.Meta.Site]), cmp.Compare(a.Name, b.Name))
	})
	c := cands[0]
	resp, err := n.client.MemberAddAsLearner(ctx, []string{c.Meta.Peer})
	if err != nil {
		// etcd refuses while a member joined only a moment ago ("unhealthy cluster");
		// the next round retries.
		n.log.Debug("cannot add node "+c.Name+" as a learner yet; retrying", "peer-url", c.Meta.Peer, "error", err)
		return
	}
	n.log.Info("added node "+c.Name+" as a learner", "member-id", idString(resp.Member.ID), "peer-url", c.Meta.Peer, "site", c.Meta.Site)
}

// promote promotes learner v; etcd refuses one that has not caught up yet.
func (n *Node) promote(ctx context.Context, v *memberView, why string) {
	if _, err := n.client.MemberPromote(ctx, v.id); err != nil {
		n.log.Debug("learner not promoted yet", "member", v.name, "error", err)
		return
	}
	n.settledAt = time.Now().Add(settleTime)
	n.log.Info("promoted learner "+v.name+" to voter: "+why, "member-id", idString(v.id), "site", v.site)
}

// change runs one membership change and logs it.
func (n *Node) change(ctx context.Context, what string, m *memberInfo, do func() error) {
	if err := do(); err != nil {
		n.log.Warn("membership change failed; retrying: "+what, "member-id", idString(m.id), "error", err)
		return
	}
	delete(n.downSince, m.id)
	delete(n.unstartedSince, m.id)
	n.settledAt = time.Now().Add(settleTime)
	n.log.Info(what, "member-id", idString(m.id))
}

// Members lists the cluster's nodes as this node sees them, sorted by name: every node
// gossip knows, joined with its etcd member, plus etcd members no node claims.
func (n *Node) Members(ctx context.Context) ([]MemberStatus, error) {
	peers := n.gossip.Peers()
	var members []*memberInfo
	var leader uint64
	if !n.cfg.external() {
		cctx, cancel := context.WithTimeout(ctx, callTimeout)
		defer cancel()
		// Serializable: the list still answers when quorum is lost, which is when an
		// operator needs it most.
		resp, err := n.client.MemberList(cctx, clientv3.WithSerializable())
		if err != nil {
			return nil, err
		}
		members = toMemberInfo(resp.Members)
		leader = n.EtcdLeader(cctx)
	}
	claimed := map[uint64]bool{}
	out := make([]MemberStatus, 0, len(peers))
	for _, p := range peers {
		s := MemberStatus{
			Name: p.Name, Site: p.Meta.Site, Pool: p.Meta.Pool, APIURL: p.Meta.API,
			Gossip: p.State, EtcdRole: RoleNone, Address: p.Addr, PeerURL: p.Meta.Peer,
			Healthy: p.State == GossipAlive && p.Meta.Healthy, EtcdClientURL: p.Meta.Client,
		}
		if p.Meta.Role == RoleExternal {
			s.EtcdRole = RoleExternal
		}
		for _, m := range members {
			if claimed[m.id] {
				continue
			}
			if (m.started() && m.name == p.Name) || (!m.started() && p.Meta.Peer != "" && slices.Contains(m.peerURLs, p.Meta.Peer)) {
				claimed[m.id] = true
				s.EtcdRole = RoleVoter
				if m.learner {
					s.EtcdRole = RoleLearner
				}
				s.EtcdMemberID = idString(m.id)
				s.Leader = m.id == leader
				if len(m.peerURLs) > 0 {
					s.PeerURL = m.peerURLs[0]
				}
				if len(m.clientURLs) > 0 {
					s.EtcdClientURL = m.clientURLs[0]
				}
			}
		}
		out = append(out, s)
	}
	for _, m := range members {
		if claimed[m.id] {
			continue
		}
		s := MemberStatus{Name: m.name, Gossip: GossipUnknown, EtcdRole: RoleVoter, EtcdMemberID: idString(m.id), Leader: m.id == leader}
		if m.learner {
			s.EtcdRole = RoleLearner
		}
		if len(m.peerURLs) > 0 {
			s.PeerURL = m.peerURLs[0]
		}
		if len(m.clientURLs) > 0 {
			s.EtcdClientURL = m.clientURLs[0]
		}
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b MemberStatus) int { return cmp.Compare(a.Name, b.Name) })
	return out, nil
}
