package registry

import (
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Every etcd key Roster writes is built in this file. The layout (all under
// root):
//
//	sessions/<id>                              session record (JSON), on the session's lease
//	tombstones/<id>                            how a session ended and the session as it was, on a shared short lease
//	ix/t/<tenant>/<id>                         index by tenant, value: indexAttrs
//	ix/u/<user>/<tenant>/<module>/<id>         index by user; also the single-login rule
//	ix/m/<module>/<tenant>/<id>                index by module
//	ix/p/<pool>/<id>                           index by pool
//	ix/o/<token-id>/<id>                       index by the API token that opened it
//	users/<tenant>/<user>                      user master entry (JSON)
//	tokens/hash/<sha256-hex>                   API token by hash (JSON)
//	tokens/name/<name>                         API token by name (JSON)
//	pools/<pool>                               an inactive pool's state (JSON); active pools have none
//	shutdowns/<id>                             a shutdown request (JSON)
//	maint/<tenant>                             the pending "all" shutdown request of a tenant (JSON)
//	licenses/<tenant>/<module>                 a module's licence: its seats (JSON)
//	seats/<tenant>/<module>/<slot>             a seat held by a session (JSON SeatHolder), on the session's lease; slot is 6 digits
//	history/<newest-first end time>/<id>       an ended session (JSON HistoryRecord), on no lease; the time is
//	                                           9999999999999 minus the end in Unix ms, 13 digits, so keys sort newest first
//	history-checkpoint                         the etcd revision up to which every tombstone's creation is in history/
//	audit/<newest-first time>/<id>             an audit record (JSON AuditRecord), on no lease, never changed; the time
//	                                           counts down as in history/
//	conns/<id>                                 a connection (JSON): a shared one on its own lease, a direct one on its session's lease
//	conntombs/<id>                             a dead shared connection: when it died, its service timeout (JSON), on a lease of its own
//	ix/c/<conn-id>/<id>                        index of the sessions that use a connection, value: indexAttrs, on the session's lease
//	activity/<id>                              a session's last recorded activity, Unix milliseconds, on the session's lease
//	policies/<module|tenant>/<name>            a clean-up policy of a module or a tenant (JSON)
//	alive                                      Unix milliseconds, rewritten by every node
//	peer-secret                                the secret nodes authenticate their liveness pushes with, created once
//
// Names are validated (no "/", no control characters) before they reach a
// key, so one component can never spill into the next.
const root = "/roster/v1/"

const (
	sessionsPrefix   = root + "sessions/"
	tombstonesPrefix = root + "tombstones/"
	indexPrefix      = root + "ix/"
	ixTenantPrefix   = indexPrefix + "t/"
	ixUserPrefix     = indexPrefix + "u/"
	ixModulePrefix   = indexPrefix + "m/"
	ixPoolPrefix     = indexPrefix + "p/"
	ixOwnerPrefix    = indexPrefix + "o/"
	usersPrefix      = root + "users/"
	tokenHashPrefix  = root + "tokens/hash/"
	tokenNamePrefix  = root + "tokens/name/"
	poolsPrefix      = root + "pools/"
	shutdownsPrefix  = root + "shutdowns/"
	maintPrefix      = root + "maint/"
	licensesPrefix   = root + "licenses/"
	seatsPrefix      = root + "seats/"
	historyPrefix    = root + "history/"
	historyCPKey     = root + "history-checkpoint"
	auditPrefix      = root + "audit/"
	aliveKey         = root + "alive"
	connsPrefix      = root + "conns/"
	connTombsPrefix  = root + "conntombs/"
	ixConnPrefix     = indexPrefix + "c/"
	activityPrefix   = root + "activity/"
	policiesPrefix   = root + "policies/"
	peerSecretKey    = root + "peer-secret"
)

// eventRange is the key range the event streams watch: from sessions/ to
// the end of tombstones/. One range keeps one watch, so records and
// tombstones arrive in revision order; the streams drop the keys of the
// other prefixes that sort between the two (shutdowns/, tokens/).
func eventRange() (start, end string) {
	return sessionsPrefix, clientv3.GetPrefixRangeEnd(tombstonesPrefix)
}

func sessionKey(id string) string   { return sessionsPrefix + id }
func tombstoneKey(id string) string { return tombstonesPrefix + id }

// indexKeys lists every index key of a session; they are written and
// deleted together with the session record.
func indexKeys(r *record) []string {
	keys := []string{
		ixTenantPrefix + r.Tenant + "/" + r.ID,
		userModulePrefix(r.Tenant, r.User, r.Module) + r.ID,
		ixModulePrefix + r.Module + "/" + r.Tenant + "/" + r.ID,
		ixPoolPrefix + r.Pool + "/" + r.ID,
		ixOwnerPrefix + r.OpenedByToken + "/" + r.ID,
	}
	for _, c := range r.Connections {
		keys = append(keys, connSessionsPrefix(c.ID)+r.ID)
	}
	return keys
}

// userModulePrefix holds every session of one user in one module: the
// single-login rule is "this prefix is empty".
func userModulePrefix(tenant, user, module string) string {
	return ixUserPrefix + user + "/" + tenant + "/" + module + "/"
}

func poolKey(pool string) string         { return poolsPrefix + pool }
func shutdownKey(id string) string       { return shutdownsPrefix + id }
func maintKey(tenant string) string      { return maintPrefix + tenant }
func userKey(tenant, user string) string { return usersPrefix + tenant + "/" + user }
func usersOfTenant(tenant string) string { return usersPrefix + tenant + "/" }
func tokenHashKey(hash string) string    { return tokenHashPrefix + hash }
func tokenNameKey(name string) string    { return tokenNamePrefix + name }

func licenseKey(tenant, module string) string { return licensesPrefix + tenant + "/" + module }
func seatPrefix(tenant, module string) string { return seatsPrefix + tenant + "/" + module + "/" }
func seatKey(tenant, module string, slot int) string {
	return fmt.Sprintf("%s%06d", seatPrefix(tenant, module), slot)
}

// newestMS is the time, in Unix ms, that the keys of the history and the
// audit log count down from: the keys sort newest first, so a page of the
// newest records is a plain ascending range read with a limit (etcd reads a
// whole range to sort it descending). 13 digits last until the year 2286.
const newestMS = 9_999_999_999_999

// newestFirstKey is the key under prefix (history/ or audit/) of the record
// id of Unix millisecond ms.
func newestFirstKey(prefix string, ms int64, id string) string {
	return fmt.Sprintf("%s%013d/%s", prefix, newestMS-min(max(ms, 0), newestMS), id)
}

// newestFirstBefore is the first key under prefix of the records older than
// Unix millisecond ms: the keys from it to the end of prefix are older than
// ms, those before it at ms or later.
func newestFirstBefore(prefix string, ms int64) string {
	switch {
	case ms <= 0:
		return clientv3.GetPrefixRangeEnd(prefix) // nothing is older than 1970
	case ms > newestMS:
		return prefix
	}
	return fmt.Sprintf("%s%013d", prefix, newestMS-ms+1)
}

// historyKey is the key of the history record of session id, which ended at
// Unix millisecond ms. It is unique per session: a session ends once.
func historyKey(ms int64, id string) string { return newestFirstKey(historyPrefix, ms, id) }

// auditKey is the key of audit record id, written at Unix millisecond ms.
func auditKey(ms int64, id string) string { return newestFirstKey(auditPrefix, ms, id) }

func connKey(id string) string            { return connsPrefix + id }
func connTombKey(id string) string        { return connTombsPrefix + id }
func connSessionsPrefix(id string) string { return ixConnPrefix + id + "/" }
func activityKey(id string) string        { return activityPrefix + id }

func policyKey(scope PolicyScope, name string) string {
	return policiesPrefix + string(scope) + "/" + name
}
