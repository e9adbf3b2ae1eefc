package client

import (
	"errors"
	"net/url"
	"strings"
	"time"

	"github.com/roster-dev/roster/registry"
)

// Sentinels for the ways a session ends. An *EndedError matches the one of
// its reason with errors.Is.
var (
	// ErrKilled means an operator or a user cut the session.
	ErrKilled = errors.New("client: session killed")
	// ErrExpired means the session's TTL ran out: no heartbeat reached the
	// registry in time.
	ErrExpired = errors.New("client: session expired")
	// ErrClosed means the session was logged out; Session.Err returns it
	// after Session.Close.
	ErrClosed = errors.New("client: session closed")
	// ErrShutdown means a shutdown request's deadline came while the session
	// was still open, and it was terminated.
	ErrShutdown = errors.New("client: session shut down")
	// ErrIdle means clean-up ended the session because its user was idle
	// past the idle timeout of its module's or tenant's policy.
	ErrIdle = errors.New("client: session ended idle")
	// ErrCleanup means clean-up ended the session: its shared connection died
	// and the service timeout ran out, or it outlived its policy's max lifetime.
	ErrCleanup = errors.New("client: session cleaned up")
)

// Sentinels for API answers that callers commonly branch on. An *APIError
// matches the one of its code with errors.Is.
var (
	// ErrUnavailable means no node could serve the call: every endpoint was
	// unreachable or answered 503 (code "unavailable").
	ErrUnavailable = errors.New("client: no node available")
	// ErrNotFound means there is no such session, user or token (code "not_found").
	ErrNotFound = errors.New("client: not found")
	// ErrAlreadyLoggedIn means the single-login rule refused an open (code
	// "already_logged_in").
	ErrAlreadyLoggedIn = errors.New("client: already logged in")
	// ErrUnauthenticated means the token is missing or unknown (code "unauthenticated").
	ErrUnauthenticated = errors.New("client: unauthenticated")
	// ErrPermissionDenied means the token may not make the call (code "permission_denied").
	ErrPermissionDenied = errors.New("client: permission denied")
	// ErrPoolInactive means an open was refused because its pool is
	// deactivated (code "pool_inactive"); the message names the active pools.
	ErrPoolInactive = errors.New("client: pool inactive")
	// ErrMaintenance means an open was refused because a shutdown of the
	// whole tenant is pending (code "maintenance").
	ErrMaintenance = errors.New("client: maintenance")
	// ErrNoLicenseSeat means an open was refused because every seat of the
	// module's licence is taken (code "no_license_seat").
	ErrNoLicenseSeat = errors.New("client: no license seat")
	// ErrServiceNotAllowed means an open was refused because the user may not
	// use the service of one of its connections (code "service_not_allowed").
	ErrServiceNotAllowed = errors.New("client: service not allowed")
	// ErrConnectionGone means an open or a batch heartbeat named a shared
	// connection that is not live (code "connection_gone").
	ErrConnectionGone = errors.New("client: connection gone")
)

// codeSentinels maps the API's machine codes to the sentinels above; it is
// the client's half of the server's status/code table in docs/api.md.
var codeSentinels = map[string]error{
	"unavailable":       ErrUnavailable,
	"not_found":         ErrNotFound,
	"already_logged_in": ErrAlreadyLoggedIn,
	"unauthenticated":   ErrUnauthenticated,
	"permission_denied": ErrPermissionDenied,
	"killed":            ErrKilled,
	"expired":           ErrExpired,
	"closed":            ErrClosed,
	"shutdown":          ErrShutdown,
	"pool_inactive":     ErrPoolInactive,
	"maintenance":       ErrMaintenance,
	"no_license_seat":   ErrNoLicenseSeat,
	"idle":              ErrIdle,
	"cleanup":           ErrCleanup,

	"service_not_allowed": ErrServiceNotAllowed,
	"connection_gone":     ErrConnectionGone,
}

// APIError is an error answer of the API: {"error":{"code":"…","message":"…"}}.
type APIError struct {
	// Status is the HTTP status code.
	Status int
	// Code is the stable machine code, e.g. "already_logged_in".
	Code string
	// Message says what was wrong and what to do.
	Message string
}

// Error returns "<code>: <message>".
func (e *APIError) Error() string {
	return e.Code + ": " + e.Message
}

// Is reports whether target is the sentinel of e's code, so that
// errors.Is(err, ErrNotFound) works on API answers.
func (e *APIError) Is(target error) bool {
	s, ok := codeSentinels[e.Code]
	return ok && s == target
}

// EndedError says that a session has ended and how. It is what a call on an
// ended session returns (a 410 answer) and what Session.Err reports when the
// session ends other than by its own Close. errors.Is matches it to
// ErrKilled, ErrExpired, ErrClosed, ErrIdle or ErrCleanup by its Reason; errors.As finds the
// *APIError behind it when it came from an answer.
type EndedError struct {
	// ID is the session's id, when known.
	ID string
	// Reason is how it ended.
	Reason registry.EndReason
	// By names who ended it, when known: a token name, "user:<tenant>/<user>",
	// or for expiry "liveness" (Roster's liveness view) or "lease" (the etcd lease).
	By string
	// Message is the kill reason given by whoever ended it or, for an error
	// built from an API answer, the server's sentence that says how, by whom
	// and when.
	Message string
	// At is when it ended, when known.
	At time.Time

	apiErr *APIError
}

// Error describes the end as a sentence: "session <id> was killed by admin at
// <time>: PC crashed", or the server's own sentence when By and At are not known.
func (e *EndedError) Error() string {
	if e.By == "" && e.At.IsZero() && e.Message != "" {
		return e.Message
	}
	s := "session"
	if e.ID != "" {
		s += " " + e.ID
	}
	switch e.Reason {
	case "shutdown":
		s += " was shut down"
	case registry.EndIdle:
		s += " was ended by clean-up for being idle"
	case registry.EndCleanup:
		s += " was ended by clean-up"
	default:
		s += " was " + string(e.Reason)
	}
	if e.By != "" {
		s += " by " + e.By
	}
	if !e.At.IsZero() {
		s += " at " + e.At.UTC().Format(time.RFC3339)
	}
	if e.Message != "" {
		s += ": " + e.Message
	}
	return s
}

// Is reports whether target is the sentinel of e's Reason.
func (e *EndedError) Is(target error) bool {
	s, ok := codeSentinels[string(e.Reason)] // the end codes are the reasons
	return ok && s == target
}

// Unwrap returns the API answer the error was built from, or nil.
func (e *EndedError) Unwrap() error {
	if e.apiErr == nil {
		return nil
	}
	return e.apiErr
}

// endedFromAPI turns a 410 answer with an end code into an *EndedError and
// returns every other answer unchanged.
func endedFromAPI(id string, e *APIError) error {
	switch r := registry.EndReason(e.Code); r {
	case registry.EndKilled, registry.EndExpired, registry.EndClosed, registry.EndIdle, registry.EndCleanup:
		return &EndedError{ID: id, Reason: r, Message: e.Message, apiErr: e}
	}
	return e
}

// unavailableError is what a call returns when every endpoint it tried
// failed in a way that another node might not have. It matches
// ErrUnavailable and wraps the last endpoint's error.
type unavailableError struct {
	tried []string
	errs  []error
}

func (e *unavailableError) Error() string {
	var b strings.Builder
	b.WriteString(ErrUnavailable.Error())
	for i, ep := range e.tried {
		if i == 0 {
			b.WriteString(": ")
		} else {
			b.WriteString("; ")
		}
		b.WriteString(ep)
		b.WriteString(": ")
		err := e.errs[i]
		if ue, ok := errors.AsType[*url.Error](err); ok {
			err = ue.Err // the URL is already named by the endpoint
		}
		b.WriteString(err.Error())
	}
	return b.String()
}

func (e *unavailableError) Unwrap() []error {
	return []error{ErrUnavailable, e.errs[len(e.errs)-1]}
}
