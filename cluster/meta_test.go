package cluster

import (
	"strings"
	"testing"
)

func TestMetaRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		meta NodeMeta
		want string // the encoding, when checked
	}{
		{name: "zero", meta: NodeMeta{}, want: `{}`},
		{
			name: "voter",
			meta: NodeMeta{
				Site: "paris", Pool: "p1", API: "http://127.0.0.1:7400",
				Peer: "http://127.0.0.1:7402", Client: "http://127.0.0.1:7401",
				ClusterID: "cdf818194e3a8c32", MemberID: "8e9e05c52164694d",
				Role: RoleVoter, Healthy: true,
			},
			want: `{"s":"paris","p":"p1","a":"http://127.0.0.1:7400","pu":"http://127.0.0.1:7402",` +
				`"cu":"http://127.0.0.1:7401","c":"cdf818194e3a8c32","m":"8e9e05c52164694d","r":"voter","h":true}`,
		},
		{
			name: "bootstrap candidate",
			meta: NodeMeta{Site: "s", API: "http://[fd00::1]:7400", Peer: "http://[fd00::1]:7402",
				Role: RoleNone, Empty: true, Expect: 3, Want: true},
		},
		{name: "external", meta: NodeMeta{Site: "s", Pool: "p", API: "http://10.0.0.1:7400", Role: RoleExternal, Healthy: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := tt.meta.Encode()
			if err != nil {
				t.Fatalf("Encode: %v", err)
			}
			if tt.want != "" && string(b) != tt.want {
				t.Errorf("Encode = %s, want %s", b, tt.want)
			}
			got, err := DecodeMeta(b)
			if err != nil {
				t.Fatalf("DecodeMeta(%s): %v", b, err)
			}
			if got != tt.meta {
				t.Errorf("DecodeMeta(Encode(m)) = %+v, want %+v", got, tt.meta)
			}
		})
	}
}

func TestMetaLeaveMark(t *testing.T) {
	meta := NodeMeta{Site: "s", Role: RoleVoter}
	b, err := encodeMeta(meta, true)
	if err != nil {
		t.Fatalf("encodeMeta: %v", err)
	}
	got, leaving, err := decodeMeta(b)
	if err != nil || got != meta || !leaving {
		t.Errorf("decodeMeta(%s) = %+v, %v, %v; want %+v, true, nil", b, got, leaving, err, meta)
	}
	// A node that does not know the mark still decodes the metadata.
	if got, err := DecodeMeta(b); err != nil || got != meta {
		t.Errorf("DecodeMeta(%s) = %+v, %v; want %+v, nil", b, got, err, meta)
	}
}

func TestMetaOversize(t *testing.T) {
	meta := NodeMeta{Site: "s", API: "http://" + strings.Repeat("a", 600) + ":7400"}
	b, err := meta.Encode()
	if err == nil {
		t.Fatalf("Encode of a %d-byte URL = %d bytes, nil error; want an error", len(meta.API), len(b))
	}
	if !strings.Contains(err.Error(), "512") {
		t.Errorf("Encode error %q does not name the 512-byte limit", err)
	}

	// The largest metadata that fits is accepted.
	base, err := NodeMeta{Site: "s"}.Encode()
	if err != nil {
		t.Fatal(err)
	}
	meta = NodeMeta{Site: "s" + strings.Repeat("x", 512-len(base))}
	if b, err := meta.Encode(); err != nil || len(b) != 512 {
		t.Errorf("Encode = %d bytes, %v; want 512 bytes, nil", len(b), err)
	}
}

func TestDecodeMeta(t *testing.T) {
	tests := []struct {
		name    string
		in      []byte
		want    NodeMeta
		wantErr bool
	}{
		{name: "nil", in: nil},
		{name: "empty", in: []byte{}},
		{name: "empty object", in: []byte(`{}`)},
		{name: "unknown key ignored", in: []byte(`{"s":"a","zz":1}`), want: NodeMeta{Site: "a"}},
		{name: "garbage", in: []byte("\x00\x01garbage"), wantErr: true},
		{name: "truncated", in: []byte(`{"s":"a"`), wantErr: true},
		{name: "array", in: []byte(`[1,2]`), wantErr: true},
		{name: "wrong type", in: []byte(`{"x":"three"}`), wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := DecodeMeta(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("DecodeMeta(%q) error = %v, want error: %v", tt.in, err, tt.wantErr)
			}
			if got != tt.want {
				t.Errorf("DecodeMeta(%q) = %+v, want %+v", tt.in, got, tt.want)
			}
		})
	}
}
