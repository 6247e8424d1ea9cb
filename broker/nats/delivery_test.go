package nats_test

import (
	"context"
	"errors"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/broker"
	natsbroker "github.com/mqrpc/mqrpc/broker/nats"
	"github.com/mqrpc/mqrpc/internal/testenv"
)

// The tests in this file pin how durable mode settles a delivery: a failing
// request is dead-lettered whatever its headers, a failed dead-letter
// publish is retried with a backoff, IDs do not clash across services, far
// deadlines are clamped and a successful handler is never run again.

// deadLetterOf waits for the dead letter of subj.
func deadLetterOf(t *testing.T, jsc jetstream.JetStream, cfg natsbroker.JetStreamConfig, subj string) *jetstream.RawStreamMsg {
	t.Helper()
	var dead *jetstream.RawStreamMsg
	require.Eventually(t, func() bool {
		s, err := jsc.Stream(context.Background(), cfg.Stream+"_DEAD")
		if err != nil {
			return false
		}
		dead, err = s.GetLastMsgForSubject(context.Background(), cfg.DeadLetterPrefix+"."+subj)
		return err == nil
	}, 20*time.Second, 50*time.Millisecond, "dead letter of %s stored", subj)
	return dead
}

// deliveries returns how many deliveries the server group of subj was
// given, as JetStream counts them.
func deliveries(t *testing.T, jsc jetstream.JetStream, cfg natsbroker.JetStreamConfig, subj string) uint64 {
	t.Helper()
	c, err := jsc.Consumer(context.Background(), cfg.Stream, consumerOf(subj))
	require.NoError(t, err)
	info, err := c.Info(context.Background())
	require.NoError(t, err)
	return info.Delivered.Consumer
}

func consumerOf(subj string) string {
	out := []byte(subj)
	for i, c := range out {
		if c == '.' || c == '*' || c == '>' {
			out[i] = '_'
		}
	}
	return string(out)
}

func workQueueEmpty(t *testing.T, jsc jetstream.JetStream, cfg natsbroker.JetStreamConfig) {
	t.Helper()
	s, err := jsc.Stream(context.Background(), cfg.Stream)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		info, err := s.Info(context.Background())
		return err == nil && info.State.Msgs == 0
	}, 10*time.Second, 50*time.Millisecond, "the work queue no longer holds it")
}

// A failing request with a deadline is dead-lettered like one without: the
// dead-letter stream does not allow per-message TTLs, so the copy must not
// carry the request's Nats-TTL. A mqrpc-deliveries header sent along by the
// caller does not count.
func TestDurableDeadLetterWithDeadline(t *testing.T) {
	url := testenv.NATSURL(t)
	js := testJetStream(t, url, func(c *natsbroker.JetStreamConfig) { c.MaxDeliver = 3 })
	b := newBroker(t, url, natsbroker.WithJetStream(js))
	jsc, err := jetstream.New(b.Conn())
	require.NoError(t, err)
	info, err := jsc.AccountInfo(context.Background())
	require.NoError(t, err)
	require.GreaterOrEqual(t, info.API.Level, 1, "the server predates per-message TTLs (nats-server 2.11)")

	subj := uniqueSubject(t)
	var attempts atomic.Int64
	_, err = b.Serve(subj, broker.HandlerFunc(func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
		attempts.Add(1)
		return nil, errors.New("database unavailable")
	}))
	require.NoError(t, err)
	done := make(chan error, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second) // the 30s deadline
	defer cancel()
	go func() {
		_, err := b.Request(ctx, &broker.Message{
			ID: "failing-1", Subject: subj, Body: []byte("x"),
			Header: broker.Header{natsbroker.HeaderDeliveries: "99"},
		})
		done <- err
	}()

	dead := deadLetterOf(t, jsc, js, subj)
	assert.Equal(t, int64(3), attempts.Load(), "MaxDeliver handler runs, whatever mqrpc-deliveries said")
	assert.Equal(t, "database unavailable", dead.Header.Get(natsbroker.HeaderDeadReason))
	assert.Equal(t, []string{"3"}, dead.Header.Values(natsbroker.HeaderDeliveries))
	assert.Empty(t, dead.Header.Get(jetstream.MsgTTLHeader), "the dead letter outlives the request's deadline")
	assert.NotEmpty(t, dead.Header.Get(broker.HeaderDeadline), "the deadline is kept for the record")
	workQueueEmpty(t, jsc, js)
	assert.LessOrEqual(t, deliveries(t, jsc, js, subj), uint64(3), "no delivery beyond MaxDeliver")
	select {
	case err := <-done:
		t.Fatalf("a dead-lettered request gets no reply, got %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	cancel()
	require.ErrorIs(t, <-done, context.Canceled)
}

// A foreign request with a malformed mqrpc-deadline and a Nats-TTL is
// answered with InvalidArgument and dead-lettered at its first delivery.
func TestDurableForeignMalformedDeadlineWithTTL(t *testing.T) {
	url := testenv.NATSURL(t)
	js := testJetStream(t, url)
	b := newBroker(t, url, natsbroker.WithJetStream(js))
	subj := uniqueSubject(t)
	var served atomic.Int64
	_, err := b.Serve(subj, rpcRejecting(func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
		served.Add(1)
		return &broker.Message{}, nil
	}))
	require.NoError(t, err)

	nc, err := natsgo.Connect(url)
	require.NoError(t, err)
	defer nc.Close()
	jsc, err := jetstream.New(nc)
	require.NoError(t, err)
	replyTo := nc.NewInbox()
	replies, err := nc.SubscribeSync(replyTo)
	require.NoError(t, err)
	m := natsgo.NewMsg(js.SubjectPrefix + "." + subj)
	m.Header.Set("mqrpc-deadline", "soon")
	m.Header.Set("mqrpc-reply", replyTo)
	m.Header.Set("Nats-TTL", "30")
	m.Header.Set("Nats-Msg-Id", "foreign-1")
	m.Data = []byte("x")
	_, err = jsc.PublishMsg(ctxTimeout(t, 5*time.Second), m)
	require.NoError(t, err)

	rep, err := replies.NextMsg(10 * time.Second)
	require.NoError(t, err)
	assert.Equal(t, "3", rep.Header.Get("mqrpc-status"), "InvalidArgument")
	dead := deadLetterOf(t, jsc, js, subj)
	assert.Contains(t, dead.Header.Get(natsbroker.HeaderDeadReason), "malformed header mqrpc-deadline")
	assert.Empty(t, dead.Header.Get(jetstream.MsgTTLHeader))
	assert.Equal(t, "foreign-1", dead.Header.Get(natsbroker.HeaderMsgID))
	workQueueEmpty(t, jsc, js)
	time.Sleep(500 * time.Millisecond)
	assert.Equal(t, uint64(1), deliveries(t, jsc, js, subj), "dead-lettered at the first delivery")
	assert.Zero(t, served.Load())
}

// When the dead letter cannot be stored the request stays in the work
// queue, and its redeliveries are backed off: never a zero-delay loop.
func TestDurableDeadLetterFailureBacksOff(t *testing.T) {
	url := testenv.NATSURL(t)
	js := testJetStream(t, url, func(c *natsbroker.JetStreamConfig) { c.MaxDeliver = 2 })
	b := newBroker(t, url, natsbroker.WithJetStream(js))
	jsc, err := jetstream.New(b.Conn())
	require.NoError(t, err)
	// A full dead-letter stream that refuses new messages: every
	// dead-letter publish fails at once with an API error, as one with a
	// Nats-TTL did.
	_, err = jsc.CreateStream(context.Background(), jetstream.StreamConfig{
		Name: js.Stream + "_DEAD", Subjects: []string{js.DeadLetterPrefix + ".>"}, Storage: jetstream.MemoryStorage,
		MaxMsgs: 1, Discard: jetstream.DiscardNew,
	})
	require.NoError(t, err)
	_, err = jsc.Publish(context.Background(), js.DeadLetterPrefix+".filler", nil)
	require.NoError(t, err)

	subj := uniqueSubject(t)
	var attempts atomic.Int64
	_, err = b.Serve(subj, broker.HandlerFunc(func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
		attempts.Add(1)
		return nil, errors.New("always fails")
	}))
	require.NoError(t, err)
	require.NoError(t, b.Send(ctxTimeout(t, 5*time.Second), &broker.Message{
		Subject: subj, Body: []byte("x"), Deadline: time.Now().Add(time.Minute),
	}))
	require.Eventually(t, func() bool { return attempts.Load() == 2 }, 10*time.Second, 20*time.Millisecond)
	before := deliveries(t, jsc, js, subj)
	time.Sleep(3 * time.Second)
	after := deliveries(t, jsc, js, subj)
	t.Logf("%d deliveries in 3s after the dead letter failed", after-before)
	// Backed off from 200ms, doubling: about 4 deliveries in 3s; a
	// zero-delay loop makes thousands.
	assert.LessOrEqual(t, after-before, uint64(8), "redeliveries in 3s after the dead letter failed")
	assert.Equal(t, int64(2), attempts.Load(), "the handler does not run beyond MaxDeliver")

	s, err := jsc.Stream(context.Background(), js.Stream)
	require.NoError(t, err)
	info, err := s.Info(context.Background())
	require.NoError(t, err)
	assert.Equal(t, uint64(1), info.State.Msgs, "not lost: still in the work queue")
}

// Duplicate detection spans the whole stream, which every service shares:
// the same ID sent to two services must reach both, and a call with an ID
// another service's stored request used must get its own reply.
func TestDurableIDsDoNotClashAcrossServices(t *testing.T) {
	url := testenv.NATSURL(t)
	js := testJetStream(t, url)
	b := newBroker(t, url, natsbroker.WithJetStream(js))
	subjA, subjB := uniqueSubject(t)+".a", uniqueSubject(t)+".b"

	// One-way: both run, each once, and a retry to the same service is
	// still dropped.
	var ranA, ranB atomic.Int64
	var idA, idB atomic.Value
	for range 2 {
		require.NoError(t, b.Send(ctxTimeout(t, 5*time.Second), &broker.Message{ID: "same", Subject: subjA}))
		require.NoError(t, b.Send(ctxTimeout(t, 5*time.Second), &broker.Message{ID: "same", Subject: subjB}))
	}
	_, err := b.Serve(subjA, broker.HandlerFunc(func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
		ranA.Add(1)
		idA.Store(req.ID)
		return nil, nil
	}))
	require.NoError(t, err)
	_, err = b.Serve(subjB, broker.HandlerFunc(func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
		ranB.Add(1)
		idB.Store(req.ID)
		return nil, nil
	}))
	require.NoError(t, err)
	require.Eventually(t, func() bool { return ranA.Load() == 1 && ranB.Load() == 1 }, 10*time.Second, 10*time.Millisecond)
	time.Sleep(300 * time.Millisecond)
	assert.Equal(t, int64(1), ranA.Load(), "a retry to the same service is dropped")
	assert.Equal(t, int64(1), ranB.Load())
	assert.Equal(t, "same", idA.Load(), "handlers see the ID as sent")
	assert.Equal(t, "same", idB.Load())

	// Calls: a call to A with ID "call" is stored while A has no server
	// and abandoned; a call to B with the same ID must get B's reply, not
	// A's, which arrives while B's handler still runs.
	subjC, subjD := uniqueSubject(t)+".c", uniqueSubject(t)+".d"
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(300*time.Millisecond, cancel)
	_, err = b.Request(ctx, &broker.Message{ID: "call", Subject: subjC, Body: []byte("1"), Deadline: time.Now().Add(time.Minute)})
	require.ErrorIs(t, err, context.Canceled)
	_, err = b.Serve(subjD, broker.HandlerFunc(func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
		time.Sleep(time.Second)
		return &broker.Message{Body: []byte("D")}, nil
	}))
	require.NoError(t, err)
	type res struct {
		m   *broker.Message
		err error
	}
	resc := make(chan res, 1)
	go func() {
		m, err := b.Request(ctxTimeout(t, 15*time.Second), &broker.Message{ID: "call", Subject: subjD, Body: []byte("1")})
		resc <- res{m, err}
	}()
	servedC := make(chan struct{})
	_, err = b.Serve(subjC, broker.HandlerFunc(func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
		defer close(servedC)
		return &broker.Message{Body: []byte("C")}, nil
	}))
	require.NoError(t, err)
	<-servedC
	r := <-resc
	require.NoError(t, r.err)
	assert.Equal(t, "D", string(r.m.Body))
}

// A deadline centuries ahead is clamped, never overflowed into a Nats-TTL
// of 1s that drops the request: Send and Request with one are served, and
// so is a foreign request carrying the largest deadline the header holds.
func TestDurableFarDeadline(t *testing.T) {
	url := testenv.NATSURL(t)
	js := testJetStream(t, url)
	b := newBroker(t, url, natsbroker.WithJetStream(js))
	jsc, err := jetstream.New(b.Conn())
	require.NoError(t, err)
	subj := uniqueSubject(t)

	far := time.Now().AddDate(300, 0, 0)
	require.NoError(t, b.Send(ctxTimeout(t, 5*time.Second), &broker.Message{Subject: subj, Body: []byte("send"), Deadline: far}))
	s, err := jsc.Stream(context.Background(), js.Stream)
	require.NoError(t, err)
	stored, err := s.GetLastMsgForSubject(context.Background(), js.SubjectPrefix+"."+subj)
	require.NoError(t, err)
	if ttl := stored.Header.Get(jetstream.MsgTTLHeader); ttl != "" {
		secs, err := strconv.ParseInt(ttl, 10, 64)
		require.NoError(t, err)
		assert.Greater(t, secs, int64(50*365*24*3600), "Nats-TTL %s", ttl)
	}
	time.Sleep(1500 * time.Millisecond) // past a TTL of 1s

	got := make(chan *broker.Message, 4)
	_, err = b.Serve(subj, broker.HandlerFunc(func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
		got <- &broker.Message{Body: req.Body, Deadline: req.Deadline}
		return &broker.Message{Body: req.Body}, nil
	}))
	require.NoError(t, err)
	select {
	case m := <-got:
		assert.Equal(t, "send", string(m.Body))
		assert.True(t, m.Deadline.After(time.Now().AddDate(299, 0, 0)))
	case <-time.After(10 * time.Second):
		t.Fatal("the one-way message with a far deadline was dropped")
	}

	rep, err := b.Request(ctxTimeout(t, 10*time.Second), &broker.Message{Subject: subj, Body: []byte("call"), Deadline: time.Now().AddDate(1_000_000, 0, 0)})
	require.NoError(t, err)
	assert.Equal(t, "call", string(rep.Body))
	<-got

	nc, err := natsgo.Connect(url)
	require.NoError(t, err)
	defer nc.Close()
	fjs, err := jetstream.New(nc)
	require.NoError(t, err)
	m := natsgo.NewMsg(js.SubjectPrefix + "." + subj)
	m.Header.Set("mqrpc-deadline", "9223372036854775807")
	m.Data = []byte("foreign")
	_, err = fjs.PublishMsg(ctxTimeout(t, 5*time.Second), m)
	require.NoError(t, err)
	select {
	case m := <-got:
		assert.Equal(t, "foreign", string(m.Body))
		assert.Equal(t, time.UnixMilli(1<<63-1), m.Deadline)
	case <-time.After(10 * time.Second):
		t.Fatal("the foreign request with the largest deadline was not served")
	}
}

// A request whose reply subject cannot be published is acknowledged once
// its handler succeeded: running the handler again cannot deliver the
// reply, and the request must not be dead-lettered as if servers had died.
func TestDurableUnpublishableReplyIsAcked(t *testing.T) {
	url := testenv.NATSURL(t)
	js := testJetStream(t, url)
	b := newBroker(t, url, natsbroker.WithJetStream(js))
	subj := uniqueSubject(t)
	var served atomic.Int64
	_, err := b.Serve(subj, broker.HandlerFunc(func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
		served.Add(1)
		return &broker.Message{Body: []byte("ok")}, nil
	}))
	require.NoError(t, err)

	nc, err := natsgo.Connect(url)
	require.NoError(t, err)
	defer nc.Close()
	jsc, err := jetstream.New(nc)
	require.NoError(t, err)
	m := natsgo.NewMsg(js.SubjectPrefix + "." + subj)
	m.Header.Set("mqrpc-reply", "not..a subject")
	m.Data = []byte("x")
	_, err = jsc.PublishMsg(ctxTimeout(t, 5*time.Second), m)
	require.NoError(t, err)

	require.Eventually(t, func() bool { return served.Load() >= 1 }, 10*time.Second, 10*time.Millisecond)
	workQueueEmpty(t, jsc, js)
	time.Sleep(time.Second)
	assert.Equal(t, int64(1), served.Load(), "the handler ran once")
	if s, err := jsc.Stream(context.Background(), js.Stream+"_DEAD"); err == nil {
		info, err := s.Info(context.Background())
		require.NoError(t, err)
		assert.Zero(t, info.State.Msgs, "not dead-lettered")
	}
}
