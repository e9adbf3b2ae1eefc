package registry

import (
	"context"
	"sync"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// rightsCache is this node's copy of the user master, the licences and the
// API tokens: the key-values under users/, licenses/ and tokens/hash/, kept
// by a watch (watchRights), so that an open plans from memory instead of
// reading them first.
//
// The copy may lag behind etcd by the watch's delay, so an open never trusts
// it alone: its transaction compares the user entry's and the licence's mod
// revisions with the ones the copy holds (0 for an absent key), and when a
// compare fails it reads them and decides again. An open the copy would
// refuse is decided again from a read too. So a right revoked a moment ago
// is never used, and one granted a moment ago is never missed. The same
// holds for the API token an open, a kill or a logout is made with (see
// AuthenticateFromCopy).
//
// It holds every user entry, licence and API token (a few hundred bytes
// each).
type rightsCache struct {
	mu    sync.RWMutex
	ready bool // loaded and watched; false until the first load and while a broken watch is reloaded
	kvs   map[string]*mvccpb.KeyValue
	// hold, when set, delays applying watch events until it is closed (for tests).
	hold chan struct{}
}

// get returns the user entry and the licence keyed userKey and licKey, nil
// for an absent one; ok is false while the copy is not ready.
func (c *rightsCache) get(userKey, licKey string) (user, lic *mvccpb.KeyValue, ok bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if !c.ready {
		return nil, nil, false
	}
	return c.kvs[userKey], c.kvs[licKey], true
}

// token returns the API token stored under key; nil when the copy has none
// or is not ready.
func (c *rightsCache) token(key string) *mvccpb.KeyValue {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if !c.ready {
		return nil
	}
	return c.kvs[key]
}

// rightsPrefixes are the prefixes the copy holds (followRights selects on
// one watch of each).
var rightsPrefixes = [3]string{usersPrefix, licensesPrefix, tokenHashPrefix}

// watchRights keeps the node's copy of the user master and the licences
// until ctx ends: it reads both prefixes at one revision and follows them
// from the next; on a broken watch it marks the copy not ready and reads
// again.
func (r *Registry) watchRights(ctx context.Context) {
	c := &r.rights
	for ctx.Err() == nil {
		rev, err := r.loadRights(ctx)
		if err != nil {
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
			continue
		}
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		var chans [len(rightsPrefixes)]clientv3.WatchChan
		for i, p := range rightsPrefixes {
			chans[i] = r.cli.Watch(wctx, p, clientv3.WithPrefix(), clientv3.WithRev(rev+1))
		}
		r.followRights(ctx, chans)
		cancel()
		c.mu.Lock()
		c.ready = false
		c.mu.Unlock()
	}
}

// followRights applies the events of the watches until one of them breaks or
// ctx ends.
func (r *Registry) followRights(ctx context.Context, chans [len(rightsPrefixes)]clientv3.WatchChan) {
	c := &r.rights
	for {
		var resp clientv3.WatchResponse
		var ok bool
		select {
		case <-ctx.Done():
			return
		case resp, ok = <-chans[0]:
		case resp, ok = <-chans[1]:
		case resp, ok = <-chans[2]:
		}
		if !ok || resp.Canceled || resp.Err() != nil {
			if ctx.Err() == nil {
				r.log.Warn("user and licence watch broke; reading them again", "error", resp.Err())
			}
			return
		}
		c.mu.RLock()
		hold := c.hold
		c.mu.RUnlock()
		if hold != nil {
			select {
			case <-hold:
			case <-ctx.Done():
				return
			}
		}
		c.mu.Lock()
		for _, ev := range resp.Events {
			if ev.Type == clientv3.EventTypeDelete {
				delete(c.kvs, string(ev.Kv.Key))
			} else {
				c.kvs[string(ev.Kv.Key)] = ev.Kv
			}
		}
		c.mu.Unlock()
	}
}

// loadRights reads every key-value under rightsPrefixes, 1,000 at a time
// and all at the revision of the first read, into the copy, marks it ready
// and returns that revision.
func (r *Registry) loadRights(ctx context.Context) (int64, error) {
	kvs := map[string]*mvccpb.KeyValue{}
	var rev int64
	for _, p := range rightsPrefixes {
		from, end := p, clientv3.GetPrefixRangeEnd(p)
		for {
			opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(1000)}
			if rev != 0 {
				opts = append(opts, clientv3.WithRev(rev))
			}
			cctx, cancel := r.opCtx(ctx)
			resp, err := r.cli.Get(cctx, from, opts...)
			cancel()
			if err != nil {
				return 0, err
			}
			if rev == 0 {
				rev = resp.Header.Revision // a read at rev answers the current revision in its header
			}
			for _, kv := range resp.Kvs {
				kvs[string(kv.Key)] = kv
			}
			if !resp.More || len(resp.Kvs) == 0 {
				break
			}
			from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
		}
	}
	c := &r.rights
	c.mu.Lock()
	c.kvs, c.ready = kvs, true
	c.mu.Unlock()
	return rev, nil
}

// cachedRights answers what readUser would for an open, from the node's
// copy: the user entry and its revision, and a response whose first two
// ranges are the user entry and the licence of rec's module (see seatReads).
// ok is false when the copy is not ready.
func (r *Registry) cachedRights(rec *record) (User, int64, *clientv3.TxnResponse, bool, error) {
	ukv, lkv, ok := r.rights.get(userKey(rec.Tenant, rec.User), licenseKey(rec.Tenant, rec.Module))
	if !ok {
		return User{}, 0, nil, false, nil
	}
	rng := func(kv *mvccpb.KeyValue) *pb.ResponseOp {
		rr := &pb.RangeResponse{}
		if kv != nil {
			rr.Kvs, rr.Count = []*mvccpb.KeyValue{kv}, 1
		}
		return &pb.ResponseOp{Response: &pb.ResponseOp_ResponseRange{ResponseRange: rr}}
	}
	resp := &clientv3.TxnResponse{Succeeded: true, Responses: []*pb.ResponseOp{rng(ukv), rng(lkv)}}
	u, rev, err := userOf(rec.Tenant, rec.User, ukv)
	return u, rev, resp, true, err
}

// rightsFor is what an open plans from: the user entry and its revision, and
// a response whose ranges are the user entry, the licence of rec's module
// and the shared connections req names (see readUser). It answers from the
// node's copy (cached true) unless fresh is set, the open names shared
// connections, or the copy is not ready; else it reads them.
func (r *Registry) rightsFor(ctx context.Context, rec *record, req *OpenRequest, fresh bool) (User, int64, *clientv3.TxnResponse, bool, error) {
	if !fresh && len(req.Connections) == 0 {
		if u, rev, resp, ok, err := r.cachedRights(rec); ok && err == nil {
			return u, rev, resp, true, nil
		}
	}
	u, rev, resp, err := r.readUser(ctx, rec.Tenant, rec.User, append(seatReads(rec), connReads(req)...)...)
	return u, rev, resp, false, err
}
