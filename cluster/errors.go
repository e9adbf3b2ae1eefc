package cluster

import "errors"

// ErrStopped is sent on Member.Err when the etcd server stops without Close having been
// called, e.g. after a fatal storage error; the member no longer serves and the owner
// should Close it. Start returns it, wrapped, when the server stops before it is ready.
var ErrStopped = errors.New("cluster: etcd server stopped")
