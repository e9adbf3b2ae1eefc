package registry_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/roster-dev/roster/registry"
)

// TestAuthenticateLocal: the leaderless check finds the same principals as
// Authenticate and refuses what it refuses. (That it needs no leader is
// etcd's serializable read; a single member always has one.)
func TestAuthenticateLocal(t *testing.T) {
	r := newRegistry(t)
	ctx := context.Background()
	opsToken, ops := token(t, r, "local-ops", registry.RoleOperator)
	appToken, app := token(t, r, "local-app", registry.RoleClient)
	s := open(t, r, app, registry.OpenRequest{User: "local-alice", Module: "sales"})
	if err := r.DeleteToken(ctx, admin, "local-app"); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		bearer string
		want   registry.Principal
		wantIs error
	}{
		{name: "API token", bearer: opsToken, want: ops},
		{name: "session token", bearer: s.Token, want: sessionPrincipal(t, r, s)},
		{name: "revoked API token", bearer: appToken, wantIs: registry.ErrUnauthenticated},
		{name: "unknown API token", bearer: "rt1.AAAA", wantIs: registry.ErrUnauthenticated},
		{name: "no token", bearer: "", wantIs: registry.ErrUnauthenticated},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := r.AuthenticateLocal(ctx, tt.bearer)
			if tt.wantIs != nil {
				if !errors.Is(err, tt.wantIs) {
					t.Fatalf("AuthenticateLocal = %+v, %v; want an error matching %v", got, err, tt.wantIs)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("AuthenticateLocal = %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
}

func TestRequireRole(t *testing.T) {
	r := newRegistry(t)
	_, ops := token(t, r, "role-ops", registry.RoleOperator)
	_, app := token(t, r, "role-app", registry.RoleClient)
	s := open(t, r, app, registry.OpenRequest{User: "role-alice", Module: "sales"})
	tests := []struct {
		name    string
		p       registry.Principal
		wantErr string // "" allows
	}{
		{name: "admin", p: admin},
		{name: "operator", p: ops},
		{name: "client", p: app, wantErr: `token "role-app" (role client) may not list members: it needs a token with role operator or admin`},
		{name: "session token", p: sessionPrincipal(t, r, s), wantErr: "the session token of " + s.ID},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := registry.RequireRole(tt.p, "list members", registry.RoleOperator, registry.RoleAdmin)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("RequireRole: %v", err)
				}
				return
			}
			if !errors.Is(err, registry.ErrPermissionDenied) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("RequireRole = %v; want ErrPermissionDenied saying %q", err, tt.wantErr)
			}
		})
	}
}
