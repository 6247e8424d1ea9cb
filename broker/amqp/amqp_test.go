package amqp_test

import (
	"context"
	"errors"
	"os"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/amqp"
	"github.com/mqrpc/mqrpc/internal/testenv"
)

func TestMain(m *testing.M) {
	if os.Getenv(crashChildEnv) != "" {
		os.Exit(runCrashChild())
	}
	goleak.VerifyTestMain(m)
}

func ctxT(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// rawChannel opens a plain amqp091-go connection and channel, closed at
// cleanup.
func rawChannel(t testing.TB, url string) (*amqp091.Connection, *amqp091.Channel) {
	t.Helper()
	conn, err := amqp091.Dial(url)
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	ch, err := conn.Channel()
	require.NoError(t, err)
	return conn, ch
}

// TestTutorialClientCallsMqrpcServer calls an mqrpc server the way the
// RabbitMQ RPC tutorial does: an exclusive server-named callback queue,
// reply_to and correlation_id, nothing else.
func TestTutorialClientCallsMqrpcServer(t *testing.T) {
	url := testenv.AMQPURL(t)
	srv := open(t, url)
	subj := "tutorial-rpc-" + broker.NewID()
	serve(t, srv, subj, func(_ context.Context, req *broker.Message) (*broker.Message, error) {
		n, err := strconv.Atoi(string(req.Body))
		if err != nil {
			return &broker.Message{Header: broker.Header{broker.HeaderStatus: "3", broker.HeaderStatusMessage: err.Error()}}, nil
		}
		return &broker.Message{Body: []byte(strconv.Itoa(n * 2))}, nil
	})

	_, ch := rawChannel(t, url)
	q, err := ch.QueueDeclare("", false, false, true, false, nil)
	require.NoError(t, err)
	msgs, err := ch.Consume(q.Name, "", true, false, false, false, nil)
	require.NoError(t, err)
	for i, body := range []string{"21", "1000"} {
		corrID := "corr-" + strconv.Itoa(i)
		err = ch.PublishWithContext(ctxT(t, 5*time.Second), "", subj, false, false, amqp091.Publishing{
			ContentType:   "text/plain",
			CorrelationId: corrID,
			ReplyTo:       q.Name,
			Body:          []byte(body),
		})
		require.NoError(t, err)
		select {
		case d := <-msgs:
			assert.Equal(t, corrID, d.CorrelationId)
			want, _ := strconv.Atoi(body)
			assert.Equal(t, strconv.Itoa(want*2), string(d.Body))
			assert.Empty(t, d.ContentType, "the handler set no content type")
		case <-time.After(10 * time.Second):
			t.Fatal("no reply to the tutorial-style client")
		}
	}
}

// TestMqrpcClientCallsTutorialServer calls a plain amqp091-go server written
// like the RabbitMQ RPC tutorial's (reads reply_to and correlation_id,
// answers on the default exchange) with the mqrpc client, through direct
// reply-to.
func TestMqrpcClientCallsTutorialServer(t *testing.T) {
	url := testenv.AMQPURL(t)
	queue := "tutorial-server-" + broker.NewID()
	_, ch := rawChannel(t, url)
	_, err := ch.QueueDeclare(queue, false, true, false, false, nil)
	require.NoError(t, err)
	require.NoError(t, ch.Qos(1, 0, false))
	msgs, err := ch.Consume(queue, "", false, false, false, false, nil)
	require.NoError(t, err)
	go func() {
		for d := range msgs {
			n, _ := strconv.Atoi(string(d.Body))
			_ = ch.PublishWithContext(context.Background(), "", d.ReplyTo, false, false, amqp091.Publishing{
				ContentType:   "text/plain",
				CorrelationId: d.CorrelationId,
				Body:          []byte(strconv.Itoa(n + 1)),
			})
			_ = d.Ack(false)
		}
	}()

	client := open(t, url)
	for i := 0; i < 3; i++ {
		reply, err := client.Request(ctxT(t, 10*time.Second), &broker.Message{Subject: queue, Body: []byte(strconv.Itoa(i))})
		require.NoError(t, err)
		assert.Equal(t, strconv.Itoa(i+1), string(reply.Body))
		assert.Equal(t, "text/plain", reply.Header.Get(broker.HeaderContentType))
	}
}

// TestWireMapping checks, with a plain consumer, which AMQP properties and
// headers an mqrpc request carries (docs/PROTOCOL.md).
func TestWireMapping(t *testing.T) {
	url := testenv.AMQPURL(t)
	queue := "wire-" + broker.NewID()
	_, ch := rawChannel(t, url)
	_, err := ch.QueueDeclare(queue, false, true, false, false, nil)
	require.NoError(t, err)
	msgs, err := ch.Consume(queue, "", true, false, false, false, nil)
	require.NoError(t, err)

	client := open(t, url)
	deadline := time.Now().Add(5 * time.Second)
	go func() {
		_, _ = client.Request(ctxT(t, 6*time.Second), &broker.Message{
			ID:       "id-1",
			Subject:  queue,
			Header:   broker.Header{"Content-Type": "application/json", "mqrpc-method": "Add", "X-Custom": "v"},
			Body:     []byte(`{"a":1}`),
			Deadline: deadline,
		})
	}()
	select {
	case d := <-msgs:
		assert.Equal(t, "id-1", d.MessageId)
		assert.Equal(t, "application/json", d.ContentType)
		assert.Equal(t, "Add", d.Type, "the method travels as the type property")
		assert.Equal(t, "amq.rabbitmq.reply-to", d.ReplyTo[:len("amq.rabbitmq.reply-to")])
		assert.NotEmpty(t, d.CorrelationId)
		assert.Equal(t, "", d.Exchange)
		assert.Equal(t, queue, d.RoutingKey)
		assert.Equal(t, amqp091.Transient, d.DeliveryMode, "fast mode")
		exp, err := strconv.Atoi(d.Expiration)
		require.NoError(t, err)
		assert.InDelta(t, 5000, exp, 500, "expiration is the time left, in ms")
		assert.Equal(t, amqp091.Table{
			"x-custom":       "v",
			"mqrpc-deadline": broker.FormatDeadline(deadline),
		}, d.Headers)
		assert.Equal(t, `{"a":1}`, string(d.Body))
	case <-time.After(10 * time.Second):
		t.Fatal("request not seen by the plain consumer")
	}
}

// TestSendNoResponders: a one-way message nobody can receive is reported,
// since Send waits for the publisher confirm and the mandatory return
// precedes it.
func TestSendNoResponders(t *testing.T) {
	b := open(t, testenv.AMQPURL(t))
	start := time.Now()
	err := b.Send(ctxT(t, 10*time.Second), &broker.Message{Subject: "nobody-" + broker.NewID(), Body: []byte("x")})
	require.Error(t, err)
	assert.ErrorIs(t, err, broker.ErrNoResponders)
	assert.Less(t, time.Since(start), 2*time.Second)

	// The client channel survives the return.
	subj := "somebody-" + broker.NewID()
	serve(t, b, subj, echo)
	reply, err := b.Request(ctxT(t, 10*time.Second), &broker.Message{Subject: subj, Body: []byte("y")})
	require.NoError(t, err)
	assert.Equal(t, "y", string(reply.Body))
}

// TestDeadLetter: in durable mode a request whose handler keeps failing is
// delivered maxDeliveries times and then lands in "<queue>.dead-letter" with
// the error.
func TestDeadLetter(t *testing.T) {
	url, _ := vhostURL(t)
	const maxDeliveries = 3
	b := open(t, url, amqp.WithDurable(amqp.QuorumQueue), amqp.WithDeadLetter("mqrpc.test-dlx", maxDeliveries))
	subj := "deadletter-" + broker.NewID()
	var attempts atomic.Int64
	serve(t, b, subj, func(_ context.Context, req *broker.Message) (*broker.Message, error) {
		attempts.Add(1)
		if string(req.Body) == "panic" {
			panic("boom")
		}
		return nil, errors.New("database unavailable")
	})
	require.NoError(t, b.Send(ctxT(t, 10*time.Second), &broker.Message{ID: "dl-1", Subject: subj,
		Header: broker.Header{"x-k": "v"}, Body: []byte("fail")}))

	_, ch := rawChannel(t, url)
	var d amqp091.Delivery
	require.Eventually(t, func() bool {
		var ok bool
		var err error
		d, ok, err = ch.Get(subj+".dead-letter", true)
		require.NoError(t, err)
		return ok
	}, 15*time.Second, 50*time.Millisecond, "request not dead-lettered")
	assert.Equal(t, int64(maxDeliveries), attempts.Load())
	assert.Equal(t, "dl-1", d.MessageId)
	assert.Equal(t, "fail", string(d.Body))
	assert.Equal(t, "v", d.Headers["x-k"])
	assert.Equal(t, "database unavailable", d.Headers["x-mqrpc-error"])
	assert.EqualValues(t, maxDeliveries, d.Headers["x-mqrpc-deliveries"])
	assert.Equal(t, "mqrpc.test-dlx", d.Exchange)

	// A panicking handler is a failed delivery too, not a crash.
	attempts.Store(0)
	require.NoError(t, b.Send(ctxT(t, 10*time.Second), &broker.Message{Subject: subj, Body: []byte("panic")}))
	require.Eventually(t, func() bool {
		var ok bool
		var err error
		d, ok, err = ch.Get(subj+".dead-letter", true)
		require.NoError(t, err)
		return ok
	}, 15*time.Second, 50*time.Millisecond, "panicking request not dead-lettered")
	assert.Contains(t, d.Headers["x-mqrpc-error"], "boom")

	// In quorum mode the dead-letter queue is a quorum queue, replicated
	// like the request queue: RabbitMQ accepts the same declaration again
	// only when it is (PRECONDITION_FAILED otherwise).
	_, err := ch.QueueDeclare(subj+".dead-letter", true, false, false, false, amqp091.Table{"x-queue-type": "quorum"})
	assert.NoError(t, err, "the dead-letter queue of a quorum-mode server is not a quorum queue")
}

// TestClassicDeadLetterKept: a quorum-mode server whose dead-letter queue
// an earlier version declared as a classic queue serves all the same,
// dead-letters into that queue and warns.
func TestClassicDeadLetterKept(t *testing.T) {
	url, _ := vhostURL(t)
	subj := "classic-dl-" + broker.NewID()
	_, ch := rawChannel(t, url)
	_, err := ch.QueueDeclare(subj+".dead-letter", true, false, false, false, nil)
	require.NoError(t, err)

	logs := &testenv.LogBuffer{}
	b := open(t, url, amqp.WithDurable(amqp.QuorumQueue), amqp.WithDeadLetter("mqrpc.test-dlx", 1),
		amqp.WithLogger(testenv.DebugLogger(logs)))
	serve(t, b, subj, func(context.Context, *broker.Message) (*broker.Message, error) {
		return nil, errors.New("database unavailable")
	})
	require.NoError(t, b.Send(ctxT(t, 10*time.Second), &broker.Message{ID: "dl-classic", Subject: subj, Body: []byte("fail")}))
	var d amqp091.Delivery
	require.Eventually(t, func() bool {
		var ok bool
		d, ok, err = ch.Get(subj+".dead-letter", true)
		require.NoError(t, err)
		return ok
	}, 15*time.Second, 50*time.Millisecond, "request not dead-lettered into the classic queue")
	assert.Equal(t, "dl-classic", d.MessageId)
	assert.Contains(t, logs.String(), "the dead-letter queue is a classic queue")
}

// TestFastFailureDropped: in fast mode a failed delivery is dropped and the
// caller times out (no redelivery storm).
func TestFastFailureDropped(t *testing.T) {
	b := open(t, testenv.AMQPURL(t))
	subj := "fastfail-" + broker.NewID()
	var attempts atomic.Int64
	serve(t, b, subj, func(_ context.Context, _ *broker.Message) (*broker.Message, error) {
		attempts.Add(1)
		return nil, errors.New("nope")
	})
	_, err := b.Request(ctxT(t, 300*time.Millisecond), &broker.Message{Subject: subj})
	assert.ErrorIs(t, err, broker.ErrTimeout)
	assert.Equal(t, int64(1), attempts.Load())
}

// TestOptions covers URL and option handling: credentials and vhost from
// options override the URL's, bad credentials fail New, a bad URL too.
func TestOptions(t *testing.T) {
	url, vhost := vhostURL(t)
	base := testenv.AMQPURL(t)

	t.Run("VHostOption", func(t *testing.T) {
		b := open(t, base, amqp.WithVHost(vhost), amqp.WithCredentials("guest", "guest"))
		subj := "opt-" + broker.NewID()
		serve(t, b, subj, echo)
		// The queue is in vhost, not in the URL's: a client of the vhost's
		// URL reaches it.
		c := open(t, url)
		_, err := c.Request(ctxT(t, 10*time.Second), &broker.Message{Subject: subj})
		require.NoError(t, err)
	})
	t.Run("BadCredentials", func(t *testing.T) {
		_, err := amqp.New(base, amqp.WithCredentials("guest", "wrong"))
		require.Error(t, err)
	})
	t.Run("BadURL", func(t *testing.T) {
		_, err := amqp.New("http://127.0.0.1:5672/")
		require.Error(t, err)
	})
	t.Run("QueueArgs", func(t *testing.T) {
		subj := "args-" + broker.NewID()
		b := open(t, url, amqp.WithQueueArgs(amqp091.Table{"x-max-length": int32(1000)}))
		serve(t, b, subj, echo)
		_, err := b.Request(ctxT(t, 10*time.Second), &broker.Message{Subject: subj})
		require.NoError(t, err)
		// RabbitMQ refuses to redeclare the queue with other arguments,
		// which shows the arguments were applied, and the error says so.
		other := open(t, url)
		_, err = other.Serve(subj, broker.HandlerFunc(echo))
		require.Error(t, err)
		assert.Contains(t, err.Error(), "x-max-length")
	})
	t.Run("ConnectionName", func(t *testing.T) {
		open(t, url, amqp.WithConnectionName("mqrpc-name-check"))
		assert.Contains(t, ctl(t, "list_connections", "-p", vhost, "client_properties"), "mqrpc-name-check")
	})
	t.Run("Prefetch", func(t *testing.T) {
		b := open(t, base, amqp.WithPrefetch(1))
		subj := "prefetch-" + broker.NewID()
		var inFlight, maxInFlight atomic.Int64
		serve(t, b, subj, func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
			n := inFlight.Add(1)
			for {
				m := maxInFlight.Load()
				if n <= m || maxInFlight.CompareAndSwap(m, n) {
					break
				}
			}
			time.Sleep(5 * time.Millisecond)
			inFlight.Add(-1)
			return echo(ctx, req)
		}, broker.WithConcurrency(8))
		errs := make(chan error, 16)
		for i := 0; i < 16; i++ {
			go func() {
				_, err := b.Request(ctxT(t, 10*time.Second), &broker.Message{Subject: subj})
				errs <- err
			}()
		}
		for i := 0; i < 16; i++ {
			require.NoError(t, <-errs)
		}
		assert.Equal(t, int64(1), maxInFlight.Load(), "prefetch 1 allows one request at a time")
	})
}

// TestMessageTooLarge: bodies over the configured maximum fail with
// ErrMessageTooLarge before they reach RabbitMQ (which would close the
// channel), and the broker keeps working.
func TestMessageTooLarge(t *testing.T) {
	b := open(t, testenv.AMQPURL(t), amqp.WithMaxMessageSize(1024))
	subj := "large-" + broker.NewID()
	serve(t, b, subj, echo)
	_, err := b.Request(ctxT(t, 5*time.Second), &broker.Message{Subject: subj, Body: make([]byte, 1025)})
	assert.ErrorIs(t, err, broker.ErrMessageTooLarge)
	assert.ErrorIs(t, b.Send(ctxT(t, 5*time.Second), &broker.Message{Subject: subj, Body: make([]byte, 2048)}), broker.ErrMessageTooLarge)
	reply, err := b.Request(ctxT(t, 5*time.Second), &broker.Message{Subject: subj, Body: make([]byte, 1024)})
	require.NoError(t, err)
	assert.Len(t, reply.Body, 1024)
}

// TestReplyToGoneClient: a server replying to a caller whose connection is
// gone (direct reply-to of a dead connection) keeps serving others.
func TestReplyToGoneClient(t *testing.T) {
	url := testenv.AMQPURL(t)
	srv := open(t, url)
	subj := "gone-" + broker.NewID()
	started := make(chan struct{}, 1)
	serve(t, srv, subj, func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
		if string(req.Body) == "slow" {
			started <- struct{}{}
			time.Sleep(300 * time.Millisecond)
		}
		return echo(ctx, req)
	})
	gone := open(t, url)
	go func() {
		_, _ = gone.Request(ctxT(t, 10*time.Second), &broker.Message{Subject: subj, Body: []byte("slow")})
	}()
	<-started
	require.NoError(t, gone.Close())
	time.Sleep(500 * time.Millisecond) // the server replied into the void by now

	client := open(t, url)
	for i := 0; i < 3; i++ {
		reply, err := client.Request(ctxT(t, 5*time.Second), &broker.Message{Subject: subj, Body: []byte("next"),
			Header: broker.Header{broker.HeaderContentType: ""}})
		require.NoError(t, err)
		assert.Equal(t, "next", string(reply.Body))
		assert.Equal(t, broker.Header{broker.HeaderContentType: ""}, reply.Header, "an empty content-type round-trips")
	}
}

// TestNotConfirmed: in durable mode a message RabbitMQ refuses (basic.nack;
// here a full queue with x-overflow reject-publish) fails the call clearly
// instead of being lost silently.
func TestNotConfirmed(t *testing.T) {
	url, _ := vhostURL(t)
	b := open(t, url, amqp.WithDurable(amqp.ClassicQueue),
		amqp.WithQueueArgs(amqp091.Table{"x-max-length": int32(1), "x-overflow": "reject-publish"}))
	subj := "nack-" + broker.NewID() // no server: the client declares the queue
	require.NoError(t, b.Send(ctxT(t, 5*time.Second), &broker.Message{Subject: subj, Body: []byte("fits")}))

	err := b.Send(ctxT(t, 5*time.Second), &broker.Message{Subject: subj, Body: []byte("rejected")})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "not confirmed by the broker")

	start := time.Now()
	_, err = b.Request(ctxT(t, 10*time.Second), &broker.Message{Subject: subj, Body: []byte("rejected too")})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "not confirmed by the broker")
	assert.Less(t, time.Since(start), 5*time.Second, "a refused request fails at once, not at its deadline")
}

// TestStopRequeuesUnstarted: a server holding more prefetched requests than
// it runs at once hands those it did not start back to the queue on Stop,
// where another server of the subject serves them; the one in flight
// finishes on the stopping server.
func TestStopRequeuesUnstarted(t *testing.T) {
	url := testenv.AMQPURL(t)
	const n = 8
	subj := "requeue-" + broker.NewID()
	a := open(t, url, amqp.WithPrefetch(n))
	started := make(chan struct{}, n)
	release := make(chan struct{})
	var servedA atomic.Int64
	subA := serve(t, a, subj, func(_ context.Context, req *broker.Message) (*broker.Message, error) {
		servedA.Add(1)
		started <- struct{}{}
		<-release
		return &broker.Message{Body: []byte("a")}, nil
	}, broker.WithConcurrency(1))

	client := open(t, url)
	replies := make(chan string, n)
	for range n {
		go func() {
			rep, err := client.Request(ctxT(t, 20*time.Second), &broker.Message{Subject: subj})
			if err != nil {
				replies <- err.Error()
				return
			}
			replies <- string(rep.Body)
		}()
	}
	<-started
	// Let RabbitMQ push the other requests to the only consumer's prefetch.
	time.Sleep(300 * time.Millisecond)
	assert.Equal(t, int64(1), servedA.Load(), "a server with concurrency 1 ran two handlers at once")

	b := open(t, url)
	serve(t, b, subj, func(_ context.Context, _ *broker.Message) (*broker.Message, error) {
		return &broker.Message{Body: []byte("b")}, nil
	})
	stopped := make(chan error, 1)
	go func() { stopped <- subA.Stop(ctxT(t, 10*time.Second)) }()
	time.Sleep(100 * time.Millisecond)
	close(release)
	require.NoError(t, <-stopped)

	got := map[string]int{}
	for range n {
		got[<-replies]++
	}
	assert.Equal(t, map[string]int{"a": 1, "b": n - 1}, got)
	assert.Equal(t, int64(1), servedA.Load())
}
