package cluster

import "errors"

// ErrStopped is sent on Member.Err when the etcd server stops without Close having been
// called, e.g. after a fatal storage error; the member no longer serves and the owner
// should Close it. Start returns it, wrapped, when the server stops before it is ready.
var ErrStopped = errors.New("cluster: etcd server stopped")

// ErrMemberExists is returned, wrapped, by Restore when the data dir already holds an etcd
// member: Restore never overwrites one.
var ErrMemberExists = errors.New("cluster: data dir holds an etcd member")

// ErrBadSnapshot is returned, wrapped, when a file is not a whole etcd snapshot: it is
// truncated, damaged, or something else.
var ErrBadSnapshot = errors.New("cluster: not a valid etcd snapshot")
