package loopback

import (
	"net"
	"strconv"
	"testing"
)

// TestAddrNeverRepeats: many picks in one process are all different, all on
// 127.0.0.1, below the ephemeral range where it leaves room, and bindable.
func TestAddrNeverRepeats(t *testing.T) {
	low, high := candidates()
	seen := map[string]bool{}
	for i := range 500 {
		pick := Addr
		if i%2 == 1 {
			pick = GossipAddr
		}
		a, err := pick()
		if err != nil {
			t.Fatal(err)
		}
		if seen[a] {
			t.Fatalf("pick %d: %s handed out twice", i, a)
		}
		seen[a] = true
		host, p, err := net.SplitHostPort(a)
		if err != nil || host != "127.0.0.1" {
			t.Fatalf("pick %d: %q is not a 127.0.0.1 address (%v)", i, a, err)
		}
		port, _ := strconv.Atoi(p)
		if high > low && (port < low || port >= high) {
			t.Fatalf("pick %d: port %d outside [%d, %d)", i, port, low, high)
		}
	}
	// The last one can be bound for TCP and UDP.
	a := MustGossipAddr(t)
	l, err := net.Listen("tcp", a)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	u, err := net.ListenPacket("udp", a)
	if err != nil {
		t.Fatal(err)
	}
	u.Close()
}

// TestAddrSkipsTakenPorts: a port bound by someone else is never handed out.
func TestAddrSkipsTakenPorts(t *testing.T) {
	low, high := candidates()
	if high <= low {
		t.Skip("no range below the ephemeral one on this machine; the kernel picks")
	}
	// Take a block of the range, then pick many times: none of the block comes back.
	taken := map[string]bool{}
	for port := low; port < low+200; port++ {
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			continue
		}
		defer l.Close()
		taken[l.Addr().String()] = true
	}
	if len(taken) == 0 {
		t.Fatal("could not bind any port of the first 200 of the range")
	}
	for range 2000 {
		a := MustAddr(t)
		if taken[a] {
			t.Fatalf("%s is bound by this test, yet was handed out", a)
		}
	}
}
