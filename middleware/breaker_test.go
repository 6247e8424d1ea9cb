package middleware_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/memory"
	"github.com/mqrpc/mqrpc/middleware"
	"github.com/mqrpc/mqrpc/rpc"
)

// govSent counts the requests that pass it, per subject.
type govSent struct {
	mu sync.Mutex
	n  map[string]int
}

func (s *govSent) mw(next broker.Handler) broker.Handler {
	return broker.HandlerFunc(func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
		s.mu.Lock()
		if s.n == nil {
			s.n = map[string]int{}
		}
		s.n[req.Subject]++
		s.mu.Unlock()
		return next.ServeMessage(ctx, req)
	})
}

func (s *govSent) count(subject string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n[subject]
}

func TestCircuitBreaker(t *testing.T) {
	defer goleak.VerifyNone(t)
	b := memory.New()
	defer b.Close()
	govCounter(t, b, nil) // serves "calc"; "down" has no server

	// The open timeout is long enough never to pass during the test.
	cb := middleware.NewCircuitBreaker(middleware.WithOpenTimeout(time.Hour))
	var sent govSent
	c := rpc.NewClient(b, rpc.WithClientMiddleware(cb.Middleware, sent.mw))
	ctx := context.Background()

	// Application errors are answers: they never open a circuit.
	for range 10 {
		err := c.Call(ctx, "calc", "Nope", &govReq{}, nil)
		require.Equal(t, rpc.Unimplemented, rpc.CodeOf(err))
	}
	assert.Equal(t, middleware.BreakerClosed, cb.State("calc"))

	// Five failures in a row open the circuit of "down".
	for range middleware.DefaultBreakerFailures {
		err := c.Call(ctx, "down", "Add", &govReq{}, nil)
		require.ErrorIs(t, err, broker.ErrNoResponders)
	}
	assert.Equal(t, middleware.BreakerOpen, cb.State("down"))
	err := c.Call(ctx, "down", "Add", &govReq{}, nil)
	assert.Equal(t, rpc.Unavailable, rpc.CodeOf(err))
	assert.ErrorIs(t, err, middleware.ErrCircuitOpen)
	assert.Equal(t, middleware.DefaultBreakerFailures, sent.count("down"), "an open circuit answers without sending")

	// Other destinations are not affected.
	got, err := rpc.Invoke[govReq, govRes](ctx, c, "calc", "Add", &govReq{A: 1, B: 1})
	require.NoError(t, err)
	assert.Equal(t, 2, got.Sum)
}

func TestCircuitBreakerRecovers(t *testing.T) {
	defer goleak.VerifyNone(t)
	b := memory.New()
	defer b.Close()
	var mu sync.Mutex
	var changes []string
	cb := middleware.NewCircuitBreaker(
		middleware.WithOpenTimeout(time.Millisecond),
		middleware.OnStateChange(func(subject string, from, to middleware.BreakerState) {
			mu.Lock()
			changes = append(changes, subject+": "+from.String()+" -> "+to.String())
			mu.Unlock()
		}),
	)
	c := rpc.NewClient(b, rpc.WithClientMiddleware(cb.Middleware))
	ctx := context.Background()
	for range middleware.DefaultBreakerFailures {
		require.ErrorIs(t, c.Call(ctx, "down", "Add", &govReq{}, nil), broker.ErrNoResponders)
	}
	// Once "down" is served, a probe passes after the open timeout and
	// closes the circuit.
	govServe(t, b, "down")
	require.Eventually(t, func() bool {
		return c.Call(ctx, "down", "Add", &govReq{}, nil) == nil
	}, 10*time.Second, time.Millisecond)
	assert.Equal(t, middleware.BreakerClosed, cb.State("down"))
	mu.Lock()
	assert.Equal(t, []string{
		"down: closed -> open", "down: open -> half-open", "down: half-open -> closed",
	}, changes)
	mu.Unlock()
}

func TestCircuitBreakerExclusions(t *testing.T) {
	tests := []struct {
		name      string
		err       error
		wantState middleware.BreakerState
	}{
		{name: "unavailable trips", err: rpc.Errorf(rpc.Unavailable, "x"), wantState: middleware.BreakerOpen},
		{name: "deadline exceeded trips", err: context.DeadlineExceeded, wantState: middleware.BreakerOpen},
		{name: "canceled is not counted", err: context.Canceled, wantState: middleware.BreakerClosed},
		{name: "too large is not counted", err: broker.ErrMessageTooLarge, wantState: middleware.BreakerClosed},
		{name: "application error is a success", err: rpc.Errorf(rpc.FailedPrecondition, "x"), wantState: middleware.BreakerClosed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cb := middleware.NewCircuitBreaker()
			var calls atomic.Int32
			h := cb.Middleware(broker.HandlerFunc(func(context.Context, *broker.Message) (*broker.Message, error) {
				calls.Add(1)
				return nil, tt.err
			}))
			for range 10 {
				_, _ = h.ServeMessage(context.Background(), &broker.Message{Subject: "s"})
			}
			assert.Equal(t, tt.wantState, cb.State("s"))
			assert.Equal(t, middleware.BreakerClosed, cb.State("never-called"))
		})
	}
}

// govServe serves subject with an Add method and stops it at the end of
// the test.
func govServe(t *testing.T, b broker.Broker, subject string, mw ...rpc.Middleware) {
	t.Helper()
	srv := rpc.NewServer(rpc.WithServerMiddleware(mw...))
	require.NoError(t, rpc.Handle(srv, "Add", func(_ context.Context, in *govReq) (*govRes, error) {
		return &govRes{Sum: in.A + in.B}, nil
	}))
	sub, err := b.Serve(subject, srv)
	require.NoError(t, err)
	t.Cleanup(func() { _ = sub.Stop(context.Background()) })
}
