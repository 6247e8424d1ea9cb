//go:build chaos

package chaos_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/internal/chaos"
	"github.com/mqrpc/mqrpc/internal/testenv"
	"github.com/mqrpc/mqrpc/middleware"
	"github.com/mqrpc/mqrpc/rpc"
)

// Knobs, from the environment (scripts/chaos sets them).
const (
	envDuration = "MQRPC_CHAOS_DURATION" // load per scenario, a Go duration; default 12s
	envCallers  = "MQRPC_CHAOS_CALLERS"  // concurrent callers; default 100
)

const (
	// callDeadline is every call's deadline.
	callDeadline = 2500 * time.Millisecond
	// grace is how far past its deadline a call may return before it
	// counts as late: scheduling on a loaded 2-core machine under -race.
	grace = time.Second
	// goroutineSlack is how many more goroutines than at the start a
	// scenario may leave behind once it settled (timers, the runtime).
	goroutineSlack = 10
	// heapBound is the most heap a scenario may keep in use after it
	// ended and a GC ran, above what the process used before it.
	heapBound = 64 << 20
	// recoverWithin bounds how long after a restart or kill the service
	// must answer again.
	recoverWithin = 90 * time.Second
	// drainWithin bounds how long accepted one-way requests may take to
	// be served after the load stopped.
	drainWithin = 60 * time.Second
)

var report chaos.Report

func TestMain(m *testing.M) {
	if os.Getenv(chaos.EnvChild) == "1" {
		os.Exit(chaos.RunChild())
	}
	// The RocketMQ servers of this run, here and in the children, share a
	// delivery journal of their own.
	journal := ""
	if os.Getenv(chaos.EnvJournal) == "" {
		dir, err := os.MkdirTemp("", "mqrpc-chaos-journal-")
		if err != nil {
			fmt.Fprintln(os.Stderr, "chaos:", err)
			os.Exit(1)
		}
		journal = dir
		_ = os.Setenv(chaos.EnvJournal, dir)
	}
	code := m.Run()
	if journal != "" {
		_ = os.RemoveAll(journal)
	}
	if redisNode != nil {
		redisNode.Close()
	}
	report.Write(os.Stdout)
	os.Exit(code)
}

func loadDuration(t testing.TB) time.Duration {
	v := os.Getenv(envDuration)
	if v == "" {
		return 12 * time.Second
	}
	d, err := time.ParseDuration(v)
	require.NoError(t, err, "%s=%q", envDuration, v)
	require.Positive(t, d, envDuration)
	return d
}

func callers(t testing.TB) int {
	v := os.Getenv(envCallers)
	if v == "" {
		return 100
	}
	n, err := strconv.Atoi(v)
	require.NoError(t, err, "%s=%q", envCallers, v)
	return n
}

// TestChaos runs every scenario on every broker and mode:
// TestChaos/<target>/<restart|kill|poison>, and on the durable ones also
// late-server, the side-by-side group of durable/<...> (durable_test.go)
// and broker-sigkill. One private broker per kind serves all its modes.
func TestChaos(t *testing.T) {
	var (
		node     *chaos.Node
		nodeKind string
	)
	t.Cleanup(func() {
		if node != nil {
			node.Close()
		}
	})
	for _, target := range chaos.Targets {
		t.Run(target.Name, func(t *testing.T) {
			if nodeKind != target.Kind {
				if node != nil {
					node.Close()
					node = nil
				}
				nodeKind = target.Kind
				node = startNode(t, target.Kind)
			}
			if node == nil {
				t.Fatalf("%s: the private %s broker did not start (see the first %s test)", target.Name, target.Kind, target.Kind)
			}
			t.Run("restart", func(t *testing.T) { runRestart(t, target, node) })
			t.Run("kill", func(t *testing.T) { runKill(t, target, node) })
			t.Run("poison", func(t *testing.T) { runPoison(t, target, node) })
			if target.Name == "rabbitmq-fast" {
				t.Run("crash-poison", func(t *testing.T) { runFastCrashPoison(t, target, node) })
			}
			if target.Durable {
				t.Run("late-server", func(t *testing.T) { runLateServer(t, target, node) })
				runDurable(t, target, node)
				t.Run("broker-sigkill", func(t *testing.T) { runBrokerKill(t, target, node) })
			}
		})
	}
}

// The private Redis of the child servers on RabbitMQ and RocketMQ, started
// by the first scenario that needs it and stopped when TestMain ends.
var (
	redisMu   sync.Mutex
	redisNode *chaos.Node
)

// sharedStore names the dedup store the child servers of a scenario share,
// as production servers would: a NATS JetStream key-value bucket on the
// scenario's NATS server, or a private Redis for the other brokers.
func sharedStore(t *testing.T, target chaos.Target, node *chaos.Node, subj string) string {
	if target.Kind == chaos.KindNATS {
		return chaos.NATSKVSpec(node.Addr, "CHAOS_DEDUP")
	}
	redisMu.Lock()
	defer redisMu.Unlock()
	if redisNode == nil {
		redisNode = startNode(t, chaos.KindRedis)
	}
	return chaos.RedisSpec(redisNode.Addr, "chaos:"+subj+":")
}

// startNode starts a private broker, skipping (failing under CI=true) when
// its software is not installed.
func startNode(t *testing.T, kind string) *chaos.Node {
	t.Helper()
	dir, err := os.MkdirTemp("", "mqrpc-chaos-"+kind+"-")
	require.NoError(t, err)
	begin := time.Now()
	n, err := chaos.StartNode(kind, dir)
	if errors.Is(err, chaos.ErrNotInstalled) {
		if testenv.CI() {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	require.NoError(t, err)
	t.Logf("private %s broker at %s up in %v (data in %s)", kind, n.Addr, time.Since(begin).Round(time.Millisecond), dir)
	return n
}

// newClient returns the client under load: a Retry that may repeat any
// call (the servers deduplicate by message ID) over b.
func newClient(b broker.Broker) *rpc.Client {
	return rpc.NewClient(b, rpc.WithClientMiddleware(
		middleware.Retry(
			middleware.WithIdempotent(middleware.AlwaysIdempotent),
			middleware.WithBackoff(50*time.Millisecond, 500*time.Millisecond, 0),
			middleware.WithRetryBudget(middleware.UnlimitedRetryBudget()),
		),
	))
}

// awaitService waits until a call succeeds and returns how long it took.
func awaitService(t *testing.T, c *rpc.Client, subject string, within time.Duration) time.Duration {
	t.Helper()
	begin := time.Now()
	var last error
	for time.Since(begin) < within {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		var out chaos.WorkReply
		last = c.Call(ctx, subject, chaos.MethodWork, &chaos.WorkRequest{N: -1}, &out)
		cancel()
		if last == nil {
			return time.Since(begin)
		}
		time.Sleep(200 * time.Millisecond) // poll interval of a bounded wait, not synchronisation
	}
	t.Fatalf("service %s did not answer within %v; last error: %v", subject, within, last)
	return 0
}

func subject(scenario string) string {
	return "chaos-" + scenario + "-" + strings.ReplaceAll(broker.NewID(), "-", "")
}

// baseline is the process state a scenario is measured against.
type baseline struct {
	goroutines, lingering int
	heap                  uint64
}

// lingering are goroutines of rocketmq-client-go that outlive Close by
// minutes or more (the list and the reasons are broker/rocketmq's
// clientLeaks): they are counted apart, not as our leaks.
var lingering = []string{
	"rocketmq-client-go/v2/consumer.(*statsItemSet).init.func",
	"rocketmq-client-go/v2/consumer.(*pushConsumer).Start.func1.2",
	"rocketmq-client-go/v2/internal.(*rmqClient).Start.func1.1",
	"rocketmq-client-go/v2/internal.(*rmqClient).Start.func1.4",
	"rocketmq-client-go/v2/internal.(*rmqClient).PullMessage",
	"rocketmq-client-go/v2/internal/remote.(*remotingClient).receiveResponse",
	"rocketmq-client-go/v2/internal/remote.(*ResponseFuture).waitResponse",
	"patrickmn/go-cache.(*janitor).Run",
}

// goroutines counts the goroutines alive now, and apart from them those
// on the lingering list.
func goroutines() (ours, lingered int) {
	buf := make([]byte, 16<<20)
	buf = buf[:runtime.Stack(buf, true)]
	for _, g := range strings.Split(string(buf), "\n\n") {
		known := false
		for _, l := range lingering {
			if strings.Contains(g, l) {
				known = true
				break
			}
		}
		if known {
			lingered++
		} else {
			ours++
		}
	}
	return ours, lingered
}

func measure() baseline {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	g, l := goroutines()
	return baseline{goroutines: g, lingering: l, heap: ms.HeapAlloc}
}

// settle waits (bounded) for the goroutines to come back to the baseline:
// some clients' background goroutines end a few seconds after Close
// (rocketmq-client-go's up to 10 s, as its package doc says).
func settle(before baseline) baseline {
	deadline := time.Now().Add(20 * time.Second)
	for {
		now := measure()
		if now.goroutines <= before.goroutines+goroutineSlack || time.Now().After(deadline) {
			return now
		}
		time.Sleep(250 * time.Millisecond) // poll interval of a bounded wait
	}
}

// scenario holds what every scenario counts and asserts.
type scenario struct {
	t        *testing.T
	target   chaos.Target
	name     string
	before   baseline
	log      *chaos.ExecLog
	closers  []func()
	row      chaos.Row
	accepted []string
	// outcomes are the calls of the load by message ID.
	outcomes map[string]rpc.Code
	// victims name the server processes killed by the scenario, if any.
	victims []string
	// parallel is true for scenarios that run beside others of their
	// target: the goroutines and heap of the process are checked once
	// for the group (checkGroup), not per scenario.
	parallel bool
	// drained is true when the scenario already waited for the accepted
	// requests to be served.
	drained bool
	// minDown is the least time a cluster scenario keeps its killed node
	// down (killUnderLoad): longer than the recovery it asserts, so that
	// the node's return does not stand in for the failover.
	minDown time.Duration
}

func newScenario(t *testing.T, target chaos.Target, name string) *scenario {
	return &scenario{t: t, target: target, name: name, before: measure(), log: chaos.NewExecLog(),
		row: chaos.Row{Target: target.Name, Scenario: name}}
}

// note adds to the row's note.
func (s *scenario) note(format string, args ...any) {
	if s.row.Note != "" {
		s.row.Note += "; "
	}
	s.row.Note += fmt.Sprintf(format, args...)
}

// load records the load's counts and checks that every call ended in time,
// with its own reply or a clear error.
func (s *scenario) load(res *chaos.LoadResult) {
	t := s.t
	s.row.Calls, s.row.Codes, s.row.Late = res.Calls, chaos.FormatCodes(res.Codes), res.Late
	s.row.MaxWait, s.row.Mismatched = res.MaxWait, res.Mismatched
	s.accepted = append(s.accepted, res.Accepted...)
	s.row.Accepted = len(s.accepted)
	s.outcomes = res.Outcomes
	t.Logf("%d calls: %s; late %d (max wait %v, deadline %v + grace %v); wrong replies %d; tracked sends accepted %d, refused %s",
		res.Calls, chaos.FormatCodes(res.Codes), res.Late, res.MaxWait.Round(time.Millisecond), callDeadline, grace,
		res.Mismatched, len(res.Accepted), chaos.FormatCodes(res.SendErrors))
	for code, msg := range res.Errors {
		t.Logf("  example %s: %s", code, msg)
	}
	assert.Positive(t, res.Codes[rpc.OK], "no call succeeded")
	assert.Zero(t, res.Late, "calls waited past deadline+grace (max wait %v); the last: %s", res.MaxWait, res.LateExample)
	assert.Zero(t, res.Mismatched, "replies reached the wrong caller")
	// A clear error has a code that says what happened; Unknown and
	// Internal mean an error nobody classified or a bug.
	assert.Zero(t, res.Codes[rpc.Unknown], "calls failed with unclassified errors: %s", res.Errors[rpc.Unknown])
	assert.Zero(t, res.Codes[rpc.Internal], "calls failed with internal errors: %s", res.Errors[rpc.Internal])
}

// finish checks the served requests, duplicates, goroutines and heap, and
// adds the row to the report. Call it deferred, after the load.
func (s *scenario) finish() {
	t := s.t
	if len(s.accepted) > 0 {
		wait := drainWithin
		if !s.target.Durable {
			// Lost sends are expected here and never come; wait only for
			// those still in flight.
			wait = 3 * time.Second
		}
		if s.drained {
			wait = 0
		}
		missing := s.log.WaitServed(chaos.MethodRecord, s.accepted, wait)
		s.row.Lost = len(missing)
		if s.target.Durable {
			assert.Empty(t, missing, "%d of %d accepted (confirmed) requests never served, e.g. %v",
				len(missing), len(s.accepted), head(missing))
		} else if len(missing) > 0 {
			s.note("%d sends lost (at-most-once)", len(missing))
		}
	}
	s.row.Executions, s.row.Duplicates = s.log.Executions()
	s.row.DupCommits = s.log.DuplicateCommits()
	if len(s.outcomes) > 0 {
		failedExec, okUnexec := s.log.FailedExecuted(chaos.MethodWork, s.outcomes)
		s.row.FailedExecuted = failedExec
		assert.Zero(t, okUnexec, "calls succeeded that no server executed")
	}
	if len(s.victims) == 0 {
		assert.Zero(t, s.row.Duplicates, "requests executed more than once despite Dedup: %v", s.log.DuplicateKeys(5))
	} else {
		// A request the killed server executed but whose outcome it had
		// not stored yet runs again on the survivor: Dedup cannot close
		// that window (the side effect and the store are not one
		// transaction). Every other repeat must be caught (one the killed
		// server had stored included), and no outcome may be committed
		// twice.
		assert.Zero(t, s.log.DuplicatesOutsideWindow(s.victims...),
			"requests executed more than once other than by a killed server that had not stored their outcome: %v", s.log.DuplicateKeys(5))
		assert.Zero(t, s.row.DupCommits, "outcomes committed twice to the shared dedup store")
		if s.row.Duplicates > 0 {
			s.note("%d re-executed after the crash (executed by the killed server, outcome not stored yet), e.g. %v",
				s.row.Duplicates, s.log.DuplicateKeys(1))
		}
	}
	for i := len(s.closers) - 1; i >= 0; i-- {
		s.closers[i]()
	}
	// The scenario's own records (an entry per call and per execution:
	// ~1 KiB a call, 60+ MiB in a fast run) are not the library's heap:
	// drop them, and the closed servers and clients with them, so that
	// what the heap check sees is what the library kept.
	s.closers, s.log, s.outcomes, s.accepted = nil, nil, nil, nil
	if s.parallel {
		s.row.Failed = t.Failed()
		report.Add(s.row)
		return
	}
	after := settle(s.before)
	s.row.GoroutinesBefore, s.row.GoroutinesAfter = s.before.goroutines, after.goroutines
	if d := after.lingering - s.before.lingering; d > 0 {
		s.note("%d rocketmq-client-go goroutines linger after Close (known, not counted)", d)
	}
	s.row.HeapBeforeMiB, s.row.HeapAfterMiB = float64(s.before.heap)/(1<<20), float64(after.heap)/(1<<20)
	if !assert.LessOrEqual(t, after.goroutines, s.before.goroutines+goroutineSlack, "goroutines leaked") {
		t.Logf("goroutines left:\n%s", goroutineSummary())
	}
	var grown uint64
	if after.heap > s.before.heap {
		grown = after.heap - s.before.heap
	}
	assert.LessOrEqual(t, grown, uint64(heapBound), "heap grew by %d MiB", grown>>20)
	s.row.Failed = t.Failed()
	report.Add(s.row)
}

// goroutineSummary lists the goroutines alive now, grouped by stack: the
// count and the innermost frames outside the runtime.
func goroutineSummary() string {
	var buf bytes.Buffer
	_ = pprof.Lookup("goroutine").WriteTo(&buf, 1)
	var out []string
	for _, block := range strings.Split(buf.String(), "\n\n") {
		lines := strings.Split(strings.TrimSpace(block), "\n")
		if len(lines) < 2 || !strings.Contains(lines[0], " @ ") {
			continue
		}
		count := strings.Fields(lines[0])[0]
		var frames []string
		for _, l := range lines[1:] {
			f := strings.Fields(l)
			if len(f) < 3 || strings.HasPrefix(f[2], "runtime.") || strings.HasPrefix(f[2], "internal/") {
				continue
			}
			frames = append(frames, f[2])
			if len(frames) == 2 {
				break
			}
		}
		out = append(out, "  "+count+" × "+strings.Join(frames, " < "))
	}
	return strings.Join(out, "\n")
}

func head(s []string) []string {
	if len(s) > 5 {
		return s[:5]
	}
	return s
}

// serveInProcess serves the service under test on its own connection.
func (s *scenario) serveInProcess(node *chaos.Node, subj string, srv *rpc.Server, name string) {
	b, err := s.target.Open(node.Addr, name)
	require.NoError(s.t, err)
	s.serveOn(b, subj, srv)
}

// serveOn serves the service under test on b, which it closes at the end.
func (s *scenario) serveOn(b broker.Broker, subj string, srv *rpc.Server) {
	sub, err := b.Serve(subj, srv, broker.WithConcurrency(64))
	require.NoError(s.t, err)
	s.closers = append(s.closers, func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = sub.Stop(ctx)
		_ = b.Close()
	})
}

// killBusy SIGKILLs the child server victim mid-request: once after has
// passed and it is busy (see Child.Busy). It returns how many requests it
// held.
func (s *scenario) killBusy(victim *chaos.Child, after time.Duration, busy int64) int64 {
	killAt := time.Now().Add(after)
	for !(victim.Busy(busy) && time.Now().After(killAt)) {
		if time.Since(killAt) > recoverWithin {
			s.t.Fatalf("server process never had requests in flight (started %v)", victim.InFlight())
		}
		time.Sleep(5 * time.Millisecond) // poll interval of a bounded wait
	}
	inFlight := victim.InFlight()
	s.victims = append(s.victims, victim.Name)
	victim.Kill()
	return inFlight
}

// twoServers serves the service under test twice in this process (each on
// its own connection, one Dedup shared) and returns the client's
// connection and client once the service answers.
func (s *scenario) twoServers(node *chaos.Node, subj string) (broker.Broker, *rpc.Client) {
	srv := chaos.NewServer(s.log, middleware.NewMemoryDedupStore(0, 0))
	s.serveInProcess(node, subj, srv, "server-1")
	s.serveInProcess(node, subj, srv, "server-2")
	b, c := s.client(node)
	awaitService(s.t, c, subj, recoverWithin)
	return b, c
}

// client opens the client connection under load.
func (s *scenario) client(node *chaos.Node) (broker.Broker, *rpc.Client) {
	b, err := s.target.Open(node.Addr, "client")
	require.NoError(s.t, err)
	s.closers = append(s.closers, func() { _ = b.Close() })
	return b, newClient(b)
}

func (s *scenario) loadConfig(subj string) chaos.LoadConfig {
	cfg := chaos.LoadConfig{
		Subject:   subj,
		Callers:   callers(s.t),
		Deadline:  callDeadline,
		Grace:     grace,
		Duration:  10 * time.Minute, // the scenario stops it; this only bounds it
		Senders:   4,
		SendEvery: 20 * time.Millisecond,
	}
	return cfg
}

// startLoad runs the load in the background; the returned function stops
// it and returns its result. The load is also stopped when the scenario
// ends early (a failed require), so no caller outlives its test.
func (s *scenario) startLoad(c *rpc.Client, b broker.Broker, cfg chaos.LoadConfig) func() *chaos.LoadResult {
	stop := make(chan struct{})
	done := make(chan *chaos.LoadResult, 1)
	go func() { done <- chaos.RunLoad(c, b, cfg, stop) }()
	var (
		once sync.Once
		res  *chaos.LoadResult
	)
	stopLoad := func() *chaos.LoadResult {
		once.Do(func() {
			close(stop)
			res = <-done
		})
		return res
	}
	s.closers = append(s.closers, func() { stopLoad() })
	return stopLoad
}

// runRestart restarts the broker under load. Two servers in this process
// (each on its own connection) share one Dedup.
func runRestart(t *testing.T, target chaos.Target, node *chaos.Node) {
	s := newScenario(t, target, "restart")
	defer s.finish()
	subj := subject("restart")
	b, c := s.twoServers(node, subj)

	d := loadDuration(t)
	stopLoad := s.startLoad(c, b, s.loadConfig(subj))
	time.Sleep(d / 3) // load before the restart: part of the scenario's shape, not synchronisation
	outage, err := node.Restart()
	require.NoError(t, err, "restart %s", target.Kind)
	recovered := awaitService(t, newClient(b), subj, recoverWithin)
	s.note("broker down and up in %v, service answered %v later", outage.Round(time.Millisecond), recovered.Round(time.Millisecond))
	time.Sleep(d * 2 / 3) // load after recovery
	s.load(stopLoad())
}

// runKill kills one of two child server processes (SIGKILL) while it has
// requests in flight. The children share a file-backed DedupStore, as
// servers in production share Redis.
func runKill(t *testing.T, target chaos.Target, node *chaos.Node) {
	s := newScenario(t, target, "kill")
	defer s.finish()
	subj := subject("kill")
	env := chaos.ChildEnv(target, node.Addr, subj, sharedStore(t, target, node, subj))
	var children []*chaos.Child
	for i := 0; i < 2; i++ {
		c, err := chaos.StartChild(env, s.log, recoverWithin)
		require.NoError(t, err)
		children = append(children, c)
		s.closers = append(s.closers, func() { c.Stop(15 * time.Second) })
	}
	b, c := s.client(node)
	awaitService(t, c, subj, recoverWithin)

	d := loadDuration(t)
	stopLoad := s.startLoad(c, b, s.loadConfig(subj))
	inFlight := s.killBusy(children[0], d/3, 50)
	s.note("killed a server with %d requests in flight", inFlight)
	time.Sleep(d * 2 / 3) // load after the kill
	res := stopLoad()
	s.load(res)
	// The survivor serves alone now.
	awaitService(t, c, subj, recoverWithin)
}

// runLateServer sends one-way requests with no Message.Deadline, through a
// Send whose ctx has a short deadline, while no server runs, and starts the
// server only after that ctx deadline passed. A durable broker must keep
// them: the ctx bounds how long Send waits for the broker's confirmation
// (broker.Broker.Send), it is not the message's time-to-live; only
// Message.Deadline is (as broker/amqp documents).
func runLateServer(t *testing.T, target chaos.Target, node *chaos.Node) {
	s := newScenario(t, target, "late-server")
	defer s.finish()
	subj := subject("late")
	b, c := s.client(node)
	srv := chaos.NewServer(s.log, middleware.NewMemoryDedupStore(0, 0))
	// A server runs once and stops, so the topic (RocketMQ), queue and
	// consumer group exist, as for a service being redeployed.
	first, err := s.target.Open(node.Addr, "first-server")
	require.NoError(t, err)
	sub, err := first.Serve(subj, srv)
	require.NoError(t, err)
	awaitService(t, c, subj, recoverWithin)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	require.NoError(t, sub.Stop(ctx))
	cancel()
	require.NoError(t, first.Close())

	const sends = 20
	sendCtx := 1500 * time.Millisecond
	var accepted []string
	for i := 0; i < sends; i++ {
		id := "late-" + broker.NewID()
		ctx, cancel := context.WithTimeout(context.Background(), sendCtx)
		err := b.Send(ctx, &broker.Message{
			ID: id, Subject: subj,
			Header: broker.Header{broker.HeaderMethod: chaos.MethodRecord, broker.HeaderContentType: "application/json"},
			Body:   []byte(`{"n":0}`),
		})
		cancel()
		if err == nil {
			accepted = append(accepted, id)
		} else {
			t.Logf("send %d: %v", i, err)
		}
	}
	require.NotEmpty(t, accepted, "no send accepted")
	// Control: the same sends with a ctx that has no deadline (bounded by
	// a timer instead). If these are served and the others are not, the
	// broker took the ctx deadline for the message's time-to-live.
	var control []string
	for i := 0; i < sends; i++ {
		id := "late-control-" + broker.NewID()
		ctx, cancel := context.WithCancel(context.Background())
		timer := time.AfterFunc(sendCtx, cancel)
		err := b.Send(ctx, &broker.Message{
			ID: id, Subject: subj,
			Header: broker.Header{broker.HeaderMethod: chaos.MethodRecord, broker.HeaderContentType: "application/json"},
			Body:   []byte(`{"n":0}`),
		})
		timer.Stop()
		cancel()
		if err == nil {
			control = append(control, id)
		}
	}
	time.Sleep(2 * sendCtx) // the send ctx deadlines pass before any server runs: the point of the scenario
	s.serveInProcess(node, subj, srv, "late-server")
	s.accepted = append(accepted, control...)
	s.row.Accepted = len(s.accepted)
	missing := s.log.WaitServed(chaos.MethodRecord, s.accepted, drainWithin)
	s.drained = true
	lostCtx := len(missing) - len(s.log.Missing(chaos.MethodRecord, control))
	if lostCtx > 0 && len(s.log.Missing(chaos.MethodRecord, control)) == 0 {
		s.note("%d of %d sends whose ctx had a deadline were dropped, all %d without one were served: "+
			"Send made the ctx deadline the message's TTL", lostCtx, len(accepted), len(control))
	}
	// finish counts them again and fails if any is missing.
}
