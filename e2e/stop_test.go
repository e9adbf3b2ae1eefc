package e2e_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// stopBound is how long the harness waits after SIGTERM before it kills a node.
const stopBound = 15 * time.Second

// TestStopWithRequestInFlight: SIGTERM stops a node of three cleanly (exit status 0,
// not killed) although a request on it never finishes: a login whose body the client
// never sends. The node gives requests in flight a moment, then closes their
// connections and goes on stopping, and says so. (It used to wait 5 s for them, then
// exit with status 1, "context deadline exceeded", leaving the request running.)
func TestStopWithRequestInFlight(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	c := threeVoters(ctx, t)
	n := c.Running()[0]

	conn, err := net.Dial("tcp", n.API)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// With Expect: 100-continue the server answers "100 Continue" once the handler
	// reads the body: then the request is in flight, waiting for a body that never
	// comes.
	fmt.Fprintf(conn, "POST /v1/sessions HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n"+
		"Content-Type: application/json\r\nContent-Length: 1000\r\nExpect: 100-continue\r\n\r\n", n.API, c.Token())
	br := bufio.NewReader(conn)
	conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	if line, err := br.ReadString('\n'); err != nil || !strings.HasPrefix(line, "HTTP/1.1 100") {
		t.Fatalf("the login's interim answer: %q, %v; want 100 Continue", line, err)
	}

	if err := n.Stop(stopBound); err != nil {
		t.Fatalf("SIGTERM with a request in flight: %v\n%s", err, tail(n.Logs(), 60))
	}
	if !strings.Contains(n.Logs(), "API requests still running after the drain") {
		t.Errorf("the node did not say it cut the request short:\n%s", tail(n.Logs(), 60))
	}
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if b, _ := io.ReadAll(br); len(bytes.TrimSpace(b)) > 0 {
		t.Errorf("the stalled request got an answer %q; want its connection closed without one", b)
	}
}
