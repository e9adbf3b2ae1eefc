// Package client is the Go client of the Roster HTTP API (docs/api.md).
//
// A Client calls any node of a cluster and fails over between the nodes it
// is given; every call takes a context first. A Session, returned by
// Client.OpenSession or Open, is one logged-in session that a background
// goroutine keeps alive with heartbeats until Close, or until the registry
// says it has ended (killed by an operator, expired, or logged out
// elsewhere):
//
//	s, err := client.Open(ctx, client.Config{
//		Endpoints: []string{"http://10.0.0.1:7400", "http://10.0.0.2:7400"},
//		Token:     os.Getenv("ROSTER_TOKEN"),
//	}, registry.OpenRequest{User: "alice", Module: "sales"})
//	if errors.Is(err, client.ErrAlreadyLoggedIn) {
//		// the single-login rule: alice already works in sales elsewhere
//	}
//	if err != nil {
//		return err
//	}
//	defer s.Close(context.WithoutCancel(ctx)) // log out
//	select {
//	case <-s.Done(): // killed or expired: stop working
//		return s.Err()
//	case <-work:
//	}
//
// Events and SessionEvents follow what happens to sessions as it happens
// (docs/api.md, Events), resuming on another node without losing an event
// when one goes away; Session.Events does so for a held session, which then
// ends as soon as it is killed or expires:
//
//	for e := range s.Events() {
//		log.Printf("%s: %s", e.Type, e.Reason) // e.g. "killed: PC crashed"
//	}
//	<-s.Done() // closed with the end event; s.Err() matches client.ErrKilled
//
// Errors: an error answer is an *APIError ("<code>: <message>"); a call on a
// session that has ended returns an *EndedError, which errors.Is matches to
// ErrKilled, ErrExpired or ErrClosed; when no node could serve a call the
// error matches ErrUnavailable.
package client
