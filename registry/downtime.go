package registry

import (
	"context"
	"fmt"
	"strconv"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// etcd renews every lease to its full TTL when a member becomes leader,
// and so when a cluster starts again after being down: a session whose
// client died before or during the outage would live on for another TTL
// after it, blocking its user's next login. The alive beacon bounds that
// for the case of a whole-cluster outage: every node rewrites it every
// AliveInterval, so at start its age is how long no node could write,
// and a session whose TTL is shorter than that age, less one interval
// (the beacon may have been written up to an interval before the last
// heartbeat), cannot have been renewed in time and has expired. A leader
// change without an outage still renews leases; bounding that needs a
// liveness view of the last heartbeats (a later issue).

// beacon rewrites the alive key every AliveInterval until ctx ends.
func (r *Registry) beacon(ctx context.Context) {
	t := time.NewTicker(r.cfg.AliveInterval)
	defer t.Stop()
	for {
		r.writeAlive(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (r *Registry) writeAlive(ctx context.Context) {
	cctx, cancel := r.opCtx(ctx)
	defer cancel()
	if _, err := r.cli.Put(cctx, aliveKey, strconv.FormatInt(time.Now().UnixMilli(), 10)); err != nil && ctx.Err() == nil {
		r.log.Warn("write the alive beacon failed", "error", err)
	}
}

// expireDowntime ends, as expired, every session that cannot have been
// heartbeated through the outage the alive beacon shows, and writes the
// beacon. It does nothing when the beacon is fresh or missing.
func (r *Registry) expireDowntime(ctx context.Context) error {
	cctx, cancel := r.opCtx(ctx)
	resp, err := r.cli.Get(cctx, aliveKey)
	cancel()
	if err != nil {
		return translate("read the alive beacon", err)
	}
	defer r.writeAlive(ctx)
	if len(resp.Kvs) == 0 {
		return nil
	}
	ms, err := strconv.ParseInt(string(resp.Kvs[0].Value), 10, 64)
	if err != nil {
		return fmt.Errorf("registry: alive beacon %q: %w", resp.Kvs[0].Value, err)
	}
	down := time.Since(time.UnixMilli(ms))
	if down < 2*r.cfg.AliveInterval {
		return nil
	}
	unheard := down - r.cfg.AliveInterval
	ended := 0
	from := sessionsPrefix
	end := clientv3.GetPrefixRangeEnd(sessionsPrefix)
	for {
		cctx, cancel := r.opCtx(ctx)
		page, err := r.cli.Get(cctx, from, clientv3.WithRange(end), clientv3.WithLimit(scanBatch))
		cancel()
		if err != nil {
			return translate("scan sessions after an outage", err)
		}
		for _, kv := range page.Kvs {
			rec, err := decodeRecord(kv)
			if err != nil {
				return err
			}
			if time.Duration(rec.TTLSeconds)*time.Second >= unheard {
				continue
			}
			how := Ended{ID: rec.ID, Reason: EndExpired, By: "lease",
				Message: fmt.Sprintf("expired while the cluster was down for %s", down.Round(time.Second))}
			if _, err := r.end(ctx, rec, how); err == nil {
				ended++
			}
		}
		if !page.More || len(page.Kvs) == 0 {
			break
		}
		from = string(page.Kvs[len(page.Kvs)-1].Key) + "\x00"
	}
	r.log.Warn("the cluster was down; ended the sessions that expired meanwhile", "down", down.Round(time.Second), "sessions-ended", ended)
	return nil
}
