// Package harness runs benchmark cases side by side: request-reply cases
// at every concurrency and payload size, stream cases at every number of
// streams and message size, interleaved round-robin over several rounds, so that drift on a shared machine (another process, a
// CPU frequency change, a broker's background work) lands on all cases
// alike instead of on whichever ran last.
package harness

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"runtime/pprof"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Roles of a case within its broker group. The ratio reported for a group
// is (mqrpc or peer) / raw.
const (
	RoleRaw   = "raw"   // the broker's own client, used the plain way
	RoleMQRPC = "mqrpc" // mqrpc over the same broker
	RolePeer  = "peer"  // another Go framework over the same broker
)

// Target is a running case: servers started, clients connected.
type Target interface {
	// Call makes one request with payload as its body and waits for the
	// reply, an echo of the payload. It is called from many goroutines at
	// once and must not retain or modify payload.
	Call(ctx context.Context, payload []byte) error
	// Close stops the servers and closes the connections.
	Close() error
}

// Case is one implementation on one broker.
type Case struct {
	// Group is the broker the case runs on ("nats", "amqp", "rocketmq",
	// "memory", "tcp"); ratios compare cases of one group.
	Group string
	// Name says what runs, such as "nats.go Request" or "mqrpc".
	Name string
	// Role is RoleRaw, RoleMQRPC or RolePeer.
	Role string
	// NoTarget says the ratio target does not apply to the case: its
	// baseline is not a broker client (the memory broker against a direct
	// function call), or it does work its baseline does not (typed calls
	// through a codec against a raw client moving bytes).
	NoTarget bool
	// Msgs, when not 0, makes this a stream case: each Call of its
	// Target receives one whole stream of Msgs messages of the payload's
	// size (or the raw client's equivalent), the case runs at
	// Config.Streams concurrent streams instead of Config.Concurrency
	// callers, and its cells count messages, not calls. The cases of a
	// group are all stream cases or none.
	Msgs int
	// Setup starts the case. It is called once per run.
	Setup func(ctx context.Context) (Target, error)
}

// IsStream reports whether c is a stream case.
func (c Case) IsStream() bool { return c.Msgs > 0 }

// Config says what to measure.
type Config struct {
	// Concurrency lists the numbers of concurrent callers.
	Concurrency []int
	// Streams lists the numbers of concurrent streams of stream cases.
	Streams []int
	// Sizes lists the payload sizes in bytes.
	Sizes []int
	// Rounds is how many times every cell is measured.
	Rounds int
	// Slice is how long one cell is measured in one round.
	Slice time.Duration
	// Warmup is how long each case runs before the first round,
	// unmeasured.
	Warmup time.Duration
	// CallTimeout bounds every call.
	CallTimeout time.Duration
	// Progress, when set, receives a line per measured slice.
	Progress func(string)
	// BrokerPIDs lists, per group, the processes of the broker server the
	// group's cases use, when they run on this machine: their CPU time
	// is measured with each slice (Cell.BrokerCPU).
	BrokerPIDs map[string][]int
}

// Key names one cell of the results.
type Key struct {
	Group, Name string
	Conc, Size  int
}

// Cell is the measurement of one case at one concurrency and size, summed
// over the rounds. For a stream case, Conc is the number of streams and
// Calls, Throughput and the per-call figures count messages; the
// histogram holds the time of whole streams.
type Cell struct {
	Key
	Role    string
	Calls   uint64
	Errors  uint64
	Elapsed time.Duration
	Mallocs uint64 // heap allocations in the process during the slices
	// CPU is the CPU time (user + system) the process used during the
	// slices: callers, broker clients and in-process servers, not the
	// broker server's own process.
	CPU time.Duration
	// BrokerCPU is the CPU time the broker server's processes used during
	// the slices (Config.BrokerPIDs); BrokerCPUKnown says whether it was
	// measured in every slice.
	BrokerCPU      time.Duration
	BrokerCPUKnown bool
	Hist           Histogram
	// PerRound is the throughput (calls/s) of each round.
	PerRound []float64
	// FirstErr is the first error seen, for the report.
	FirstErr string
}

// Throughput returns calls per second over all rounds.
func (c *Cell) Throughput() float64 {
	if c.Elapsed <= 0 {
		return 0
	}
	return float64(c.Calls) / c.Elapsed.Seconds()
}

// AllocsPerCall returns heap allocations per call in the whole process
// (caller, broker client and in-process server together).
func (c *Cell) AllocsPerCall() float64 {
	if c.Calls == 0 {
		return 0
	}
	return float64(c.Mallocs) / float64(c.Calls)
}

// CPUPerCall returns the process CPU time per call.
func (c *Cell) CPUPerCall() time.Duration {
	if c.Calls == 0 {
		return 0
	}
	return c.CPU / time.Duration(c.Calls)
}

// BrokerCPUPerCall returns the broker server's CPU time per call, and
// false when it was not measured.
func (c *Cell) BrokerCPUPerCall() (time.Duration, bool) {
	if c.Calls == 0 || !c.BrokerCPUKnown {
		return 0, false
	}
	return c.BrokerCPU / time.Duration(c.Calls), true
}

// Skipped is a case that could not run, with the reason.
type Skipped struct {
	Group, Name, Role string
	Reason            string
	Stream            bool // a stream case
}

// Results is the outcome of Run.
type Results struct {
	Config  Config
	Cases   []Case
	Cells   map[Key]*Cell
	Skipped []Skipped
	Started time.Time
	Took    time.Duration
}

type running struct {
	c Case
	t Target
}

// Run measures the cases one group (broker) at a time: it sets a group's
// cases up, measures them interleaved, and closes them before the next
// group starts. Ratios compare cases of one group only, and a group
// measured alone does not pay for the others' clients: their goroutines,
// timers and live heap (which every garbage collection would mark again)
// would tax the allocation-heavy cases of another broker more than its
// raw client. A case whose Setup fails is reported in Results.Skipped; the
// others go on.
func Run(ctx context.Context, cfg Config, cases []Case) (*Results, error) {
	if cfg.Rounds < 1 {
		cfg.Rounds = 1
	}
	if cfg.CallTimeout <= 0 {
		cfg.CallTimeout = 10 * time.Second
	}
	if len(cfg.Streams) == 0 {
		cfg.Streams = []int{1, 16}
	}
	res := &Results{Config: cfg, Cells: map[Key]*Cell{}, Started: time.Now()}
	progress := cfg.Progress
	if progress == nil {
		progress = func(string) {}
	}
	var groups []string
	byGroup := map[string][]Case{}
	for _, c := range cases {
		if _, ok := byGroup[c.Group]; !ok {
			groups = append(groups, c.Group)
		}
		byGroup[c.Group] = append(byGroup[c.Group], c)
	}
	for _, g := range groups {
		if err := runGroup(ctx, cfg, byGroup[g], res, progress); err != nil {
			return res, err
		}
		// Leave the next group a heap without this one's garbage.
		runtime.GC()
	}
	if len(res.Cases) == 0 {
		return res, errors.New("no case could run")
	}
	res.Took = time.Since(res.Started)
	return res, nil
}

// runGroup sets cases up, measures them interleaved into res and closes
// them.
func runGroup(ctx context.Context, cfg Config, cases []Case, res *Results, progress func(string)) error {
	var live []running
	defer func() {
		for _, r := range live {
			_ = r.t.Close()
		}
	}()
	for _, c := range cases {
		var t Target
		var err error
		labelled(ctx, c, func(ctx context.Context) {
			if t, err = setup(ctx, c, progress); err != nil {
				res.Skipped = append(res.Skipped, Skipped{Group: c.Group, Name: c.Name, Role: c.Role, Reason: err.Error(), Stream: c.IsStream()})
				progress(fmt.Sprintf("skip %s/%s: %v", c.Group, c.Name, err))
				return
			}
			// A case that cannot make one call is skipped too, rather
			// than filling the table with errors.
			probe := make([]byte, 16)
			pctx, cancel := context.WithTimeout(ctx, cfg.CallTimeout)
			err = t.Call(pctx, probe)
			cancel()
			if err != nil {
				_ = t.Close()
				res.Skipped = append(res.Skipped, Skipped{Group: c.Group, Name: c.Name, Role: c.Role, Reason: "first call: " + err.Error(), Stream: c.IsStream()})
				progress(fmt.Sprintf("skip %s/%s: first call: %v", c.Group, c.Name, err))
			}
		})
		if err != nil {
			continue
		}
		live = append(live, running{c: c, t: t})
		res.Cases = append(res.Cases, c)
	}
	concs, warmConc := cfg.Concurrency, 16
	if len(live) > 0 && live[0].c.IsStream() {
		concs = cfg.Streams
		warmConc = concs[len(concs)-1]
	}
	if cfg.Warmup > 0 {
		for _, r := range live {
			labelled(ctx, r.c, func(ctx context.Context) { measure(ctx, r.t, warmConc, 64, cfg.Warmup, cfg.CallTimeout, nil) })
		}
	}
	for round := 0; round < cfg.Rounds && len(live) > 0; round++ {
		for _, size := range cfg.Sizes {
			for _, conc := range concs {
				order := make([]running, len(live))
				copy(order, live)
				if round%2 == 1 {
					// Alternate the order within each cell so no case
					// always runs right after the same neighbour.
					for i, j := 0, len(order)-1; i < j; i, j = i+1, j-1 {
						order[i], order[j] = order[j], order[i]
					}
				}
				for _, r := range order {
					if err := ctx.Err(); err != nil {
						return err
					}
					var s *slice
					labelled(ctx, r.c, func(ctx context.Context) {
						s = measure(ctx, r.t, conc, size, cfg.Slice, cfg.CallTimeout, cfg.BrokerPIDs[r.c.Group])
					})
					k := Key{Group: r.c.Group, Name: r.c.Name, Conc: conc, Size: size}
					cell := res.Cells[k]
					if cell == nil {
						cell = &Cell{Key: k, Role: r.c.Role, BrokerCPUKnown: true}
						res.Cells[k] = cell
					}
					// A stream case's call is a stream of Msgs messages.
					msgs := uint64(max(r.c.Msgs, 1))
					cell.Calls += s.calls * msgs
					cell.Errors += s.errors
					cell.Elapsed += s.elapsed
					cell.Mallocs += s.mallocs
					cell.CPU += s.cpu
					cell.BrokerCPU += s.brokerCPU
					cell.BrokerCPUKnown = cell.BrokerCPUKnown && s.brokerKnown
					cell.Hist.Merge(&s.hist)
					cell.PerRound = append(cell.PerRound, s.throughput()*float64(msgs))
					if cell.FirstErr == "" && s.firstErr != nil {
						cell.FirstErr = s.firstErr.Error()
					}
					unit := "calls/s"
					if r.c.IsStream() {
						unit = "msgs/s "
					}
					progress(fmt.Sprintf("round %d/%d  %-8s %-22s c=%-3d %5dB  %9.0f %s  p50 %v  p99 %v  errors %d",
						round+1, cfg.Rounds, r.c.Group, r.c.Name, conc, size, s.throughput()*float64(msgs), unit,
						s.hist.Quantile(0.5).Round(time.Microsecond), s.hist.Quantile(0.99).Round(time.Microsecond), s.errors))
				}
			}
		}
	}
	return nil
}

// labelled runs f with the profiler label case=<group>/<name> of c, on
// this goroutine and in f's ctx. Goroutines inherit it: those c's setup
// starts (the broker clients' readers and writers) and its callers. A CPU
// profile of an interleaved run then splits by case:
// go tool pprof -tagfocus case=nats/mqrpc.
func labelled(ctx context.Context, c Case, f func(context.Context)) {
	pprof.Do(ctx, pprof.Labels("case", c.Group+"/"+c.Name), f)
}

// setupTries is how often a failing Setup is tried: a broker restarted by
// something else on the machine should not cost the run its case.
const setupTries = 3

func setup(ctx context.Context, c Case, progress func(string)) (Target, error) {
	var err error
	for i := 0; i < setupTries; i++ {
		var t Target
		if t, err = c.Setup(ctx); err == nil {
			return t, nil
		}
		if i < setupTries-1 {
			progress(fmt.Sprintf("setup %s/%s failed (%v); trying again in 5s", c.Group, c.Name, err))
			select {
			case <-time.After(5 * time.Second):
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
	}
	return nil, err
}

type slice struct {
	calls, errors uint64
	elapsed       time.Duration
	mallocs       uint64
	cpu           time.Duration
	brokerCPU     time.Duration
	brokerKnown   bool
	hist          Histogram
	firstErr      error
}

func (s *slice) throughput() float64 {
	if s.elapsed <= 0 {
		return 0
	}
	return float64(s.calls) / s.elapsed.Seconds()
}

// measure runs conc callers against t for d and returns what they did,
// with the CPU time of the processes brokerPIDs.
func measure(ctx context.Context, t Target, conc, size int, d, timeout time.Duration, brokerPIDs []int) *slice {
	// One deadline for the whole slice, made here, so that no case pays
	// for a per-call timer that another case does not.
	cctx, cancel := context.WithTimeout(ctx, d+timeout)
	defer cancel()
	var stop atomic.Bool
	hists := make([]Histogram, conc)
	errs := make([]uint64, conc)
	var firstErr atomic.Pointer[error]
	payloads := make([][]byte, conc)
	for i := range payloads {
		p := make([]byte, size)
		for j := range p {
			p[j] = byte('a' + (i+j)%26)
		}
		payloads[i] = p
	}
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	cpu0 := processCPU()
	bcpu0, bok0 := pidsCPU(brokerPIDs)
	var wg sync.WaitGroup
	start := time.Now()
	timer := time.AfterFunc(d, func() { stop.Store(true) })
	for i := 0; i < conc; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			h := &hists[i]
			p := payloads[i]
			for !stop.Load() {
				t0 := time.Now()
				err := t.Call(cctx, p)
				if err != nil {
					errs[i]++
					// A copy made here, so that only failing calls put
					// an error variable on the heap.
					e := err
					firstErr.CompareAndSwap(nil, &e)
					if cctx.Err() != nil {
						return
					}
					continue
				}
				h.Record(time.Since(t0))
			}
		}(i)
	}
	wg.Wait()
	elapsed := time.Since(start)
	timer.Stop()
	cpu := processCPU() - cpu0
	bcpu1, bok1 := pidsCPU(brokerPIDs)
	runtime.ReadMemStats(&after)
	s := &slice{elapsed: elapsed, mallocs: after.Mallocs - before.Mallocs, cpu: cpu,
		brokerCPU: bcpu1 - bcpu0, brokerKnown: len(brokerPIDs) > 0 && bok0 && bok1}
	for i := range hists {
		s.hist.Merge(&hists[i])
		s.errors += errs[i]
	}
	s.calls = s.hist.Count()
	if p := firstErr.Load(); p != nil {
		s.firstErr = *p
	}
	return s
}

// processCPU returns the user and system CPU time the process used so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// Sorted returns the cells of group g at size, ordered by case order in
// r.Cases and then by concurrency.
func (r *Results) Sorted(g string, size int) []*Cell {
	idx := map[string]int{}
	for i, c := range r.Cases {
		idx[c.Group+"\x00"+c.Name] = i
	}
	var out []*Cell
	for k, c := range r.Cells {
		if k.Group == g && k.Size == size {
			out = append(out, c)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if ia, ib := idx[a.Group+"\x00"+a.Name], idx[b.Group+"\x00"+b.Name]; ia != ib {
			return ia < ib
		}
		return a.Conc < b.Conc
	})
	return out
}

// Groups returns the groups of the cases that ran, in case order.
func (r *Results) Groups() []string {
	var out []string
	seen := map[string]bool{}
	for _, c := range r.Cases {
		if !seen[c.Group] {
			seen[c.Group] = true
			out = append(out, c.Group)
		}
	}
	return out
}

// Failures returns an error naming every skipped case and every cell with
// failed calls, or nil when every case ran and every call succeeded.
func (r *Results) Failures() error {
	var errs []error
	for _, s := range r.Skipped {
		errs = append(errs, fmt.Errorf("%s/%s skipped: %s", s.Group, s.Name, s.Reason))
	}
	keys := make([]Key, 0, len(r.Cells))
	for k, c := range r.Cells {
		if c.Errors > 0 {
			keys = append(keys, k)
		}
	}
	sort.Slice(keys, func(i, j int) bool { return fmt.Sprint(keys[i]) < fmt.Sprint(keys[j]) })
	for _, k := range keys {
		c := r.Cells[k]
		errs = append(errs, fmt.Errorf("%s/%s c=%d %d B: %d failed calls, the first: %s",
			k.Group, k.Name, k.Conc, k.Size, c.Errors, c.FirstErr))
	}
	return errors.Join(errs...)
}
