package registry

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Sentinel errors. Rich cases are typed errors that match these with errors.Is.
var (
	// ErrInvalidArgument: a field of a request is wrong (see *FieldError).
	ErrInvalidArgument = errors.New("registry: invalid argument")
	// ErrUnauthenticated: no credentials, or unknown ones.
	ErrUnauthenticated = errors.New("registry: unauthenticated")
	// ErrPermissionDenied: the caller may not do this.
	ErrPermissionDenied = errors.New("registry: permission denied")
	// ErrSessionNotFound: no such session and no tombstone for it.
	ErrSessionNotFound = errors.New("registry: session not found")
	// ErrUserNotFound: no such user in the user master.
	ErrUserNotFound = errors.New("registry: user not found")
	// ErrTokenNotFound: no API token of that name.
	ErrTokenNotFound = errors.New("registry: token not found")
	// ErrTokenExists: an API token of that name exists already.
	ErrTokenExists = errors.New("registry: token exists")
	// ErrAlreadyLoggedIn: the single-login rule refused an open (see *AlreadyLoggedInError).
	ErrAlreadyLoggedIn = errors.New("registry: already logged in")
	// ErrPoolInactive: the pool a session would open in is inactive (see *PoolInactiveError).
	ErrPoolInactive = errors.New("registry: pool inactive")
	// ErrMaintenance: an "all" shutdown request of the tenant is pending (see *MaintenanceError).
	ErrMaintenance = errors.New("registry: maintenance")
	// ErrShutdownNotFound: no shutdown request with that id.
	ErrShutdownNotFound = errors.New("registry: shutdown request not found")
	// ErrShutdownFinished: the shutdown request is done or cancelled already.
	ErrShutdownFinished = errors.New("registry: shutdown request finished")
	// ErrSessionEnded: the session has ended (see *EndedError).
	ErrSessionEnded = errors.New("registry: session ended")
	// ErrUnavailable: etcd could not be reached in time.
	ErrUnavailable = errors.New("registry: etcd unavailable")
)

// errCondition: a conditional end found its condition changed (the shutdown request
// it enforces was cancelled or finished); internal, never answered.
var errCondition = errors.New("registry: the condition of the change no longer holds")

// FieldError says which field of a request is wrong and why.
type FieldError struct {
	Field   string
	Problem string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Problem }

// Is makes a FieldError match ErrInvalidArgument.
func (e *FieldError) Is(target error) bool { return target == ErrInvalidArgument }

func invalid(field, format string, args ...any) error {
	return &FieldError{Field: field, Problem: fmt.Sprintf(format, args...)}
}

// AlreadyLoggedInError carries the facts of a refused second login.
type AlreadyLoggedInError struct {
	Tenant, User, Module string
	// Host and Since describe the session that holds the module.
	Host      string
	Since     time.Time
	SessionID string
}

func (e *AlreadyLoggedInError) Error() string {
	host := e.Host
	if host == "" {
		host = "(unknown host)"
	}
	tenant := ""
	if e.Tenant != DefaultTenant {
		tenant = " of tenant " + e.Tenant
	}
	return fmt.Sprintf("user %s%s is already logged in to module %s on host %s since %s and has no multi-login right",
		e.User, tenant, e.Module, host, e.Since.UTC().Format(time.RFC3339))
}

// Is makes an AlreadyLoggedInError match ErrAlreadyLoggedIn.
func (e *AlreadyLoggedInError) Is(target error) bool { return target == ErrAlreadyLoggedIn }

// EndedError says that, how, by whom and when a session ended.
type EndedError struct{ Ended Ended }

func (e *EndedError) Error() string {
	d := e.Ended
	s := fmt.Sprintf("session %s ", d.ID)
	switch d.Reason {
	case EndKilled:
		s += "was killed"
	case EndExpired:
		s += "expired (its client stopped heartbeating)"
	case EndClosed:
		s += "was closed"
	case EndShutdown:
		s += "was shut down"
	case EndIdle:
		s += "was ended by clean-up for being idle"
	case EndCleanup:
		s += "was ended by clean-up"
	default:
		s += "ended (" + string(d.Reason) + ")"
	}
	if d.By != "" && d.Reason != EndExpired {
		s += " by " + d.By
	}
	if d.ShutdownID != "" {
		s += " (shutdown request " + d.ShutdownID + ")"
	}
	if !d.At.IsZero() {
		s += " at " + d.At.UTC().Format(time.RFC3339)
	}
	if d.Message != "" {
		s += ": " + d.Message
	}
	return s
}

// Is makes an EndedError match ErrSessionEnded.
func (e *EndedError) Is(target error) bool { return target == ErrSessionEnded }

// deniedError is a permission refusal with a reason the caller can act on.
type deniedError struct{ msg string }

func (e *deniedError) Error() string        { return e.msg }
func (e *deniedError) Is(target error) bool { return target == ErrPermissionDenied }

func denied(format string, args ...any) error {
	return &deniedError{msg: fmt.Sprintf(format, args...)}
}

// notFoundError is a not-found with a message naming the thing.
type notFoundError struct {
	sentinel error
	msg      string
}

func (e *notFoundError) Error() string        { return e.msg }
func (e *notFoundError) Is(target error) bool { return target == e.sentinel }

func sessionNotFound(id string) error {
	return &notFoundError{ErrSessionNotFound, fmt.Sprintf("session %s not found: it never existed or ended long ago", id)}
}

// PoolInactiveError carries the facts of a login refused because its pool is inactive.
type PoolInactiveError struct {
	Pool    string
	Message string   // the operator's message, if any
	Active  []string // the pools that accept logins
}

func (e *PoolInactiveError) Error() string {
	msg := "pool " + e.Pool + " is inactive and accepts no new logins"
	if e.Message != "" {
		msg += ": " + e.Message
	}
	if len(e.Active) > 0 {
		return msg + "; active pools: " + strings.Join(e.Active, ", ")
	}
	return msg + "; no pool is active"
}

// Is makes a PoolInactiveError match ErrPoolInactive.
func (e *PoolInactiveError) Is(target error) bool { return target == ErrPoolInactive }

// MaintenanceError carries the facts of a login refused during an "all" shutdown request.
type MaintenanceError struct {
	Tenant   string
	Deadline time.Time
	Message  string
	ID       string // the shutdown request
}

func (e *MaintenanceError) Error() string {
	msg := "tenant " + e.Tenant + " is shutting down for maintenance (request " + e.ID + ", all sessions end at " +
		e.Deadline.UTC().Format(time.RFC3339) + "); no new logins until it is over or cancelled"
	if e.Message != "" {
		msg += ": " + e.Message
	}
	return msg
}

// Is makes a MaintenanceError match ErrMaintenance.
func (e *MaintenanceError) Is(target error) bool { return target == ErrMaintenance }

// codes gives every sentinel its error code, the word the API answers in
// "error.code" and the audit log keeps for a refused login.
var errorCodes = []struct {
	err  error
	code string
}{
	{ErrInvalidArgument, "invalid_argument"},
	{ErrUnauthenticated, "unauthenticated"},
	{ErrPermissionDenied, "permission_denied"},
	{ErrSessionNotFound, "not_found"},
	{ErrUserNotFound, "not_found"},
	{ErrTokenNotFound, "not_found"},
	{ErrAlreadyLoggedIn, "already_logged_in"},
	{ErrPoolInactive, "pool_inactive"},
	{ErrMaintenance, "maintenance"},
	{ErrNoLicenseSeat, "no_license_seat"},
	{ErrLicenseNotFound, "not_found"},
	{ErrShutdownNotFound, "not_found"},
	{ErrShutdownFinished, "already_finished"},
	{ErrTokenExists, "already_exists"},
	{ErrServiceNotAllowed, "service_not_allowed"},
	{ErrConnectionGone, "connection_gone"},
	{ErrConnectionNotFound, "not_found"},
	{ErrDirectConnection, "direct_connection"},
	{ErrPolicyNotFound, "not_found"},
	{ErrSessionEnded, ""},
	{ErrUnavailable, "unavailable"},
}

// Code returns the error code of err's sentinel: an ended session's end
// reason (killed, expired, closed, ...), or a word such as
// already_logged_in or no_license_seat. ok is false for an error of no
// sentinel.
func Code(err error) (code string, sentinel error, ok bool) {
	for _, c := range errorCodes {
		if errors.Is(err, c.err) {
			var ended *EndedError
			if errors.As(err, &ended) {
				return string(ended.Ended.Reason), c.err, true
			}
			return c.code, c.err, true
		}
	}
	return "", nil, false
}

// Codes lists the error codes Code can return, besides end reasons.
func Codes() []string {
	var out []string
	for _, c := range errorCodes {
		if c.code != "" && !slices.Contains(out, c.code) {
			out = append(out, c.code)
		}
	}
	return out
}
