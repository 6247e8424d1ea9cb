//go:build chaos

package chaos_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/internal/chaos"
	"github.com/mqrpc/mqrpc/middleware"
	"github.com/mqrpc/mqrpc/rpc"
)

// The promises of the durable modes (issue 17), each a scenario that fails
// when the promise breaks. They are about correctness, not load: short,
// and the ones that leave the broker running run side by side
// (runDurable).

const (
	// smallCallers is the load of the short scenarios.
	smallCallers = 20
	// deadLetterWithin bounds how long a request that can only fail may
	// take to reach the dead letters.
	deadLetterWithin = 60 * time.Second
	// minRedelivery is the least time between two deliveries of a failed
	// request: a redelivery with a backoff, not a zero-delay loop.
	minRedelivery = 50 * time.Millisecond
	// poisonSlack is how much later than the crashing poison's own
	// handling (until it was dead-lettered) the healthy requests sent
	// around it may be served: one redelivery of the requests the crash
	// took with it (JetStream: AckWait, 2 s), the dedup claims the crashed
	// process held on them running out (up to two ChildLease), and a
	// server restart.
	poisonSlack = 12 * time.Second
	// failDeadline is the deadline of the failing requests of
	// fail-deadline.
	failDeadline = 45 * time.Second
)

// pending lists the scenarios that fail on main until a fix of issue 17
// lands, by target/scenario, with what fails. They are skipped (run them
// with MQRPC_CHAOS_PENDING=1); an entry goes as soon as its fix is on main.
var pending = map[string]string{}

// skipPending skips a scenario listed in pending, unless
// MQRPC_CHAOS_PENDING=1.
func skipPending(t *testing.T, target chaos.Target, scenario string) {
	if why, ok := pending[target.Name+"/"+scenario]; ok && os.Getenv("MQRPC_CHAOS_PENDING") != "1" {
		t.Skipf("issue 17, fix not on main yet: %s (MQRPC_CHAOS_PENDING=1 runs it)", why)
	}
}

// runDurable runs the scenarios of one durable target that share its
// broker without disturbing it, side by side, then checks the process
// for leaks once for all of them.
func runDurable(t *testing.T, target chaos.Target, node *chaos.Node) {
	before := measure()
	scenarios := []struct {
		name string
		run  func(*testing.T, chaos.Target, *chaos.Node)
	}{
		{"kill-new-server", runKillNewServer},
		{"crash-poison", func(t *testing.T, target chaos.Target, node *chaos.Node) { runCrashPoison(t, target, node, false) }},
		{"crash-poison-claims", func(t *testing.T, target chaos.Target, node *chaos.Node) { runCrashPoison(t, target, node, true) }},
		{"fail-deadline", runFailDeadline},
		{"id-two-services", runIDTwoServices},
		{"foreign-deadline", runForeignDeadline},
	}
	t.Run("durable", func(t *testing.T) {
		for _, sc := range scenarios {
			t.Run(sc.name, func(t *testing.T) {
				skipPending(t, target, sc.name)
				t.Parallel()
				sc.run(t, target, node)
			})
		}
	})
	after := settle(before)
	if !assert.LessOrEqual(t, after.goroutines, before.goroutines+goroutineSlack, "goroutines leaked by the durable scenarios") {
		t.Logf("goroutines left:\n%s", goroutineSummary())
	}
	var grown uint64
	if after.heap > before.heap {
		grown = after.heap - before.heap
	}
	assert.LessOrEqual(t, grown, uint64(heapBound), "heap grew by %d MiB", grown>>20)
}

// seq numbers the bodies of the requests the scenarios track, so a dead
// letter is recognised by its body on every broker.
var seq atomic.Int64

func init() { seq.Store(time.Now().UnixMilli() % 1e9 * 1000) }

func trackedBody() (int64, []byte) {
	n := seq.Add(1)
	return n, []byte(`{"n":` + strconv.FormatInt(n, 10) + `}`)
}

func bodyN(b []byte) int64 {
	var r chaos.WorkRequest
	if json.Unmarshal(b, &r) != nil {
		return 0
	}
	return r.N
}

func request(subject, method, id string, body []byte, deadline time.Time) *broker.Message {
	return &broker.Message{
		ID: id, Subject: subject, Deadline: deadline, Body: body,
		Header: broker.Header{broker.HeaderMethod: method, broker.HeaderContentType: jsonCT},
	}
}

// send sends m one-way, its wait bounded by a timer rather than a ctx
// deadline (a broker may take a ctx deadline for the message's TTL).
func send(b broker.Broker, m *broker.Message) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	timer := time.AfterFunc(10*time.Second, cancel)
	defer timer.Stop()
	return b.Send(ctx, m)
}

// deadLetters opens the dead-letter reader of subject, failing the test
// for a target without one.
func (s *scenario) deadLetters(node *chaos.Node, subj string) *chaos.DeadLetterReader {
	dl, err := s.target.DeadLetters(node.Addr, subj)
	require.NoError(s.t, err)
	s.closers = append(s.closers, dl.Close)
	return dl
}

// deadLettered returns the dead letters read so far by body number.
func deadLettered(dl *chaos.DeadLetterReader) map[int64]chaos.DeadLetter {
	all, _ := dl.Poll() // not there yet is an error on some brokers: keep polling
	out := map[int64]chaos.DeadLetter{}
	for _, d := range all {
		out[bodyN(d.Body)] = d
	}
	return out
}

// waitFor polls cond every 100 ms until it holds or within passes.
func waitFor(within time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(within)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(100 * time.Millisecond) // poll interval of a bounded wait
	}
}

// gaps returns the time between consecutive starts.
func gaps(starts []time.Time) []time.Duration {
	var g []time.Duration
	for i := 1; i < len(starts); i++ {
		g = append(g, starts[i].Sub(starts[i-1]))
	}
	return g
}

func minGap(g []time.Duration) time.Duration {
	m := time.Duration(-1)
	for _, d := range g {
		if m < 0 || d < m {
			m = d
		}
	}
	return m
}

// runKillNewServer SIGKILLs the only server process mid-request and starts
// a new process afterwards, as a supervisor would: every accepted request
// is served by the new process, none twice except the few the killed one
// executed but had not stored in the shared dedup store yet.
func runKillNewServer(t *testing.T, target chaos.Target, node *chaos.Node) {
	s := newScenario(t, target, "kill-new-server")
	s.parallel = true
	defer s.finish()
	subj := subject("killnew")
	env := chaos.ChildEnv(target, node.Addr, subj, sharedStore(t, target, node, subj))
	first, err := chaos.StartChild(env, s.log, recoverWithin)
	require.NoError(t, err)
	s.closers = append(s.closers, func() { first.Stop(15 * time.Second) })
	b, c := s.client(node)
	awaitService(t, c, subj, recoverWithin)

	cfg := s.loadConfig(subj)
	cfg.Callers = smallCallers
	stopLoad := s.startLoad(c, b, cfg)
	inFlight := s.killBusy(first, 1500*time.Millisecond, 20)
	killed := time.Now()
	second, err := chaos.StartChild(env, s.log, recoverWithin)
	require.NoError(t, err)
	s.closers = append(s.closers, func() { second.Stop(15 * time.Second) })
	s.note("killed the only server with %d requests in flight; a new process served %v after the kill",
		inFlight, time.Since(killed).Round(time.Millisecond))
	time.Sleep(3 * time.Second) // load on the new process
	s.load(stopLoad())
	awaitService(t, c, subj, recoverWithin)
	assert.Positive(t, s.log.ExecutionsBy(second.Name), "the new server process executed nothing")
}

// runBrokerKill SIGKILLs the broker under load and starts it again on the
// same data: every confirmed request is still served.
func runBrokerKill(t *testing.T, target chaos.Target, node *chaos.Node) {
	s := newScenario(t, target, "broker-sigkill")
	defer s.finish()
	subj := subject("bkill")
	b, c := s.twoServers(node, subj)

	cfg := s.loadConfig(subj)
	cfg.Callers = smallCallers * 2
	stopLoad := s.startLoad(c, b, cfg)
	time.Sleep(2 * time.Second) // load before the kill: the scenario's shape
	outage, err := node.Kill()
	require.NoError(t, err, "SIGKILL and start %s", target.Kind)
	recovered := awaitService(t, newClient(b), subj, recoverWithin)
	s.note("broker SIGKILLed and up again in %v, service answered %v later", outage.Round(time.Millisecond), recovered.Round(time.Millisecond))
	time.Sleep(3 * time.Second) // load after recovery
	s.load(stopLoad())
}

// supervisor keeps one child server running, starting a new one whenever
// it exits, up to a limit, as systemd or Kubernetes would.
type supervisor struct {
	mu      sync.Mutex
	crashes int
	names   []string
	limit   int
	stopped bool
	current *chaos.Child
	done    chan struct{}
	err     error
}

func startSupervisor(env []string, log *chaos.ExecLog, limit int) (*supervisor, error) {
	c, err := chaos.StartChild(env, log, recoverWithin)
	if err != nil {
		return nil, err
	}
	sv := &supervisor{limit: limit, current: c, names: []string{c.Name}, done: make(chan struct{})}
	go func() {
		defer close(sv.done)
		for {
			sv.mu.Lock()
			cur := sv.current
			sv.mu.Unlock()
			<-cur.Exited()
			sv.mu.Lock()
			if sv.stopped {
				sv.mu.Unlock()
				return
			}
			sv.crashes++
			if sv.crashes >= sv.limit {
				sv.err = fmt.Errorf("%d server processes crashed: gave up restarting", sv.crashes)
				sv.mu.Unlock()
				return
			}
			sv.mu.Unlock()
			next, err := chaos.StartChild(env, log, recoverWithin)
			sv.mu.Lock()
			if err != nil {
				sv.err = err
				sv.mu.Unlock()
				return
			}
			sv.current = next
			sv.names = append(sv.names, next.Name)
			stopped := sv.stopped
			sv.mu.Unlock()
			if stopped {
				next.Stop(15 * time.Second)
				return
			}
		}
	}()
	return sv, nil
}

func (sv *supervisor) Crashes() int {
	sv.mu.Lock()
	defer sv.mu.Unlock()
	return sv.crashes
}

func (sv *supervisor) Stop() {
	sv.mu.Lock()
	sv.stopped = true
	cur := sv.current
	sv.mu.Unlock()
	cur.Stop(15 * time.Second)
	<-sv.done
}

// runCrashPoison sends a request that crashes its server process among
// healthy ones; a supervisor starts a new process after each crash. The
// poison must be dead-lettered after at most MaxDeliver deliveries, and
// the healthy requests all served, none dead-lettered with it and none
// later than the poison's own handling (plus poisonSlack).
//
// The servers share a dedup store: with claims false a directory (load and
// store only), with claims true the store of sharedStore, which claims each
// key for a lease while its request runs, so a request the crashed process
// held waits for its claim to run out (crash-poison-claims).
func runCrashPoison(t *testing.T, target chaos.Target, node *chaos.Node, claims bool) {
	name, store := "crash-poison", t.TempDir()
	subj := subject("crash")
	if claims {
		name, store = "crash-poison-claims", sharedStore(t, target, node, subj)
	}
	s := newScenario(t, target, name)
	s.parallel = true
	defer s.finish()
	dl := s.deadLetters(node, subj)
	env := chaos.ChildEnv(target, node.Addr, subj, store)
	sv, err := startSupervisor(env, s.log, chaos.MaxDeliver+4)
	require.NoError(t, err)
	s.closers = append(s.closers, sv.Stop)
	b, c := s.client(node)
	awaitService(t, rpc.NewClient(b), subj, recoverWithin)

	const healthy = 10 // one-way sends before and as many after the poison
	sentAt := map[string]time.Time{}
	var ids []string
	healthyN := map[int64]string{}
	sendHealthy := func() {
		for i := 0; i < healthy; i++ {
			n, body := trackedBody()
			id := "healthy-" + broker.NewID()
			at := time.Now()
			if err := send(b, request(subj, chaos.MethodRecord, id, body, time.Time{})); err != nil {
				t.Errorf("healthy send: %v", err)
				continue
			}
			sentAt[id], healthyN[n] = at, id
			ids = append(ids, id)
		}
	}
	// Calls too, waiting for their replies across the crashes.
	var (
		callWG   sync.WaitGroup
		callMu   sync.Mutex
		outcomes = map[string]rpc.Code{}
	)
	call := func() {
		defer callWG.Done()
		id := "hcall-" + broker.NewID()
		ctx, cancel := context.WithTimeout(context.Background(), deadLetterWithin)
		defer cancel()
		var out chaos.WorkReply
		err := c.Call(ctx, subj, chaos.MethodWork, &chaos.WorkRequest{N: 1}, &out, rpc.WithMessageID(id))
		callMu.Lock()
		outcomes[id] = rpc.CodeOf(err)
		callMu.Unlock()
	}
	for i := 0; i < 3; i++ {
		callWG.Add(1)
		go call()
	}
	sendHealthy()
	poisonN, poisonBody := trackedBody()
	poisonID := "poison-" + broker.NewID()
	poisonAt := time.Now()
	require.NoError(t, send(b, request(subj, chaos.MethodCrash, poisonID, poisonBody, time.Time{})))
	for i := 0; i < 3; i++ {
		callWG.Add(1)
		go call()
	}
	sendHealthy()
	s.accepted = append(s.accepted, ids...)
	s.row.Accepted = len(s.accepted)

	var poisonDead time.Duration
	done := waitFor(deadLetterWithin, func() bool {
		if sv.err != nil {
			return true
		}
		if _, ok := deadLettered(dl)[poisonN]; ok && poisonDead == 0 {
			poisonDead = time.Since(poisonAt)
		}
		return poisonDead > 0 && len(s.log.Missing(chaos.MethodRecord, ids)) == 0
	})
	callWG.Wait()
	s.drained = true
	dead := deadLettered(dl)
	deliveries := len(s.log.Starts(chaos.MethodCrash, poisonID))
	crashes := sv.Crashes()
	var draggedDead []string
	for n, id := range healthyN {
		if _, ok := dead[n]; ok {
			draggedDead = append(draggedDead, id)
		}
	}
	var latest time.Duration
	for _, id := range ids {
		if n, at := s.log.ExecutedCount(chaos.MethodRecord, id); n > 0 && at.Sub(sentAt[id]) > latest {
			latest = at.Sub(sentAt[id])
		}
	}
	s.victims = append(s.victims, sv.names...) // every process but the last crashed
	s.row.Calls = int64(len(outcomes))
	codes := map[rpc.Code]int64{}
	for _, code := range outcomes {
		codes[code]++
	}
	s.row.Codes = chaos.FormatCodes(codes)
	s.outcomes = outcomes
	d, ok := dead[poisonN]
	s.note("poison: %d deliveries reached the handler, %d processes crashed, dead-lettered %v (after %v, stated deliveries %d); "+
		"%d healthy requests: latest served %v after sending, %d dead-lettered with the poison",
		deliveries, crashes, ok, poisonDead.Round(time.Millisecond), d.Deliveries, len(ids), latest.Round(time.Millisecond), len(draggedDead))
	t.Logf("%s", s.row.Note)
	assert.NoError(t, sv.err, "the poison kept crashing the servers (deliveries %d, never dead-lettered)", deliveries)
	assert.True(t, done, "the poison was not dead-lettered, or the healthy requests not served, within the bound")
	assert.True(t, ok, "the poison was never dead-lettered")
	assert.LessOrEqual(t, deliveries, chaos.MaxDeliver, "the poison reached the handler more often than MaxDeliver")
	assert.Empty(t, draggedDead, "healthy requests dead-lettered with the poison")
	for _, id := range ids {
		assert.LessOrEqual(t, len(s.log.Starts(chaos.MethodRecord, id)), chaos.MaxDeliver,
			"healthy request %s delivered more often than MaxDeliver", id)
	}
	if poisonDead > 0 {
		assert.LessOrEqual(t, latest, poisonDead+poisonSlack, "healthy requests delayed beyond the poison's own handling")
	}
	assert.Equal(t, int64(len(outcomes)), codes[rpc.OK], "healthy calls did not all succeed: %s", s.row.Codes)
}

// runFailDeadline fails every delivery of a request with a deadline (and,
// as controls, of a one-way message with one and without one): each must
// be dead-lettered after at most MaxDeliver deliveries, with a backoff
// between them, and the broker must not redeliver it in a loop the
// handler never sees.
func runFailDeadline(t *testing.T, target chaos.Target, node *chaos.Node) {
	s := newScenario(t, target, "fail-deadline")
	s.parallel = true
	defer s.finish()
	subj := subject("faildl")
	dl := s.deadLetters(node, subj)
	srv := chaos.NewServer(s.log, middleware.NewMemoryDedupStore(0, 0))
	s.serveInProcess(node, subj, srv, "server")
	b, c := s.client(node)
	awaitService(t, c, subj, recoverWithin)

	type msg struct {
		name string
		id   string
		n    int64
	}
	var msgs []msg
	// The request: its caller waits for a reply that never comes.
	reqN, reqBody := trackedBody()
	reqID := "fail-req-" + broker.NewID()
	msgs = append(msgs, msg{"request with deadline", reqID, reqN})
	var (
		callWG   sync.WaitGroup
		callCode rpc.Code
	)
	// The deadline leaves room for MaxDeliver deliveries on the slowest
	// schedule (RocketMQ: 1 s, 5 s, then 10 s); the test stops waiting
	// for the reply once the request is dead-lettered (none comes).
	callCtx, stopCall := context.WithTimeout(context.Background(), failDeadline)
	defer stopCall()
	callWG.Add(1)
	go func() {
		defer callWG.Done()
		ctx := callCtx
		reply, err := b.Request(ctx, request(subj, chaos.MethodFail, reqID, reqBody, time.Time{}))
		if err == nil {
			err = rpc.ErrorFromReply(reply)
		}
		callCode = rpc.CodeOf(err)
	}()
	for _, dlTime := range []time.Duration{failDeadline, 0} {
		n, body := trackedBody()
		id := "fail-send-" + broker.NewID()
		var deadline time.Time
		name := "one-way without deadline"
		if dlTime > 0 {
			deadline, name = time.Now().Add(dlTime), "one-way with deadline"
		}
		require.NoError(t, send(b, request(subj, chaos.MethodFail, id, body, deadline)))
		msgs = append(msgs, msg{name, id, n})
	}
	s.row.Accepted = len(msgs)
	waitFor(deadLetterWithin, func() bool {
		dead := deadLettered(dl)
		for _, m := range msgs {
			if _, ok := dead[m.n]; !ok {
				return false
			}
		}
		return true
	})
	stopCall()
	callWG.Wait()
	s.drained = true
	dead := deadLettered(dl)
	handled := 0
	for _, m := range msgs {
		starts := s.log.Starts(chaos.MethodFail, m.id)
		handled += len(starts)
		d, ok := dead[m.n]
		g := gaps(starts)
		s.note("%s: %d deliveries, gaps %v, dead-lettered %v (stated deliveries %d)", m.name, len(starts), roundAll(g), ok, d.Deliveries)
		if !ok {
			s.row.Lost++
		}
		assert.True(t, ok, "%s: never dead-lettered (%d deliveries reached the handler)", m.name, len(starts))
		assert.NotEmpty(t, starts, "%s: never reached the handler", m.name)
		assert.LessOrEqual(t, len(starts), chaos.MaxDeliver, "%s: delivered more often than MaxDeliver", m.name)
		if len(g) > 0 {
			assert.GreaterOrEqual(t, minGap(g), minRedelivery, "%s: redelivered without a backoff: gaps %v", m.name, roundAll(g))
		}
	}
	s.row.Calls = 1
	s.row.Codes = chaos.FormatCodes(map[rpc.Code]int64{callCode: 1})
	assert.NotEqual(t, rpc.OK, callCode, "a request that only fails was answered OK")
	if target.Name == "nats-jetstream" {
		// The broker's own count: a loop that never reaches the handler
		// (a dead letter that cannot be stored, NAKed at once) shows here.
		n, err := chaos.JetStreamDeliveries(node.Addr, subj)
		if assert.NoError(t, err) {
			s.note("JetStream delivered %d times in all", n)
			assert.LessOrEqual(t, n, uint64(handled+len(msgs)*2+5), "JetStream redelivered far more often than the handler saw")
		}
	}
}

func roundAll(ds []time.Duration) []time.Duration {
	out := make([]time.Duration, len(ds))
	for i, d := range ds {
		out[i] = d.Round(time.Millisecond)
	}
	return out
}

// runIDTwoServices sends the same message ID to two services, one-way and
// as a call: both services run it.
func runIDTwoServices(t *testing.T, target chaos.Target, node *chaos.Node) {
	s := newScenario(t, target, "id-two-services")
	s.parallel = true
	defer s.finish()
	subjA, subjB := subject("ida"), subject("idb")
	logB := chaos.NewExecLog()
	s.serveInProcess(node, subjA, chaos.NewServer(s.log, middleware.NewMemoryDedupStore(0, 0)), "server-a")
	s.serveInProcess(node, subjB, chaos.NewServer(logB, middleware.NewMemoryDedupStore(0, 0)), "server-b")
	b, c := s.client(node)
	awaitService(t, c, subjA, recoverWithin)
	awaitService(t, c, subjB, recoverWithin)

	sendID := "same-send-" + broker.NewID()
	callID := "same-call-" + broker.NewID()
	accepted := 0
	for _, subj := range []string{subjA, subjB} {
		_, body := trackedBody()
		if err := send(b, request(subj, chaos.MethodRecord, sendID, body, time.Time{})); err != nil {
			t.Errorf("send to %s: %v", subj, err)
		} else {
			accepted++
		}
	}
	codes := map[rpc.Code]int64{}
	for _, subj := range []string{subjA, subjB} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		var out chaos.WorkReply
		err := c.Call(ctx, subj, chaos.MethodWork, &chaos.WorkRequest{N: 7}, &out, rpc.WithMessageID(callID))
		cancel()
		codes[rpc.CodeOf(err)]++
		if err != nil {
			t.Errorf("call %s with the ID already used for the other service: %v", subj, err)
		}
	}
	s.row.Calls, s.row.Codes, s.row.Accepted = 2, chaos.FormatCodes(codes), accepted
	missA := s.log.WaitServed(chaos.MethodRecord, []string{sendID}, 20*time.Second)
	missB := logB.WaitServed(chaos.MethodRecord, []string{sendID}, 20*time.Second)
	s.row.Lost = len(missA) + len(missB)
	callA, _ := s.log.ExecutedCount(chaos.MethodWork, callID)
	callB, _ := logB.ExecutedCount(chaos.MethodWork, callID)
	s.note("one-way: service A ran it %v, service B %v; call: A ran it %d times, B %d", len(missA) == 0, len(missB) == 0, callA, callB)
	s.drained = true
	assert.Empty(t, missA, "service A never ran the one-way request")
	assert.Empty(t, missB, "service B never ran the one-way request whose ID service A had used")
	assert.Equal(t, 1, callA, "service A's executions of the call")
	assert.Equal(t, 1, callB, "service B's executions of the call whose ID service A had used")
}

// foreignCase is a request a plain client sends with a raw mqrpc-deadline.
type foreignCase struct {
	name, deadline string
	// serve is true when the deadline is valid (far ahead): the request
	// must run; otherwise it must be refused clearly.
	serve bool
}

func foreignCases() []foreignCase {
	farMs := time.Now().UnixMilli() + 300*365*24*3600*1000 // 300 years: over time.Duration's 292
	return []foreignCase{
		{"300-years", strconv.FormatInt(farMs, 10), true},
		{"max-int64", "9223372036854775807", true},
		{"negative", "-1500", false},
		{"zero", "0", false},
		{"malformed", "tomorrow-ish", false},
		{"over-int64", "99999999999999999999", false},
	}
}

// runForeignDeadline sends requests and one-way messages with
// out-of-range deadlines through the broker's plain client (and, for the
// far future, through mqrpc's own): a far deadline is served, exactly
// once; a malformed or negative one gets an InvalidArgument reply or is
// dead-lettered; none is lost or redelivered in a loop.
func runForeignDeadline(t *testing.T, target chaos.Target, node *chaos.Node) {
	s := newScenario(t, target, "foreign-deadline")
	s.parallel = true
	defer s.finish()
	subj := subject("foreign")
	dl := s.deadLetters(node, subj)
	srv := chaos.NewServer(s.log, middleware.NewMemoryDedupStore(0, 0))
	b, c := s.client(node)
	// A server runs once and stops, so the queue (or consumer) exists;
	// everything is then sent while no server runs, and the server comes
	// back after a TTL cut short (a second) would have dropped them.
	first, err := target.Open(node.Addr, "first-server")
	require.NoError(t, err)
	sub, err := first.Serve(subj, srv)
	require.NoError(t, err)
	awaitService(t, c, subj, recoverWithin)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	require.NoError(t, sub.Stop(ctx))
	cancel()
	require.NoError(t, first.Close())
	jsBefore := uint64(0)
	if target.Name == "nats-jetstream" {
		n, err := chaos.JetStreamDeliveries(node.Addr, subj)
		require.NoError(t, err)
		jsBefore = n
	}

	type sent struct {
		fc      foreignCase
		oneWay  bool
		id      string
		n       int64
		outcome string
	}
	var (
		mu      sync.Mutex
		all     []*sent
		wg      sync.WaitGroup
		ownSent int
	)
	for _, fc := range foreignCases() {
		for _, oneWay := range []bool{false, true} {
			n, body := trackedBody()
			x := &sent{fc: fc, oneWay: oneWay, id: "foreign-" + broker.NewID(), n: n}
			all = append(all, x)
			method := chaos.MethodWork
			if oneWay {
				method = chaos.MethodRecord
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				pm := plainMsg{id: x.id, method: method, deadline: fc.deadline, body: body, oneWay: oneWay}
				if !fc.serve {
					// With a TTL of its own, as a client copying mqrpc's
					// requests sends: the dead letter must not keep it.
					pm.natsTTL = "60"
				}
				out, err := plainSend(ctx, target, node.Addr, subj, pm)
				if err != nil {
					out = "error: " + err.Error()
				}
				mu.Lock()
				x.outcome = out
				mu.Unlock()
			}()
		}
	}
	// mqrpc's own client with a deadline 300 years ahead (time.Time holds
	// it; a time.Duration until it does not).
	far := time.Now().AddDate(300, 0, 0)
	_, farBody := trackedBody()
	farID := "far-own-" + broker.NewID()
	if err := send(b, request(subj, chaos.MethodRecord, farID, farBody, far)); err != nil {
		t.Errorf("mqrpc Send with a deadline 300 years ahead: %v", err)
	} else {
		ownSent++
	}
	farCallID := "far-own-call-" + broker.NewID()
	wg.Add(1)
	var farCall string
	go func() {
		defer wg.Done()
		// The test's bound on the wait, not the request's deadline.
		tctx, tcancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer tcancel()
		_, body := trackedBody()
		m := request(subj, chaos.MethodWork, farCallID, body, far)
		reply, err := b.Request(tctx, m)
		if err == nil {
			err = rpc.ErrorFromReply(reply)
		}
		farCall = rpc.CodeOf(err).String()
	}()
	time.Sleep(2500 * time.Millisecond) // no server for longer than a 1 s TTL: the point of the scenario
	s.serveInProcess(node, subj, srv, "server")
	wg.Wait()

	// Let the broker settle the refused ones (dead-lettering).
	waitFor(20*time.Second, func() bool {
		dead := deadLettered(dl)
		for _, x := range all {
			if !x.fc.serve && x.oneWay {
				if _, ok := dead[x.n]; !ok {
					return false
				}
			}
		}
		return true
	})
	missingFar := s.log.WaitServed(chaos.MethodRecord, []string{farID}, 10*time.Second)
	s.drained = true
	dead := deadLettered(dl)
	var summary []string
	lost := len(missingFar)
	for _, x := range all {
		method := chaos.MethodWork
		kind := "request"
		if x.oneWay {
			method, kind = chaos.MethodRecord, "one-way"
		}
		execs, _ := s.log.ExecutedCount(method, x.id)
		_, isDead := dead[x.n]
		summary = append(summary, fmt.Sprintf("%s %s→%s exec=%d dead=%v", x.fc.name, kind, x.outcome, execs, isDead))
		if x.fc.serve {
			assert.Equal(t, 1, execs, "%s %s: executions", x.fc.name, kind)
			if !x.oneWay {
				assert.Equal(t, rpc.OK.String(), x.outcome, "%s request: outcome", x.fc.name)
			}
			if execs == 0 {
				lost++
			}
			continue
		}
		assert.Zero(t, execs, "%s %s: a request with a bad deadline ran", x.fc.name, kind)
		if x.oneWay {
			if !isDead {
				lost++
			}
			assert.True(t, isDead, "%s one-way: neither run nor dead-lettered (outcome %s)", x.fc.name, x.outcome)
		} else {
			assert.True(t, x.outcome == codeInvalid || isDead,
				"%s request: no clear outcome (got %s, dead-lettered %v)", x.fc.name, x.outcome, isDead)
		}
	}
	sort.Strings(summary)
	farExecs, _ := s.log.ExecutedCount(chaos.MethodRecord, farID)
	farCallExecs, _ := s.log.ExecutedCount(chaos.MethodWork, farCallID)
	summary = append(summary, fmt.Sprintf("mqrpc-300-years one-way exec=%d", farExecs),
		fmt.Sprintf("mqrpc-300-years request→%s exec=%d", farCall, farCallExecs))
	assert.Equal(t, 1, farExecs, "mqrpc Send with a deadline 300 years ahead: executions")
	assert.Equal(t, rpc.OK.String(), farCall, "mqrpc Request with a deadline 300 years ahead")
	s.row.Lost = lost
	s.row.Accepted = len(all) + ownSent
	s.note("%s", strings.Join(summary, "; "))
	t.Logf("outcomes: %s", strings.Join(summary, "; "))
	if target.Name == "nats-jetstream" {
		n, err := chaos.JetStreamDeliveries(node.Addr, subj)
		if assert.NoError(t, err) {
			s.note("JetStream deliveries: %d for %d messages", n-jsBefore, len(all)+2)
			assert.LessOrEqual(t, n-jsBefore, uint64((len(all)+2)*chaos.MaxDeliver), "JetStream redelivered in a loop")
		}
	}
}
