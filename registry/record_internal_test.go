package registry

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
)

// TestStoredRecord: a record is stored without expires_in_seconds and
// reads back as it was, and so does one stored with the field, as nodes
// before wrote it.
func TestStoredRecord(t *testing.T) {
	rec := record{
		Session: Session{ID: "01a20301e2a7fd5749d60f98675084e7", Tenant: "default", User: "alice", Module: "sales",
			Host: "PC-17", PID: 4242, OS: "windows", ClientKind: KindUI, Pool: "default", Site: "fra", Node: "n1",
			StartedAt: time.Date(2026, 11, 22, 11, 0, 0, 0, time.UTC), TTLSeconds: 30, ExpiresInSeconds: 30,
			Labels: map[string]string{"build": "26.4"}, OpenedBy: "admin"},
		LeaseID: 7587869213468493000, TokenHash: strings.Repeat("f", 64), OpenedByToken: "0123456789abcdef",
	}
	stored, err := json.Marshal(storedRecord{record: &rec})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(stored), "expires_in") {
		t.Fatalf("stored record %s has expires_in_seconds", stored)
	}
	older, _ := json.Marshal(rec)
	if !strings.Contains(string(older), `"expires_in_seconds":30`) || len(older)-len(stored) != len(`"expires_in_seconds":30,`) {
		t.Fatalf("stored %d bytes, as before %d: %s", len(stored), len(older), older)
	}
	want := rec
	want.ExpiresInSeconds = 0
	want.createRev = 7
	for _, v := range [][]byte{stored, older} {
		got, err := decodeRecord(&mvccpb.KeyValue{Key: []byte(sessionKey(rec.ID)), Value: v, CreateRevision: 7})
		if err != nil {
			t.Fatal(err)
		}
		got.ExpiresInSeconds = 0 // a stored value is never shown as it is
		if !reflect.DeepEqual(*got, want) {
			t.Fatalf("decoded %+v, want %+v", *got, want)
		}
	}
}
