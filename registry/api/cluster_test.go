package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"math/rand/v2"
	"mime"
	"net/http"
	"net/http/httptest"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/roster-dev/roster/cluster"
	"github.com/roster-dev/roster/registry"
	"github.com/roster-dev/roster/registry/api"
)

// fakeCluster stands in for the node's cluster layer, the API's own seam;
// the registry behind the API is real.
type fakeCluster struct {
	members []cluster.MemberStatus
	err     error // returned by Members, and by Snapshot after failAfter bytes

	data      []byte        // the snapshot
	failAfter int           // Snapshot fails after this many bytes; -1 never
	pace      time.Duration // pause between chunks of the snapshot
}

func (f *fakeCluster) Members(ctx context.Context) ([]cluster.MemberStatus, error) {
	return f.members, f.err
}

func (f *fakeCluster) Snapshot(ctx context.Context, w io.Writer) error {
	const chunk = 64 << 10
	for off := 0; off < len(f.data); off += chunk {
		if f.failAfter >= 0 && off >= f.failAfter {
			return f.err
		}
		if _, err := w.Write(f.data[off:min(off+chunk, len(f.data))]); err != nil {
			return err
		}
		if f.pace > 0 {
			select {
			case <-time.After(f.pace):
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}
	if f.failAfter >= 0 {
		return f.err
	}
	return nil
}

// serveCluster serves the API with cluster as its cluster layer, under the
// server timeouts a node uses or shorter.
func serveCluster(t *testing.T, c api.Cluster, timeout time.Duration) string {
	t.Helper()
	ts := httptest.NewUnstartedServer(api.New(api.Config{Registry: reg, Node: "n1", Cluster: c}))
	ts.Config.ReadTimeout, ts.Config.WriteTimeout = timeout, timeout
	ts.Start()
	t.Cleanup(ts.Close)
	return ts.URL
}

// roleTokens creates an operator and a client API token named after prefix.
func roleTokens(t *testing.T, prefix string) (operator, client string) {
	t.Helper()
	admin := registry.AdminPrincipal("test")
	op, err := reg.CreateToken(context.Background(), admin, registry.TokenRequest{Name: prefix + "-ops", Role: registry.RoleOperator})
	if err != nil {
		t.Fatal(err)
	}
	cl, err := reg.CreateToken(context.Background(), admin, registry.TokenRequest{Name: prefix + "-app", Role: registry.RoleClient})
	if err != nil {
		t.Fatal(err)
	}
	return op.Token, cl.Token
}

func TestClusterMembers(t *testing.T) {
	members := []cluster.MemberStatus{
		{Name: "n1", Site: "dc1", Pool: "default", APIURL: "http://10.0.0.1:7400", Gossip: cluster.GossipAlive,
			EtcdRole: cluster.RoleVoter, Leader: true, Healthy: true, Address: "10.0.0.1:7403",
			EtcdMemberID: "8e9e05c52164694d", PeerURL: "http://10.0.0.1:7402"},
		{Name: "n2", Site: "dc2", Pool: "default", APIURL: "http://10.0.0.2:7400", Gossip: cluster.GossipSuspect,
			EtcdRole: cluster.RoleLearner},
	}
	base := serveCluster(t, &fakeCluster{members: members}, 0)
	operator, client := roleTokens(t, "members")
	s := openSession(t, "members-alice", "sales")

	t.Run("shape", func(t *testing.T) {
		a := callAt(t, base, "GET", "/v1/cluster/members", adminToken, nil)
		if a.status != 200 {
			t.Fatalf("%d %s", a.status, a.body)
		}
		var got struct {
			Members []cluster.MemberStatus `json:"members"`
		}
		dec := json.NewDecoder(bytes.NewReader(a.body))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&got); err != nil || !reflect.DeepEqual(got.Members, members) {
			t.Fatalf("members = %+v (%v), want %+v", got.Members, err, members)
		}
		// The field names are the API's; n2's unknown details are left out.
		for _, want := range []string{`"etcd_role":"voter"`, `"api_url":"http://10.0.0.1:7400"`, `"leader":false`,
			`{"name":"n2","site":"dc2","pool":"default","api_url":"http://10.0.0.2:7400","gossip":"suspect","etcd_role":"learner","leader":false,"healthy":false}`} {
			if !strings.Contains(string(a.body), want) {
				t.Errorf("answer does not contain %s: %s", want, a.body)
			}
		}
	})
	tests := []struct {
		name, path, token string
		status            int
		code, mention     string
	}{
		{"operator may", "/v1/cluster/members", operator, 200, "", ""},
		{"client may not", "/v1/cluster/members", client, 403, "permission_denied", "role operator or admin"},
		{"session token may not", "/v1/cluster/members", s.Token, 403, "permission_denied", "role operator or admin"},
		{"no token", "/v1/cluster/members", "", 401, "unauthenticated", "no bearer token"},
		{"query parameter", "/v1/cluster/members?site=dc1", adminToken, 400, "invalid_argument", "site: is not a query parameter here; this endpoint takes none"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := callAt(t, base, "GET", tt.path, tt.token, nil)
			if a.status != tt.status || a.code() != tt.code || !strings.Contains(a.message(), tt.mention) {
				t.Fatalf("%d %s, want %d %s mentioning %q", a.status, a.body, tt.status, tt.code, tt.mention)
			}
		})
	}
	t.Run("no members is an empty list", func(t *testing.T) {
		a := callAt(t, serveCluster(t, &fakeCluster{}, 0), "GET", "/v1/cluster/members", operator, nil)
		if a.status != 200 || string(a.body) != `{"members":[]}`+"\n" {
			t.Fatalf("%d %s", a.status, a.body)
		}
	})
	t.Run("cluster layer fails", func(t *testing.T) {
		failing := &fakeCluster{err: errors.New("gossip: not started")}
		a := callAt(t, serveCluster(t, failing, 0), "GET", "/v1/cluster/members", operator, nil)
		if a.status != 503 || a.code() != "unavailable" || a.message() != "list members: gossip: not started" {
			t.Fatalf("%d %s", a.status, a.body)
		}
	})
	t.Run("no cluster layer", func(t *testing.T) {
		a := call(t, "GET", "/v1/cluster/members", operator, nil)
		if a.status != 503 || a.code() != "unavailable" || !strings.Contains(a.message(), "without a cluster layer") {
			t.Fatalf("%d %s", a.status, a.body)
		}
	})
}

// getSnapshot fetches the snapshot from base; err is the error reading the body.
func getSnapshot(t *testing.T, base, token string) (resp *http.Response, body []byte, err error) {
	t.Helper()
	req, _ := http.NewRequest("GET", base+"/v1/cluster/snapshot", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err = io.ReadAll(resp.Body)
	return resp, body, err
}

func TestClusterSnapshot(t *testing.T) {
	data := make([]byte, 3<<20+17)
	for i := range data {
		data[i] = byte(rand.Uint32())
	}
	operator, client := roleTokens(t, "snapshot")

	t.Run("streams the bytes", func(t *testing.T) {
		base := serveCluster(t, &fakeCluster{data: data, failAfter: -1}, 0)
		resp, body, err := getSnapshot(t, base, adminToken)
		if err != nil || resp.StatusCode != 200 || !bytes.Equal(body, data) {
			t.Fatalf("%d, %d bytes of %d, equal %v, err %v", resp.StatusCode, len(body), len(data), bytes.Equal(body, data), err)
		}
		if ct := resp.Header.Get("Content-Type"); ct != "application/octet-stream" {
			t.Errorf("Content-Type %q", ct)
		}
		disp, params, err := mime.ParseMediaType(resp.Header.Get("Content-Disposition"))
		if err != nil || disp != "attachment" || !regexp.MustCompile(`^roster-n1-\d{8}T\d{6}Z\.db$`).MatchString(params["filename"]) {
			t.Errorf("Content-Disposition %q", resp.Header.Get("Content-Disposition"))
		}
	})
	t.Run("outlasts the server timeouts", func(t *testing.T) {
		// Ten chunks 100ms apart against 300ms read and write timeouts.
		slow := &fakeCluster{data: data[:640<<10], failAfter: -1, pace: 100 * time.Millisecond}
		resp, body, err := getSnapshot(t, serveCluster(t, slow, 300*time.Millisecond), adminToken)
		if err != nil || resp.StatusCode != 200 || !bytes.Equal(body, slow.data) {
			t.Fatalf("%d, %d bytes of %d, err %v", resp.StatusCode, len(body), len(slow.data), err)
		}
	})
	tests := []struct {
		name, token string
		cluster     api.Cluster
		status      int
		code        string
		mention     string
	}{
		{name: "operator may not", token: operator, cluster: &fakeCluster{data: data, failAfter: -1}, status: 403, code: "permission_denied", mention: "role admin"},
		{name: "client may not", token: client, cluster: &fakeCluster{data: data, failAfter: -1}, status: 403, code: "permission_denied", mention: "role admin"},
		{name: "fails before the first byte", token: adminToken, cluster: &fakeCluster{data: data, failAfter: 0, err: errors.New("etcdserver: no leader")},
			status: 503, code: "unavailable", mention: "take snapshot: etcdserver: no leader"},
		{name: "empty snapshot", token: adminToken, cluster: &fakeCluster{failAfter: -1}, status: 503, code: "unavailable", mention: "the snapshot is empty"},
		{name: "no cluster layer", token: adminToken, status: 503, code: "unavailable", mention: "without a cluster layer"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			base := srv.URL
			if tt.cluster != nil {
				base = serveCluster(t, tt.cluster, 0)
			}
			a := callAt(t, base, "GET", "/v1/cluster/snapshot", tt.token, nil)
			if a.status != tt.status || a.code() != tt.code || !strings.Contains(a.message(), tt.mention) {
				t.Fatalf("%d %s, want %d %s mentioning %q", a.status, a.body, tt.status, tt.code, tt.mention)
			}
		})
	}
	t.Run("fails after the first byte", func(t *testing.T) {
		broken := &fakeCluster{data: data, failAfter: 1 << 20, err: errors.New("etcdserver: stopped")}
		resp, body, err := getSnapshot(t, serveCluster(t, broken, 0), adminToken)
		if resp.StatusCode != 200 || !errors.Is(err, io.ErrUnexpectedEOF) || len(body) >= len(data) {
			t.Fatalf("%d, read %d bytes of %d, err %v; want 200 and a truncated body", resp.StatusCode, len(body), len(data), err)
		}
	})
}
