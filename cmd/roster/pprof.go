package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"sync"
	"time"
)

// listenPprof opens the listener of --pprof-listen, before the node starts,
// so that a taken address fails the start rather than a running node.
func listenPprof(addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen for pprof on %s: %w (pick another --pprof-listen, or leave it out)", addr, err)
	}
	return ln, nil
}

// servePprof serves Go's runtime profiles (net/http/pprof: /debug/pprof/…)
// on ln until ctx ends. It has no authentication: --pprof-listen is meant
// for a loopback address while someone measures the node.
func servePprof(ctx context.Context, ln net.Listener, log *slog.Logger) error {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		select {
		case <-ctx.Done():
			srv.Close() // a profile being taken is cut short: it is a debugging aid
		case <-done:
		}
	})
	log.Info("serving pprof", "address", ln.Addr().String())
	err := srv.Serve(ln)
	close(done)
	wg.Wait()
	if !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("pprof server: %w", err)
	}
	return nil
}
