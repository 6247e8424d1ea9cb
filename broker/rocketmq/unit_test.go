package rocketmq_test

// Tests of mqrpc's own logic with a fake producer: no broker, no
// rocketmq-client-go goroutines, so they run under -race and cover the
// upstream defects that can be reproduced by a producer's behaviour.

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	rmq "github.com/apache/rocketmq-client-go/v2"
	"github.com/apache/rocketmq-client-go/v2/consumer"
	"github.com/apache/rocketmq-client-go/v2/primitive"
	"github.com/apache/rocketmq-client-go/v2/producer"
	"github.com/apache/rocketmq-client-go/v2/rlog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/kernel"
	"github.com/mqrpc/mqrpc/broker/rocketmq"
	"github.com/mqrpc/mqrpc/internal/testenv"
)

// fakeProducer stands in for rocketmq-client-go's producer.
type fakeProducer struct {
	request func(ctx context.Context, ttl time.Duration, cb func(context.Context, *primitive.Message, error), msg *primitive.Message) error
	send    func(ctx context.Context, msgs ...*primitive.Message) (*primitive.SendResult, error)
}

func (f *fakeProducer) Start() error    { return nil }
func (f *fakeProducer) Shutdown() error { return nil }
func (f *fakeProducer) SendSync(ctx context.Context, msgs ...*primitive.Message) (*primitive.SendResult, error) {
	if f.send == nil {
		return &primitive.SendResult{Status: primitive.SendOK}, nil
	}
	return f.send(ctx, msgs...)
}
func (f *fakeProducer) RequestAsync(ctx context.Context, ttl time.Duration, cb func(context.Context, *primitive.Message, error), msg *primitive.Message) error {
	return f.request(ctx, ttl, cb, msg)
}

func newFake(t *testing.T, f *fakeProducer, opts ...rocketmq.Option) *rocketmq.Broker {
	t.Helper()
	b := rocketmq.NewWithProducer(f, opts...)
	t.Cleanup(func() { _ = b.Close() })
	return b
}

// replyTo builds the reply the client would hand over for request msg.
func replyTo(msg *primitive.Message, body string, props map[string]string) *primitive.Message {
	r := &primitive.Message{Topic: "DefaultCluster_REPLY_TOPIC", Body: []byte(body)}
	p := map[string]string{"CORRELATION_ID": "c1", "KEYS": "reply-1"}
	for k, v := range props {
		p[k] = v
	}
	r.WithProperties(p)
	return r
}

// The client's RequestAsync callback can fire twice: once with the reply,
// then again when the pending entry is removed from its table (with the
// same reply, or with a timeout error once the entry expires). Request must
// return the first outcome and not block or panic on the others.
func TestRequestCallbackFiresTwice(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	fired := make(chan struct{})
	b := newFake(t, &fakeProducer{request: func(_ context.Context, _ time.Duration, cb func(context.Context, *primitive.Message, error), msg *primitive.Message) error {
		go func() {
			r := replyTo(msg, "first", map[string]string{"x-n": "1"})
			cb(context.Background(), r, nil)
			cb(context.Background(), r, nil)
			cb(context.Background(), nil, errors.New("correlationId:c1 request timeout, no reply message"))
			close(fired)
		}()
		return nil
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	reply, err := b.Request(ctx, &broker.Message{Subject: "svc", Body: []byte("q")})
	require.NoError(t, err)
	assert.Equal(t, "first", string(reply.Body))
	assert.Equal(t, "1", reply.Header.Get("x-n"))
	assert.Equal(t, "reply-1", reply.ID)
	<-fired
}

// An eviction without outcome (nil message, nil error) arrives when the
// client removes a request early; it is not an answer.
func TestRequestIgnoresEmptyCallback(t *testing.T) {
	b := newFake(t, &fakeProducer{request: func(_ context.Context, _ time.Duration, cb func(context.Context, *primitive.Message, error), msg *primitive.Message) error {
		cb(context.Background(), nil, nil)
		go cb(context.Background(), replyTo(msg, "real", nil), nil)
		return nil
	}})
	reply, err := b.Request(context.Background(), &broker.Message{Subject: "svc", Deadline: time.Now().Add(5 * time.Second)})
	require.NoError(t, err)
	assert.Equal(t, "real", string(reply.Body))
}

// The client's synchronous Request ignores ctx and its timeouts fire late
// (its table is swept every 10 minutes). mqrpc waits on its own: a cancel
// or a deadline ends the call at once, even if the client never calls back.
func TestRequestReturnsOnCtxAndDeadline(t *testing.T) {
	b := newFake(t, &fakeProducer{request: func(context.Context, time.Duration, func(context.Context, *primitive.Message, error), *primitive.Message) error {
		return nil // the callback never fires
	}})
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	start := time.Now()
	_, err := b.Request(ctx, &broker.Message{Subject: "svc", Deadline: time.Now().Add(time.Minute)})
	assert.NotErrorIs(t, err, broker.ErrTimeout, "a cancel is no timeout")
	assert.ErrorIs(t, err, context.Canceled)
	assert.Less(t, time.Since(start), time.Second)

	start = time.Now()
	_, err = b.Request(context.Background(), &broker.Message{Subject: "svc", Deadline: time.Now().Add(100 * time.Millisecond)})
	assert.ErrorIs(t, err, broker.ErrTimeout)
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Less(t, time.Since(start), time.Second)
}

// The TTL handed to the client is the time to the deadline rounded up to
// whole seconds (its unit), so its table entry outlives mqrpc's wait.
func TestRequestTTL(t *testing.T) {
	var got time.Duration
	var props map[string]string
	b := newFake(t, &fakeProducer{request: func(_ context.Context, ttl time.Duration, cb func(context.Context, *primitive.Message, error), msg *primitive.Message) error {
		got, props = ttl, msg.GetProperties()
		cb(context.Background(), replyTo(msg, "", nil), nil)
		return nil
	}}, rocketmq.WithRequestTTL(42*time.Second))
	_, err := b.Request(context.Background(), &broker.Message{Subject: "svc", Deadline: time.Now().Add(1500 * time.Millisecond)})
	require.NoError(t, err)
	assert.Equal(t, 2*time.Second, got)
	assert.NotContains(t, props, "TTL", "the client writes TTL (in its unit, seconds), not mqrpc")
	assert.NotEmpty(t, props[broker.HeaderDeadline])

	// A deadline centuries ahead: the client's entry gets a day, as a
	// request without a deadline does, instead of an overflowed 1 s that
	// drops the reply; the deadline travels as it is.
	far := time.Now().AddDate(300, 0, 0)
	_, err = b.Request(context.Background(), &broker.Message{Subject: "svc", Deadline: far})
	require.NoError(t, err)
	assert.Equal(t, 24*time.Hour, got)
	assert.Equal(t, broker.FormatDeadline(far), props[broker.HeaderDeadline])

	_, err = b.Request(context.Background(), &broker.Message{Subject: "svc"})
	require.NoError(t, err)
	assert.Equal(t, 42*time.Second, got, "no deadline: WithRequestTTL")

	// Without WithRequestTTL a request with no deadline waits as long as
	// ctx lives; the client's table entry gets a day.
	b2 := newFake(t, &fakeProducer{request: func(_ context.Context, ttl time.Duration, cb func(context.Context, *primitive.Message, error), msg *primitive.Message) error {
		got, props = ttl, msg.GetProperties()
		cb(context.Background(), replyTo(msg, "", nil), nil)
		return nil
	}})
	_, err = b2.Request(context.Background(), &broker.Message{Subject: "svc"})
	require.NoError(t, err)
	assert.Equal(t, 24*time.Hour, got)
	assert.NotContains(t, props, broker.HeaderDeadline)

	// The earlier of ctx deadline and Message.Deadline is sent.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	ctxDeadline, _ := ctx.Deadline()
	_, err = b2.Request(ctx, &broker.Message{Subject: "svc", Deadline: time.Now().Add(time.Minute)})
	require.NoError(t, err)
	sent, err := broker.ParseDeadline(props[broker.HeaderDeadline])
	require.NoError(t, err)
	assert.WithinDuration(t, ctxDeadline, sent, time.Millisecond)
	assert.Equal(t, 3*time.Second, got)
}

// Send errors reach the caller at once, classified, instead of after the
// timeout (the client's synchronous Request swallows them).
func TestRequestSendErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want error
	}{
		{"NoRoute", errors.New("the topic=svc route info not found"), broker.ErrNoResponders},
		{"TooLarge", errors.New("CODE: 13, DESC: the message body size over max value"), broker.ErrMessageTooLarge},
	} {
		t.Run(tc.name+"/Sync", func(t *testing.T) {
			b := newFake(t, &fakeProducer{request: func(context.Context, time.Duration, func(context.Context, *primitive.Message, error), *primitive.Message) error {
				return tc.err
			}})
			_, err := b.Request(context.Background(), &broker.Message{Subject: "svc", Deadline: time.Now().Add(time.Minute)})
			assert.ErrorIs(t, err, tc.want)
		})
		t.Run(tc.name+"/Callback", func(t *testing.T) {
			b := newFake(t, &fakeProducer{request: func(_ context.Context, _ time.Duration, cb func(context.Context, *primitive.Message, error), _ *primitive.Message) error {
				go cb(context.Background(), nil, tc.err)
				return nil
			}})
			start := time.Now()
			_, err := b.Request(context.Background(), &broker.Message{Subject: "svc", Deadline: time.Now().Add(time.Minute)})
			assert.ErrorIs(t, err, tc.want)
			assert.Less(t, time.Since(start), time.Second)
		})
	}
}

// The client's asynchronous send is handed a ctx that is never cancelled
// by the caller: a cancelled async send takes the client's nil-dereferencing
// error path (producer.sendAsync, v2.1.2).
func TestRequestSendNotCancelledWithCaller(t *testing.T) {
	sendCtx := make(chan context.Context, 1)
	b := newFake(t, &fakeProducer{request: func(ctx context.Context, _ time.Duration, _ func(context.Context, *primitive.Message, error), _ *primitive.Message) error {
		sendCtx <- ctx
		return nil
	}})
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(20*time.Millisecond, cancel)
	_, err := b.Request(ctx, &broker.Message{Subject: "svc"})
	require.ErrorIs(t, err, context.Canceled)
	assert.NoError(t, (<-sendCtx).Err())
}

// The client runs its goroutines through primitive.WithRecover, which
// recovers only when primitive.PanicHandler is set; New sets it.
func TestClientPanicsRecovered(t *testing.T) {
	newFake(t, &fakeProducer{})
	require.NotNil(t, primitive.PanicHandler)
	assert.NotPanics(t, func() { primitive.WithRecover(func() { panic("boom") }) })
}

func TestRequestClosed(t *testing.T) {
	started := make(chan struct{})
	b := rocketmq.NewWithProducer(&fakeProducer{request: func(context.Context, time.Duration, func(context.Context, *primitive.Message, error), *primitive.Message) error {
		close(started)
		return nil
	}})
	errc := make(chan error, 1)
	go func() {
		_, err := b.Request(context.Background(), &broker.Message{Subject: "svc"})
		errc <- err
	}()
	<-started
	require.NoError(t, b.Close())
	assert.ErrorIs(t, <-errc, broker.ErrClosed)
	_, err := b.Request(context.Background(), &broker.Message{Subject: "svc"})
	assert.ErrorIs(t, err, broker.ErrClosed)
	assert.ErrorIs(t, b.Send(context.Background(), &broker.Message{Subject: "svc"}), broker.ErrClosed)
	_, err = b.Serve("svc", broker.HandlerFunc(func(context.Context, *broker.Message) (*broker.Message, error) { return nil, nil }))
	assert.ErrorIs(t, err, broker.ErrClosed)
	require.NoError(t, b.Close())
}

func TestRequestValidation(t *testing.T) {
	sent := false
	b := newFake(t, &fakeProducer{request: func(context.Context, time.Duration, func(context.Context, *primitive.Message, error), *primitive.Message) error {
		sent = true
		return nil
	}}, rocketmq.WithMaxMessageSize(1024))
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		msg  *broker.Message
		want error
	}{
		{"Expired", &broker.Message{Subject: "svc", Deadline: time.Now().Add(-time.Second)}, broker.ErrTimeout},
		{"TooLarge", &broker.Message{Subject: "svc", Body: make([]byte, 2048)}, broker.ErrMessageTooLarge},
		{"EmptySubject", &broker.Message{Subject: ""}, nil},
		{"SeparatorInHeader", &broker.Message{Subject: "svc", Header: broker.Header{"x": "a\x01b"}}, nil},
		{"ReservedHeader", &broker.Message{Subject: "svc", Header: broker.Header{"__x": "1"}}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := b.Request(ctx, tc.msg)
			require.Error(t, err)
			if tc.want != nil {
				assert.ErrorIs(t, err, tc.want)
			}
		})
	}
	assert.False(t, sent, "an invalid request reached the producer")
}

// The wire mapping of a request: headers as lower-case properties, the ID
// as KEYS, the method as TAGS, the deadline as mqrpc-deadline and TTL, an
// empty body as one byte plus mqrpc-empty-body.
func TestSendMapping(t *testing.T) {
	var got *primitive.Message
	b := newFake(t, &fakeProducer{send: func(_ context.Context, msgs ...*primitive.Message) (*primitive.SendResult, error) {
		got = msgs[0]
		return &primitive.SendResult{Status: primitive.SendOK}, nil
	}})
	deadline := time.UnixMilli(time.Now().Add(time.Minute).UnixMilli())
	err := b.Send(context.Background(), &broker.Message{
		ID: "id-1", Subject: "calc",
		Header:   broker.Header{"mqrpc-method": "Add", "X-Mixed": "v", "x-empty": ""},
		Deadline: deadline,
	})
	require.NoError(t, err)
	p := got.GetProperties()
	assert.Equal(t, "calc", got.Topic)
	assert.Equal(t, "id-1", p["KEYS"])
	assert.Equal(t, "Add", p["TAGS"])
	assert.Equal(t, "Add", p["mqrpc-method"])
	assert.Equal(t, "v", p["x-mixed"])
	assert.Contains(t, p, "x-empty")
	assert.Equal(t, broker.FormatDeadline(deadline), p["mqrpc-deadline"])
	assert.NotContains(t, p, "TTL", "RocketMQ does not enforce TTL: mqrpc-deadline is the deadline")
	assert.Equal(t, "1", p["mqrpc-empty-body"])
	assert.Equal(t, []byte{0}, got.Body)
}

// consumer.CreateReplyMessage loses the reply body (rocketmq-client-go
// #890, #1046): it parses the body as properties and never sets Body. mqrpc
// builds replies itself; this test pins the upstream behaviour so a fixed
// release is noticed.
func TestUpstreamCreateReplyMessageDropsBody(t *testing.T) {
	req := &primitive.MessageExt{Message: primitive.Message{Topic: "svc"}}
	req.WithProperties(map[string]string{"CLUSTER": "DefaultCluster", "CORRELATION_ID": "c1", "REPLY_TO_CLIENT": "me", "TTL": "3"})
	reply, err := consumer.CreateReplyMessage(req, []byte("the answer"))
	require.NoError(t, err)
	assert.Empty(t, reply.Body, "upstream fixed CreateReplyMessage (#890); the workaround may go")
}

// rocketmq-client-go logs through the process-wide rlog; mqrpc routes it
// into the Brokers' slog loggers and prints nothing when none is given.
func TestClientLogRouting(t *testing.T) {
	var buf testenv.LogBuffer
	b := rocketmq.NewWithProducer(&fakeProducer{}, rocketmq.WithLogger(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))))
	rlog.Warning("routed-line", map[string]interface{}{"k": "v"})
	require.NoError(t, b.Close())
	rlog.Warning("after-close-line", nil)
	out := buf.String()
	assert.Contains(t, out, "routed-line")
	assert.Contains(t, out, "k=v")
	assert.NotContains(t, out, "after-close-line")
}

// The #1047 workaround reaches into the client by reflection; this pins
// the client's shape (a producer needs no broker to be created).
func TestClientHooksFound(t *testing.T) {
	p, err := rmq.NewProducer(producer.WithNsResolver(primitive.NewPassthroughResolver([]string{"127.0.0.1:1"})),
		producer.WithInstanceName("hooks-"+broker.NewID()))
	require.NoError(t, err)
	heartbeat, lookup := rocketmq.HooksFound(p)
	assert.True(t, heartbeat, "SendHeartbeatToAllBrokerWithLock not found on the producer's client")
	assert.True(t, lookup, "GetNameSrv not found on the producer's client")
}

// A one-way message expires at its own Deadline only: the ctx bounds the
// send call, not the stored message.
func TestSendDeadline(t *testing.T) {
	var got *primitive.Message
	b := newFake(t, &fakeProducer{send: func(_ context.Context, msgs ...*primitive.Message) (*primitive.SendResult, error) {
		got = msgs[0]
		return &primitive.SendResult{Status: primitive.SendOK}, nil
	}})
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	require.NoError(t, b.Send(ctx, &broker.Message{Subject: "svc", Body: []byte("n")}))
	assert.NotContains(t, got.GetProperties(), broker.HeaderDeadline)
	assert.NotContains(t, got.GetProperties(), "TTL")

	got = nil
	err := b.Send(ctx, &broker.Message{Subject: "svc", Deadline: time.Now().Add(-time.Millisecond)})
	assert.ErrorIs(t, err, broker.ErrTimeout)
	assert.Nil(t, got, "an expired one-way message was sent")
}

// Registering with a topic's brokers before the first request (#1047) uses
// client calls that ignore ctx; Request still returns when ctx ends, and
// concurrent first requests wait for the one registration.
func TestRequestRegistrationHonoursCtx(t *testing.T) {
	release := make(chan struct{})
	var heartbeats, lookups atomic.Int32
	b := newFake(t, &fakeProducer{request: func(_ context.Context, _ time.Duration, cb func(context.Context, *primitive.Message, error), msg *primitive.Message) error {
		go cb(context.Background(), replyTo(msg, "ok", nil), nil)
		return nil
	}})
	rocketmq.SetHooks(b, func() { heartbeats.Add(1); <-release }, func(string) error { lookups.Add(1); return nil })

	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := b.Request(ctx, &broker.Message{Subject: "svc"})
	assert.ErrorIs(t, err, broker.ErrTimeout)
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Less(t, time.Since(start), time.Second)

	close(release)
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := b.Request(context.Background(), &broker.Message{Subject: "svc", Deadline: time.Now().Add(5 * time.Second)})
			assert.NoError(t, err)
		}()
	}
	wg.Wait()
	assert.Equal(t, int32(1), heartbeats.Load(), "one registration per topic")
	assert.Equal(t, int32(1), lookups.Load())
}

// A subject RocketMQ refuses as a topic (the full gRPC service name
// "helloworld.Greeter": '.' is not allowed, nor are names past 127 bytes)
// travels on kernel.MapName's topic, the same for Request and Send (and
// Serve, TestRealMappedName); a valid one is its own topic.
func TestMappedTopic(t *testing.T) {
	var mu sync.Mutex
	var topics []string
	record := func(m *primitive.Message) {
		mu.Lock()
		defer mu.Unlock()
		topics = append(topics, m.Topic)
	}
	b := newFake(t, &fakeProducer{
		send: func(_ context.Context, msgs ...*primitive.Message) (*primitive.SendResult, error) {
			record(msgs[0])
			return &primitive.SendResult{Status: primitive.SendOK}, nil
		},
		request: func(_ context.Context, _ time.Duration, cb func(context.Context, *primitive.Message, error), m *primitive.Message) error {
			record(m)
			cb(context.Background(), replyTo(m, "ok", nil), nil)
			return nil
		},
	})
	long := strings.Repeat("a.", 100)
	for _, subject := range []string{"helloworld.Greeter", "calc", long, "x%RETRY%|y"} {
		topics = nil
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := b.Request(ctx, &broker.Message{Subject: subject})
		cancel()
		require.NoError(t, err, subject)
		require.NoError(t, b.Send(context.Background(), &broker.Message{Subject: subject}), subject)
		want := kernel.MapName(subject, kernel.NameRule{MaxLen: 127, Allowed: func(r rune) bool {
			return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-'
		}})
		assert.Equal(t, []string{want, want}, topics, subject)
		assert.Regexp(t, `^[a-zA-Z0-9_-]{1,127}$`, want)
		if subject == "calc" {
			assert.Equal(t, "calc", want)
		}
	}
}

// A caller that cancels gets an error that says canceled (no timeout) at
// once, and the servers get a cancel notice: a message on ControlTopic
// naming the subject and the request's ID (docs/PROTOCOL.md). A request
// that timed out sends none.
func TestCancelNotice(t *testing.T) {
	notices := make(chan map[string]string, 4)
	sent := make(chan struct{}, 4)
	b := newFake(t, &fakeProducer{
		send: func(_ context.Context, msgs ...*primitive.Message) (*primitive.SendResult, error) {
			if msgs[0].Topic == rocketmq.ControlTopic {
				notices <- msgs[0].GetProperties()
			}
			return &primitive.SendResult{Status: primitive.SendOK}, nil
		},
		request: func(context.Context, time.Duration, func(context.Context, *primitive.Message, error), *primitive.Message) error {
			sent <- struct{}{}
			return nil // no reply ever
		},
	})
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := b.Request(ctx, &broker.Message{ID: "req-1", Subject: "helloworld.Greeter"})
		errc <- err
	}()
	<-sent
	cancel()
	err := <-errc
	assert.ErrorIs(t, err, context.Canceled)
	assert.NotErrorIs(t, err, broker.ErrTimeout)
	assert.Contains(t, err.Error(), "cancel")
	select {
	case p := <-notices:
		assert.Equal(t, "req-1", p["mqrpc-cancel"])
		assert.Equal(t, "helloworld.Greeter", p["mqrpc-control-subject"])
	case <-time.After(5 * time.Second):
		t.Fatal("no cancel notice")
	}

	ctx, cancel = context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err = b.Request(ctx, &broker.Message{Subject: "svc"})
	<-sent
	assert.ErrorIs(t, err, broker.ErrTimeout)
	select {
	case p := <-notices:
		t.Fatalf("a timed-out request sent a cancel notice: %v", p)
	case <-time.After(200 * time.Millisecond):
	}
}
