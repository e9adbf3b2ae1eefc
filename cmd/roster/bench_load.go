package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/roster-dev/roster/registry/client"
)

// sample is what one side measured in one round of one phase: every
// operation counted once, as ok or under its error code.
type sample struct {
	ops, ok int64
	errs    map[string]int64
	lat     []time.Duration // of the successful operations
	// items counts what the successful operations handled when one
	// operation handles many (the sessions a batch heartbeat renewed), and
	// itemErrs the codes of those it did not.
	items    int64
	itemErrs map[string]int64
	elapsed  time.Duration
	notes    []string
}

func newSample() *sample {
	return &sample{errs: map[string]int64{}, itemErrs: map[string]int64{}}
}

// record counts one operation: ok with its latency, or failed with code.
func (s *sample) record(lat time.Duration, code string) {
	s.ops++
	if code != "" {
		s.errs[code]++
		return
	}
	s.ok++
	s.lat = append(s.lat, lat)
}

// merge adds o's operations to s; elapsed and notes are s's.
func (s *sample) merge(o *sample) {
	s.ops += o.ops
	s.ok += o.ok
	s.items += o.items
	s.lat = append(s.lat, o.lat...)
	for k, v := range o.errs {
		s.errs[k] += v
	}
	for k, v := range o.itemErrs {
		s.itemErrs[k] += v
	}
}

// errorCount is the number of failed operations.
func (s *sample) errorCount() int64 { return s.ops - s.ok }

// percentile returns the q-quantile (0 < q ≤ 1, nearest rank) of sorted,
// which must be sorted ascending; q 1 is the maximum. It is 0 for none.
func percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// median returns the median of xs (the mean of the middle two for an even
// count); 0 for none.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 0 {
		return (s[n/2-1] + s[n/2]) / 2
	}
	return s[n/2]
}

// codeError is a failure the bench itself names, such as an event that
// never came.
type codeError struct {
	code, msg string
}

func (e *codeError) Error() string { return e.code + ": " + e.msg }

// Codes the bench gives failures that have no API or etcd code.
const (
	codeCanceled    = "canceled"     // the run was interrupted while the operation ran
	codeTimeout     = "timeout"      // the operation's own deadline passed
	codeTransport   = "transport"    // no answer: connection refused, reset, …
	codeBadAnswer   = "bad_answer"   // an answer the bench could not read
	codeNoEvent     = "no_event"     // kill-latency: the end event did not come in time
	codeNotGone     = "not_gone"     // expiry: the session was still there long after its TTL
	codeStillListed = "still_listed" // expiry: gone by GET but still listed
	codeNotFound    = "lease_not_found"
	codeConflict    = "compare_failed" // raw open: the single-login compare failed
)

// apiErrorCode names an error of an API call by the API's machine code
// (docs/api.md), or canceled, timeout or transport when no answer came.
func apiErrorCode(err error) string {
	if ce, ok := errors.AsType[*codeError](err); ok {
		return ce.code
	}
	if ae, ok := errors.AsType[*client.APIError](err); ok {
		return ae.Code
	}
	if ended, ok := errors.AsType[*client.EndedError](err); ok {
		return string(ended.Reason)
	}
	return ctxOrTransport(err)
}

// etcdErrorCode names an error of a raw etcd call by its gRPC code,
// e.g. etcd_unavailable, or canceled, timeout or transport.
func etcdErrorCode(err error) string {
	if ce, ok := errors.AsType[*codeError](err); ok {
		return ce.code
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return ctxOrTransport(err)
	}
	// clientv3 turns gRPC statuses into rpctypes.EtcdError, which has a
	// Code method but no gRPC status.
	if ce, ok := errors.AsType[interface {
		error
		Code() codes.Code
	}](err); ok {
		return "etcd_" + snakeCode(ce.Code())
	}
	if st, ok := status.FromError(err); ok && st.Code() != codes.Unknown {
		return "etcd_" + snakeCode(st.Code())
	}
	return codeTransport
}

func ctxOrTransport(err error) string {
	switch {
	case errors.Is(err, context.Canceled):
		return codeCanceled
	case errors.Is(err, context.DeadlineExceeded):
		return codeTimeout
	}
	return codeTransport
}

// snakeCode spells a gRPC code in snake case: DeadlineExceeded becomes
// deadline_exceeded.
func snakeCode(c codes.Code) string {
	var b strings.Builder
	for i, r := range c.String() {
		if r >= 'A' && r <= 'Z' {
			if i > 0 {
				b.WriteByte('_')
			}
			r += 'a' - 'A'
		}
		b.WriteRune(r)
	}
	return b.String()
}

// load is one measured run: clients workers doing operations until total
// operations are done or, with total 0, until duration has passed.
type load struct {
	what     string // for progress lines: "open, roster, round 1 of 3"
	clients  int
	total    int64
	duration time.Duration
	classify func(error) string
	// all also records every operation under the phase "all", besides its own.
	all bool
	// items names what operations handle many of, for progress lines
	// ("sessions renewed"); "" for none.
	items string
}

// opResult is the outcome of one operation.
type opResult struct {
	phase string // "" unless the workload has phases within one load (mixed)
	err   error
	// lat, when set, is the operation's latency; otherwise the time the
	// operation function took.
	lat time.Duration
	// items and itemErrs are what one operation handled when it handles
	// many (a batch heartbeat's sessions).
	items    int
	itemErrs map[string]int
}

// opFunc runs operation seq (0, 1, … within the load) on worker w
// (0 … clients-1). Each worker calls it from its own goroutine.
type opFunc func(ctx context.Context, w int, seq int64) opResult

// runLoad runs l and returns its samples by phase. Operations still running
// when the duration ends are waited for and counted. Cancelling ctx stops
// the workers from starting more; the operations under way finish (each
// has its own time limit), so that an interrupted run knows what it
// opened and can close it.
func (b *bench) runLoad(ctx context.Context, l load, op opFunc) map[string]*sample {
	opCtx := context.WithoutCancel(ctx)
	var next, okN, errN, itemN atomic.Int64
	start := time.Now()
	deadline := start.Add(l.duration)
	stop := b.progress(func(elapsed time.Duration) string {
		done := okN.Load() + errN.Load()
		span := fmt.Sprintf("%s of %s", elapsed.Round(time.Second), l.duration)
		if l.total > 0 {
			span = fmt.Sprintf("%s of %s ops", groupDigits(done), groupDigits(l.total))
		}
		line := fmt.Sprintf("%s: %s, %s ok, %s errors, %s/s", l.what, span, groupDigits(okN.Load()), groupDigits(errN.Load()),
			groupDigits(int64(float64(done)/max(elapsed.Seconds(), 1e-3))))
		if l.items != "" {
			line += fmt.Sprintf(", %s %s", groupDigits(itemN.Load()), l.items)
		}
		return line
	})
	recs := make([]map[string]*sample, l.clients)
	var wg sync.WaitGroup
	for w := range l.clients {
		recs[w] = map[string]*sample{}
		wg.Go(func() {
			rec := recs[w]
			for ctx.Err() == nil {
				if l.total == 0 && !time.Now().Before(deadline) {
					return
				}
				seq := next.Add(1) - 1
				if l.total > 0 && seq >= l.total {
					return
				}
				began := time.Now()
				r := op(opCtx, w, seq)
				lat := r.lat
				if lat == 0 {
					lat = time.Since(began)
				}
				code := ""
				if r.err != nil {
					code = l.classify(r.err)
					errN.Add(1)
				} else {
					okN.Add(1)
					itemN.Add(int64(r.items))
				}
				phases := []string{r.phase}
				if l.all {
					phases = append(phases, "all")
				}
				for _, ph := range phases {
					s := rec[ph]
					if s == nil {
						s = newSample()
						rec[ph] = s
					}
					s.record(lat, code)
					if r.err == nil {
						s.items += int64(r.items)
					}
					for c, n := range r.itemErrs {
						s.itemErrs[c] += int64(n)
					}
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	stop()
	out := map[string]*sample{}
	for _, rec := range recs {
		for _, ph := range slices.Sorted(maps.Keys(rec)) {
			if out[ph] == nil {
				out[ph] = newSample()
			}
			out[ph].merge(rec[ph])
		}
	}
	for _, s := range out {
		s.elapsed = elapsed
	}
	if len(out) == 0 {
		out[""] = &sample{errs: map[string]int64{}, itemErrs: map[string]int64{}, elapsed: elapsed}
	}
	return out
}

// progress prints line(elapsed) to stderr every progressEvery until the
// returned stop is called; stop waits for the printer. A run shorter than
// progressEvery prints nothing.
func (b *bench) progress(line func(elapsed time.Duration) string) (stop func()) {
	return startProgress(b.stderr, line)
}

func startProgress(w io.Writer, line func(elapsed time.Duration) string) (stop func()) {
	start := time.Now()
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(progressEvery)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				fmt.Fprintf(w, "roster: bench: %s\n", line(time.Since(start)))
			}
		}
	})
	return func() {
		close(done)
		wg.Wait()
	}
}

// setupWorkers is how many calls at once set a workload up (opening the
// sessions it needs) and clean it up: enough to open 100,000 sessions in
// under a minute on a small cluster.
const setupWorkers = 64

// parallel runs fn(ctx, i) for i in [0, n) on workers goroutines, with
// progress on stderr, and returns the first error, after which it starts
// no more calls. Cancelling ctx also stops it from starting more, but the
// calls under way finish (each has its own time limit: fn gets a context
// that ctx's end does not cancel), so that the caller learns of every
// session or lease they made and can remove it.
func (b *bench) parallel(ctx context.Context, what string, n, workers int, fn func(ctx context.Context, i int) error) error {
	callCtx := context.WithoutCancel(ctx)
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var next, done atomic.Int64
	stop := b.progress(func(time.Duration) string {
		return fmt.Sprintf("%s: %s of %s", what, groupDigits(done.Load()), groupDigits(int64(n)))
	})
	defer stop()
	var wg sync.WaitGroup
	for range min(workers, n) {
		wg.Go(func() {
			for ctx.Err() == nil {
				i := next.Add(1) - 1
				if i >= int64(n) {
					return
				}
				if err := fn(callCtx, int(i)); err != nil {
					cancel(fmt.Errorf("%s: %d of %d: %w", what, i+1, n, err))
					return
				}
				done.Add(1)
			}
		})
	}
	wg.Wait()
	return context.Cause(ctx)
}

// bestEffort runs fn(ctx, i) for i in [0, n) like parallel but goes on
// after errors; it notes on stderr how many failed, and the first error.
func (b *bench) bestEffort(ctx context.Context, what string, n int, fn func(ctx context.Context, i int) error) {
	var failed atomic.Int64
	var first atomic.Pointer[error]
	err := b.parallel(ctx, what, n, setupWorkers, func(ctx context.Context, i int) error {
		if err := fn(ctx, i); err != nil {
			failed.Add(1)
			first.CompareAndSwap(nil, &err)
		}
		return nil
	})
	if err != nil {
		fmt.Fprintf(b.stderr, "roster: bench: %s stopped: %v\n", what, err)
	}
	if n := failed.Load(); n > 0 {
		fmt.Fprintf(b.stderr, "roster: bench: %s: %d failed, the first with: %v\n", what, n, *first.Load())
	}
}

// groupDigits writes n with a comma between groups of three digits.
func groupDigits(n int64) string {
	s := fmt.Sprint(n)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	if neg {
		b.WriteByte('-')
	}
	for i, r := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(r)
	}
	return b.String()
}

// keptWhileMade runs create(ctx, i) for i in [0, n) like parallel, then
// last(ctx, i) for each (the renewal the measurement starts from, as
// lastWhat), while other goroutines renew(ctx, i) every item created and
// not yet given its last renewal, once a quarter of ttl has passed since it
// was created or renewed: so nothing created early runs out while the rest
// is still being created (opening 10,000 sessions outlasts a 10 s TTL on a
// small cluster) or given its last renewal. A failed renewal is not an error
// here: the last renewal reports what has ended. It returns the first error
// of create or last.
func (b *bench) keptWhileMade(ctx context.Context, what string, n int, ttl time.Duration,
	create, renew func(ctx context.Context, i int) error, lastWhat string, last func(ctx context.Context, i int) error) error {
	// Unix nanoseconds of the creation or the last renewal by the keeper; 0:
	// not created yet; -1: given its last renewal.
	made := make([]atomic.Int64, n)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		sem := make(chan struct{}, setupWorkers/2)
		var inner sync.WaitGroup
		defer inner.Wait()
		for {
			for i := range made {
				at := made[i].Load()
				if at <= 0 || time.Since(time.Unix(0, at)) < ttl/4 {
					continue
				}
				select {
				case <-stop:
					return
				case sem <- struct{}{}:
				}
				if !made[i].CompareAndSwap(at, time.Now().UnixNano()) { // given its last renewal meanwhile
					<-sem
					continue
				}
				inner.Go(func() {
					defer func() { <-sem }()
					_ = renew(context.WithoutCancel(ctx), i)
				})
			}
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	})
	defer func() {
		close(stop)
		wg.Wait()
	}()
	err := b.parallel(ctx, what, n, setupWorkers, func(ctx context.Context, i int) error {
		if err := create(ctx, i); err != nil {
			return err
		}
		made[i].Store(time.Now().UnixNano())
		return nil
	})
	if err != nil {
		return err
	}
	return b.parallel(ctx, lastWhat, n, setupWorkers, func(ctx context.Context, i int) error {
		made[i].Store(-1)
		return last(ctx, i)
	})
}
