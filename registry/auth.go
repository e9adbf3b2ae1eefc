package registry

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

const (
	apiTokenPrefix     = "rt1."
	sessionTokenPrefix = "rs1."
	// AdminTokenName is the name of the admin token a new node creates.
	AdminTokenName = "admin"
)

// Principal is who makes a request: the holder of an API token (Role and
// Name) or of a session token (SessionID, Tenant, User).
type Principal struct {
	Role Role
	Name string
	// TokenID identifies one API token for its whole life; unlike its
	// name, a token created again under the same name gets a new id, so
	// it never inherits the old token's sessions.
	TokenID string

	SessionID, Tenant, User string
	// ended marks a session token whose session has ended: it may still
	// learn how (heartbeat, get, close answer 410) and nothing else.
	ended bool
	// tokenHash and tokenRev are set when AuthenticateFromCopy found the
	// API token in the node's copy: Open, Kill and Logout check in their
	// transaction that its entry is still at tokenRev (see tokenCmps).
	tokenHash string
	tokenRev  int64
}

// AdminPrincipal is an admin API-token holder of the given name, for
// in-process callers such as tests and tools.
func AdminPrincipal(name string) Principal { return Principal{Role: RoleAdmin, Name: name} }

func (p Principal) isSession() bool { return p.SessionID != "" }

// By is how the principal is named in tombstones and logs.
func (p Principal) By() string {
	if p.isSession() {
		return "user:" + p.Tenant + "/" + p.User
	}
	return p.Name
}

// storedToken is an API token as stored under both its hash and its name.
type storedToken struct {
	TokenInfo
	Hash string `json:"hash"`
}

// id is the token's lasting identity: the first 64 bits of its hash,
// unique per created token since every token has a fresh secret.
func (st storedToken) id() string { return st.Hash[:16] }

func hashToken(tok string) string {
	sum := sha256.Sum256([]byte(tok))
	return hex.EncodeToString(sum[:])
}

func randomSecret() string {
	var b [32]byte // 256 bits
	if _, err := rand.Read(b[:]); err != nil {
		panic("registry: crypto/rand failed: " + err.Error())
	}
	return base64.RawURLEncoding.EncodeToString(b[:])
}

func newSessionToken(id string) string { return sessionTokenPrefix + id + "." + randomSecret() }

// Authenticate finds who holds a bearer token. Unknown or malformed tokens
// give ErrUnauthenticated; a session token of an unknown session gives
// ErrSessionNotFound.
func (r *Registry) Authenticate(ctx context.Context, bearer string) (Principal, error) {
	switch {
	case bearer == "":
		return Principal{}, fmt.Errorf("%w: no bearer token: send 'Authorization: Bearer <token>' (the admin token is in <data-dir>/admin.token)", ErrUnauthenticated)
	case strings.HasPrefix(bearer, apiTokenPrefix):
		return r.authAPIToken(ctx, bearer, false)
	case strings.HasPrefix(bearer, sessionTokenPrefix):
		return r.authSessionToken(ctx, bearer)
	}
	return Principal{}, fmt.Errorf("%w: the bearer token is not a Roster token (API tokens start with %q, session tokens with %q)", ErrUnauthenticated, apiTokenPrefix, sessionTokenPrefix)
}

// AuthenticateLocal is Authenticate for the endpoints an operator needs
// most when the cluster has lost quorum, such as the etcd snapshot: it reads
// an API token serializably, from whichever member the client reaches,
// without the etcd leader, so it answers while no leader exists. The price:
// a member cut off from the leader may accept a token revoked after it lost
// contact. Session tokens are authenticated as by Authenticate.
func (r *Registry) AuthenticateLocal(ctx context.Context, bearer string) (Principal, error) {
	if strings.HasPrefix(bearer, apiTokenPrefix) {
		return r.authAPIToken(ctx, bearer, true)
	}
	return r.Authenticate(ctx, bearer)
}

func (r *Registry) authAPIToken(ctx context.Context, tok string, serializable bool) (Principal, error) {
	hash := hashToken(tok)
	cctx, cancel := r.opCtx(ctx)
	defer cancel()
	// Linearizable unless asked otherwise: on a cluster a lagging member must
	// not accept a token revoked a moment ago.
	var opts []clientv3.OpOption
	if serializable {
		opts = append(opts, clientv3.WithSerializable())
	}
	resp, err := r.cli.Get(cctx, tokenHashKey(hash), opts...)
	if err != nil {
		return Principal{}, translate("read token", err)
	}
	var st storedToken
	if len(resp.Kvs) == 1 {
		if err := json.Unmarshal(resp.Kvs[0].Value, &st); err != nil {
			return Principal{}, fmt.Errorf("registry: decode token: %w", err)
		}
	}
	// The key lookup already matched the hash; comparing again in constant
	// time keeps the decision itself free of timing differences.
	if subtle.ConstantTimeCompare([]byte(st.Hash), []byte(hash)) != 1 {
		return Principal{}, revokedToken()
	}
	return Principal{Role: st.Role, Name: st.Name, TokenID: st.id()}, nil
}

// AuthenticateFromCopy is Authenticate for a principal that will only open
// a session (Open) or end one (Kill, Logout): it finds an API token in the
// node's copy of the tokens (see rightsCache) instead of reading it, and
// leaves the check that the token still exists to that call: its
// transaction compares the token's entry with the copy's, and a refusal
// reads the token before it answers. So a token revoked a moment ago, even
// through another node, opens or ends nothing and learns nothing. A token
// read linearizably costs a round to the etcd leader (and, on a follower,
// a wait for its apply to catch up) before the call's own transaction, as
// much again as the transaction on a busy cluster. The principal is good
// for Open, Kill and Logout only: other calls would not check the token
// again. A token the copy lacks is authenticated as by Authenticate.
func (r *Registry) AuthenticateFromCopy(ctx context.Context, bearer string) (Principal, error) {
	if strings.HasPrefix(bearer, apiTokenPrefix) {
		hash := hashToken(bearer)
		if kv := r.rights.token(tokenHashKey(hash)); kv != nil {
			var st storedToken
			if json.Unmarshal(kv.Value, &st) == nil && subtle.ConstantTimeCompare([]byte(st.Hash), []byte(hash)) == 1 {
				return Principal{Role: st.Role, Name: st.Name, TokenID: st.id(), tokenHash: hash, tokenRev: kv.ModRevision}, nil
			}
		}
	}
	return r.Authenticate(ctx, bearer)
}

// tokenCmps are the compares that make a transaction check the API token of
// a principal from AuthenticateFromCopy: its entry is still the one the
// node's copy had. None for any other principal.
func (p Principal) tokenCmps() []clientv3.Cmp {
	if p.tokenRev == 0 {
		return nil
	}
	return []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(tokenHashKey(p.tokenHash)), "=", p.tokenRev)}
}

// checkToken reads the API token of a principal from AuthenticateFromCopy and
// answers ErrUnauthenticated unless its entry is still the one the node's
// copy had; nil for any other principal.
func (r *Registry) checkToken(ctx context.Context, p Principal) error {
	if p.tokenRev == 0 {
		return nil
	}
	cctx, cancel := r.opCtx(ctx)
	defer cancel()
	resp, err := r.cli.Get(cctx, tokenHashKey(p.tokenHash), clientv3.WithKeysOnly())
	if err != nil {
		return translate("read token", err)
	}
	if len(resp.Kvs) == 0 || resp.Kvs[0].ModRevision != p.tokenRev {
		return revokedToken()
	}
	return nil
}

// refusedOrRevoked is err, a refusal of a call made by p, unless p's API
// token (from AuthenticateFromCopy) is gone: then ErrUnauthenticated, so
// that a refusal tells only the holder of a live token why.
func (r *Registry) refusedOrRevoked(ctx context.Context, p Principal, err error) error {
	if err == nil || errors.Is(err, ErrUnauthenticated) {
		return err
	}
	if terr := r.checkToken(ctx, p); terr != nil {
		return terr
	}
	return err
}

func revokedToken() error { return fmt.Errorf("%w: unknown or revoked API token", ErrUnauthenticated) }

func (r *Registry) authSessionToken(ctx context.Context, tok string) (Principal, error) {
	rest := strings.TrimPrefix(tok, sessionTokenPrefix)
	id, _, ok := strings.Cut(rest, ".")
	if !ok || CheckSessionID(id) != nil {
		return Principal{}, fmt.Errorf("%w: malformed session token", ErrUnauthenticated)
	}
	rec, tomb, err := r.lookup(ctx, id)
	if errors.Is(err, ErrSessionNotFound) {
		// An unverifiable token is unauthenticated, whatever its id says.
		return Principal{}, fmt.Errorf("%w: unknown session token (its session %s ended long ago or never existed)", ErrUnauthenticated, id)
	}
	if err != nil {
		return Principal{}, err
	}
	o := ownerOf(rec, tomb)
	if subtle.ConstantTimeCompare([]byte(o.TokenHash), []byte(hashToken(tok))) != 1 {
		return Principal{}, fmt.Errorf("%w: wrong session token for session %s", ErrUnauthenticated, id)
	}
	return Principal{SessionID: id, Tenant: o.Tenant, User: o.User, ended: tomb != nil}, nil
}

// CreateToken creates an API token; only admins may. The secret is in the
// answer and nowhere else.
func (r *Registry) CreateToken(ctx context.Context, p Principal, req TokenRequest) (NewToken, error) {
	if err := requireRole(p, "create tokens", RoleAdmin); err != nil {
		return NewToken{}, err
	}
	return r.createToken(ctx, req, NewAPIToken(), p.By())
}

// NewAPIToken returns a fresh API token secret (256 random bits); it is
// not stored anywhere until a token is created with it.
func NewAPIToken() string { return apiTokenPrefix + randomSecret() }

// createToken stores tok (made by NewAPIToken) under req's name and role;
// the audit log names actor as its creator.
func (r *Registry) createToken(ctx context.Context, req TokenRequest, tok, actor string) (NewToken, error) {
	if err := checkName("name", req.Name); err != nil {
		return NewToken{}, err
	}
	if err := CheckRole(req.Role); err != nil {
		return NewToken{}, err
	}
	st := storedToken{TokenInfo: TokenInfo{Name: req.Name, Role: req.Role, CreatedAt: time.Now().UTC().Truncate(time.Second)}, Hash: hashToken(tok)}
	val, _ := json.Marshal(st)
	cctx, cancel := r.opCtx(ctx)
	defer cancel()
	resp, err := r.cli.Txn(cctx).
		If(clientv3.Compare(clientv3.CreateRevision(tokenNameKey(req.Name)), "=", 0)).
		Then(r.withAudit(ctx, []clientv3.Op{clientv3.OpPut(tokenNameKey(req.Name), string(val)), clientv3.OpPut(tokenHashKey(st.Hash), string(val))},
			AuditRecord{Action: AuditTokenCreate, Actor: actor, Target: req.Name, Details: map[string]string{"role": string(req.Role)}})...).
		Commit()
	if err != nil {
		return NewToken{}, translate("create token", err)
	}
	if !resp.Succeeded {
		return NewToken{}, fmt.Errorf("%w: a token named %q exists; revoke it first or pick another name", ErrTokenExists, req.Name)
	}
	return NewToken{TokenInfo: st.TokenInfo, Token: tok}, nil
}

// EnsureAdminToken makes tok (from NewAPIToken) the admin token named
// AdminTokenName unless another token of that name exists. It reports
// whether tok is the admin token now, so a caller that saved tok before
// calling can finish after a crash by calling again with the same tok.
func (r *Registry) EnsureAdminToken(ctx context.Context, tok string) (bool, error) {
	if !strings.HasPrefix(tok, apiTokenPrefix) {
		return false, invalid("token", "is not an API token (it must start with %q)", apiTokenPrefix)
	}
	_, err := r.createToken(ctx, TokenRequest{Name: AdminTokenName, Role: RoleAdmin}, tok, "node:"+r.cfg.Node)
	if err == nil {
		return true, nil
	}
	if !errors.Is(err, ErrTokenExists) {
		return false, err
	}
	p, err := r.authAPIToken(ctx, tok, false)
	switch {
	case err == nil:
		return p.Name == AdminTokenName && p.Role == RoleAdmin, nil
	case errors.Is(err, ErrUnauthenticated):
		return false, nil
	}
	return false, err
}

// ListTokens lists API tokens (never their secrets); admins only.
func (r *Registry) ListTokens(ctx context.Context, p Principal) ([]TokenInfo, error) {
	if err := requireRole(p, "list tokens", RoleAdmin); err != nil {
		return nil, err
	}
	cctx, cancel := r.opCtx(ctx)
	defer cancel()
	resp, err := r.cli.Get(cctx, tokenNamePrefix, clientv3.WithPrefix())
	if err != nil {
		return nil, translate("list tokens", err)
	}
	out := make([]TokenInfo, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		var st storedToken
		if err := json.Unmarshal(kv.Value, &st); err != nil {
			return nil, fmt.Errorf("registry: decode token %q: %w", kv.Key, err)
		}
		out = append(out, st.TokenInfo)
	}
	return out, nil
}

// DeleteToken revokes an API token by name; admins only.
func (r *Registry) DeleteToken(ctx context.Context, p Principal, name string) error {
	if err := requireRole(p, "revoke tokens", RoleAdmin); err != nil {
		return err
	}
	if err := checkName("name", name); err != nil {
		return err
	}
	cctx, cancel := r.opCtx(ctx)
	defer cancel()
	resp, err := r.cli.Get(cctx, tokenNameKey(name))
	if err != nil {
		return translate("read token", err)
	}
	if len(resp.Kvs) == 0 {
		return &notFoundError{ErrTokenNotFound, fmt.Sprintf("no token named %q; 'roster token list' shows the tokens", name)}
	}
	var st storedToken
	if err := json.Unmarshal(resp.Kvs[0].Value, &st); err != nil {
		return fmt.Errorf("registry: decode token: %w", err)
	}
	del, err := r.cli.Txn(cctx).
		If(clientv3.Compare(clientv3.ModRevision(tokenNameKey(name)), "=", resp.Kvs[0].ModRevision)).
		Then(r.withAudit(ctx, []clientv3.Op{clientv3.OpDelete(tokenNameKey(name)), clientv3.OpDelete(tokenHashKey(st.Hash))},
			AuditRecord{Action: AuditTokenRevoke, Actor: p.By(), Target: name, Details: map[string]string{"role": string(st.Role)}})...).
		Commit()
	if err != nil {
		return translate("delete token", err)
	}
	if !del.Succeeded {
		return fmt.Errorf("%w: token %q changed while it was being revoked; try again", ErrUnavailable, name)
	}
	return nil
}

// RequireRole returns nil when p holds an API token of one of roles, and
// otherwise an error matching ErrPermissionDenied that says who may not do
// what and which role it needs. what completes "may not …", e.g. "take
// snapshots". It is for permission checks made outside the registry, such
// as the API's cluster endpoints; session tokens never pass.
func RequireRole(p Principal, what string, roles ...Role) error {
	return requireRole(p, what, roles...)
}

// requireRole lets API tokens of the given roles through.
func requireRole(p Principal, what string, roles ...Role) error {
	if !p.isSession() {
		for _, role := range roles {
			if p.Role == role {
				return nil
			}
		}
	}
	names := make([]string, len(roles))
	for i, role := range roles {
		names[i] = string(role)
	}
	return denied("%s may not %s: it needs a token with role %s", p.describe(), what, strings.Join(names, " or "))
}

func (p Principal) describe() string {
	if p.isSession() {
		return fmt.Sprintf("the session token of %s (user %s/%s)", p.SessionID, p.Tenant, p.User)
	}
	return fmt.Sprintf("token %q (role %s)", p.Name, p.Role)
}
