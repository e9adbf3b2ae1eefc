package registry

import "time"

// ClientKind says what kind of program holds a session.
type ClientKind string

// The client kinds a session may declare.
const (
	KindUI         ClientKind = "ui"         // a person at a desktop or browser
	KindBackground ClientKind = "background" // a queue server or batch job
	KindAppServer  ClientKind = "appserver"  // an application server acting for many users
)

// Right is a permission held by a user in the user master.
type Right string

// The rights a user can hold.
const (
	// RightMultiLogin lets a user hold more than one session per module.
	RightMultiLogin Right = "multi-login"
	// RightInterruptSessions lets a user kill other users' sessions in their tenant.
	RightInterruptSessions Right = "interrupt-sessions"
)

// Role is the role of an API token.
type Role string

// The roles an API token can have.
const (
	RoleClient   Role = "client"   // open, heartbeat, close and read the sessions it opened
	RoleOperator Role = "operator" // read everything, kill sessions
	RoleAdmin    Role = "admin"    // everything
)

// EndReason says why a session ended.
type EndReason string

// The reasons a session can end.
const (
	EndClosed  EndReason = "closed"  // the client logged out
	EndKilled  EndReason = "killed"  // an operator or user cut it
	EndExpired EndReason = "expired" // its lease ran out: the client stopped heartbeating
	// EndIdle: clean-up ended it because its user did nothing for longer than
	// the idle timeout of its module's or tenant's policy.
	EndIdle EndReason = "idle"
	// EndCleanup: clean-up ended it because its shared connection died and the
	// connection's service timeout ran out, or because it outlived the max
	// lifetime of its module's or tenant's policy.
	EndCleanup EndReason = "cleanup"
)

// OpenRequest is the body of a session open (POST /v1/sessions).
type OpenRequest struct {
	Tenant     string            `json:"tenant,omitempty"`
	User       string            `json:"user"`
	Module     string            `json:"module"`
	Host       string            `json:"host,omitempty"`
	PID        int64             `json:"pid,omitempty"`
	OS         string            `json:"os,omitempty"`
	ClientKind ClientKind        `json:"client_kind,omitempty"`
	Pool       string            `json:"pool,omitempty"`
	TTLSeconds int64             `json:"ttl_seconds,omitempty"`
	Labels     map[string]string `json:"labels,omitempty"`
	// Connection, if given, is the session's direct connection: one client,
	// one session. It is created in the open's transaction on the session's
	// lease and lives and dies with the session.
	Connection *DirectConnection `json:"connection,omitempty"`
	// Connections names shared connections (registered with
	// POST /v1/connections) the session works through; each must be live
	// and registered by the token that opens the session (or the opener is
	// an admin).
	Connections []string `json:"connections,omitempty"`
}

// Session is a live session as the API shows it. ExpiresInSeconds is what
// is left of the lease's TTL: as etcd says it for an open, a heartbeat and
// Get; in a List, as the answering node last saw the lease renewed, or
// TTLSeconds if it saw no renewal still running (docs/api.md, GET
// /v1/sessions).
type Session struct {
	ID               string            `json:"id"`
	Tenant           string            `json:"tenant"`
	User             string            `json:"user"`
	Module           string            `json:"module"`
	Host             string            `json:"host"`
	PID              int64             `json:"pid"`
	OS               string            `json:"os"`
	ClientKind       ClientKind        `json:"client_kind"`
	Pool             string            `json:"pool"`
	Site             string            `json:"site"`
	Node             string            `json:"node"`
	StartedAt        time.Time         `json:"started_at"`
	TTLSeconds       int64             `json:"ttl_seconds"`
	ExpiresInSeconds int64             `json:"expires_in_seconds"`
	Labels           map[string]string `json:"labels"`
	// OpenedBy names the API token that opened the session.
	OpenedBy string `json:"opened_by"`
	// Connections are the connections the session works through: its direct
	// connection first, if it has one, then the shared ones.
	Connections []ConnectionRef `json:"connections,omitempty"`
}

// OpenedSession is the answer to a successful open: the session and the
// token that authorizes its heartbeats, logout and kill-own.
type OpenedSession struct {
	Session
	Token string `json:"token"`
}

// HeartbeatResult is the answer to a heartbeat.
type HeartbeatResult struct {
	ID               string `json:"id"`
	TTLSeconds       int64  `json:"ttl_seconds"`
	ExpiresInSeconds int64  `json:"expires_in_seconds"`
	// Shutdown is the pending shutdown request that covers the session, if any: the
	// client should warn its user and log off before the deadline.
	Shutdown *ShutdownNotice `json:"shutdown,omitempty"`
}

// HeartbeatRequest is the optional body of POST /v1/sessions/{id}/heartbeat.
type HeartbeatRequest struct {
	// Active says that the session's user did something since the last
	// heartbeat; idle clean-up counts from the last such heartbeat. A
	// heartbeat without it keeps the session alive but not active.
	Active bool `json:"active,omitempty"`
}

// Ended describes how a session ended (answer to close and kill, and the
// content of a tombstone).
type Ended struct {
	ID     string    `json:"id"`
	Reason EndReason `json:"reason"`
	// By names who ended it: a token name, "user:<tenant>/<user>", or for expiry
	// "liveness" (Roster's liveness view, ByLiveness) or "lease" (the etcd lease).
	By      string    `json:"by,omitempty"`
	Message string    `json:"message,omitempty"`
	At      time.Time `json:"at"`
	// ShutdownID is the shutdown request that terminated it (reason shutdown).
	ShutdownID string `json:"shutdown_id,omitempty"`
	// Warning, in the answer to a logout or kill, says what the caller should
	// know about the end, e.g. that the service timeout of the session's dead
	// shared connection was still running. Tombstones do not keep it.
	Warning string `json:"warning,omitempty"`
}

// SessionPage is one page of a session listing.
type SessionPage struct {
	Sessions   []Session `json:"sessions"`
	Total      int       `json:"total"`
	NextCursor string    `json:"next_cursor"`
}

// ListFilter selects sessions in a listing. Empty fields match everything.
type ListFilter struct {
	Tenant     string
	User       string
	Module     string
	Pool       string
	Site       string
	Node       string
	ClientKind ClientKind
	// Connection lists the sessions that work through one connection.
	Connection string
	// OpenedByToken restricts the listing to sessions opened by one API
	// token, by its id (see Principal.TokenID).
	OpenedByToken string
	Limit         int
	Cursor        string
}

// User is an entry of the user master.
type User struct {
	Tenant string  `json:"tenant"`
	User   string  `json:"user"`
	Rights []Right `json:"rights"`
	// Services are the connection services the user may use: a session over
	// a connection whose service is not here is refused.
	Services  []string  `json:"services"`
	UpdatedAt time.Time `json:"updated_at"`
}

// UserSpec is the body of PUT /v1/users/{tenant}/{user}. It replaces the
// user's rights and services.
type UserSpec struct {
	Rights   []Right  `json:"rights"`
	Services []string `json:"services,omitempty"`
}

// TokenInfo describes an API token; the secret itself is never stored.
type TokenInfo struct {
	Name      string    `json:"name"`
	Role      Role      `json:"role"`
	CreatedAt time.Time `json:"created_at"`
}

// NewToken is the answer to a token creation: the only time the secret is shown.
type NewToken struct {
	TokenInfo
	Token string `json:"token"`
}

// TokenRequest is the body of POST /v1/tokens.
type TokenRequest struct {
	Name string `json:"name"`
	Role Role   `json:"role"`
}
