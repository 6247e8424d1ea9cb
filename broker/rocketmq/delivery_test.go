package rocketmq_test

// Durable delivery against the real broker (issue 17): failed deliveries
// are retried with a backoff and dead-lettered after the configured count,
// with or without a deadline and whatever the message claims; a request
// that crashes its server process counts as a delivery and does not hold
// back the messages queued with it.

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	rmq "github.com/apache/rocketmq-client-go/v2"
	"github.com/apache/rocketmq-client-go/v2/consumer"
	"github.com/apache/rocketmq-client-go/v2/primitive"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/rocketmq"
)

// deliveryLog records when each message ID reached a handler.
type deliveryLog struct {
	mu    sync.Mutex
	times map[string][]time.Time
}

func newDeliveryLog() *deliveryLog { return &deliveryLog{times: map[string][]time.Time{}} }

func (l *deliveryLog) add(id string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.times[id] = append(l.times[id], time.Now())
}

func (l *deliveryLog) get(id string) []time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]time.Time(nil), l.times[id]...)
}

// deadLetters reads the dead-letter topic of group from its start and
// returns a function giving the KEYS (message IDs) read so far with the
// broker's reconsume count of each. The topic exists once the broker
// dead-lettered something, so the consumer is started on the first call
// that finds it.
func deadLetters(t *testing.T, group string) func() map[string]int32 {
	addr := realBroker(t)
	var (
		mu      sync.Mutex
		got     = map[string]int32{}
		pc      rmq.PushConsumer
		lastTry time.Time
	)
	t.Cleanup(func() {
		if pc != nil {
			_ = pc.Shutdown()
		}
	})
	return func() map[string]int32 {
		if pc == nil && time.Since(lastTry) > 2*time.Second {
			lastTry = time.Now()
			c, err := rmq.NewPushConsumer(
				consumer.WithNsResolver(primitive.NewPassthroughResolver([]string{addr})),
				consumer.WithGroupName("dlq_"+group),
				consumer.WithInstance("dlq-"+broker.NewID()),
				consumer.WithConsumeFromWhere(consumer.ConsumeFromFirstOffset),
			)
			require.NoError(t, err)
			err = c.Subscribe("%DLQ%"+group, consumer.MessageSelector{}, func(_ context.Context, msgs ...*primitive.MessageExt) (consumer.ConsumeResult, error) {
				mu.Lock()
				defer mu.Unlock()
				for _, m := range msgs {
					got[m.GetKeys()] = m.ReconsumeTimes
				}
				return consumer.ConsumeSuccess, nil
			})
			if err == nil {
				err = c.Start()
			}
			if err == nil {
				pc = c
			} else {
				_ = c.Shutdown()
			}
		}
		mu.Lock()
		defer mu.Unlock()
		out := make(map[string]int32, len(got))
		for k, v := range got {
			out[k] = v
		}
		return out
	}
}

// Every delivery fails: a one-way message with and without a deadline, a
// request whose deadline passes while it waits for a redelivery, and a
// message from a plain client claiming 99 earlier deliveries in every
// property it could use. Each is redelivered with a backoff, never more
// than the configured number of times, and ends in %DLQ%<group>; only the
// request may stop early, when its deadline passed (dead-lettered then,
// not dropped).
func TestRealFailedDeliveriesDeadLettered(t *testing.T) {
	const maxDeliveries = 3
	subj := topic(t)
	log := newDeliveryLog()
	srv, err := rocketmq.New(realBroker(t), rocketmq.WithLogger(testLogger()), rocketmq.WithMaxDeliveries(maxDeliveries),
		rocketmq.WithDeliveryJournal(t.TempDir()))
	require.NoError(t, err)
	t.Cleanup(func() { _ = srv.Close() })
	_, err = srv.Serve(subj, broker.HandlerFunc(func(_ context.Context, req *broker.Message) (*broker.Message, error) {
		log.add(req.ID)
		return nil, fmt.Errorf("failing %s on purpose", req.ID)
	}))
	require.NoError(t, err)
	time.Sleep(settle)
	dead := deadLetters(t, subj)
	c := client(t)

	require.NoError(t, c.Send(context.Background(), &broker.Message{ID: "oneway-" + broker.NewID(), Subject: subj, Body: []byte("a")}))
	oneway := ""
	withDeadline := "deadline-" + broker.NewID()
	require.NoError(t, c.Send(context.Background(), &broker.Message{ID: withDeadline, Subject: subj, Body: []byte("b"), Deadline: time.Now().Add(2 * time.Minute)}))
	request := "request-" + broker.NewID()
	go func() {
		// Its deadline passes before the third delivery (after 1 s and 5 s).
		ctx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
		defer cancel()
		_, _ = c.Request(ctx, &broker.Message{ID: request, Subject: subj, Body: []byte("c")})
	}()
	forged := "forged-" + broker.NewID()
	m := primitive.NewMessage(subj, []byte("d"))
	m.WithProperties(map[string]string{"RECONSUME_TIME": "99", "MAX_RECONSUME_TIMES": "1", "mqrpc-deliveries": "99"})
	m.WithKeys([]string{forged}) // after WithProperties, which replaces them all
	_, err = rawProducer(t).SendSync(context.Background(), m)
	require.NoError(t, err)

	// Find the first one-way's ID (Send filled it in).
	time.Sleep(500 * time.Millisecond)
	log.mu.Lock()
	for id := range log.times {
		if strings.HasPrefix(id, "oneway-") {
			oneway = id
		}
	}
	log.mu.Unlock()
	require.NotEmpty(t, oneway, "the one-way message never reached the handler")

	ids := []string{oneway, withDeadline, request, forged}
	deadline := time.Now().Add(90 * time.Second)
	var got map[string]int32
	for time.Now().Before(deadline) {
		got = dead()
		missing := 0
		for _, id := range ids {
			if _, ok := got[id]; !ok {
				missing++
			}
		}
		if missing == 0 {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	time.Sleep(2 * time.Second) // a delivery after dead-lettering would show now
	for _, id := range ids {
		times := log.get(id)
		var gaps []time.Duration
		for i := 1; i < len(times); i++ {
			gaps = append(gaps, times[i].Sub(times[i-1]).Round(time.Millisecond))
		}
		_, ok := got[id]
		t.Logf("%s: %d deliveries, gaps %v, dead-lettered %v", id, len(times), gaps, ok)
		assert.True(t, ok, "%s: not dead-lettered", id)
		assert.LessOrEqual(t, len(times), maxDeliveries, "%s: delivered more often than the limit", id)
		if id != request {
			assert.Equal(t, maxDeliveries, len(times), "%s: dead-lettered before the limit", id)
		}
		for _, g := range gaps {
			assert.GreaterOrEqual(t, g, 500*time.Millisecond, "%s: redelivered without a backoff", id)
		}
	}
}

// Crash test: a child process serves the topic and exits (as a crash
// would) when it is handed the poison. The parent restarts it after each
// exit, as a supervisor would, and sends healthy one-way messages around
// the poison.
const (
	envCrashChild   = "MQRPC_ROCKETMQ_CRASH_CHILD"
	envCrashTopic   = "MQRPC_ROCKETMQ_CRASH_TOPIC"
	envCrashJournal = "MQRPC_ROCKETMQ_CRASH_JOURNAL"
	crashMax        = 3
)

// TestRealCrashChild is the child server of TestRealCrashPoison; it skips
// unless started by it.
func TestRealCrashChild(t *testing.T) {
	if os.Getenv(envCrashChild) == "" {
		t.Skip("child of TestRealCrashPoison")
	}
	dir := os.Getenv(envCrashJournal)
	if dir == "-" {
		dir = ""
	}
	b, err := rocketmq.New(realBroker(t), rocketmq.WithMaxDeliveries(crashMax), rocketmq.WithDeliveryJournal(dir), rocketmq.WithLogger(testLogger()))
	require.NoError(t, err)
	var mu sync.Mutex
	_, err = b.Serve(os.Getenv(envCrashTopic), broker.HandlerFunc(func(_ context.Context, req *broker.Message) (*broker.Message, error) {
		mu.Lock()
		fmt.Printf("S %s\n", req.ID) // unbuffered: written before the exit
		mu.Unlock()
		if strings.HasPrefix(req.ID, "poison-") {
			syscall.Exit(3)
		}
		time.Sleep(20 * time.Millisecond)
		mu.Lock()
		fmt.Printf("E %s\n", req.ID)
		mu.Unlock()
		return nil, nil
	}))
	require.NoError(t, err)
	fmt.Println("ready")
	time.Sleep(5 * time.Minute) // the parent kills it
}

// crashChild is one child process and what it reported.
type crashChild struct {
	cmd    *exec.Cmd
	exited chan struct{}
}

func startCrashChild(t *testing.T, subj, journal string, lines chan<- string) *crashChild {
	cmd := exec.Command(os.Args[0], "-test.run", "^TestRealCrashChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), envCrashChild+"=1", envCrashTopic+"="+subj, envCrashJournal+"="+journal)
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	cmd.Stderr = os.Stderr
	require.NoError(t, cmd.Start())
	c := &crashChild{cmd: cmd, exited: make(chan struct{})}
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(out)
		once := sync.Once{}
		for sc.Scan() {
			if sc.Text() == "ready" {
				once.Do(func() { close(ready) })
				continue
			}
			lines <- sc.Text()
		}
		_ = cmd.Wait()
		once.Do(func() { close(ready) })
		close(c.exited)
	}()
	select {
	case <-ready:
	case <-time.After(60 * time.Second):
		t.Fatal("child server not ready")
	}
	return c
}

// A poison that crashes its server process is handed to the handler at
// most the configured number of times, then dead-lettered; the healthy
// messages sent before and after it are all served, none dead-lettered,
// none held back until the poison is.
func TestRealCrashPoison(t *testing.T) {
	runCrashPoison(t, t.TempDir())
}

func runCrashPoison(t *testing.T, journal string) {
	subj := topic(t)
	lines := make(chan string, 1000)
	var (
		mu       sync.Mutex
		starts   = map[string][]time.Time{}
		executed = map[string]time.Time{}
	)
	go func() {
		for l := range lines {
			kind, id, _ := strings.Cut(l, " ")
			mu.Lock()
			switch kind {
			case "S":
				starts[id] = append(starts[id], time.Now())
			case "E":
				if _, ok := executed[id]; !ok {
					executed[id] = time.Now()
				}
			}
			mu.Unlock()
		}
	}()
	child := startCrashChild(t, subj, journal, lines)
	time.Sleep(settle)
	dead := deadLetters(t, subj)
	c := client(t)
	sent := map[string]time.Time{}
	sendHealthy := func() {
		for range 10 {
			id := "healthy-" + broker.NewID()
			sent[id] = time.Now()
			require.NoError(t, c.Send(context.Background(), &broker.Message{ID: id, Subject: subj, Body: []byte("ok")}))
		}
	}
	sendHealthy()
	poison := "poison-" + broker.NewID()
	poisonAt := time.Now()
	require.NoError(t, c.Send(context.Background(), &broker.Message{ID: poison, Subject: subj, Body: []byte("boom")}))
	sendHealthy()

	crashes := 0
	var poisonDead time.Duration
	deadline := time.Now().Add(120 * time.Second)
	for time.Now().Before(deadline) && crashes <= crashMax+3 {
		select {
		case <-child.exited:
			crashes++
			child = startCrashChild(t, subj, journal, lines)
		case <-time.After(200 * time.Millisecond):
		}
		if _, ok := dead()[poison]; ok && poisonDead == 0 {
			poisonDead = time.Since(poisonAt)
		}
		mu.Lock()
		served := len(executed)
		mu.Unlock()
		if poisonDead > 0 && served >= len(sent) {
			break
		}
	}
	t.Cleanup(func() {
		_ = child.cmd.Process.Kill()
		<-child.exited
	})
	mu.Lock()
	defer mu.Unlock()
	var latest time.Duration
	missing := 0
	for id, at := range sent {
		e, ok := executed[id]
		if !ok {
			missing++
			continue
		}
		latest = max(latest, e.Sub(at))
	}
	deadNow := dead()
	dragged := 0
	for id := range sent {
		if _, ok := deadNow[id]; ok {
			dragged++
		}
	}
	t.Logf("poison: %d deliveries, %d crashes, dead-lettered after %v; healthy: %d missing, latest served %v after sending, %d dead-lettered",
		len(starts[poison]), crashes, poisonDead.Round(time.Millisecond), missing, latest.Round(time.Millisecond), dragged)
	assert.LessOrEqual(t, crashes, crashMax, "the poison crashed more servers than the delivery limit")
	assert.LessOrEqual(t, len(starts[poison]), crashMax, "the poison reached the handler more often than the limit")
	assert.Positive(t, poisonDead, "the poison was never dead-lettered")
	assert.Zero(t, missing, "healthy messages not served")
	assert.Zero(t, dragged, "healthy messages dead-lettered with the poison")
	if poisonDead > 0 {
		assert.LessOrEqual(t, latest, poisonDead+10*time.Second, "healthy messages held back beyond the poison's own handling")
	}
}

// Message IDs are not deduplicated across services: the same ID sent to
// two services runs on both.
func TestRealSameIDTwoServices(t *testing.T) {
	a, b := topic(t)+"_a", topic(t)+"_b"
	got := make(chan string, 4)
	for _, subj := range []string{a, b} {
		serveNow(t, subj, func(_ context.Context, req *broker.Message) (*broker.Message, error) {
			got <- req.Subject + " " + req.ID
			return &broker.Message{Body: []byte("ok")}, nil
		})
	}
	time.Sleep(settle)
	c := client(t)
	id := "same-" + broker.NewID()
	for _, subj := range []string{a, b} {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		_, err := c.Request(ctx, &broker.Message{ID: id, Subject: subj})
		cancel()
		require.NoError(t, err, "call to %s with an ID used for the other service", subj)
	}
	seen := map[string]bool{}
	for range 2 {
		select {
		case s := <-got:
			seen[s] = true
		case <-time.After(20 * time.Second):
			t.Fatal("a service never ran the request")
		}
	}
	assert.True(t, seen[a+" "+id] && seen[b+" "+id], "runs: %v", seen)
}

// A request whose mqrpc-deadline has passed is dropped by the server
// without reaching the handler, whatever its TTL says (the broker does not
// enforce TTL; rocketmq-client-go writes seconds there, the Java client
// milliseconds).
func TestRealExpiredDroppedBeforeHandler(t *testing.T) {
	subj := topic(t)
	got := make(chan string, 4)
	serve(t, subj, func(_ context.Context, req *broker.Message) (*broker.Message, error) {
		got <- req.ID
		return nil, nil
	})
	p := rawProducer(t)
	for _, tc := range []struct{ id, deadline, ttl string }{
		{"expired-" + broker.NewID(), strconv.FormatInt(time.Now().Add(-time.Second).UnixMilli(), 10), "86400000"},
		{"live-" + broker.NewID(), strconv.FormatInt(time.Now().Add(time.Minute).UnixMilli(), 10), "1"},
	} {
		m := primitive.NewMessage(subj, []byte("x"))
		m.WithProperties(map[string]string{broker.HeaderDeadline: tc.deadline, "TTL": tc.ttl})
		m.WithKeys([]string{tc.id})
		_, err := p.SendSync(context.Background(), m)
		require.NoError(t, err)
	}
	select {
	case id := <-got:
		assert.True(t, strings.HasPrefix(id, "live-"), "the handler got %s", id)
	case <-time.After(20 * time.Second):
		t.Fatal("the live message was not served")
	}
	select {
	case id := <-got:
		t.Fatalf("the handler got %s", id)
	case <-time.After(2 * time.Second):
	}
}
