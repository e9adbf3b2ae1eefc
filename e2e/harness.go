package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/roster-dev/roster/cluster/clustertest/loopback"
)

// ReadyLine is the log line a node writes once it serves.
const ReadyLine = "roster node ready"

// Binary is a built roster executable.
type Binary string

// Build compiles ./cmd/roster of the module this package belongs to into
// dir and returns its path.
func Build(dir string) (Binary, error) {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}").Output()
	if err != nil {
		return "", fmt.Errorf("e2e: find the module root: %w", err)
	}
	root := strings.TrimSpace(string(out))
	bin := filepath.Join(dir, "roster")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/roster")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("e2e: go build: %w\n%s", err, out)
	}
	return Binary(bin), nil
}

// Result is what a finished CLI command printed and how it exited.
type Result struct {
	Stdout, Stderr string
	ExitCode       int
}

// Run runs the binary with args in dir (the current directory if empty)
// with env added to the environment, and waits for it; ctx kills it.
func (b Binary) Run(ctx context.Context, dir string, env []string, args ...string) (Result, error) {
	cmd := exec.CommandContext(ctx, string(b), args...)
	cmd.Dir = dir
	cmd.Env = append(cleanEnv(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	res := Result{Stdout: stdout.String(), Stderr: stderr.String(), ExitCode: cmd.ProcessState.ExitCode()}
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		err = nil // a non-zero exit is a result, not a harness failure
	}
	return res, err
}

// Command prepares the binary with args in dir with env added, for a
// command that runs alongside the test (such as session open --hold).
func (b Binary) Command(dir string, env []string, args ...string) *exec.Cmd {
	cmd := exec.Command(string(b), args...)
	cmd.Dir = dir
	cmd.Env = append(cleanEnv(), env...)
	return cmd
}

// cleanEnv is the environment without ROSTER_ variables of the person
// running the tests.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "ROSTER_") {
			env = append(env, kv)
		}
	}
	return env
}

// KillWithParent makes the kernel SIGKILL cmd's process when the test
// process dies (on Linux; elsewhere it does nothing), for helper processes
// a test starts itself.
func KillWithParent(cmd *exec.Cmd) { setDeathSignal(cmd) }

// FreeAddr returns a loopback address whose port was free a moment ago and
// that this process has not handed out before (see package loopback).
func FreeAddr() (string, error) { return loopback.Addr() }

// FreeGossipAddr is FreeAddr for a port free for both TCP and UDP, as
// memberlist needs both on one port.
func FreeGossipAddr() (string, error) { return loopback.GossipAddr() }

// Node is one roster serve process, restartable on its data dir and ports.
// Its fields may be changed between runs (a restart picks them up), not
// while the process starts.
type Node struct {
	Bin    Binary
	Name   string
	Dir    string   // working directory; the data dir is Dir/roster-data unless Args say otherwise
	Args   []string // extra arguments after "serve"
	Env    []string // extra environment
	API    string   // host:port of the HTTP API
	Etcd   string   // host:port etcd serves clients on
	Peer   string   // host:port etcd serves peers on
	Gossip string   // host:port of gossip (memberlist, TCP and UDP)
	// Join are other nodes' gossip addresses; when not empty, Start passes
	// them as --join a,b,c after Args.
	Join    []string
	Timeout time.Duration

	mu     sync.Mutex
	cmd    *exec.Cmd
	logs   *logBuffer
	past   []string // the logs of earlier runs, oldest first
	exited chan struct{}
	err    error
	// stopping is set by Stop and Kill: the process is meant to exit.
	stopping bool
}

// PID returns the process id of the node's current process, 0 if it never started.
func (n *Node) PID() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil || n.cmd.Process == nil {
		return 0
	}
	return n.cmd.Process.Pid
}

// NewNode prepares a node named name working in dir, on free loopback ports.
func NewNode(bin Binary, name, dir string) (*Node, error) {
	n := &Node{Bin: bin, Name: name, Dir: dir, Timeout: 60 * time.Second}
	if err := n.NewAddrs(); err != nil {
		return nil, err
	}
	return n, nil
}

// NewAddrs gives the node fresh free ports for its API, etcd, peer and
// gossip addresses; the next Start uses them. Together with a wiped data
// dir this is the same node name coming back at a new address.
func (n *Node) NewAddrs() error {
	for _, p := range []*string{&n.API, &n.Etcd, &n.Peer} {
		addr, err := FreeAddr()
		if err != nil {
			return err
		}
		*p = addr
	}
	addr, err := FreeGossipAddr()
	if err != nil {
		return err
	}
	n.Gossip = addr
	return nil
}

// PeerURL is the etcd peer URL the node advertises.
func (n *Node) PeerURL() string { return "http://" + n.Peer }

// WipeData removes the node's data dir (Dir/roster-data); the process
// must not be running.
func (n *Node) WipeData() error {
	if n.Running() {
		return fmt.Errorf("e2e: wipe the data of %s: it is running", n.Name)
	}
	return os.RemoveAll(n.DataDir())
}

// URL is the node's API URL.
func (n *Node) URL() string { return "http://" + n.API }

// DataDir is where the node keeps its data.
func (n *Node) DataDir() string { return filepath.Join(n.Dir, "roster-data") }

// Env is the environment that points the node at its name and ports
// (ROSTER_NAME, ROSTER_LISTEN, …), so the command line can stay exactly
// as the README has it.
func (n *Node) env() []string {
	return append([]string{
		"ROSTER_NAME=" + n.Name, "ROSTER_LISTEN=" + n.API, "ROSTER_ETCD_LISTEN=" + n.Etcd, "ROSTER_PEER_LISTEN=" + n.Peer,
		"ROSTER_GOSSIP_LISTEN=" + n.Gossip,
	}, n.Env...)
}

// args is the command line after the binary's name.
func (n *Node) args() []string {
	args := append([]string{"serve"}, n.Args...)
	if len(n.Join) > 0 {
		args = append(args, "--join", strings.Join(n.Join, ","))
	}
	return args
}

// Start starts the process and waits up to Timeout for its ready line. It
// refuses to start a node whose process still runs.
func (n *Node) Start() error {
	n.mu.Lock()
	if n.exited != nil {
		select {
		case <-n.exited:
		default:
			n.mu.Unlock()
			return fmt.Errorf("e2e: start %s: it is already running", n.Name)
		}
	}
	cmd := exec.Command(string(n.Bin), n.args()...)
	cmd.Dir = n.Dir
	cmd.Env = append(cleanEnv(), n.env()...)
	setDeathSignal(cmd)
	logs := &logBuffer{ready: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		n.mu.Unlock()
		return fmt.Errorf("e2e: start %s: %w", n.Name, err)
	}
	exited := make(chan struct{})
	if n.logs != nil {
		n.past = append(n.past, n.logs.String())
	}
	n.cmd, n.logs, n.exited, n.err, n.stopping = cmd, logs, exited, nil, false
	n.mu.Unlock()
	go func() {
		err := cmd.Wait()
		n.mu.Lock()
		n.err = err
		n.mu.Unlock()
		close(exited)
	}()
	select {
	case <-logs.ready:
		return nil
	case <-exited:
		return fmt.Errorf("e2e: %s exited before it was ready: %v\n%s", n.Name, n.ExitErr(), logs.String())
	case <-time.After(n.Timeout):
		n.Kill()
		return fmt.Errorf("e2e: %s not ready within %s\n%s", n.Name, n.Timeout, logs.String())
	}
}

// Logs is everything the current process has written.
func (n *Node) Logs() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.logs == nil {
		return ""
	}
	return n.logs.String()
}

// AllLogs is everything every process of the node has written, oldest
// run first, each run after a "----- run N -----" line.
func (n *Node) AllLogs() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	runs := append([]string(nil), n.past...)
	if n.logs != nil {
		runs = append(runs, n.logs.String())
	}
	var b strings.Builder
	for i, r := range runs {
		fmt.Fprintf(&b, "----- %s run %d -----\n%s", n.Name, i+1, r)
	}
	return b.String()
}

// Running reports whether a process of the node has been started and has
// not exited.
func (n *Node) Running() bool {
	n.mu.Lock()
	exited := n.exited
	n.mu.Unlock()
	if exited == nil {
		return false
	}
	select {
	case <-exited:
		return false
	default:
		return true
	}
}

// LogLines decodes the node's JSON log lines.
func (n *Node) LogLines() []map[string]any {
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(n.Logs()))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var m map[string]any
		if json.Unmarshal(sc.Bytes(), &m) == nil {
			out = append(out, m)
		}
	}
	return out
}

// ExitErr is how the last process exited (nil for exit code 0).
func (n *Node) ExitErr() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.err
}

func (n *Node) signal(sig syscall.Signal) {
	n.mu.Lock()
	cmd := n.cmd
	n.mu.Unlock()
	if cmd != nil && cmd.Process != nil {
		cmd.Process.Signal(sig)
	}
}

// Wait waits up to d for the process to exit and reports whether it did.
func (n *Node) Wait(d time.Duration) bool {
	n.mu.Lock()
	exited := n.exited
	n.mu.Unlock()
	if exited == nil {
		return true
	}
	select {
	case <-exited:
		return true
	case <-time.After(d):
		return false
	}
}

// Stop sends SIGTERM and waits up to d for a clean exit; past that it
// kills the process and says so.
func (n *Node) Stop(d time.Duration) error {
	n.setStopping()
	n.signal(syscall.SIGTERM)
	if !n.Wait(d) {
		n.Kill()
		return fmt.Errorf("e2e: %s did not stop within %s of SIGTERM", n.Name, d)
	}
	return n.ExitErr()
}

// Kill sends SIGKILL and waits for the process to be gone.
func (n *Node) Kill() {
	n.setStopping()
	n.signal(syscall.SIGKILL)
	n.Wait(10 * time.Second)
}

func (n *Node) setStopping() {
	n.mu.Lock()
	n.stopping = true
	n.mu.Unlock()
}

// Crashed returns an error when the node's process exited although
// neither Stop nor Kill asked it to, and nil otherwise.
func (n *Node) Crashed() error {
	n.mu.Lock()
	exited, stopping, err := n.exited, n.stopping, n.err
	n.mu.Unlock()
	if exited == nil || stopping {
		return nil
	}
	select {
	case <-exited:
		return fmt.Errorf("e2e: %s exited on its own (%v)", n.Name, err)
	default:
		return nil
	}
}

// Restart starts the node again on the same data dir and ports.
func (n *Node) Restart() error { return n.Start() }

// logBuffer collects a process's output and notices the ready line.
type logBuffer struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	ready chan struct{}
	seen  bool
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf.Write(p)
	if !b.seen && bytes.Contains(b.buf.Bytes(), []byte(ReadyLine)) {
		b.seen = true
		close(b.ready)
	}
	return len(p), nil
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

var _ io.Writer = (*logBuffer)(nil)
