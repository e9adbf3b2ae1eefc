package registry

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// TestDecodeIndexAttrs: the direct reading of index values agrees with
// encoding/json, for what json.Marshal writes and for what it must hand
// over to encoding/json.
func TestDecodeIndexAttrs(t *testing.T) {
	marshal := func(a indexAttrs) string {
		b, err := json.Marshal(a)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	tests := []struct {
		name  string
		value string
		plain bool // read directly, without encoding/json
	}{
		{"as written", marshal(indexAttrs{"default", "alice", "sales", "blue", "fra", "n1", KindUI, "tok1"}), true},
		{"no site", marshal(indexAttrs{Tenant: "acme", User: "bob", Module: "hr", Pool: "default", Node: "n2", Kind: KindAppServer, OpenedByToken: "t"}), true},
		{"unicode", marshal(indexAttrs{Tenant: "müller", User: "渡辺", Module: "sales", Pool: "p", Node: "n", Kind: KindUI}), true},
		{"quote in a name", marshal(indexAttrs{Tenant: "a\"b", User: "u", Module: "m", Pool: "p", Node: "n", Kind: KindUI}), false},
		{"backslash and html", marshal(indexAttrs{Tenant: `a\b`, User: "<u>&", Module: "m", Pool: "p", Node: "n", Kind: KindUI}), false},
		{"other order", `{"u":"alice","t":"default","k":"ui"}`, true},
		{"empty object", `{}`, true},
		{"unknown key", `{"t":"default","x":"y"}`, false},
		{"number", `{"t":"default","n":1}`, false},
		{"spaces", `{"t": "default"}`, false},
		{"trailing bytes", `{"t":"default"}x`, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var plain indexAttrs
			if got := plainIndexAttrs([]byte(tt.value), &plain); got != tt.plain {
				t.Fatalf("plainIndexAttrs(%s) = %v, want %v", tt.value, got, tt.plain)
			}
			var want indexAttrs
			wantErr := json.Unmarshal([]byte(tt.value), &want)
			got, err := decodeIndexAttrs([]byte(tt.value))
			if (err != nil) != (wantErr != nil) || got != want {
				t.Fatalf("decodeIndexAttrs(%s) = %+v, %v; encoding/json says %+v, %v", tt.value, got, err, want, wantErr)
			}
			if tt.plain && plain != want {
				t.Fatalf("read directly %+v, encoding/json says %+v", plain, want)
			}
		})
	}
}

// TestCompactIndexAttrs: what encodeIndexAttrs writes decodes to what it
// was given, in about half the bytes of JSON; a field holding one of the
// form's marks is written as JSON instead; a compact value with too few or
// too many fields is an error, not a wrong session in a listing.
func TestCompactIndexAttrs(t *testing.T) {
	for _, a := range []indexAttrs{
		{"default", "bench-user-000123", "bench", "default", "fra", "n1", KindUI, ""},
		{"müller", "渡辺", "sales", "blue", "", "n2", KindAppServer, "0123456789abcdef"},
		{Tenant: `a"b`, User: `c\d`, Module: "<m>&", Pool: "p", Node: "n", Kind: KindUI},
		{},
	} {
		v := encodeIndexAttrs(a)
		if v[0] != attrsMark {
			t.Fatalf("encodeIndexAttrs(%+v) = %q: not the compact form", a, v)
		}
		j, _ := json.Marshal(a)
		if a.Tenant == "default" && len(v) > len(j)*6/10 {
			t.Errorf("compact %d bytes, JSON %d: want at most 60 %%", len(v), len(j))
		}
		got, err := decodeIndexAttrs([]byte(v))
		if err != nil || got != a {
			t.Fatalf("decodeIndexAttrs(%q) = %+v, %v; want %+v", v, got, err, a)
		}
	}
	odd := indexAttrs{Tenant: "t", User: "a\x1fb", Module: "m\x01", Pool: "p", Node: "n", Kind: KindUI}
	v := encodeIndexAttrs(odd)
	if v[0] != '{' {
		t.Fatalf("encodeIndexAttrs(%+v) = %q: want JSON for fields that hold the marks", odd, v)
	}
	if got, err := decodeIndexAttrs([]byte(v)); err != nil || got != odd {
		t.Fatalf("decodeIndexAttrs(%q) = %+v, %v; want %+v", v, got, err, odd)
	}
	full := encodeIndexAttrs(indexAttrs{"t", "u", "m", "p", "s", "n", KindUI, "o"})
	for name, bad := range map[string]string{
		"seven fields": full[:strings.LastIndexByte(full, attrsSep)],
		"nine fields":  full + string(attrsSep) + "x",
		"mark only":    string(attrsMark),
	} {
		if got, err := decodeIndexAttrs([]byte(bad)); err == nil {
			t.Errorf("%s: decodeIndexAttrs(%q) = %+v, want an error", name, bad, got)
		}
	}
}

// TestLeaseDeadlines: the newest deadline seen counts, in whole seconds
// left; a deadline that has passed is as good as none, and the sweep drops
// it.
func TestLeaseDeadlines(t *testing.T) {
	var d leaseDeadlines
	t0 := time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)
	if _, ok := d.remaining(1, t0); ok {
		t.Fatal("a lease never seen has a deadline")
	}
	d.note(1, 60, t0)
	d.note(2, 30, t0)
	d.note(2, 0, t0.Add(time.Second)) // a lease gone: no deadline
	tests := []struct {
		name   string
		lease  int64
		at     time.Time
		left   int64
		hasAny bool
	}{
		{"just renewed", 1, t0, 60, true},
		{"half a second on", 1, t0.Add(500 * time.Millisecond), 59, true},
		{"ten seconds on", 2, t0.Add(10 * time.Second), 20, true},
		{"last second", 2, t0.Add(29500 * time.Millisecond), 0, true},
		{"run out", 2, t0.Add(30 * time.Second), 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			left, ok := d.remaining(tt.lease, tt.at)
			if left != tt.left || ok != tt.hasAny {
				t.Fatalf("remaining = %d, %v; want %d, %v", left, ok, tt.left, tt.hasAny)
			}
		})
	}
	d.note(1, 60, t0.Add(-time.Minute)) // an older answer does not move it back
	if left, _ := d.remaining(1, t0); left != 60 {
		t.Fatalf("after an older renewal: %d left, want 60", left)
	}
	d.note(3, 10, t0.Add(deadlineSweep)) // sweeps: lease 2 ran out at t0+30s
	d.mu.Lock()
	_, kept := d.at[2]
	n := len(d.at)
	d.mu.Unlock()
	if kept || n != 2 {
		t.Fatalf("after the sweep: lease 2 kept %v, %d leases; want it dropped and 2 left", kept, n)
	}
}
