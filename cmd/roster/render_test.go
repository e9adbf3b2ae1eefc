package main

import (
	"bytes"
	"testing"
	"time"

	"github.com/roster-dev/roster/registry"
)

func TestRenderSessions(t *testing.T) {
	started := time.Date(2026, 11, 21, 10, 2, 0, 0, time.UTC)
	tests := []struct {
		name     string
		sessions []registry.Session
		want     string
	}{
		{
			name: "empty",
			want: "ID  TENANT  USER  MODULE  HOST  POOL  NODE  STARTED  EXPIRES-IN\n",
		},
		{
			name: "aligned, empty cells shown as -",
			sessions: []registry.Session{
				{ID: "0193f2a1b2c3d4e5f60718293a4b5c6d", Tenant: "default", User: "alice", Module: "sales", Host: "PC-17",
					Pool: "default", Node: "n1", StartedAt: started, ExpiresInSeconds: 45},
				{ID: "0193f2a1b2c3d4e5f60718293a4b5c6e", Tenant: "acme", User: "application-server", Module: "crm",
					Pool: "night", Node: "n2", StartedAt: started.In(time.FixedZone("CET", 3600)), ExpiresInSeconds: 3900},
			},
			want: "" +
				"ID                                TENANT   USER                MODULE  HOST   POOL     NODE  STARTED               EXPIRES-IN\n" +
				"0193f2a1b2c3d4e5f60718293a4b5c6d  default  alice               sales   PC-17  default  n1    2026-11-21T10:02:00Z  45s\n" +
				"0193f2a1b2c3d4e5f60718293a4b5c6e  acme     application-server  crm     -      night    n2    2026-11-21T10:02:00Z  1h5m\n",
		},
		{
			name: "tabs in values do not break columns",
			sessions: []registry.Session{{ID: "a", Tenant: "t", User: "u\tv", Module: "m", Host: "h", Pool: "p", Node: "n",
				StartedAt: started, ExpiresInSeconds: 60}},
			want: "" +
				"ID  TENANT  USER  MODULE  HOST  POOL  NODE  STARTED               EXPIRES-IN\n" +
				"a   t       u v   m       h     p     n     2026-11-21T10:02:00Z  1m\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b bytes.Buffer
			renderSessions(&b, tt.sessions)
			if b.String() != tt.want {
				t.Errorf("renderSessions:\n%s\nwant:\n%s", b.String(), tt.want)
			}
		})
	}
}

func TestRenderSession(t *testing.T) {
	s := registry.Session{ID: "0193", Tenant: "default", User: "alice", Module: "sales", Host: "PC-17", PID: 4242,
		OS: "windows", ClientKind: registry.KindUI, Pool: "default", Node: "n1",
		StartedAt: time.Date(2026, 11, 21, 10, 2, 0, 0, time.UTC), TTLSeconds: 60, ExpiresInSeconds: 59,
		Labels: map[string]string{"z": "1", "a": "2"}, OpenedBy: "admin"}
	tests := []struct {
		name  string
		token string
		want  string
	}{
		{
			name: "without token",
			want: "ID          0193\nTENANT      default\nUSER        alice\nMODULE      sales\nHOST        PC-17\n" +
				"PID         4242\nOS          windows\nKIND        ui\nPOOL        default\nSITE        -\nNODE        n1\n" +
				"STARTED     2026-11-21T10:02:00Z\nTTL         1m\nEXPIRES-IN  59s\nLABELS      a=2,z=1\nOPENED-BY   admin\n",
		},
		{
			name:  "with token",
			token: "rs1.x",
			want: "ID          0193\nTENANT      default\nUSER        alice\nMODULE      sales\nHOST        PC-17\n" +
				"PID         4242\nOS          windows\nKIND        ui\nPOOL        default\nSITE        -\nNODE        n1\n" +
				"STARTED     2026-11-21T10:02:00Z\nTTL         1m\nEXPIRES-IN  59s\nLABELS      a=2,z=1\nOPENED-BY   admin\n" +
				"TOKEN       rs1.x\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b bytes.Buffer
			renderSession(&b, s, tt.token)
			if b.String() != tt.want {
				t.Errorf("renderSession:\n%s\nwant:\n%s", b.String(), tt.want)
			}
		})
	}
}

func TestRenderUsersAndTokens(t *testing.T) {
	at := time.Date(2026, 11, 21, 10, 2, 0, 0, time.UTC)
	tests := []struct {
		name   string
		render func(*bytes.Buffer)
		want   string
	}{
		{
			name: "users",
			render: func(b *bytes.Buffer) {
				renderUsers(b, []registry.User{
					{Tenant: "acme", User: "alice", Rights: []registry.Right{registry.RightMultiLogin, registry.RightInterruptSessions}, Services: []string{"erp-ui", "web"}, UpdatedAt: at},
					{Tenant: "default", User: "bob", Rights: []registry.Right{}, UpdatedAt: at},
				})
			},
			want: "TENANT   USER   RIGHTS                          SERVICES    UPDATED\n" +
				"acme     alice  multi-login,interrupt-sessions  erp-ui,web  2026-11-21T10:02:00Z\n" +
				"default  bob    -                               -           2026-11-21T10:02:00Z\n",
		},
		{
			name: "tokens",
			render: func(b *bytes.Buffer) {
				renderTokens(b, []registry.TokenInfo{{Name: "admin", Role: registry.RoleAdmin, CreatedAt: at}, {Name: "appserver-1", Role: registry.RoleClient}})
			},
			want: "NAME         ROLE    CREATED\nadmin        admin   2026-11-21T10:02:00Z\nappserver-1  client  -\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b bytes.Buffer
			tt.render(&b)
			if b.String() != tt.want {
				t.Errorf("got:\n%s\nwant:\n%s", b.String(), tt.want)
			}
		})
	}
}

func TestFormatSeconds(t *testing.T) {
	tests := []struct {
		name string
		in   int64
		want string
	}{
		{name: "zero", in: 0, want: "0s"},
		{name: "seconds", in: 45, want: "45s"},
		{name: "whole minute", in: 60, want: "1m"},
		{name: "minutes and seconds", in: 90, want: "1m30s"},
		{name: "whole hour", in: 3600, want: "1h"},
		{name: "hours and minutes", in: 3900, want: "1h5m"},
		{name: "hours, minutes, seconds", in: 3661, want: "1h1m1s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := formatSeconds(tt.in); got != tt.want {
				t.Errorf("formatSeconds(%d) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

func TestFormatBytes(t *testing.T) {
	tests := []struct {
		name string
		n    int64
		want string
	}{
		{name: "bytes", n: 1023, want: "1023 B"},
		{name: "KiB", n: 1536, want: "1.5 KiB"},
		{name: "MiB", n: 25264128, want: "24.1 MiB"},
		{name: "GiB", n: 4 << 30, want: "4.0 GiB"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := formatBytes(tt.n); got != tt.want {
				t.Errorf("formatBytes(%d) = %q, want %q", tt.n, got, tt.want)
			}
		})
	}
}
