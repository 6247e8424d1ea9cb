package chaos

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/rpc"
)

// ExecLog is a Recorder that counts starts and executions per request ID,
// for the servers of one test, in this process or in children.
type ExecLog struct {
	mu       sync.Mutex
	started  map[string][]time.Time // method+" "+id -> when each start was seen
	executed map[string]int         // method+" "+id -> executions
	firstAt  map[string]time.Time   // method+" "+id -> first execution
	by       map[string][]string    // method+" "+id -> who executed it, when
	commits  map[string]int         // dedup key -> outcomes stored for it
	commitBy map[string][]string    // dedup key -> who stored them
	waiters  []chan struct{}
}

// NewExecLog returns an empty log.
func NewExecLog() *ExecLog {
	return &ExecLog{started: map[string][]time.Time{}, executed: map[string]int{}, firstAt: map[string]time.Time{},
		by: map[string][]string{}, commits: map[string]int{}, commitBy: map[string][]string{}}
}

var _ Recorder = (*ExecLog)(nil)

// Started implements Recorder.
func (l *ExecLog) Started(method, id string) {
	l.mu.Lock()
	l.started[method+" "+id] = append(l.started[method+" "+id], time.Now())
	l.mu.Unlock()
}

// Starts returns when method was seen starting on request id, in order:
// one entry per delivery that reached the handler.
func (l *ExecLog) Starts(method, id string) []time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]time.Time(nil), l.started[method+" "+id]...)
}

// ExecutedCount returns how many times method executed request id, and when
// it did first.
func (l *ExecLog) ExecutedCount(method, id string) (int, time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.executed[method+" "+id], l.firstAt[method+" "+id]
}

// Executed implements Recorder.
func (l *ExecLog) Executed(method, id string) { l.ExecutedBy(method, id, "this process") }

// ExecutedBy records an execution by the server named who.
func (l *ExecLog) ExecutedBy(method, id, who string) {
	l.mu.Lock()
	l.executed[method+" "+id]++
	if _, ok := l.firstAt[method+" "+id]; !ok {
		l.firstAt[method+" "+id] = time.Now()
	}
	l.by[method+" "+id] = append(l.by[method+" "+id], who+"@"+time.Now().Format("05.000"))
	ws := l.waiters
	l.waiters = nil
	l.mu.Unlock()
	for _, w := range ws {
		close(w)
	}
}

// changed returns a channel closed at the next execution.
func (l *ExecLog) changed() <-chan struct{} {
	ch := make(chan struct{})
	l.mu.Lock()
	l.waiters = append(l.waiters, ch)
	l.mu.Unlock()
	return ch
}

// Executions returns how many executions the log holds, and how many
// request IDs were executed more than once (duplicates: the extra runs).
func (l *ExecLog) Executions() (total, duplicates int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, n := range l.executed {
		total += n
		if n > 1 {
			duplicates += n - 1
		}
	}
	return total, duplicates
}

// Committed records that a server stored the outcome of key in the
// dedup store shared by the servers of a test.
func (l *ExecLog) Committed(key string) { l.CommittedBy(key, "this process") }

// CommittedBy records that the server named who stored the outcome of key.
func (l *ExecLog) CommittedBy(key, who string) {
	l.mu.Lock()
	l.commits[key]++
	l.commitBy[key] = append(l.commitBy[key], who)
	l.mu.Unlock()
}

// DuplicatesOutsideWindow returns the duplicate executions that Dedup with
// a shared store should have prevented: all but those of requests that one
// of the killed servers named executed and never stored the outcome of
// (it died between the side effect and the store, which are not one
// transaction). Dedup keys are message IDs.
func (l *ExecLog) DuplicatesOutsideWindow(killed ...string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	d := 0
	for k, n := range l.executed {
		if n < 2 {
			continue
		}
		id := k[strings.IndexByte(k, ' ')+1:]
		window := false
		for _, v := range killed {
			ran := false
			for _, w := range l.by[k] {
				ran = ran || strings.HasPrefix(w, v+"@")
			}
			stored := false
			for _, w := range l.commitBy[id] {
				stored = stored || w == v
			}
			window = window || (ran && !stored)
		}
		if !window {
			d += n - 1
		}
	}
	return d
}

// DuplicateCommits returns how many outcomes were stored for a key that
// already had one: two servers ran the request at the same time, which
// a shared store cannot stop.
func (l *ExecLog) DuplicateCommits() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	d := 0
	for _, n := range l.commits {
		if n > 1 {
			d += n - 1
		}
	}
	return d
}

// DuplicateKeys describes up to max requests executed more than once:
// method, ID and the servers that executed it.
func (l *ExecLog) DuplicateKeys(max int) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for k, n := range l.executed {
		if n > 1 && len(out) < max {
			out = append(out, k+" by "+strings.Join(l.by[k], ","))
		}
	}
	sort.Strings(out)
	return out
}

// FailedExecuted returns how many calls of outcomes failed although method
// executed them (the caller was told it failed; the work was done), and how
// many succeeded without an execution (a reply nobody computed).
func (l *ExecLog) FailedExecuted(method string, outcomes map[string]rpc.Code) (failedExecuted, okUnexecuted int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for id, code := range outcomes {
		n := l.executed[method+" "+id]
		switch {
		case code != rpc.OK && n > 0:
			failedExecuted++
		case code == rpc.OK && n == 0:
			okUnexecuted++
		}
	}
	return failedExecuted, okUnexecuted
}

// ExecutionsBy returns how many executions the server named who made.
func (l *ExecLog) ExecutionsBy(who string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, by := range l.by {
		for _, w := range by {
			if strings.HasPrefix(w, who+"@") {
				n++
			}
		}
	}
	return n
}

// Missing returns the IDs of ids that method never executed.
func (l *ExecLog) Missing(method string, ids []string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var m []string
	for _, id := range ids {
		if l.executed[method+" "+id] == 0 {
			m = append(m, id)
		}
	}
	return m
}

// WaitServed waits until method executed every one of ids, or timeout
// passes, and returns those still missing.
func (l *ExecLog) WaitServed(method string, ids []string, timeout time.Duration) []string {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		ch := l.changed()
		missing := l.Missing(method, ids)
		if len(missing) == 0 {
			return nil
		}
		select {
		case <-ch:
		case <-deadline.C:
			return l.Missing(method, ids)
		}
	}
}

// LoadConfig is the steady load of one scenario.
type LoadConfig struct {
	// Subject is the service called.
	Subject string
	// Callers is how many goroutines call MethodWork back to back.
	Callers int
	// Deadline is every call's deadline.
	Deadline time.Duration
	// Grace is how far past its deadline a call may return before it
	// counts as late.
	Grace time.Duration
	// Duration is how long the load runs.
	Duration time.Duration
	// Senders is how many goroutines send tracked one-way MethodRecord
	// requests (with no deadline) through Broker.Send, every SendEvery.
	Senders   int
	SendEvery time.Duration
	// KeepTimes keeps every call's start, end and outcome in
	// LoadResult.Times, to tell what a node's death did to the calls in
	// flight and how soon new calls succeeded (EffectOf).
	KeepTimes bool
}

// CallTime is when one call of the load ran and how it ended.
type CallTime struct {
	Start, End time.Time
	Code       rpc.Code
}

// LoadResult counts what the callers and senders saw.
type LoadResult struct {
	// Calls is how many calls were made; Codes counts their outcomes by
	// status code (OK included).
	Calls int64
	Codes map[rpc.Code]int64
	// Late counts calls that returned later than Deadline+Grace; MaxWait
	// is the longest any call took.
	Late    int64
	MaxWait time.Duration
	// Mismatched counts successful calls whose reply carried another
	// call's N: a reply delivered to the wrong caller.
	Mismatched int64
	// Accepted holds the IDs of tracked sends the broker accepted (Send
	// returned nil: for durable brokers, stored and confirmed).
	Accepted []string
	// SendErrors counts the sends the broker refused, by status code.
	SendErrors map[rpc.Code]int64
	// Outcomes holds every call's message ID (kept across the client's
	// retries) and how it ended, to match calls with executions.
	Outcomes map[string]rpc.Code
	// Errors keeps one example message per failed call code, for the
	// report.
	Errors map[rpc.Code]string
	// LateExample describes the latest late call: how long it took and
	// how it ended.
	LateExample string
	// Times holds every call, with LoadConfig.KeepTimes.
	Times []CallTime
}

// RunLoad runs cfg's load until cfg.Duration passes or stop is closed,
// whichever is first. Every goroutine it starts has returned when it
// returns. b carries the tracked sends; c the calls.
func RunLoad(c *rpc.Client, b broker.Broker, cfg LoadConfig, stop <-chan struct{}) *LoadResult {
	res := &LoadResult{Codes: map[rpc.Code]int64{}, SendErrors: map[rpc.Code]int64{}, Errors: map[rpc.Code]string{},
		Outcomes: map[string]rpc.Code{}}
	var (
		mu      sync.Mutex
		wg      sync.WaitGroup
		counter atomic.Int64
	)
	end := time.Now().Add(cfg.Duration)
	done := func() bool {
		select {
		case <-stop:
			return true
		default:
			return time.Now().After(end)
		}
	}
	for i := 0; i < cfg.Callers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !done() {
				n := counter.Add(1)
				ctx, cancel := context.WithTimeout(context.Background(), cfg.Deadline)
				begin := time.Now()
				var out WorkReply
				id := "call-" + broker.NewID()
				err := c.Call(ctx, cfg.Subject, MethodWork, &WorkRequest{N: n}, &out, rpc.WithMessageID(id))
				finished := time.Now()
				cancel()
				took, code := finished.Sub(begin), rpc.CodeOf(err)
				mu.Lock()
				if cfg.KeepTimes {
					res.Times = append(res.Times, CallTime{Start: begin, End: finished, Code: code})
				}
				res.Calls++
				res.Codes[code]++
				res.Outcomes[id] = code
				res.MaxWait = max(res.MaxWait, took)
				if took > cfg.Deadline+cfg.Grace {
					res.Late++
					res.LateExample = fmt.Sprintf("took %v, ended %s: %v", took.Round(time.Millisecond), code, err)
				}
				if err == nil && out.N != n {
					res.Mismatched++
				}
				if _, ok := res.Errors[code]; err != nil && !ok {
					res.Errors[code] = err.Error()
				}
				mu.Unlock()
				if err != nil {
					// A failed call returns at once (no responders,
					// disconnected); pause so the callers do not spin
					// while the broker is down.
					pause(stop, 50*time.Millisecond)
				}
			}
		}()
	}
	for i := 0; i < cfg.Senders; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !done() {
				id := "send-" + broker.NewID()
				msg := &broker.Message{
					ID:      id,
					Subject: cfg.Subject,
					Header: broker.Header{
						broker.HeaderMethod:      MethodRecord,
						broker.HeaderContentType: "application/json",
					},
					Body: []byte(`{"n":0}`),
				}
				// Bounded by a timer, not a ctx deadline: a broker may
				// turn the ctx deadline of Send into the message's TTL
				// (broker/rocketmq does), and these sends must be served
				// however late, to count losses.
				ctx, cancel := context.WithCancel(context.Background())
				t := time.AfterFunc(2*cfg.Deadline, cancel)
				err := b.Send(ctx, msg)
				t.Stop()
				cancel()
				mu.Lock()
				if err == nil {
					res.Accepted = append(res.Accepted, id)
				} else {
					res.SendErrors[rpc.CodeOf(err)]++
				}
				mu.Unlock()
				pause(stop, cfg.SendEvery)
			}
		}()
	}
	wg.Wait()
	return res
}

func pause(stop <-chan struct{}, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-stop:
	case <-t.C:
	}
}

// FormatCodes renders codes as "ok=10 unavailable=2", sorted by code.
func FormatCodes(codes map[rpc.Code]int64) string {
	keys := make([]rpc.Code, 0, len(codes))
	for k := range codes {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i] < keys[j] })
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s=%d", k, codes[k]))
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, " ")
}

// Child is a server process running RunChild, started by re-executing the
// test binary, so killing it is a real SIGKILL of a real process.
type Child struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	ready  chan struct{}
	exited chan struct{}
	// Name identifies the child in the ExecLog ("child pid N").
	Name string
	// inFlight counts started minus executed Work requests.
	inFlight atomic.Int64
	started  atomic.Int64
}

// StartChild starts a child server that reports to log, and waits until it
// serves (or timeout).
func StartChild(env []string, log *ExecLog, timeout time.Duration) (*Child, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("chaos: find test binary: %w", err)
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = env
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("chaos: child stdout: %w", err)
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, fmt.Errorf("chaos: child stdin: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("chaos: start child: %w", err)
	}
	c := &Child{cmd: cmd, stdin: stdin, ready: make(chan struct{}), exited: make(chan struct{})}
	who := fmt.Sprintf("child pid %d", cmd.Process.Pid)
	c.Name = who
	go func() {
		sc := bufio.NewScanner(stdout)
		readyOnce := sync.Once{}
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			switch {
			case len(f) == 1 && f[0] == "ready":
				readyOnce.Do(func() { close(c.ready) })
			case len(f) == 3 && f[0] == "S":
				log.Started(f[1], f[2])
				if f[1] == MethodWork {
					c.inFlight.Add(1)
					c.started.Add(1)
				}
			case len(f) == 2 && f[0] == "C":
				log.CommittedBy(f[1], who)
			case len(f) == 3 && f[0] == "E":
				log.ExecutedBy(f[1], f[2], who)
				if f[1] == MethodWork {
					c.inFlight.Add(-1)
				}
			}
		}
		_ = cmd.Wait()
		close(c.exited)
	}()
	select {
	case <-c.ready:
		return c, nil
	case <-c.exited:
		return nil, errors.New("chaos: child server exited before serving")
	case <-time.After(timeout):
		c.Kill()
		return nil, fmt.Errorf("chaos: child server not serving after %v", timeout)
	}
}

// Exited is closed when the child process has ended.
func (c *Child) Exited() <-chan struct{} { return c.exited }

// Busy reports whether the child has Work requests in flight and has
// started at least min of them.
func (c *Child) Busy(min int64) bool { return c.started.Load() >= min && c.inFlight.Load() > 0 }

// InFlight returns the Work requests the child started and did not finish.
func (c *Child) InFlight() int64 { return c.inFlight.Load() }

// Kill sends SIGKILL and waits for the process to end.
func (c *Child) Kill() {
	_ = c.cmd.Process.Signal(syscall.SIGKILL)
	<-c.exited
}

// Stop asks the child to drain and exit by closing its stdin, and kills it
// after timeout.
func (c *Child) Stop(timeout time.Duration) {
	_ = c.stdin.Close()
	select {
	case <-c.exited:
	case <-time.After(timeout):
		c.Kill()
	}
}
