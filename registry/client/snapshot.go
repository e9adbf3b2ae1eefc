package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"
)

// Snapshot streams a point-in-time snapshot of the cluster's etcd data (GET
// /v1/cluster/snapshot) to w and returns the number of bytes written. It
// needs an admin token. The body is etcd's snapshot format, ending in its
// SHA-256 checksum, as 'roster snapshot restore' reads it.
//
// A snapshot can be far larger than any other answer, so it is copied to w
// as it arrives, and the HTTP client's Timeout (30 s by default) bounds the
// wait for the answer and every silence within it instead of the whole
// download, which only ctx bounds. Cancelling ctx aborts the download; the
// error then matches ctx's error with errors.Is.
//
// The call moves on to the next endpoint only while nothing has been
// written to w: when an endpoint cannot be dialled, or answers 503 (a node
// without an etcd member, or one that cannot take the snapshot). Any other
// failure is returned as is, with the number of bytes written so far; w
// then holds a partial snapshot that the caller must discard.
func (c *Client) Snapshot(ctx context.Context, w io.Writer) (int64, error) {
	r := c.get("/v1/cluster/snapshot", nil)
	var written int64
	_, err := c.round(int(c.cur.Load()), r.method, r.path, func(ep string) (bool, bool, error) {
		n, err := c.streamFrom(ctx, ep, r, w)
		written = n
		apiErr, isAPIErr := errors.AsType[*APIError](err)
		switch {
		case err == nil:
			return true, false, nil
		case ctx.Err() != nil:
			return false, false, fmt.Errorf("client: %s %s at %s: %w", r.method, r.path, ep, ctx.Err())
		case n > 0:
			return false, false, fmt.Errorf("client: %s %s at %s: %w (after %d bytes: discard them)", r.method, r.path, ep, err, n)
		case isAPIErr && apiErr.Status == http.StatusServiceUnavailable, isDialError(err):
			return false, true, err
		case isAPIErr:
			return false, false, err
		}
		return false, false, fmt.Errorf("client: %s %s at %s: %w", r.method, r.path, ep, err)
	})
	return written, err
}

// errStalled cancels a stream that went silent for longer than the HTTP
// client's Timeout.
var errStalled = errors.New("stalled")

// streamFrom sends call r to endpoint ep and copies a 200 answer's body to
// w. An error answer comes back as an *APIError. The HTTP client's Timeout,
// if set, bounds the wait for the answer's headers and each wait for more
// of its body.
func (c *Client) streamFrom(ctx context.Context, ep string, r call, w io.Writer) (int64, error) {
	hc := *c.hc
	idle := hc.Timeout
	hc.Timeout = 0 // it would cut a long download; idle bounds silences instead
	sctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	feed := func() {}
	if idle > 0 {
		t := time.AfterFunc(idle, func() { cancel(errStalled) })
		defer t.Stop()
		feed = func() { t.Reset(idle) }
	}
	stalled := func(err error) error {
		if errors.Is(context.Cause(sctx), errStalled) {
			return fmt.Errorf("no data for %s: %w", idle, err)
		}
		return err
	}

	req, err := newRequest(sctx, ep, r, nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Accept", "application/octet-stream, application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return 0, stalled(err)
	}
	defer resp.Body.Close()
	feed()
	if resp.StatusCode != http.StatusOK {
		data, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
		if err != nil {
			return 0, stalled(err)
		}
		return 0, decodeError(resp.StatusCode, data)
	}
	src := &fedReader{r: resp.Body, feed: feed}
	dst := &countingWriter{w: w}
	if _, err := io.Copy(dst, src); err != nil {
		if src.err != nil {
			return dst.n, stalled(src.err)
		}
		return dst.n, fmt.Errorf("write the snapshot: %w", err)
	}
	return dst.n, nil
}

// fedReader feeds a watchdog whenever data arrives and remembers its own
// error, to tell it from the writer's.
type fedReader struct {
	r    io.Reader
	feed func()
	err  error
}

func (f *fedReader) Read(p []byte) (int, error) {
	n, err := f.r.Read(p)
	if n > 0 {
		f.feed()
	}
	if err != nil && err != io.EOF {
		f.err = err
	}
	return n, err
}

// countingWriter counts the bytes written to w.
type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
