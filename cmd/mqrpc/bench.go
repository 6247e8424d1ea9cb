package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	hdrhistogram "github.com/HdrHistogram/hdrhistogram-go"
	"github.com/spf13/cobra"

	"github.com/mqrpc/mqrpc/rpc"
)

// recorder keeps the latencies (µs) and errors of a load test: the whole
// run and the current progress interval.
type recorder struct {
	mu       sync.Mutex
	all      *hdrhistogram.Histogram
	interval *hdrhistogram.Histogram
	errors   map[rpc.Code]int64
	lastErr  map[rpc.Code]string
	calls    atomic.Int64
	failed   atomic.Int64
}

func newRecorder() *recorder {
	return &recorder{
		all:      hdrhistogram.New(1, int64(10*time.Minute/time.Microsecond), 3),
		interval: hdrhistogram.New(1, int64(10*time.Minute/time.Microsecond), 3),
		errors:   map[rpc.Code]int64{},
		lastErr:  map[rpc.Code]string{},
	}
}

func (r *recorder) record(d time.Duration, err error) {
	us := max(d.Microseconds(), 1)
	r.mu.Lock()
	_ = r.all.RecordValue(us)
	_ = r.interval.RecordValue(us)
	if err != nil {
		c := rpc.CodeOf(err)
		r.errors[c]++
		r.lastErr[c] = errText(err)
	}
	r.mu.Unlock()
	r.calls.Add(1)
	if err != nil {
		r.failed.Add(1)
	}
}

func micros(v int64) time.Duration { return time.Duration(v) * time.Microsecond }

func (a *app) benchCmd() *cobra.Command {
	var (
		f           callFlags
		concurrency int
		duration    time.Duration
		total       int64
		quiet       bool
	)
	c := &cobra.Command{
		Use:   "bench SERVICE.METHOD [JSON|-]",
		Short: "Load-test a method: rate, errors and a latency histogram",
		Long: `bench calls a method from -c callers at once for -d (or -n calls in all),
printing a progress line every second (calls, rate, errors, p50 and p99 of
the last second) to stderr, then a summary and a latency histogram. The
request is the JSON argument, as for call. Exit status 0 when every call
succeeded, else the status code of the most frequent error.`,
		Example: `  mqrpc bench Calculator.Add '{"a":2,"b":40}'
  mqrpc bench Calculator.Add '{"a":2,"b":40}' -c 64 -d 30s
  mqrpc bench Calculator.Add '{"a":2,"b":40}' -c 1 -n 1000`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if concurrency < 1 {
				return fail(rpc.InvalidArgument, "-c %d: want at least 1", concurrency)
			}
			t, err := parseTarget(args, cmd.InOrStdin(), &f)
			if err != nil {
				return err
			}
			b, err := a.connect()
			if err != nil {
				return err
			}
			defer closeBroker(b)
			cl, err := a.newCaller(b, t, &f)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			end := time.Now().Add(duration)
			if total <= 0 {
				ctx, cancel = context.WithDeadline(ctx, end)
				defer cancel()
			}
			rec := newRecorder()
			var issued atomic.Int64
			var wg sync.WaitGroup
			start := time.Now()
			for i := 0; i < concurrency; i++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for ctx.Err() == nil {
						if total > 0 && issued.Add(1) > total {
							return
						}
						cctx, ccancel := context.WithTimeout(ctx, a.timeout)
						t0 := time.Now()
						_, err := cl.call(cctx)
						ccancel()
						if err != nil && total <= 0 && (ctx.Err() != nil || !time.Now().Before(end)) {
							// The run ended mid-call (the broker may see
							// the deadline pass before ctx reports it):
							// not the service's error.
							return
						}
						rec.record(time.Since(t0), err)
					}
				}()
			}
			done := make(chan struct{})
			go func() { wg.Wait(); close(done) }()
			// On a terminal the progress line rewrites itself; elsewhere
			// (a log, a pipe) each second gets a line.
			lineStart, lineEnd := "", "\n"
			if isTerminal(a.errw) {
				lineStart, lineEnd = "\r\033[K", ""
			}
			tick := time.NewTicker(time.Second)
			defer tick.Stop()
			var last int64
		loop:
			for {
				select {
				case <-done:
					break loop
				case now := <-tick.C:
					if quiet {
						continue
					}
					n := rec.calls.Load()
					rec.mu.Lock()
					p50, p99 := rec.interval.ValueAtQuantile(50), rec.interval.ValueAtQuantile(99)
					rec.interval.Reset()
					rec.mu.Unlock()
					fmt.Fprintf(a.errw, "%s%6s  %9d calls  %9.0f/s  errors %d  p50 %s  p99 %s%s", lineStart,
						now.Sub(start).Round(time.Second), n, float64(n-last), rec.failed.Load(),
						micros(p50), micros(p99), lineEnd)
					last = n
				}
			}
			if lineEnd == "" && !quiet {
				fmt.Fprintln(a.errw)
			}
			elapsed := time.Since(start)
			report(a.out, t, concurrency, elapsed, rec)
			if rec.failed.Load() > 0 {
				code, n := rpc.OK, int64(0)
				for c, k := range rec.errors {
					if k > n {
						code, n = c, k
					}
				}
				return &exitError{code: code, err: fmt.Errorf("%d of %d calls failed; most often %s: %s",
					rec.failed.Load(), rec.calls.Load(), code, rec.lastErr[code])}
			}
			return nil
		},
	}
	f.register(c)
	c.Flags().IntVarP(&concurrency, "concurrency", "c", 8, "callers at once")
	c.Flags().DurationVarP(&duration, "duration", "d", 10*time.Second, "how long to run (unless -n)")
	c.Flags().Int64VarP(&total, "calls", "n", 0, "number of calls in all (instead of -d)")
	c.Flags().BoolVarP(&quiet, "quiet", "q", false, "no progress line")
	return c
}

func report(w io.Writer, t *target, c int, elapsed time.Duration, rec *recorder) {
	h := rec.all
	n := rec.calls.Load()
	fmt.Fprintf(w, "%s.%s: %d calls in %s with %d callers: %.0f calls/s, %d errors\n",
		t.service, t.method, n, elapsed.Round(time.Millisecond), c, float64(n)/elapsed.Seconds(), rec.failed.Load())
	codes := make([]rpc.Code, 0, len(rec.errors))
	for code := range rec.errors {
		codes = append(codes, code)
	}
	sort.Slice(codes, func(i, j int) bool { return codes[i] < codes[j] })
	for _, code := range codes {
		fmt.Fprintf(w, "  %-18s %d (last: %s)\n", code, rec.errors[code], rec.lastErr[code])
	}
	if n == 0 {
		return
	}
	fmt.Fprintf(w, "latency: min %s  p50 %s  p90 %s  p99 %s  p99.9 %s  max %s  mean %s\n",
		micros(h.Min()), micros(h.ValueAtQuantile(50)), micros(h.ValueAtQuantile(90)),
		micros(h.ValueAtQuantile(99)), micros(h.ValueAtQuantile(99.9)), micros(h.Max()),
		micros(int64(h.Mean())))
	// A histogram in up to 12 buckets spaced evenly on a log scale
	// between the fastest and the slowest call.
	lo, hi := float64(h.Min()), float64(h.Max())
	const buckets = 12
	counts := make([]int64, buckets)
	edges := make([]float64, buckets+1)
	for i := range edges {
		edges[i] = lo * math.Pow(hi/lo, float64(i)/buckets)
	}
	for _, bar := range h.Distribution() {
		if bar.Count == 0 {
			continue
		}
		i := 0
		if hi > lo {
			i = int(math.Log(float64(bar.From)/lo) / math.Log(hi/lo) * buckets)
		}
		counts[min(max(i, 0), buckets-1)] += bar.Count
	}
	top := int64(1)
	for _, k := range counts {
		top = max(top, k)
	}
	for i, k := range counts {
		if hi <= lo && i > 0 {
			break
		}
		bar := strings.Repeat("█", int(40*k/top))
		fmt.Fprintf(w, "  %10s - %-10s %8d %s\n", micros(int64(edges[i])), micros(int64(edges[i+1])), k, bar)
	}
}

// errText is an error's message without its status code, which is shown
// beside it.
func errText(err error) string {
	var e *rpc.Error
	if errors.As(err, &e) && e.Message() != "" {
		return e.Message()
	}
	return err.Error()
}

// isTerminal reports whether w is a terminal (a character device).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
