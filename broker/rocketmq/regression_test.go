package rocketmq_test

// Regression tests for rocketmq-client-go's request-reply defects, against
// the real broker. Each TestRegressionX shows mqrpc's behaviour; the
// matching TestUpstreamX shows the defect in the raw client, so a fixed
// release is noticed (it then fails and the workaround can be reviewed).

import (
	"bytes"
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	rmq "github.com/apache/rocketmq-client-go/v2"
	"github.com/apache/rocketmq-client-go/v2/primitive"
	"github.com/apache/rocketmq-client-go/v2/producer"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/rocketmq"
	"github.com/mqrpc/mqrpc/internal/testenv"
	"github.com/mqrpc/mqrpc/rpc"
)

// settle is how long a new consumer needs before queues are assigned to it.
const settle = 3 * time.Second

func topic(t testing.TB) string {
	name := strings.NewReplacer("/", "_", " ", "_").Replace(t.Name())
	return "mqrpcreg_" + name + "_" + broker.NewID()
}

// serve starts h on subject on a fresh server Broker and waits for the
// consumer group to settle.
func serve(t testing.TB, subject string, h broker.HandlerFunc) *rocketmq.Broker {
	t.Helper()
	srv := serveNow(t, subject, h)
	time.Sleep(settle)
	return srv
}

// serveNow is serve without the wait: it returns as soon as Serve did.
func serveNow(t testing.TB, subject string, h broker.HandlerFunc) *rocketmq.Broker {
	t.Helper()
	srv := newBroker(t)
	t.Cleanup(func() { _ = srv.Close() })
	sub, err := srv.Serve(subject, h)
	require.NoError(t, err)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = sub.Stop(ctx)
	})
	return srv
}

func echoHandler(_ context.Context, req *broker.Message) (*broker.Message, error) {
	return &broker.Message{Header: req.Header, Body: req.Body}, nil
}

func client(t testing.TB) *rocketmq.Broker {
	t.Helper()
	b := newBroker(t)
	t.Cleanup(func() { _ = b.Close() })
	return b
}

// rawProducer is a plain rocketmq-client-go producer with its own client.
func rawProducer(t testing.TB) rmq.Producer {
	t.Helper()
	p, err := rmq.NewProducer(
		producer.WithNsResolver(primitive.NewPassthroughResolver([]string{realBroker(t)})),
		producer.WithInstanceName("raw-"+broker.NewID()),
		producer.WithGroupName("mqrpc_raw"),
	)
	require.NoError(t, err)
	require.NoError(t, p.Start())
	t.Cleanup(func() { _ = p.Shutdown() })
	return p
}

// #890, #1046: the reply body must arrive (CreateReplyMessage drops it).
func TestRegressionReplyBody(t *testing.T) {
	subj := topic(t)
	serve(t, subj, echoHandler)
	c := client(t)
	for _, body := range [][]byte{[]byte("the answer"), bytes.Repeat([]byte{0, 1, 2, 0xff}, 4096)} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		reply, err := c.Request(ctx, &broker.Message{Subject: subj, Body: body})
		cancel()
		require.NoError(t, err)
		assert.True(t, bytes.Equal(body, reply.Body), "reply body of %d bytes differs", len(body))
	}
}

// #1047: a fresh requester calling an existing topic gets its reply at
// once, not after the client's first periodic heartbeat (up to 30 s).
func TestRegressionFirstHeartbeat(t *testing.T) {
	subj := topic(t)
	serve(t, subj, echoHandler)
	c := client(t)
	// After the client's own first heartbeat (1 s after start), which went
	// nowhere because it knew no broker yet.
	time.Sleep(1500 * time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	reply, err := c.Request(ctx, &broker.Message{Subject: subj, Body: []byte("first")})
	require.NoError(t, err)
	assert.Equal(t, "first", string(reply.Body))
	assert.Less(t, time.Since(start), 5*time.Second)
}

func TestUpstreamFirstHeartbeat(t *testing.T) {
	subj := topic(t)
	serve(t, subj, echoHandler)
	p := rawProducer(t)
	time.Sleep(1500 * time.Millisecond) // past its first heartbeat, as above
	msg := primitive.NewMessage(subj, []byte("first"))
	_, err := p.Request(context.Background(), 3*time.Second, msg)
	assert.Error(t, err, "upstream registers a new requester before its first reply now (#1047)")
}

// RequestAsync's callback fires twice for one reply (on the reply, then on
// the removal of the pending entry). mqrpc keeps the first.
func TestUpstreamRequestAsyncFiresTwice(t *testing.T) {
	subj := topic(t)
	serve(t, subj, echoHandler)
	c := client(t) // warm the topic's route and registration for the raw requester's sake
	_, err := c.Request(context.Background(), &broker.Message{Subject: subj, Deadline: time.Now().Add(10 * time.Second)})
	require.NoError(t, err)

	p := rawProducer(t)
	hb := rocketmq.HeartbeatFunc(p)
	require.NotNil(t, hb, "rocketmq-client-go changed shape: heartbeatFunc finds no client")
	var calls atomic.Int32
	first := make(chan struct{}, 1)
	send := func() {
		err := p.RequestAsync(context.Background(), 5*time.Second, func(_ context.Context, m *primitive.Message, err error) {
			calls.Add(1)
			select {
			case first <- struct{}{}:
			default:
			}
		}, primitive.NewMessage(subj, []byte("x")))
		require.NoError(t, err)
	}
	send()
	hb()
	select {
	case <-first:
	case <-time.After(8 * time.Second):
		t.Fatal("no reply")
	}
	time.Sleep(300 * time.Millisecond)
	assert.Equal(t, int32(2), calls.Load(), "callback invocations for one reply")
}

// Timeouts fire late upstream: a pending RequestAsync whose TTL passed is
// only failed when the table is swept (every 10 minutes). mqrpc returns at
// the deadline.
func TestRegressionDeadlineOnTime(t *testing.T) {
	subj := topic(t)
	serve(t, subj, func(context.Context, *broker.Message) (*broker.Message, error) { return nil, nil }) // never answers
	c := client(t)
	start := time.Now()
	_, err := c.Request(context.Background(), &broker.Message{Subject: subj, Deadline: time.Now().Add(time.Second)})
	assert.ErrorIs(t, err, broker.ErrTimeout)
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Less(t, time.Since(start), 2*time.Second)
}

func TestUpstreamTimeoutFiresLate(t *testing.T) {
	subj := topic(t)
	serve(t, subj, func(context.Context, *broker.Message) (*broker.Message, error) { return nil, nil })
	p := rawProducer(t)
	var calls atomic.Int32
	err := p.RequestAsync(context.Background(), time.Second, func(context.Context, *primitive.Message, error) {
		calls.Add(1)
	}, primitive.NewMessage(subj, []byte("x")))
	require.NoError(t, err)
	time.Sleep(3 * time.Second)
	assert.Zero(t, calls.Load(), "upstream now fails an expired RequestAsync on time")
}

// Upstream's Request ignores ctx. mqrpc returns on cancel.
func TestRegressionCancel(t *testing.T) {
	subj := topic(t)
	serve(t, subj, func(ctx context.Context, _ *broker.Message) (*broker.Message, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	})
	c := client(t)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(200*time.Millisecond, cancel)
	start := time.Now()
	_, err := c.Request(ctx, &broker.Message{Subject: subj, Deadline: time.Now().Add(10 * time.Second)})
	assert.NotErrorIs(t, err, broker.ErrTimeout, "a cancel is no timeout")
	assert.ErrorIs(t, err, context.Canceled)
	assert.Less(t, time.Since(start), 1200*time.Millisecond)
}

func TestUpstreamRequestIgnoresCtx(t *testing.T) {
	subj := topic(t)
	serve(t, subj, func(ctx context.Context, _ *broker.Message) (*broker.Message, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	})
	p := rawProducer(t)
	// An attempt that fails at once with an error other than the ctx's
	// (a send error on a loaded machine, say) says nothing about ctx
	// handling: try again, a bounded number of times.
	for attempt := 1; ; attempt++ {
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(100*time.Millisecond, cancel)
		start := time.Now()
		_, err := p.Request(ctx, 2*time.Second, primitive.NewMessage(subj, []byte("x")))
		took := time.Since(start)
		cancel()
		require.Error(t, err)
		if took > 1500*time.Millisecond {
			return // still ignores ctx: the workaround in Broker.Request is needed
		}
		require.NotErrorIs(t, err, context.Canceled, "upstream Request now honours ctx (after %v)", took)
		if attempt == 3 {
			t.Fatalf("upstream Request failed at once %d times, last after %v: %v", attempt, took, err)
		}
		t.Logf("attempt %d failed at once (%v): %v; trying again", attempt, took, err)
	}
}

// Upstream's Request swallows a send error until its timeout. mqrpc
// reports it at once: here the broker refuses a body over its 4 MiB limit.
func TestRegressionSendErrorReported(t *testing.T) {
	subj := topic(t)
	serve(t, subj, echoHandler)
	c, err := rocketmq.New(realBroker(t), rocketmq.WithMaxMessageSize(64<<20), rocketmq.WithLogger(testLogger()))
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	start := time.Now()
	_, err = c.Request(context.Background(), &broker.Message{Subject: subj, Body: make([]byte, 5<<20), Deadline: time.Now().Add(10 * time.Second)})
	require.Error(t, err)
	assert.ErrorIs(t, err, broker.ErrMessageTooLarge)
	assert.Less(t, time.Since(start), 5*time.Second)
}

func TestUpstreamRequestSwallowsSendError(t *testing.T) {
	subj := topic(t)
	serve(t, subj, echoHandler)
	p := rawProducer(t)
	start := time.Now()
	_, err := p.Request(context.Background(), 2*time.Second, primitive.NewMessage(subj, make([]byte, 5<<20)))
	require.Error(t, err)
	assert.NotContains(t, err.Error(), "CODE: 13", "upstream Request now reports the send error")
	assert.Greater(t, time.Since(start), 1500*time.Millisecond)
}

// Messages are delivered with the topic's name as Subject and the
// producer's ID; a handler error is a failed delivery, redelivered later.
func TestRealHandlerErrorRedelivers(t *testing.T) {
	subj := topic(t)
	var calls atomic.Int32
	got := make(chan string, 2)
	serve(t, subj, func(_ context.Context, req *broker.Message) (*broker.Message, error) {
		if calls.Add(1) == 1 {
			return nil, assert.AnError
		}
		got <- req.ID
		return nil, nil
	})
	c := client(t)
	require.NoError(t, c.Send(context.Background(), &broker.Message{ID: "redeliver-me", Subject: subj}))
	select {
	case id := <-got:
		assert.Equal(t, "redeliver-me", id)
	case <-time.After(60 * time.Second):
		// The retry topic's route reaches the consumer with its 30 s
		// route poll; the first redelivery waits 10 s (delay level 3).
		t.Fatal("a failed delivery was not redelivered within 60s")
	}
}

// A name server that cannot be reached is a lost connection, not a missing
// topic: Request and Send fail at once with broker.ErrDisconnected.
func TestRealNameServerDown(t *testing.T) {
	testenv.SkipUnderRace(t) // run by TestRealBrokerConformanceWithoutRace
	b, err := rocketmq.New("127.0.0.1:1", rocketmq.WithLogger(testLogger()))
	require.NoError(t, err)
	defer b.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start := time.Now()
	_, err = b.Request(ctx, &broker.Message{Subject: "nobody_home"})
	assert.ErrorIs(t, err, broker.ErrDisconnected)
	assert.NotErrorIs(t, err, broker.ErrNoResponders)
	err = b.Send(ctx, &broker.Message{Subject: "nobody_home"})
	assert.ErrorIs(t, err, broker.ErrDisconnected)
	assert.Less(t, time.Since(start), 10*time.Second)
}

// A plain RocketMQ client calling an mqrpc service with a malformed
// deadline gets an InvalidArgument reply at once (as on every mqrpc broker).
func TestRealMalformedDeadline(t *testing.T) {
	subj := topic(t)
	// The transport rejects the request as Malformed; rpc.Server answers
	// the rejection with InvalidArgument (3) and never runs a method.
	var served atomic.Int32
	rs := rpc.NewServer()
	require.NoError(t, rpc.Handle(rs, "Echo", func(context.Context, *struct{}) (*struct{}, error) {
		served.Add(1)
		return &struct{}{}, nil
	}))
	sb := newBroker(t)
	t.Cleanup(func() { _ = sb.Close() })
	_, err := sb.Serve(subj, rs)
	require.NoError(t, err)
	time.Sleep(settle)
	// mqrpc's own client never sends a malformed deadline: speak raw, with
	// the registration nudge a fresh raw requester needs (#1047).
	p := rawProducer(t)
	msg := primitive.NewMessage(subj, []byte("{}"))
	msg.WithProperty(broker.HeaderDeadline, "tomorrow")
	msg.WithProperty(broker.HeaderMethod, "Echo")
	errc := make(chan error, 1)
	replyc := make(chan *primitive.Message, 1)
	require.NoError(t, p.RequestAsync(context.Background(), 10*time.Second, func(_ context.Context, m *primitive.Message, err error) {
		if m != nil || err != nil {
			select {
			case replyc <- m:
			default:
			}
			select {
			case errc <- err:
			default:
			}
		}
	}, msg))
	rocketmq.HeartbeatFunc(p)()
	select {
	case m := <-replyc:
		require.NoError(t, <-errc)
		require.NotNil(t, m)
		assert.Equal(t, "3", m.GetProperty(broker.HeaderStatus))
		assert.Contains(t, m.GetProperty(broker.HeaderStatusMessage), "mqrpc-deadline")
	case <-time.After(10 * time.Second):
		t.Fatal("no reply to a malformed deadline")
	}
	assert.Zero(t, served.Load(), "the handler saw a request with a malformed deadline")
}

// A service name RocketMQ refuses as a topic (a full gRPC service name:
// '.' is not allowed) is served and called on its mapped topic.
func TestRealMappedName(t *testing.T) {
	subj := topic(t) + ".helloworld.Greeter"
	serve(t, subj, func(_ context.Context, m *broker.Message) (*broker.Message, error) {
		return &broker.Message{Body: append([]byte(m.Subject+": "), m.Body...)}, nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	reply, err := client(t).Request(ctx, &broker.Message{Subject: subj, Body: []byte("hi")})
	require.NoError(t, err)
	assert.Equal(t, subj+": hi", string(reply.Body), "the handler sees the subject as served")
}

// An mqrpc client calls a server written with plain rocketmq-client-go as
// docs/PROTOCOL.md describes (the benchmarks' raw server: it echoes the
// body and copies no headers).
func TestRealPlainServer(t *testing.T) {
	addr := realBroker(t)
	subj := topic(t)
	c := client(t) // first: it routes the client library's logs (silence)
	raw := newRawRPC(t, addr, subj)
	t.Cleanup(raw.close)
	time.Sleep(settle)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	reply, err := c.Request(ctx, &broker.Message{Subject: subj, Body: []byte("hello"), Header: broker.Header{"mqrpc-method": "Echo"}})
	require.NoError(t, err)
	assert.Equal(t, "hello", string(reply.Body))
	assert.Empty(t, reply.Header, "RocketMQ's own properties leaked into the reply headers")
}

// Calls made from the moment Serve returns, on a topic and group that are
// new, are all answered: none may be stored in a queue between the new
// consumer's query of its group offset and its query of the queue's end,
// and skipped for good (with ConsumeFromLastOffset the quickstart's first
// call was lost that way). The calls start a millisecond apart, so that
// some land while the consumer is being assigned its queues.
func TestRealFirstCallsAfterServe(t *testing.T) {
	for round := range 3 {
		subj := topic(t)
		c := client(t)
		serveNow(t, subj, echoHandler)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		errs := make(chan error, 200)
		for i := range cap(errs) {
			go func() {
				body := []byte{byte(round), byte(i)}
				rep, err := c.Request(ctx, &broker.Message{Subject: subj, Body: body})
				if err == nil && !bytes.Equal(rep.Body, body) {
					err = assert.AnError
				}
				errs <- err
			}()
			time.Sleep(time.Millisecond)
		}
		failed := 0
		for range cap(errs) {
			if err := <-errs; err != nil {
				failed++
			}
		}
		cancel()
		assert.Zero(t, failed, "round %d: calls not answered, of %d", round, cap(errs))
	}
}
