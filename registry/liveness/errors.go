package liveness

import "errors"

// Errors of Receive; the HTTP API maps each to one status.
var (
	// ErrUnauthenticated: the push did not carry the cluster's peer secret.
	ErrUnauthenticated = errors.New("liveness: push not authenticated: wrong or missing peer secret")
	// ErrInvalidPush: the push could not be decoded, or came from a node of this
	// node's own name.
	ErrInvalidPush = errors.New("liveness: invalid push")
	// ErrNotStarted: the view has not been started (it has no peer secret yet) or has
	// been closed; the sender tries again at its next push.
	ErrNotStarted = errors.New("liveness: view not started")
)
