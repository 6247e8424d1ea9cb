package nats_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/mqrpc/mqrpc/broker"
	natsbroker "github.com/mqrpc/mqrpc/broker/nats"
	"github.com/mqrpc/mqrpc/broker/nats/embedded"
	"github.com/mqrpc/mqrpc/internal/testenv"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// Every call shares the client's single inbox subscription: a request
// costs no SUB/UNSUB round of its own.
func TestOneInboxSubscriptionPerClient(t *testing.T) {
	url := testenv.NATSURL(t)
	srv := newBroker(t, url)
	client := newBroker(t, url)
	subj := uniqueSubject(t)
	_, err := srv.Serve(subj, broker.HandlerFunc(echoHandler))
	require.NoError(t, err)

	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := client.Request(ctxTimeout(t, 5*time.Second), &broker.Message{Subject: subj, Body: []byte("x")})
			assert.NoError(t, err)
		}()
	}
	wg.Wait()
	assert.Equal(t, 1, client.Conn().NumSubscriptions(), "one muxed inbox subscription for all calls")
}

func TestHeadersAndIDOnTheWire(t *testing.T) {
	url := testenv.NATSURL(t)
	b := newBroker(t, url)
	subj := uniqueSubject(t)

	// A raw subscriber shows exactly what mqrpc puts on the wire.
	raw, err := natsgo.Connect(url)
	require.NoError(t, err)
	defer raw.Close()
	got := make(chan *natsgo.Msg, 1)
	_, err = raw.Subscribe(subj, func(m *natsgo.Msg) {
		got <- m
		_ = m.RespondMsg(&natsgo.Msg{Header: natsgo.Header{"X-Upper": {"V"}, "Nats-Msg-Id": {"reply-id"}}, Data: []byte("ok")})
	})
	require.NoError(t, err)
	require.NoError(t, raw.Flush())

	deadline := time.Now().Add(5 * time.Second)
	rep, err := b.Request(context.Background(), &broker.Message{
		ID: "req-1", Subject: subj, Deadline: deadline,
		Header: broker.Header{"X-Mixed-Case": "a", broker.HeaderDeadline: "ignored"},
		Body:   []byte("body"),
	})
	require.NoError(t, err)
	m := <-got
	assert.Equal(t, "req-1", m.Header.Get("Nats-Msg-Id"))
	assert.Equal(t, "a", m.Header.Get("x-mixed-case"), "names are written in lower case")
	assert.Equal(t, broker.FormatDeadline(deadline), m.Header.Get("mqrpc-deadline"))
	assert.NotEmpty(t, m.Reply)

	assert.Equal(t, broker.Header{"x-upper": "V"}, rep.Header, "names are delivered in lower case, Nats-* headers are not")
	assert.Equal(t, "reply-id", rep.ID)
	assert.Equal(t, []byte("ok"), rep.Body)
}

func TestNoRespondersIsImmediate(t *testing.T) {
	b := newBroker(t, testenv.NATSURL(t))
	start := time.Now()
	_, err := b.Request(ctxTimeout(t, 10*time.Second), &broker.Message{Subject: uniqueSubject(t)})
	require.ErrorIs(t, err, broker.ErrNoResponders)
	assert.Less(t, time.Since(start), time.Second)
}

// A request whose deadline passed on the way is dropped before the
// handler; a malformed deadline gets an InvalidArgument status reply.
func TestServerDropsExpiredAndRefusesMalformedDeadline(t *testing.T) {
	url := testenv.NATSURL(t)
	b := newBroker(t, url)
	subj := uniqueSubject(t)
	var served atomic.Int64
	_, err := b.Serve(subj, rpcRejecting(func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
		served.Add(1)
		return &broker.Message{}, nil
	}))
	require.NoError(t, err)

	raw, err := natsgo.Connect(url)
	require.NoError(t, err)
	defer raw.Close()

	past := broker.FormatDeadline(time.Now().Add(-time.Second))
	_, err = raw.RequestMsg(&natsgo.Msg{Subject: subj, Header: natsgo.Header{"mqrpc-deadline": {past}}}, 300*time.Millisecond)
	assert.ErrorIs(t, err, natsgo.ErrTimeout, "an expired request gets no reply")

	rep, err := raw.RequestMsg(&natsgo.Msg{Subject: subj, Header: natsgo.Header{"mqrpc-deadline": {"soon"}}}, 2*time.Second)
	require.NoError(t, err)
	assert.Equal(t, "3", rep.Header.Get("mqrpc-status"))
	assert.Contains(t, rep.Header.Get("mqrpc-message"), "mqrpc-deadline")

	assert.Zero(t, served.Load(), "neither request may reach the handler")
}

func TestConcurrencyIsBounded(t *testing.T) {
	url := testenv.NATSURL(t)
	b := newBroker(t, url)
	subj := uniqueSubject(t)
	var running, peak atomic.Int64
	_, err := b.Serve(subj, broker.HandlerFunc(func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
		n := running.Add(1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		time.Sleep(20 * time.Millisecond)
		running.Add(-1)
		return &broker.Message{}, nil
	}), broker.WithConcurrency(3))
	require.NoError(t, err)

	var wg sync.WaitGroup
	for i := 0; i < 30; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := b.Request(ctxTimeout(t, 10*time.Second), &broker.Message{Subject: subj})
			assert.NoError(t, err)
		}()
	}
	wg.Wait()
	assert.Equal(t, int64(3), peak.Load(), "handlers running at once")
}

func TestHandlerPanicIsADeliveryFailure(t *testing.T) {
	b := newBroker(t, testenv.NATSURL(t))
	subj := uniqueSubject(t)
	_, err := b.Serve(subj, broker.HandlerFunc(func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
		if string(req.Body) == "panic" {
			panic("boom")
		}
		return &broker.Message{Body: req.Body}, nil
	}))
	require.NoError(t, err)
	_, err = b.Request(ctxTimeout(t, 300*time.Millisecond), &broker.Message{Subject: subj, Body: []byte("panic")})
	require.ErrorIs(t, err, broker.ErrTimeout, "no reply for a failed delivery")
	rep, err := b.Request(ctxTimeout(t, 5*time.Second), &broker.Message{Subject: subj, Body: []byte("ok")})
	require.NoError(t, err, "the server survives a panicking handler")
	assert.Equal(t, []byte("ok"), rep.Body)
}

func TestMessageTooLarge(t *testing.T) {
	srv := startEmbedded(t, embedded.WithoutJetStream(), embedded.WithMaxPayload(64<<10))
	b := newBroker(t, srv.URL())
	subj := uniqueSubject(t)
	_, err := b.Serve(subj, rpcRejecting(func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
		return &broker.Message{Body: make([]byte, 128<<10)}, nil
	}))
	require.NoError(t, err)

	_, err = b.Request(ctxTimeout(t, 5*time.Second), &broker.Message{Subject: subj, Body: make([]byte, 128<<10)})
	require.ErrorIs(t, err, broker.ErrMessageTooLarge)
	require.ErrorIs(t, b.Send(ctxTimeout(t, 5*time.Second), &broker.Message{Subject: subj, Body: make([]byte, 128<<10)}), broker.ErrMessageTooLarge)

	// A reply too large becomes a ResourceExhausted status, not silence.
	rep, err := b.Request(ctxTimeout(t, 5*time.Second), &broker.Message{Subject: subj})
	require.NoError(t, err)
	assert.Equal(t, "8", rep.Header.Get(broker.HeaderStatus))
}

func TestNewFailsWithoutServer(t *testing.T) {
	srv := startEmbedded(t, embedded.WithoutJetStream())
	url := srv.URL()
	srv.Close()
	_, err := natsbroker.New(url)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "nats: connect")
}

// TestReconnectUnderLoad restarts a private nats-server while calls are in
// flight: they fail fast with broker.ErrDisconnected (never by running into
// their deadline), and both the client and the server resume by themselves.
func TestReconnectUnderLoad(t *testing.T) {
	srv := startEmbedded(t, embedded.WithoutJetStream())
	opts := []natsbroker.Option{natsbroker.WithReconnectWait(50 * time.Millisecond)}
	server := newBroker(t, srv.URL(), opts...)
	client := newBroker(t, srv.URL(), opts...)
	subj := uniqueSubject(t)
	_, err := server.Serve(subj, broker.HandlerFunc(func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
		time.Sleep(100 * time.Millisecond) // keep calls in flight
		return &broker.Message{Body: req.Body}, nil
	}))
	require.NoError(t, err)

	const timeout = 5 * time.Second
	var (
		mu            sync.Mutex
		disconnected  int
		noResponders  int
		okAfter       int
		unexpected    []error
		restartedAt   atomic.Int64
		stop          = make(chan struct{})
		wg            sync.WaitGroup
		okBeforeStart atomic.Int64
	)
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 10000; i++ {
				select {
				case <-stop:
					return
				default:
				}
				start := time.Now()
				ctx, cancel := context.WithTimeout(context.Background(), timeout)
				_, err := client.Request(ctx, &broker.Message{Subject: subj, Body: []byte("x")})
				cancel()
				elapsed := time.Since(start)
				mu.Lock()
				switch {
				case err == nil:
					if r := restartedAt.Load(); r != 0 && start.UnixNano() > r {
						okAfter++
					} else {
						okBeforeStart.Add(1)
					}
				case errors.Is(err, broker.ErrDisconnected) && elapsed < timeout/2:
					disconnected++
				case errors.Is(err, broker.ErrNoResponders):
					// The client may reconnect before the server has
					// restored its subscription.
					noResponders++
				default:
					unexpected = append(unexpected, err)
				}
				mu.Unlock()
				if err != nil {
					time.Sleep(20 * time.Millisecond)
				}
			}
		}()
	}
	require.Eventually(t, func() bool { return okBeforeStart.Load() > 20 }, 10*time.Second, 10*time.Millisecond)
	srv.Stop()
	time.Sleep(300 * time.Millisecond) // an outage, not just a blip
	require.NoError(t, srv.StartAgain())
	restartedAt.Store(time.Now().UnixNano())
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return okAfter > 20
	}, 20*time.Second, 20*time.Millisecond, "calls must succeed again after the restart")
	close(stop)
	wg.Wait()

	mu.Lock()
	defer mu.Unlock()
	t.Logf("disconnected=%d noResponders=%d okAfterRestart=%d", disconnected, noResponders, okAfter)
	assert.Positive(t, disconnected, "calls in flight fail with ErrDisconnected")
	assert.Empty(t, unexpected, "every failure is a fast, retryable ErrDisconnected or ErrNoResponders")
}

// Stop and Close may race (a server shutting down while its subscription
// is stopped from another goroutine); neither may hang or panic.
func TestStopRacesClose(t *testing.T) {
	url := testenv.NATSURL(t)
	for _, durable := range []bool{false, true} {
		t.Run(map[bool]string{false: "Core", true: "JetStream"}[durable], func(t *testing.T) {
			var opts []natsbroker.Option
			if durable {
				opts = append(opts, natsbroker.WithJetStream(testJetStream(t, url)))
			}
			for i := 0; i < 5; i++ {
				b := newBroker(t, url, opts...)
				subj := uniqueSubject(t)
				sub, err := b.Serve(subj, broker.HandlerFunc(func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
					<-ctx.Done()
					return nil, ctx.Err()
				}))
				require.NoError(t, err)
				go func() { _ = b.Send(context.Background(), &broker.Message{Subject: subj}) }()
				time.Sleep(20 * time.Millisecond)
				var wg sync.WaitGroup
				wg.Add(2)
				go func() {
					defer wg.Done()
					ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
					defer cancel()
					_ = sub.Stop(ctx)
				}()
				go func() {
					defer wg.Done()
					assert.NoError(t, b.Close())
				}()
				wg.Wait()
				assert.NoError(t, sub.Stop(context.Background()), "Stop after Close")
			}
		})
	}
}

// Stop takes a ctx without a deadline: it drains for as long as the
// handlers need (flushing the replies at most setupTimeout), in both modes.
func TestStopWithoutDeadline(t *testing.T) {
	url := testenv.NATSURL(t)
	for name, opts := range map[string][]natsbroker.Option{
		"core":      nil,
		"jetstream": {natsbroker.WithJetStream(testJetStream(t, url))},
	} {
		t.Run(name, func(t *testing.T) {
			b := newBroker(t, url, opts...)
			sub, err := b.Serve(uniqueSubject(t), broker.HandlerFunc(echoHandler))
			require.NoError(t, err)
			require.NoError(t, sub.Stop(context.Background()))
		})
	}
}
