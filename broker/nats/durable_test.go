package nats_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/broker"
	natsbroker "github.com/mqrpc/mqrpc/broker/nats"
	"github.com/mqrpc/mqrpc/internal/testenv"
)

// A server that dies mid-request never acknowledges it, so the stream
// redelivers it to another server, whose reply reaches the waiting caller.
func TestDurableRedeliveryWhenServerDies(t *testing.T) {
	url := testenv.NATSURL(t)
	js := testJetStream(t, url, func(c *natsbroker.JetStreamConfig) { c.AckWait = time.Second })
	opts := []natsbroker.Option{natsbroker.WithJetStream(js)}
	client := newBroker(t, url, opts...)
	subj := uniqueSubject(t)

	dying := newBroker(t, url, opts...)
	started := make(chan string, 1)
	_, err := dying.Serve(subj, broker.HandlerFunc(func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
		started <- req.ID
		<-ctx.Done() // hangs until its process "dies"
		return nil, ctx.Err()
	}))
	require.NoError(t, err)

	type res struct {
		m   *broker.Message
		err error
	}
	resc := make(chan res, 1)
	go func() {
		m, err := client.Request(ctxTimeout(t, 20*time.Second), &broker.Message{ID: "job-1", Subject: subj, Body: []byte("work")})
		resc <- res{m, err}
	}()
	require.Equal(t, "job-1", <-started)
	require.NoError(t, dying.Close())

	survivor := newBroker(t, url, opts...)
	var sawID atomic.Value
	_, err = survivor.Serve(subj, broker.HandlerFunc(func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
		sawID.Store(req.ID)
		return &broker.Message{Body: append([]byte("done "), req.Body...)}, nil
	}))
	require.NoError(t, err)

	r := <-resc
	require.NoError(t, r.err)
	assert.Equal(t, []byte("done work"), r.m.Body)
	assert.Equal(t, "job-1", sawID.Load(), "the same request, redelivered")
}

// After MaxDeliver failed deliveries the request goes to the dead-letter
// subject, with the handler's error as the reason, and leaves the queue.
func TestDurableDeadLetter(t *testing.T) {
	url := testenv.NATSURL(t)
	js := testJetStream(t, url, func(c *natsbroker.JetStreamConfig) { c.MaxDeliver = 3 })
	b := newBroker(t, url, natsbroker.WithJetStream(js))
	subj := uniqueSubject(t)
	var attempts atomic.Int64
	_, err := b.Serve(subj, broker.HandlerFunc(func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
		attempts.Add(1)
		return nil, errors.New("database unavailable")
	}))
	require.NoError(t, err)
	require.NoError(t, b.Send(ctxTimeout(t, 5*time.Second), &broker.Message{
		ID: "poison-1", Subject: subj, Header: broker.Header{"x-k": "v"}, Body: []byte("poison"),
	}))

	jsc, err := jetstream.New(b.Conn())
	require.NoError(t, err)
	var dead *jetstream.RawStreamMsg
	require.Eventually(t, func() bool {
		s, err := jsc.Stream(context.Background(), js.Stream+"_DEAD")
		if err != nil {
			return false
		}
		dead, err = s.GetLastMsgForSubject(context.Background(), js.DeadLetterPrefix+"."+subj)
		return err == nil
	}, 10*time.Second, 50*time.Millisecond, "dead letter stored")
	assert.Equal(t, int64(3), attempts.Load())
	assert.Equal(t, []byte("poison"), dead.Data)
	assert.Equal(t, "database unavailable", dead.Header.Get(natsbroker.HeaderDeadReason))
	assert.Equal(t, "3", dead.Header.Get(natsbroker.HeaderDeliveries))
	assert.Equal(t, subj+":poison-1", dead.Header.Get(natsbroker.HeaderMsgID), "the ID, scoped by the subject")
	assert.Equal(t, "v", dead.Header.Get("x-k"))

	s, err := jsc.Stream(context.Background(), js.Stream)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		info, err := s.Info(context.Background())
		return err == nil && info.State.Msgs == 0
	}, 5*time.Second, 50*time.Millisecond, "the work queue no longer holds it")
	time.Sleep(200 * time.Millisecond)
	assert.Equal(t, int64(3), attempts.Load(), "no delivery after dead-lettering")
}

// The same Message.ID sent twice within the duplicate window is stored
// once and served once.
func TestDurableDeduplicatesByID(t *testing.T) {
	url := testenv.NATSURL(t)
	js := testJetStream(t, url)
	b := newBroker(t, url, natsbroker.WithJetStream(js))
	subj := uniqueSubject(t)
	var served atomic.Int64
	for i := 0; i < 2; i++ {
		require.NoError(t, b.Send(ctxTimeout(t, 5*time.Second), &broker.Message{ID: "once", Subject: subj, Body: []byte("x")}))
	}
	_, err := b.Serve(subj, broker.HandlerFunc(func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
		served.Add(1)
		return nil, nil
	}))
	require.NoError(t, err)
	require.Eventually(t, func() bool { return served.Load() == 1 }, 5*time.Second, 10*time.Millisecond)
	time.Sleep(300 * time.Millisecond)
	assert.Equal(t, int64(1), served.Load())
}

// A handler running longer than AckWait keeps its request (in-progress
// acknowledgements), so it is not handed to a second server meanwhile.
func TestDurableSlowHandlerIsNotRedelivered(t *testing.T) {
	url := testenv.NATSURL(t)
	js := testJetStream(t, url, func(c *natsbroker.JetStreamConfig) { c.AckWait = 2 * time.Second })
	b := newBroker(t, url, natsbroker.WithJetStream(js))
	subj := uniqueSubject(t)
	var served atomic.Int64
	_, err := b.Serve(subj, broker.HandlerFunc(func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
		served.Add(1)
		time.Sleep(3 * time.Second) // 1.5 ack waits
		return &broker.Message{Body: []byte("slow")}, nil
	}))
	require.NoError(t, err)
	rep, err := b.Request(ctxTimeout(t, 10*time.Second), &broker.Message{Subject: subj})
	require.NoError(t, err)
	assert.Equal(t, []byte("slow"), rep.Body)
	time.Sleep(500 * time.Millisecond)
	assert.Equal(t, int64(1), served.Load(), "delivered once")
}

// A retry of a durable call with the same ID, made after the first
// attempt was abandoned (cancelled, or failed by a disconnect) while its
// deadline still held, gets the stored original's reply.
func TestDurableRetryWithSameIDGetsTheReply(t *testing.T) {
	url := testenv.NATSURL(t)
	js := testJetStream(t, url)
	b := newBroker(t, url, natsbroker.WithJetStream(js))
	subj := uniqueSubject(t)

	deadline := time.Now().Add(10 * time.Second)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(200*time.Millisecond, cancel)
	_, err := b.Request(ctx, &broker.Message{ID: "call-7", Subject: subj, Body: []byte("a"), Deadline: deadline})
	require.ErrorIs(t, err, context.Canceled, "no server yet")

	var served atomic.Int64
	_, err = b.Serve(subj, broker.HandlerFunc(func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
		served.Add(1)
		time.Sleep(100 * time.Millisecond) // the retry arrives while the original is handled
		return &broker.Message{Body: req.Body}, nil
	}))
	require.NoError(t, err)
	rep, err := b.Request(context.Background(), &broker.Message{ID: "call-7", Subject: subj, Body: []byte("a"), Deadline: deadline})
	require.NoError(t, err)
	assert.Equal(t, []byte("a"), rep.Body)
	assert.Equal(t, int64(1), served.Load(), "served once")
}

// A stored request carries its deadline as a JetStream per-message TTL, so
// the server itself discards it once nobody waits for the reply.
func TestDurableDeadlineIsStreamTTL(t *testing.T) {
	url := testenv.NATSURL(t)
	js := testJetStream(t, url)
	b := newBroker(t, url, natsbroker.WithJetStream(js))
	jsc, err := jetstream.New(b.Conn())
	require.NoError(t, err)
	info, err := jsc.AccountInfo(context.Background())
	require.NoError(t, err)
	if info.API.Level < 1 {
		t.Skip("the server predates per-message TTLs (nats-server 2.11)")
	}

	subj := uniqueSubject(t)
	require.NoError(t, b.Send(context.Background(), &broker.Message{Subject: subj, Deadline: time.Now().Add(time.Second)}))
	require.NoError(t, b.Send(context.Background(), &broker.Message{Subject: subj})) // no deadline: kept
	s, err := jsc.Stream(context.Background(), js.Stream)
	require.NoError(t, err)
	assert.True(t, s.CachedInfo().Config.AllowMsgTTL)
	msgs := func() uint64 {
		info, err := s.Info(context.Background())
		require.NoError(t, err)
		return info.State.Msgs
	}
	assert.Equal(t, uint64(2), msgs())
	require.Eventually(t, func() bool { return msgs() == 1 }, 10*time.Second, 100*time.Millisecond,
		"the expired request leaves the stream without any server")
}

// A memory stream and its consumer vanish when the server restarts; the
// client makes the stream again and the server its consumer, by themselves.
func TestDurableRecoversLostMemoryStream(t *testing.T) {
	srv := startEmbedded(t)
	js := testJetStream(t, srv.URL()) // MemoryStorage
	opts := []natsbroker.Option{natsbroker.WithJetStream(js),
		natsbroker.WithReconnectWait(50 * time.Millisecond)}
	server := newBroker(t, srv.URL(), opts...)
	client := newBroker(t, srv.URL(), opts...)
	subj := uniqueSubject(t)
	_, err := server.Serve(subj, broker.HandlerFunc(echoHandler))
	require.NoError(t, err)
	_, err = client.Request(ctxTimeout(t, 5*time.Second), &broker.Message{Subject: subj, Body: []byte("before")})
	require.NoError(t, err)

	require.NoError(t, srv.Restart())
	start := time.Now()
	var lastErr error
	for time.Since(start) < 90*time.Second {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, lastErr = client.Request(ctx, &broker.Message{Subject: subj, Body: []byte("after")})
		cancel()
		if lastErr == nil {
			t.Logf("recovered after %v", time.Since(start).Round(time.Millisecond))
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("no call succeeded after the restart: %v", lastErr)
}

// A server that stops past its drain time with a request in flight answers
// its caller Unavailable and hands the request back to the stream at once,
// also when its handler, ignoring ctx, succeeds afterwards: the caller's
// retry with the same ID (a duplicate the stream does not store again)
// gets the reply of the server that runs it next.
func TestDurableAbandonedRunsElsewhere(t *testing.T) {
	url := testenv.NATSURL(t)
	js := testJetStream(t, url)
	opts := []natsbroker.Option{natsbroker.WithJetStream(js)}
	client := newBroker(t, url, opts...)
	subj := uniqueSubject(t)

	started, release := make(chan struct{}, 1), make(chan struct{})
	stopping := newBroker(t, url, opts...)
	sub, err := stopping.Serve(subj, rpcRejecting(func(context.Context, *broker.Message) (*broker.Message, error) {
		started <- struct{}{}
		<-release // ignores ctx
		return &broker.Message{Body: []byte("late")}, nil
	}))
	require.NoError(t, err)
	first := make(chan *broker.Message, 1)
	go func() {
		rep, err := client.Request(ctxTimeout(t, 20*time.Second), &broker.Message{ID: "job-1", Subject: subj})
		assert.NoError(t, err)
		first <- rep
	}()
	<-started
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	require.ErrorIs(t, sub.Stop(ctx), context.DeadlineExceeded)
	assert.Equal(t, "14", (<-first).Header.Get(broker.HeaderStatus), "Unavailable")

	retry := make(chan *broker.Message, 1)
	go func() {
		rep, err := client.Request(ctxTimeout(t, 20*time.Second), &broker.Message{ID: "job-1", Subject: subj})
		assert.NoError(t, err)
		retry <- rep
	}()
	_, err = newBroker(t, url, opts...).Serve(subj, broker.HandlerFunc(func(context.Context, *broker.Message) (*broker.Message, error) {
		return &broker.Message{Body: []byte("done")}, nil
	}))
	require.NoError(t, err)
	time.Sleep(300 * time.Millisecond) // the retry waits for its reply
	close(release)
	rep := <-retry
	require.NotNil(t, rep)
	assert.Equal(t, "done", string(rep.Body))
}
