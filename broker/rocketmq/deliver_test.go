package rocketmq

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/apache/rocketmq-client-go/v2/consumer"
	"github.com/apache/rocketmq-client-go/v2/primitive"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/broker"
)

// The server's decision on one delivery (subscription.deliver), without a
// broker: the delay level it settles with and whether the handler ran.

func testSubscription(t *testing.T, h broker.HandlerFunc, opts ...Option) *subscription {
	t.Helper()
	b, err := newBroker("127.0.0.1:9876", append([]Option{WithMaxDeliveries(5)}, opts...)...)
	require.NoError(t, err)
	b.producer = &recordingProducer{}
	t.Cleanup(func() { clientLogSink.detach(b) })
	s := newSubscription(b, "svc", "svc", "svc", h, broker.NewServeConfig("svc"))
	t.Cleanup(s.abandon)
	return s
}

func message(props map[string]string, reconsume int32, offset int64) *primitive.MessageExt {
	m := &primitive.MessageExt{Message: primitive.Message{Topic: "svc", Body: []byte("x")}, MsgId: "msg-" + strconv.FormatInt(offset, 10), QueueOffset: offset, ReconsumeTimes: reconsume}
	m.WithProperties(props)
	return m
}

func queueOf(topic string) primitive.MessageQueue {
	return primitive.MessageQueue{Topic: topic, BrokerName: "broker-a", QueueId: 1}
}

func (s *subscription) deliverNow(q primitive.MessageQueue, m *primitive.MessageExt) int {
	return s.deliver(q, m)
}

// A failed delivery is redelivered with a backoff (1 s, 5 s, then 10 s)
// and dead-lettered at the limit, counting what the broker counted
// (RocketMQ's reconsume count on the retry topic), never what the message
// says: on the service topic every message is a first delivery, whatever
// reconsume count or property it carries.
func TestDeliverFailedLevels(t *testing.T) {
	fail := broker.HandlerFunc(func(context.Context, *broker.Message) (*broker.Message, error) {
		return nil, errors.New("no")
	})
	s := testSubscription(t, fail)
	forged := map[string]string{"RECONSUME_TIME": "99", "MAX_RECONSUME_TIMES": "1", "mqrpc-deliveries": "99"}
	for _, tc := range []struct {
		name      string
		topic     string
		props     map[string]string
		reconsume int32
		want      int
	}{
		{"first", "svc", nil, 0, 1},
		{"forged on the service topic", "svc", forged, 99, 1},
		{"second", s.retryTopic, nil, 1, 2},
		{"third", s.retryTopic, nil, 2, 3},
		{"fourth", s.retryTopic, forged, 3, 3},
		{"fifth: the limit", s.retryTopic, nil, 4, levelDeadLetter},
	} {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, s.deliverNow(queueOf(tc.topic), message(tc.props, tc.reconsume, 1)))
		})
	}
	t.Run("panic", func(t *testing.T) {
		s := testSubscription(t, func(context.Context, *broker.Message) (*broker.Message, error) { panic("boom") })
		assert.Equal(t, 1, s.deliverNow(queueOf("svc"), message(nil, 0, 1)))
		assert.Equal(t, levelDeadLetter, s.deliverNow(queueOf(s.retryTopic), message(nil, 4, 1)))
	})
}

// Deadlines: an expired first delivery is dropped before the handler; an
// expired redelivery (it failed before) and a failure once the deadline
// passed are dead-lettered, not dropped; a malformed deadline on a one-way
// message is dead-lettered; a deadline centuries ahead is served.
func TestDeliverDeadlines(t *testing.T) {
	var calls atomic.Int32
	s := testSubscription(t, func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
		calls.Add(1)
		if req.Header.Get("fail") != "" {
			<-ctx.Done()
			return nil, ctx.Err()
		}
		return nil, nil
	})
	past := strconv.FormatInt(time.Now().Add(-time.Second).UnixMilli(), 10)
	soon := strconv.FormatInt(time.Now().Add(50*time.Millisecond).UnixMilli(), 10)
	for _, tc := range []struct {
		name      string
		topic     string
		props     map[string]string
		reconsume int32
		want      int
		calls     int32
	}{
		{"expired first delivery", "svc", map[string]string{broker.HeaderDeadline: past}, 0, levelDone, 0},
		{"expired redelivery", s.retryTopic, map[string]string{broker.HeaderDeadline: past}, 1, levelDeadLetter, 0},
		{"failed at its deadline", "svc", map[string]string{broker.HeaderDeadline: soon, "fail": "1"}, 0, levelDeadLetter, 1},
		{"malformed one-way", "svc", map[string]string{broker.HeaderDeadline: "-1500"}, 0, levelDeadLetter, 0},
		{"300 years ahead", "svc", map[string]string{broker.HeaderDeadline: strconv.FormatInt(time.Now().AddDate(300, 0, 0).UnixMilli(), 10)}, 0, levelDone, 1},
		{"max int64", "svc", map[string]string{broker.HeaderDeadline: "9223372036854775807"}, 0, levelDone, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			calls.Store(0)
			assert.Equal(t, tc.want, s.deliverNow(queueOf(tc.topic), message(tc.props, tc.reconsume, 1)))
			assert.Equal(t, tc.calls, calls.Load(), "handler calls")
		})
	}
}

// A stored message that was in flight when a server process ended counts
// as a delivery: the next server sends it back instead of running it, and
// dead-letters it at the limit; a journal whose process still runs (its
// file locked) is left alone.
func TestDeliverAfterCrash(t *testing.T) {
	dir := t.TempDir()
	key := func(topic string, offset int) string {
		return topic + "/broker-a/1/" + strconv.Itoa(offset)
	}
	dead := "S " + key("svc", 7) + "\nS " + key("svc", 8) + "\nD " + key("svc", 8) + "\nS " + key("%RETRY%svc", 3) + "\nS x"
	require.NoError(t, os.WriteFile(filepath.Join(dir, "dead"+journalExt), []byte(dead), 0o600))
	live, err := lockedFile(filepath.Join(dir, "live"+journalExt))
	require.NoError(t, err)
	defer live.Close()
	_, err = live.WriteString("S " + key("svc", 9) + "\n")
	require.NoError(t, err)

	var calls atomic.Int32
	s := testSubscription(t, func(context.Context, *broker.Message) (*broker.Message, error) {
		calls.Add(1)
		return nil, nil
	})
	s.journal, err = openJournal(dir, "me")
	require.NoError(t, err)
	defer s.journal.close()
	_, err = os.Stat(filepath.Join(dir, "dead"+journalExt))
	assert.ErrorIs(t, err, os.ErrNotExist, "the ended process's journal was not adopted")

	assert.Equal(t, 1, s.deliverNow(queueOf("svc"), message(nil, 0, 7)), "crashed once: sent back after 1 s")
	assert.Equal(t, levelDone, s.deliverNow(queueOf("svc"), message(nil, 0, 8)), "settled before the crash: run")
	assert.Equal(t, levelDone, s.deliverNow(queueOf("svc"), message(nil, 0, 9)), "in flight on a running server: run")
	assert.Equal(t, levelDeadLetter, s.deliverNow(queueOf("%RETRY%svc"), message(nil, 4, 3)), "fifth delivery crashed: dead-lettered")
	assert.Equal(t, int32(2), calls.Load())
	assert.True(t, s.journal.suspected("msg-7"), "a message in flight at a crash runs alone next time")

	// The copy sent back runs (alone) and is no longer suspected.
	m := message(nil, 1, 5)
	m.MsgId = "msg-7"
	assert.Equal(t, levelDone, s.deliverNow(queueOf("%RETRY%svc"), m))
	assert.Equal(t, int32(3), calls.Load())
	assert.False(t, s.journal.suspected("msg-7"))

	// What this server adopted survives it: a successor counts it too.
	require.NoError(t, s.journal.close())
	j2, err := openJournal(dir, "next")
	require.NoError(t, err)
	defer j2.close()
	assert.Zero(t, j2.crashes(key("svc", 7)), "settled by the first server")
	assert.Zero(t, j2.crashes(key("svc", 9)), "its server still runs")
}

// A journal that grows past journalRotate is rewritten with only what is
// open.
func TestJournalRotates(t *testing.T) {
	dir := t.TempDir()
	j, err := openJournal(dir, "me")
	require.NoError(t, err)
	defer j.close()
	j.start("open")
	for i := range journalRotate / 16 { // past journalRotate: rotated once
		k := "k" + strconv.Itoa(i)
		j.start(k)
		j.finish(k)
	}
	j.start("last")
	j.finish("last")
	assert.Less(t, j.size, int64(journalRotate/2))
	f, err := os.Open(filepath.Join(dir, "me"+journalExt))
	require.NoError(t, err)
	defer f.Close()
	open, _ := readJournal(f)
	assert.Equal(t, map[string]int{"open": 1}, open)
}

// BenchmarkJournal is what the delivery journal adds to one delivery: a
// line before the handler and one after.
func BenchmarkJournal(b *testing.B) {
	j, err := openJournal(b.TempDir(), "me")
	require.NoError(b, err)
	defer j.close()
	for i := 0; b.Loop(); i++ {
		k := "svc/broker-a/1/" + strconv.Itoa(i)
		j.seen("svc/broker-a/1", int64(i))
		if j.crashes(k) == 0 && !j.suspected("id") {
			j.start(k)
		}
		j.finish(k)
	}
}

// A suspect runs alone: it waits for the deliveries in flight, and new ones
// wait for it. Every wait is bounded: a delivery started while a suspect
// waits (a handler calling its own service, say) still runs, after at most
// soloWait, so nothing deadlocks.
func TestSoloGate(t *testing.T) {
	g := newSoloGate()
	ctx := context.Background()
	leaveA := g.shared(ctx) // a delivery in flight

	soloIn := make(chan func())
	go func() {
		leave, alone := g.solo(ctx)
		assert.True(t, alone, "the suspect never ran alone")
		soloIn <- leave
	}()
	// Until the suspect holds the lane, a probe delivery runs at once;
	// then it waits (for its 1 ms, the suspect waiting for A).
	for range 1000 {
		begin := time.Now()
		g.lane.Shared(ctx, time.Millisecond)()
		if time.Since(begin) >= time.Millisecond {
			break
		}
		time.Sleep(time.Millisecond)
	}
	bIn := make(chan func())
	go func() { bIn <- g.shared(ctx) }() // called by A's handler, say
	select {
	case <-soloIn:
		t.Fatal("the suspect ran beside a delivery in flight")
	case leaveB := <-bIn:
		// A's nested delivery ran after waiting at most soloWait; A ends.
		leaveB()
	case <-time.After(4 * soloWait):
		t.Fatal("a delivery started while a suspect waited never ran")
	}
	leaveA()
	var leaveSolo func()
	select {
	case leaveSolo = <-soloIn:
	case <-time.After(4 * soloWait):
		t.Fatal("the suspect never ran")
	}
	// While it runs, a delivery waits for it, at most soloWait.
	start := time.Now()
	leaveC := g.shared(ctx)
	assert.GreaterOrEqual(t, time.Since(start), soloWait/2, "a delivery ran beside the suspect at once")
	leaveC()
	leaveSolo()
}

// A failed message read from the service topic with a reconsume count its
// sender set (a raw-protocol client can; the broker would carry the count
// to the retry copy and dead-letter it at once) is resent as a clean,
// delayed copy; an ordinary one goes back through the retry topic.
func TestConsumeForgedReconsumeCount(t *testing.T) {
	s := testSubscription(t, func(context.Context, *broker.Message) (*broker.Message, error) {
		return nil, errors.New("no")
	})
	prod := s.b.producer.(*recordingProducer)
	consume := func(m *primitive.MessageExt) (consumer.ConsumeResult, int) {
		cc := primitive.NewConsumeConcurrentlyContext()
		cc.MQ = queueOf("svc")
		res, err := s.consume(primitive.WithConcurrentlyCtx(context.Background(), cc), m)
		require.NoError(t, err)
		return res, cc.DelayLevelWhenNextConsume
	}
	res, level := consume(message(map[string]string{"KEYS": "plain"}, 0, 1))
	assert.Equal(t, consumer.ConsumeRetryLater, res)
	assert.Equal(t, 1, level)
	assert.Empty(t, prod.sent)

	res, _ = consume(message(map[string]string{"KEYS": "forged", "RECONSUME_TIME": "99", "CLUSTER": "c", "mqrpc-method": "Add"}, 99, 2))
	assert.Equal(t, consumer.ConsumeSuccess, res, "acknowledged: a clean copy was sent")
	require.Len(t, prod.sent, 1)
	p := prod.sent[0].GetProperties()
	assert.Equal(t, "svc", prod.sent[0].Topic)
	assert.Equal(t, "1", p["DELAY"])
	assert.Equal(t, "forged", p["KEYS"])
	assert.Equal(t, "Add", p["mqrpc-method"])
	assert.NotContains(t, p, "RECONSUME_TIME")
	assert.NotContains(t, p, "CLUSTER")
}

// A server refreshes its routes and rebalances every serveRefreshEvery
// (rocketmq-client-go's own timers: 30 s and 20 s), so the queues of a
// master that came back are pulled within seconds; the refreshes stop
// before the consumer shuts down.
func TestServeRefreshesRoutes(t *testing.T) {
	s := testSubscription(t, func(context.Context, *broker.Message) (*broker.Message, error) { return nil, nil })
	var refreshes atomic.Int32
	s.hooks.refresh = func() { refreshes.Add(1) }
	s.watchRoutes()
	// Brokers avoid a master back in a route for avoidFor, to give the
	// servers time to notice it.
	require.Less(t, 2*serveRefreshEvery, avoidFor, "servers refresh too seldom for Brokers' avoidFor")
	require.Eventually(t, func() bool { return refreshes.Load() >= 1 }, 7*time.Second, 10*time.Millisecond,
		"no route refresh within 7 s")
	s.k.Abort()
	<-s.finish()
	n := refreshes.Load()
	time.Sleep(serveRefreshEvery + serveRefreshEvery/4)
	assert.Equal(t, n, refreshes.Load(), "routes refreshed after the subscription finished")
}
