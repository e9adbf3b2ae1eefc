package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// ConnectionKind says how a connection relates to its sessions.
type ConnectionKind string

// The connection kinds.
const (
	// ConnDirect is one client's own connection: one session, created with it
	// in the open's transaction on the session's lease, gone with it.
	ConnDirect ConnectionKind = "direct"
	// ConnShared is an application server's connection: registered by its
	// owner token on a lease of its own, used by many sessions.
	ConnShared ConnectionKind = "shared"
)

// Connection states, as listings show them.
const (
	ConnLive = "live"
	ConnDead = "dead" // a shared connection whose lease ran out or that was deleted
)

// Limits on connections.
const (
	MaxParameters          = 32  // parameters per connection
	MaxParameterKeyBytes   = 64  // a parameter's key
	MaxParameterValueBytes = 256 // a parameter's value
	MaxSessionConnections  = 8   // shared connections one session names
	// DefaultServiceTimeoutSeconds is the service timeout of a shared
	// connection that names none: BusinessObjects' ten minutes.
	DefaultServiceTimeoutSeconds = 600
	// MaxServiceTimeoutSeconds bounds a service timeout: a day.
	MaxServiceTimeoutSeconds = 86400
)

// Errors of connections.
var (
	// ErrConnectionNotFound: no live connection with that id and no record of its death.
	ErrConnectionNotFound = errors.New("registry: connection not found")
	// ErrConnectionGone: an open or a batch heartbeat names a shared connection that
	// is not live (see *ConnectionGoneError).
	ErrConnectionGone = errors.New("registry: connection gone")
	// ErrDirectConnection: the connection is a session's direct connection, which
	// lives and dies with its session and cannot be deleted on its own.
	ErrDirectConnection = errors.New("registry: direct connection")
	// ErrServiceNotAllowed: the user may not use the service of a connection
	// (see *ServiceNotAllowedError).
	ErrServiceNotAllowed = errors.New("registry: service not allowed")
)

// DirectConnection describes a session's direct connection in an open
// request. Host, PID and OS default to the session's.
type DirectConnection struct {
	Service    string            `json:"service"`
	Host       string            `json:"host,omitempty"`
	PID        int64             `json:"pid,omitempty"`
	OS         string            `json:"os,omitempty"`
	Parameters map[string]string `json:"parameters,omitempty"`
}

// ConnectionRequest is the body of POST /v1/connections: an application
// server registers a shared connection.
type ConnectionRequest struct {
	// Kind must be empty or "shared": direct connections are created with
	// their session (OpenRequest.Connection).
	Kind       ConnectionKind    `json:"kind,omitempty"`
	Service    string            `json:"service"`
	Host       string            `json:"host,omitempty"`
	PID        int64             `json:"pid,omitempty"`
	OS         string            `json:"os,omitempty"`
	Parameters map[string]string `json:"parameters,omitempty"`
	// TTLSeconds is the lease TTL of the connection; its owner renews it
	// with batch heartbeats. 0 means the node's default session TTL.
	TTLSeconds int64 `json:"ttl_seconds,omitempty"`
	// ServiceTimeoutSeconds is how long after the connection died clean-up
	// waits before it ends the sessions that used it; nil means
	// DefaultServiceTimeoutSeconds.
	ServiceTimeoutSeconds *int64 `json:"service_timeout_seconds,omitempty"`
}

// ConnectionRef is a connection as a session's record names it.
type ConnectionRef struct {
	ID      string         `json:"id"`
	Kind    ConnectionKind `json:"kind"`
	Service string         `json:"service"`
	// ServiceTimeoutSeconds is the shared connection's service timeout.
	ServiceTimeoutSeconds int64 `json:"service_timeout_seconds,omitempty"`
}

// Connection is a connection as the API shows it.
type Connection struct {
	ID         string            `json:"id"`
	Kind       ConnectionKind    `json:"kind"`
	Service    string            `json:"service"`
	Host       string            `json:"host"`
	PID        int64             `json:"pid"`
	OS         string            `json:"os"`
	Parameters map[string]string `json:"parameters"`
	TTLSeconds int64             `json:"ttl_seconds"`
	// ServiceTimeoutSeconds is a shared connection's service timeout.
	ServiceTimeoutSeconds int64 `json:"service_timeout_seconds,omitempty"`
	// Session is a direct connection's session.
	Session   string    `json:"session,omitempty"`
	Node      string    `json:"node"`
	CreatedAt time.Time `json:"created_at"`
	// Owner names the API token that registered it (shared) or opened its
	// session (direct).
	Owner string `json:"owner"`

	// State is ConnLive or ConnDead.
	State string `json:"state"`
	// ExpiresInSeconds is a live shared connection's remaining lease TTL.
	ExpiresInSeconds int64 `json:"expires_in_seconds,omitempty"`
	// Sessions counts the live sessions that use the connection.
	Sessions int `json:"sessions"`
	// DiedAt, EndedBy and CleanupAt describe a dead shared connection: when
	// it died, who ended it ("lease" when its owner stopped renewing it),
	// and when its service timeout runs out, from which on clean-up ends
	// its sessions.
	DiedAt    *time.Time `json:"died_at,omitempty"`
	EndedBy   string     `json:"ended_by,omitempty"`
	CleanupAt *time.Time `json:"cleanup_at,omitempty"`
}

// ConnectionFilter selects connections in a listing; empty fields match all.
type ConnectionFilter struct {
	Kind    ConnectionKind
	Service string
	State   string
}

// connRecord is a connection as stored under its key.
type connRecord struct {
	Connection
	LeaseID    int64  `json:"lease_id"`
	OwnerToken string `json:"owner_token"`

	createRev int64 // from etcd, not stored
}

// connTomb records a dead shared connection, so that clean-up knows when
// its service timeout runs out and opens naming it learn what happened.
type connTomb struct {
	Connection
	OwnerToken string    `json:"owner_token"`
	DiedAt     time.Time `json:"died_at"`
	By         string    `json:"by"`
}

// cleanupAt is when clean-up may end the sessions of the dead connection.
func (t *connTomb) cleanupAt() time.Time {
	return t.DiedAt.Add(time.Duration(t.ServiceTimeoutSeconds) * time.Second)
}

// shown is the dead connection as the API shows it.
func (t *connTomb) shown() Connection {
	c := t.Connection
	died, at := t.DiedAt, t.cleanupAt()
	c.State, c.DiedAt, c.CleanupAt, c.EndedBy, c.ExpiresInSeconds = ConnDead, &died, &at, t.By, 0
	return c
}

// ConnectionGoneError refuses an open or a batch heartbeat that names a
// shared connection that is not live.
type ConnectionGoneError struct {
	ID string
	// DiedAt and By say when and how it died, when that is still known.
	DiedAt *time.Time
	By     string
}

func (e *ConnectionGoneError) Error() string {
	if e.DiedAt == nil {
		return fmt.Sprintf("shared connection %s does not exist: it was never registered, or it died long ago; register it again (POST /v1/connections) and use the new id", e.ID)
	}
	how := "its owner stopped renewing it and its lease ran out"
	if e.By != "lease" {
		how = "it was deleted by " + e.By
	}
	return fmt.Sprintf("shared connection %s died at %s (%s); register it again (POST /v1/connections) and use the new id",
		e.ID, e.DiedAt.UTC().Format(time.RFC3339), how)
}

// Is makes a ConnectionGoneError match ErrConnectionGone.
func (e *ConnectionGoneError) Is(target error) bool { return target == ErrConnectionGone }

// ServiceNotAllowedError refuses an open over a connection whose service the
// user may not use.
type ServiceNotAllowedError struct {
	Tenant, User, Service string
	Connection            string // the connection's id; empty for a direct one not created yet
	Kind                  ConnectionKind
}

func (e *ServiceNotAllowedError) Error() string {
	conn := "its direct connection"
	if e.Kind == ConnShared {
		conn = "shared connection " + e.Connection
	}
	return fmt.Sprintf("user %s of tenant %s may not use service %s (%s): the service is not enabled for the user in the user master; an admin enables it with roster user set %s/%s --service %s",
		e.User, e.Tenant, e.Service, conn, e.Tenant, e.User, e.Service)
}

// Is makes a ServiceNotAllowedError match ErrServiceNotAllowed.
func (e *ServiceNotAllowedError) Is(target error) bool { return target == ErrServiceNotAllowed }

// CheckConnectionID validates the form of a connection id (as a session id:
// 32 lowercase hex characters); field names the request field.
func CheckConnectionID(field, id string) error {
	if !idPattern.MatchString(id) {
		return invalid(field, "%q is not a connection id (32 lowercase hex characters)", truncate(id, 40))
	}
	return nil
}

// checkParameters enforces the limits on a connection's free parameters.
func checkParameters(field string, params map[string]string) error {
	if len(params) > MaxParameters {
		return invalid(field, "has %d entries; at most %d are allowed", len(params), MaxParameters)
	}
	for _, k := range slices.Sorted(maps.Keys(params)) {
		if len(k) == 0 || len(k) > MaxParameterKeyBytes || !labelKeyPattern.MatchString(k) {
			return invalid(field, "key %q must be 1-%d characters of A-Z a-z 0-9 _ . -", truncate(k, 80), MaxParameterKeyBytes)
		}
		if err := checkOptionalText(fmt.Sprintf("%s[%s]", field, k), params[k], MaxParameterValueBytes); err != nil {
			return err
		}
	}
	return nil
}

// checkConnectionFields validates what direct and shared connections share;
// prefix names the object in the request ("connection." or "").
func checkConnectionFields(prefix, service, host, os string, pid int64, params map[string]string) error {
	if err := checkName(prefix+"service", service); err != nil {
		return err
	}
	if err := checkOptionalText(prefix+"host", host, MaxTextBytes); err != nil {
		return err
	}
	if err := checkOptionalText(prefix+"os", os, MaxTextBytes); err != nil {
		return err
	}
	if pid < 0 {
		return invalid(prefix+"pid", "must not be negative (got %d)", pid)
	}
	return checkParameters(prefix+"parameters", params)
}

// normalizeConnections validates the connection fields of an open request.
func normalizeConnections(req *OpenRequest) error {
	if c := req.Connection; c != nil {
		if c.Host == "" {
			c.Host = req.Host
		}
		if c.OS == "" {
			c.OS = req.OS
		}
		if c.PID == 0 {
			c.PID = req.PID
		}
		if err := checkConnectionFields("connection.", c.Service, c.Host, c.OS, c.PID, c.Parameters); err != nil {
			return err
		}
	}
	if len(req.Connections) > MaxSessionConnections {
		return invalid("connections", "names %d connections; a session may use at most %d shared connections", len(req.Connections), MaxSessionConnections)
	}
	for i, id := range req.Connections {
		field := fmt.Sprintf("connections[%d]", i)
		if err := CheckConnectionID(field, id); err != nil {
			return err
		}
		if slices.Index(req.Connections, id) != i {
			return invalid(field, "names connection %s a second time; name each once", id)
		}
	}
	return nil
}

// connPlan is what an open's connections add to its transaction.
type connPlan struct {
	refs []ConnectionRef
	cmps []clientv3.Cmp
	puts []clientv3.Op
}

// connReads are the reads planConnections needs, in the open's read
// transaction: each named shared connection.
func connReads(req *OpenRequest) []clientv3.Op {
	ops := make([]clientv3.Op, len(req.Connections))
	for i, id := range req.Connections {
		ops[i] = clientv3.OpGet(connKey(id))
	}
	return ops
}

// planConnections checks the open's connections against what the read
// transaction found (responses from idx on, one per shared connection) and
// the user's services, and plans the direct connection's record and the
// compares that keep each shared one as read.
func (r *Registry) planConnections(ctx context.Context, p Principal, rec *record, req *OpenRequest, user User, resp *clientv3.TxnResponse, idx int, directID string) (connPlan, error) {
	var plan connPlan
	if c := req.Connection; c != nil {
		if !user.hasService(c.Service) {
			return plan, &ServiceNotAllowedError{Tenant: rec.Tenant, User: rec.User, Service: c.Service, Kind: ConnDirect}
		}
		params := c.Parameters
		if params == nil {
			params = map[string]string{}
		}
		cr := connRecord{
			Connection: Connection{ID: directID, Kind: ConnDirect, Service: c.Service, Host: c.Host, PID: c.PID, OS: c.OS,
				Parameters: params, TTLSeconds: rec.TTLSeconds, Session: rec.ID, Node: r.cfg.Node, CreatedAt: rec.StartedAt, Owner: p.Name},
			LeaseID: rec.LeaseID, OwnerToken: p.TokenID,
		}
		val, _ := json.Marshal(cr)
		plan.refs = append(plan.refs, ConnectionRef{ID: directID, Kind: ConnDirect, Service: c.Service})
		plan.puts = append(plan.puts, clientv3.OpPut(connKey(directID), string(val), clientv3.WithLease(clientv3.LeaseID(rec.LeaseID))))
	}
	for i, id := range req.Connections {
		kvs := resp.Responses[idx+i].GetResponseRange().Kvs
		if len(kvs) == 0 {
			return plan, r.connectionGone(ctx, id)
		}
		cr, err := decodeConn(kvs[0])
		if err != nil {
			return plan, err
		}
		field := fmt.Sprintf("connections[%d]", i)
		if cr.Kind != ConnShared {
			return plan, invalid(field, "connection %s is the direct connection of session %s; a session can name only shared connections", id, cr.Session)
		}
		if p.Role != RoleAdmin && p.TokenID != cr.OwnerToken {
			return plan, denied("%s may not open sessions through shared connection %s: only the token that registered it (%s) or an admin may", p.describe(), id, cr.Owner)
		}
		if !user.hasService(cr.Service) {
			return plan, &ServiceNotAllowedError{Tenant: rec.Tenant, User: rec.User, Service: cr.Service, Connection: id, Kind: ConnShared}
		}
		plan.refs = append(plan.refs, ConnectionRef{ID: id, Kind: ConnShared, Service: cr.Service, ServiceTimeoutSeconds: cr.ServiceTimeoutSeconds})
		plan.cmps = append(plan.cmps, clientv3.Compare(clientv3.CreateRevision(connKey(id)), "=", cr.createRev))
	}
	return plan, nil
}

func decodeConn(kv *mvccpb.KeyValue) (*connRecord, error) {
	var cr connRecord
	if err := json.Unmarshal(kv.Value, &cr); err != nil {
		return nil, fmt.Errorf("registry: decode connection %q: %w", kv.Key, err)
	}
	cr.createRev = kv.CreateRevision
	return &cr, nil
}

func decodeConnTomb(kv *mvccpb.KeyValue) (*connTomb, error) {
	var t connTomb
	if err := json.Unmarshal(kv.Value, &t); err != nil {
		return nil, fmt.Errorf("registry: decode dead connection %q: %w", kv.Key, err)
	}
	return &t, nil
}

// connectionGone builds the refusal for shared connection id, which is not
// live, saying when it died if that is still known.
func (r *Registry) connectionGone(ctx context.Context, id string) error {
	cctx, cancel := r.opCtx(ctx)
	defer cancel()
	resp, err := r.cli.Get(cctx, connTombKey(id))
	if err != nil {
		return translate("read dead connection", err)
	}
	e := &ConnectionGoneError{ID: id}
	if len(resp.Kvs) == 1 {
		if t, err := decodeConnTomb(resp.Kvs[0]); err == nil {
			e.DiedAt, e.By = &t.DiedAt, t.By
		}
	}
	return e
}

// RegisterConnection registers a shared connection of an application server on
// a lease of its own, which its owner renews with batch heartbeats
// (HeartbeatBatch). Client and admin tokens may register; the registering
// token owns the connection: only it (or an admin) opens sessions through it
// and heartbeats it.
func (r *Registry) RegisterConnection(ctx context.Context, p Principal, req ConnectionRequest) (Connection, error) {
	if err := requireRole(p, "register connections", RoleClient, RoleAdmin); err != nil {
		return Connection{}, err
	}
	switch req.Kind {
	case "", ConnShared:
	case ConnDirect:
		return Connection{}, invalid("kind", "direct connections are created with their session (the open's \"connection\" object); POST /v1/connections registers shared ones")
	default:
		return Connection{}, invalid("kind", "%q is not a connection kind; give shared or leave it out", truncate(string(req.Kind), 40))
	}
	if err := checkConnectionFields("", req.Service, req.Host, req.OS, req.PID, req.Parameters); err != nil {
		return Connection{}, err
	}
	if req.TTLSeconds == 0 {
		req.TTLSeconds = int64(r.cfg.DefaultTTL / time.Second)
	}
	minTTL, maxTTL := int64(r.cfg.MinTTL/time.Second), int64(r.cfg.MaxTTL/time.Second)
	if req.TTLSeconds < minTTL || req.TTLSeconds > maxTTL {
		return Connection{}, invalid("ttl_seconds", "%d is out of range; it must be between %d and %d seconds (omit it for the default %d)", req.TTLSeconds, minTTL, maxTTL, int64(r.cfg.DefaultTTL/time.Second))
	}
	timeout := int64(DefaultServiceTimeoutSeconds)
	if req.ServiceTimeoutSeconds != nil {
		timeout = *req.ServiceTimeoutSeconds
	}
	if timeout < 0 || timeout > MaxServiceTimeoutSeconds {
		return Connection{}, invalid("service_timeout_seconds", "is %d; give 0 to %d (a day); omit it for the default %d", timeout, MaxServiceTimeoutSeconds, DefaultServiceTimeoutSeconds)
	}
	params := req.Parameters
	if params == nil {
		params = map[string]string{}
	}
	now := time.Now().UTC()
	cctx, cancel := r.opCtx(ctx)
	defer cancel()
	lease, err := r.cli.Grant(cctx, req.TTLSeconds)
	if err != nil {
		return Connection{}, translate("grant connection lease", err)
	}
	cr := connRecord{
		Connection: Connection{ID: newSessionID(now), Kind: ConnShared, Service: req.Service, Host: req.Host, PID: req.PID, OS: req.OS,
			Parameters: params, TTLSeconds: req.TTLSeconds, ServiceTimeoutSeconds: timeout, Node: r.cfg.Node,
			CreatedAt: now.Truncate(time.Second), Owner: p.Name},
		LeaseID: int64(lease.ID), OwnerToken: p.TokenID,
	}
	val, _ := json.Marshal(cr)
	if _, err := r.cli.Put(cctx, connKey(cr.ID), string(val), clientv3.WithLease(lease.ID)); err != nil {
		r.revoke(lease.ID)
		return Connection{}, translate("register connection", err)
	}
	c := cr.Connection
	c.State, c.ExpiresInSeconds = ConnLive, req.TTLSeconds
	return c, nil
}

// mayReadConnection: operators and admins every connection, a client token
// the connections it owns; what completes "may not … connection X".
func (p Principal) mayReadConnection(what, ownerToken, id string) error {
	switch {
	case !p.isSession() && (p.Role == RoleAdmin || p.Role == RoleOperator):
		return nil
	case !p.isSession() && p.Role == RoleClient && p.TokenID == ownerToken:
		return nil
	}
	return denied("%s may not %s connection %s: only operators, admins and the token that owns it may", p.describe(), what, id)
}

// GetConnection returns one connection, live or dead, with the number of
// sessions that use it.
func (r *Registry) GetConnection(ctx context.Context, p Principal, id string) (Connection, error) {
	if err := CheckConnectionID("id", id); err != nil {
		return Connection{}, err
	}
	cctx, cancel := r.opCtx(ctx)
	defer cancel()
	resp, err := r.cli.Txn(cctx).Then(clientv3.OpGet(connKey(id)), clientv3.OpGet(connTombKey(id)),
		clientv3.OpGet(connSessionsPrefix(id), clientv3.WithPrefix(), clientv3.WithCountOnly())).Commit()
	if err != nil {
		return Connection{}, translate("read connection", err)
	}
	sessions := int(resp.Responses[2].GetResponseRange().Count)
	if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) == 1 {
		cr, err := decodeConn(kvs[0])
		if err != nil {
			return Connection{}, err
		}
		if err := p.mayReadConnection("read", cr.OwnerToken, id); err != nil {
			return Connection{}, err
		}
		c := cr.Connection
		c.State, c.Sessions = ConnLive, sessions
		if c.Kind == ConnShared {
			if ttl, err := r.cli.TimeToLive(cctx, clientv3.LeaseID(cr.LeaseID)); err == nil && ttl.TTL > 0 {
				c.ExpiresInSeconds = ttl.TTL
			}
		}
		return c, nil
	}
	if kvs := resp.Responses[1].GetResponseRange().Kvs; len(kvs) == 1 {
		t, err := decodeConnTomb(kvs[0])
		if err != nil {
			return Connection{}, err
		}
		if err := p.mayReadConnection("read", t.OwnerToken, id); err != nil {
			return Connection{}, err
		}
		c := t.shown()
		c.Sessions = sessions
		return c, nil
	}
	return Connection{}, connectionNotFound(id)
}

func connectionNotFound(id string) error {
	return &notFoundError{ErrConnectionNotFound, fmt.Sprintf("connection %s not found: it never existed, its session ended, or it died long ago", id)}
}

// checkConnectionFilter validates a connection listing's filter.
func checkConnectionFilter(f ConnectionFilter) error {
	switch f.Kind {
	case "", ConnDirect, ConnShared:
	default:
		return invalid("kind", "%q is not a connection kind; use direct or shared", truncate(string(f.Kind), 40))
	}
	switch f.State {
	case "", ConnLive, ConnDead:
	default:
		return invalid("state", "%q is not a connection state; use live or dead", truncate(f.State, 40))
	}
	if f.Service != "" {
		return checkName("service", f.Service)
	}
	return nil
}

// Connections lists the connections that match f, live and dead ones (a dead
// shared connection is listed until its record expires, its service timeout
// plus the tombstone TTL after its death), in creation order, each with the
// number of sessions that use it. Operators and admins see every connection,
// client tokens the connections they own. Everything is read at one revision.
func (r *Registry) Connections(ctx context.Context, p Principal, f ConnectionFilter) ([]Connection, error) {
	if err := checkConnectionFilter(f); err != nil {
		return nil, err
	}
	if p.isSession() || (p.Role != RoleAdmin && p.Role != RoleOperator && p.Role != RoleClient) {
		return nil, denied("%s may not list connections: it needs an API token (client tokens see the connections they own)", p.describe())
	}
	cctx, cancel := r.opCtx(ctx)
	defer cancel()
	resp, err := r.cli.Txn(cctx).Then(
		clientv3.OpGet(connsPrefix, clientv3.WithPrefix()),
		clientv3.OpGet(connTombsPrefix, clientv3.WithPrefix()),
		clientv3.OpGet(ixConnPrefix, clientv3.WithPrefix(), clientv3.WithKeysOnly()),
	).Commit()
	if err != nil {
		return nil, translate("list connections", err)
	}
	counts := map[string]int{}
	for _, kv := range resp.Responses[2].GetResponseRange().Kvs {
		conn, _, _ := strings.Cut(strings.TrimPrefix(string(kv.Key), ixConnPrefix), "/")
		counts[conn]++
	}
	out := []Connection{}
	var leases []int64
	var shared []int
	keep := func(c Connection, owner string) bool {
		if p.Role == RoleClient && p.TokenID != owner {
			return false
		}
		return (f.Kind == "" || f.Kind == c.Kind) && (f.Service == "" || f.Service == c.Service) && (f.State == "" || f.State == c.State)
	}
	for _, kv := range resp.Responses[0].GetResponseRange().Kvs {
		cr, err := decodeConn(kv)
		if err != nil {
			return nil, err
		}
		c := cr.Connection
		c.State, c.Sessions = ConnLive, counts[c.ID]
		if !keep(c, cr.OwnerToken) {
			continue
		}
		if c.Kind == ConnShared {
			shared, leases = append(shared, len(out)), append(leases, cr.LeaseID)
		}
		out = append(out, c)
	}
	// Only live shared connections have a lease of their own worth showing;
	// a direct one expires with its session.
	ttls := make([]Session, len(leases))
	r.fillExpiry(ctx, ttls, leases)
	for i, j := range shared {
		out[j].ExpiresInSeconds = ttls[i].ExpiresInSeconds
	}
	for _, kv := range resp.Responses[1].GetResponseRange().Kvs {
		t, err := decodeConnTomb(kv)
		if err != nil {
			return nil, err
		}
		c := t.shown()
		c.Sessions = counts[c.ID]
		if keep(c, t.OwnerToken) {
			out = append(out, c)
		}
	}
	slices.SortStableFunc(out, func(a, b Connection) int { return strings.Compare(a.ID, b.ID) })
	return out, nil
}

// DeleteConnection ends a shared connection: its record goes and a record of
// its death is written in one transaction, then its lease is revoked. Its
// sessions stay; clean-up ends them once the service timeout has run out, as
// if the connection had died. The owner token, operators and admins may. A
// direct connection cannot be deleted on its own (ErrDirectConnection): it
// ends with its session.
func (r *Registry) DeleteConnection(ctx context.Context, p Principal, id string) (Connection, error) {
	if err := CheckConnectionID("id", id); err != nil {
		return Connection{}, err
	}
	cctx, cancel := r.opCtx(ctx)
	defer cancel()
	resp, err := r.cli.Get(cctx, connKey(id))
	if err != nil {
		return Connection{}, translate("read connection", err)
	}
	if len(resp.Kvs) == 0 {
		if c, err := r.GetConnection(ctx, p, id); err == nil {
			return c, nil // dead already: deleting it again changes nothing
		} else if !errors.Is(err, ErrConnectionNotFound) {
			return Connection{}, err
		}
		return Connection{}, connectionNotFound(id)
	}
	cr, err := decodeConn(resp.Kvs[0])
	if err != nil {
		return Connection{}, err
	}
	if err := p.mayReadConnection("delete", cr.OwnerToken, id); err != nil {
		return Connection{}, err
	}
	if cr.Kind == ConnDirect {
		return Connection{}, fmt.Errorf("%w: connection %s is the direct connection of session %s and lives and dies with it; to end it, kill the session (roster session kill %s)",
			ErrDirectConnection, id, cr.Session, cr.Session)
	}
	t, err := r.writeConnTomb(ctx, cr, p.By(), clientv3.Compare(clientv3.CreateRevision(connKey(id)), "=", cr.createRev))
	if err != nil {
		return Connection{}, err
	}
	r.revoke(clientv3.LeaseID(cr.LeaseID))
	if t == nil { // it died meanwhile: show how
		return r.GetConnection(ctx, p, id)
	}
	r.log.Info("connection deleted", "connection-id", id, "service", cr.Service, "by", p.By())
	c := t.shown()
	if n, err := r.cli.Get(cctx, connSessionsPrefix(id), clientv3.WithPrefix(), clientv3.WithCountOnly()); err == nil {
		c.Sessions = int(n.Count)
	}
	return c, nil
}

// writeConnTomb records the death of shared connection cr, by whom ("lease"
// for an expiry), on a lease of its own that lasts its service timeout plus
// the tombstone TTL. With a compare (a deletion), it also deletes the
// connection's key in the same transaction, and it returns nil when the
// compare failed; without one (the connection is gone already) it writes
// only if no node wrote the record first.
func (r *Registry) writeConnTomb(ctx context.Context, cr *connRecord, by string, cmp ...clientv3.Cmp) (*connTomb, error) {
	cctx, cancel := r.opCtx(ctx)
	defer cancel()
	ttl := time.Duration(cr.ServiceTimeoutSeconds)*time.Second + r.cfg.TombstoneTTL + time.Minute
	lease, err := r.cli.Grant(cctx, int64(ttl/time.Second))
	if err != nil {
		return nil, translate("grant dead-connection lease", err)
	}
	t := &connTomb{Connection: cr.Connection, OwnerToken: cr.OwnerToken, DiedAt: time.Now().UTC(), By: by}
	t.State, t.Sessions, t.ExpiresInSeconds = "", 0, 0
	val, _ := json.Marshal(t)
	put := clientv3.OpPut(connTombKey(cr.ID), string(val), clientv3.WithLease(lease.ID))
	txn := r.cli.Txn(cctx)
	if len(cmp) > 0 {
		txn = txn.If(cmp...).Then(clientv3.OpDelete(connKey(cr.ID)), put)
	} else {
		txn = txn.If(clientv3.Compare(clientv3.CreateRevision(connTombKey(cr.ID)), "=", 0)).Then(put)
	}
	resp, err := txn.Commit()
	if err != nil {
		r.revoke(lease.ID)
		return nil, translate("record dead connection", err)
	}
	if !resp.Succeeded {
		r.revoke(lease.ID)
		return nil, nil
	}
	return t, nil
}

// watchConnections follows the deletions of connection records until ctx
// ends and records the death of every shared connection whose lease ran out
// (a deleted one has its record written by the deletion). Every node runs
// it; the first to write wins. A death the watch misses (it fell behind a
// compaction) is recorded by clean-up when it finds sessions of a
// connection that is neither live nor known dead.
func (r *Registry) watchConnections(ctx context.Context) {
	var next int64
	for ctx.Err() == nil {
		if next == 0 {
			// Start from a known revision, so a restarted watch resumes
			// where this one began even before its first event.
			cctx, cancel := r.opCtx(ctx)
			if resp, err := r.cli.Get(cctx, connsPrefix, clientv3.WithCountOnly()); err == nil {
				next = resp.Header.Revision + 1
			}
			cancel()
		}
		opts := []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithPrevKV(), clientv3.WithFilterPut()}
		if next > 0 {
			opts = append(opts, clientv3.WithRev(next))
		}
		for resp := range r.cli.Watch(clientv3.WithRequireLeader(ctx), connsPrefix, opts...) {
			if resp.CompactRevision != 0 {
				r.log.Warn("connection watch fell behind compaction; clean-up records the deaths in between", "compact-revision", resp.CompactRevision)
				next = 0
				break
			}
			if err := resp.Err(); err != nil {
				r.log.Warn("connection watch broke; resuming", "error", err)
				break
			}
			for _, ev := range resp.Events {
				next = ev.Kv.ModRevision + 1
				if ev.PrevKv == nil {
					continue
				}
				cr, err := decodeConn(ev.PrevKv)
				if err != nil || cr.Kind != ConnShared {
					continue
				}
				r.recordConnDeath(ctx, cr, ev.Kv.ModRevision)
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// recordConnDeath writes the death of shared connection cr, deleted at
// revision rev, unless it was written already: by the deletion itself (the
// record existed at rev, written in the deletion's transaction) or by
// another node. Reading at rev keeps a slow watch from writing a second
// record after the first one was removed.
func (r *Registry) recordConnDeath(ctx context.Context, cr *connRecord, rev int64) {
	cctx, cancel := r.opCtx(ctx)
	defer cancel()
	if resp, err := r.cli.Get(cctx, connTombKey(cr.ID), clientv3.WithSerializable(), clientv3.WithCountOnly(), clientv3.WithRev(rev)); err == nil && resp.Count > 0 {
		return
	}
	if resp, err := r.cli.Get(cctx, connTombKey(cr.ID), clientv3.WithSerializable(), clientv3.WithCountOnly()); err == nil && resp.Count > 0 {
		return
	}
	t, err := r.writeConnTomb(ctx, cr, "lease")
	switch {
	case err != nil:
		r.log.Warn("record a dead connection failed; clean-up will record it", "connection-id", cr.ID, "error", err)
	case t != nil:
		r.log.Info("shared connection died: its lease ran out", "connection-id", cr.ID, "service", cr.Service, "host", cr.Host,
			"cleanup-at", t.cleanupAt().Format(time.RFC3339))
	}
}

// connChanged reports whether a failed open's else-branch, whose responses
// from index from on read the named shared connections, found one gone.
func connChanged(resp *clientv3.TxnResponse, from int) bool {
	for _, op := range resp.Responses[from:] {
		if len(op.GetResponseRange().Kvs) == 0 {
			return true
		}
	}
	return false
}

// deadConnWarning returns the warning for a manual end of session rec: one
// of its shared connections has died and the connection's service timeout is
// still running (clean-up would have waited for it). "" when none has.
func (r *Registry) deadConnWarning(ctx context.Context, rec *record) string {
	var ops []clientv3.Op
	for _, c := range rec.Connections {
		if c.Kind == ConnShared {
			ops = append(ops, clientv3.OpGet(connTombKey(c.ID)))
		}
	}
	if len(ops) == 0 {
		return ""
	}
	cctx, cancel := r.opCtx(ctx)
	defer cancel()
	resp, err := r.cli.Txn(cctx).Then(ops...).Commit()
	if err != nil {
		return ""
	}
	var warnings []string
	for _, op := range resp.Responses {
		for _, kv := range op.GetResponseRange().Kvs {
			t, err := decodeConnTomb(kv)
			if err != nil || !time.Now().Before(t.cleanupAt()) {
				continue
			}
			warnings = append(warnings, fmt.Sprintf("shared connection %s (service %s) died at %s and its service timeout runs until %s (%s from now): until then clean-up leaves its sessions alone, in case the client comes back",
				t.ID, t.Service, t.DiedAt.Format(time.RFC3339), t.cleanupAt().Format(time.RFC3339), time.Until(t.cleanupAt()).Round(time.Second)))
		}
	}
	return strings.Join(warnings, "; ")
}
