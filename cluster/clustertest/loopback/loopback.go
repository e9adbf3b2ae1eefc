// Package loopback hands tests free loopback addresses for the servers they
// start. Two rules keep a picked port from being taken before the server
// binds it:
//   - no port is handed out twice in one process, so two servers of one test
//     never get the same port (bind(2) with port 0 can return a port it
//     returned a moment ago once that listener is closed);
//   - ports come from below the kernel's ephemeral range where there is room,
//     so no outgoing connection of this or another process (a parallel test
//     package, etcd's own clients) takes one as its source port.
package loopback

import (
	"errors"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// lowest is the lowest port handed out; ports below it are left to the
// system's services.
const lowest = 10000

var handedOut = struct {
	sync.Mutex
	ports map[int]bool
}{ports: map[int]bool{}}

// Addr returns 127.0.0.1:port where port was free for TCP a moment ago and
// has not been handed out before in this process.
func Addr() (string, error) { return pick(false) }

// GossipAddr is Addr for a port free for both TCP and UDP, as memberlist
// listens on both.
func GossipAddr() (string, error) { return pick(true) }

func pick(udp bool) (string, error) {
	handedOut.Lock()
	defer handedOut.Unlock()
	low, high := candidates()
	for range 200 {
		port := 0 // the kernel's choice, where no range below the ephemeral one is free
		if high > low {
			port = low + rand.IntN(high-low)
		}
		if port != 0 && handedOut.ports[port] {
			continue
		}
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			continue // taken: try another
		}
		addr := l.Addr().(*net.TCPAddr)
		free := true
		if udp {
			u, err := net.ListenPacket("udp", addr.String())
			if err != nil {
				free = false
			} else {
				u.Close()
			}
		}
		l.Close()
		if free && !handedOut.ports[addr.Port] {
			handedOut.ports[addr.Port] = true
			return addr.String(), nil
		}
	}
	return "", errors.New("loopback: no free port in 200 tries; is the machine out of ports?")
}

// candidates returns the range [low, high) to pick from: from lowest up to
// the start of the ephemeral range, or an empty range if that is too small.
func candidates() (low, high int) {
	first := 32768 // Linux's default start of the ephemeral range
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil {
				first = n
			}
		}
	}
	if first-lowest < 1000 {
		return 0, 0
	}
	return lowest, first
}

// MustAddr is Addr for tests: it fails tb if no port is free.
func MustAddr(tb testing.TB) string {
	tb.Helper()
	return must(tb, false)
}

// MustGossipAddr is GossipAddr for tests: it fails tb if no port is free.
func MustGossipAddr(tb testing.TB) string {
	tb.Helper()
	return must(tb, true)
}

func must(tb testing.TB, udp bool) string {
	tb.Helper()
	a, err := pick(udp)
	if err != nil {
		tb.Fatal(err)
	}
	return a
}
