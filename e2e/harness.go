package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
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

// FreeAddr returns a loopback address whose port was free a moment ago.
func FreeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// Node is one roster serve process, restartable on its data dir and ports.
type Node struct {
	Bin     Binary
	Name    string
	Dir     string   // working directory; the data dir is Dir/roster-data unless Args say otherwise
	Args    []string // extra arguments after "serve"
	Env     []string // extra environment
	API     string   // host:port of the HTTP API
	Etcd    string   // host:port etcd serves clients on
	Peer    string   // host:port etcd serves peers on
	Timeout time.Duration

	mu     sync.Mutex
	cmd    *exec.Cmd
	logs   *logBuffer
	exited chan struct{}
	err    error
}

// NewNode prepares a node named name working in dir, on free loopback ports.
func NewNode(bin Binary, name, dir string) (*Node, error) {
	n := &Node{Bin: bin, Name: name, Dir: dir, Timeout: 60 * time.Second}
	for _, p := range []*string{&n.API, &n.Etcd, &n.Peer} {
		addr, err := FreeAddr()
		if err != nil {
			return nil, err
		}
		*p = addr
	}
	return n, nil
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
	}, n.Env...)
}

// Start starts the process and waits for its ready line.
func (n *Node) Start() error {
	n.mu.Lock()
	cmd := exec.Command(string(n.Bin), append([]string{"serve"}, n.Args...)...)
	cmd.Dir = n.Dir
	cmd.Env = append(cleanEnv(), n.env()...)
	logs := &logBuffer{ready: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		n.mu.Unlock()
		return fmt.Errorf("e2e: start %s: %w", n.Name, err)
	}
	exited := make(chan struct{})
	n.cmd, n.logs, n.exited, n.err = cmd, logs, exited, nil
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
	n.signal(syscall.SIGTERM)
	if !n.Wait(d) {
		n.Kill()
		return fmt.Errorf("e2e: %s did not stop within %s of SIGTERM", n.Name, d)
	}
	return n.ExitErr()
}

// Kill sends SIGKILL and waits for the process to be gone.
func (n *Node) Kill() {
	n.signal(syscall.SIGKILL)
	n.Wait(10 * time.Second)
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
