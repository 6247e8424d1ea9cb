package middleware_test

import (
	"context"
	"errors"
	"fmt"
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

// govScript is an innermost client handler that fails with the scripted
// errors in turn and then succeeds, recording every attempt it saw.
type govScript struct {
	mu   sync.Mutex
	errs []error
	seen []*broker.Message
}

func (s *govScript) ServeMessage(_ context.Context, req *broker.Message) (*broker.Message, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seen = append(s.seen, req)
	if n := len(s.seen); n <= len(s.errs) {
		return nil, s.errs[n-1]
	}
	return &broker.Message{Body: []byte("ok")}, nil
}

func (s *govScript) attempts() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.seen)
}

// govCallCtx returns a ctx carrying the CallInfo of a real client call, by
// capturing it from inside a client chain.
func govCallCtx(t *testing.T, idempotent bool) context.Context {
	t.Helper()
	var got context.Context
	capture := func(broker.Handler) broker.Handler {
		return broker.HandlerFunc(func(ctx context.Context, _ *broker.Message) (*broker.Message, error) {
			got = ctx
			return nil, nil
		})
	}
	b := memory.New()
	defer b.Close()
	c := rpc.NewClient(b, rpc.WithClientMiddleware(capture), rpc.WithTimeout(0))
	var opts []rpc.CallOption
	if idempotent {
		opts = append(opts, rpc.Idempotent())
	}
	require.NoError(t, c.Call(context.Background(), "calc", "Add", &govReq{}, nil, opts...))
	return got
}

func TestRetry(t *testing.T) {
	unavailable := rpc.Errorf(rpc.Unavailable, "down")
	tests := []struct {
		name         string
		idempotent   bool
		policy       []middleware.RetryOption
		errs         []error
		wantAttempts int
		wantCode     rpc.Code
	}{
		{name: "idempotent recovers", idempotent: true, errs: []error{unavailable, unavailable}, wantAttempts: 3, wantCode: rpc.OK},
		{name: "idempotent gives up after max attempts", idempotent: true, errs: []error{unavailable, unavailable, unavailable, unavailable}, wantAttempts: 3, wantCode: rpc.Unavailable},
		{name: "max attempts 5", idempotent: true, policy: []middleware.RetryOption{middleware.WithMaxAttempts(5)}, errs: []error{unavailable, unavailable, unavailable, unavailable}, wantAttempts: 5, wantCode: rpc.OK},
		{name: "max attempts 1 disables", idempotent: true, policy: []middleware.RetryOption{middleware.WithMaxAttempts(1)}, errs: []error{unavailable}, wantAttempts: 1, wantCode: rpc.Unavailable},
		{name: "not idempotent is not retried", errs: []error{unavailable}, wantAttempts: 1, wantCode: rpc.Unavailable},
		{name: "not idempotent, disconnected", errs: []error{fmt.Errorf("lost: %w", broker.ErrDisconnected)}, wantAttempts: 1, wantCode: rpc.Unavailable},
		{name: "not idempotent, no responders is retried", errs: []error{fmt.Errorf("x: %w", broker.ErrNoResponders)}, wantAttempts: 2, wantCode: rpc.OK},
		{name: "not idempotent, circuit open is retried", errs: []error{rpc.NewError(rpc.Unavailable, middleware.ErrCircuitOpen)}, wantAttempts: 2, wantCode: rpc.OK},
		{name: "idempotent methods", policy: []middleware.RetryOption{middleware.WithIdempotent(middleware.IdempotentMethods("calc.Add"))}, errs: []error{unavailable}, wantAttempts: 2, wantCode: rpc.OK},
		{name: "other idempotent methods", policy: []middleware.RetryOption{middleware.WithIdempotent(middleware.IdempotentMethods("calc.Sub"))}, errs: []error{unavailable}, wantAttempts: 1, wantCode: rpc.Unavailable},
		{name: "always idempotent", policy: []middleware.RetryOption{middleware.WithIdempotent(middleware.AlwaysIdempotent)}, errs: []error{unavailable}, wantAttempts: 2, wantCode: rpc.OK},
		{name: "aborted", idempotent: true, errs: []error{rpc.Errorf(rpc.Aborted, "conflict")}, wantAttempts: 2, wantCode: rpc.OK},
		{name: "invalid argument is final", idempotent: true, errs: []error{rpc.Errorf(rpc.InvalidArgument, "bad")}, wantAttempts: 1, wantCode: rpc.InvalidArgument},
		{name: "resource exhausted is final by default", idempotent: true, errs: []error{rpc.Errorf(rpc.ResourceExhausted, "busy")}, wantAttempts: 1, wantCode: rpc.ResourceExhausted},
		{name: "resource exhausted when configured", idempotent: true, policy: []middleware.RetryOption{middleware.WithRetryableCodes(rpc.ResourceExhausted)}, errs: []error{rpc.Errorf(rpc.ResourceExhausted, "busy")}, wantAttempts: 2, wantCode: rpc.OK},
		{name: "deadline exceeded without per-attempt timeout", idempotent: true, errs: []error{fmt.Errorf("x: %w: %w", broker.ErrTimeout, context.DeadlineExceeded)}, wantAttempts: 1, wantCode: rpc.DeadlineExceeded},
		{name: "deadline exceeded with per-attempt timeout", idempotent: true, policy: []middleware.RetryOption{middleware.WithPerAttemptTimeout(time.Hour)},
			errs: []error{rpc.Errorf(rpc.DeadlineExceeded, "expired on the way")}, wantAttempts: 2, wantCode: rpc.OK},
		{name: "canceled", idempotent: true, policy: []middleware.RetryOption{middleware.WithRetryableCodes(rpc.Canceled)}, errs: []error{context.Canceled}, wantAttempts: 1, wantCode: rpc.Canceled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var retries []int
			p := append([]middleware.RetryOption{
				middleware.WithBackoff(time.Microsecond, time.Millisecond, 0),
				middleware.WithRetryBudget(middleware.UnlimitedRetryBudget()),
				middleware.OnRetry(func(_ context.Context, info rpc.CallInfo, attempt int, err error, wait time.Duration) {
					assert.Equal(t, "Add", info.Method)
					assert.Error(t, err)
					assert.LessOrEqual(t, wait, time.Millisecond)
					retries = append(retries, attempt)
				}),
			}, tt.policy...)
			s := &govScript{errs: tt.errs}
			h := middleware.Retry(p...)(s)
			req := &broker.Message{ID: "id-1", Subject: "calc", Header: broker.Header{"x": "1"}, Body: []byte("body")}
			_, err := h.ServeMessage(govCallCtx(t, tt.idempotent), req)
			assert.Equal(t, tt.wantCode, rpc.CodeOf(err), "error %v", err)
			require.Equal(t, tt.wantAttempts, s.attempts())
			for i, m := range s.seen {
				assert.Equal(t, "id-1", m.ID, "same ID on every attempt")
				assert.Equal(t, "body", string(m.Body))
				if i == 0 {
					assert.Empty(t, m.Header.Get(middleware.HeaderAttempt))
				} else {
					assert.Equal(t, fmt.Sprint(i+1), m.Header.Get(middleware.HeaderAttempt))
					assert.NotSame(t, s.seen[i-1], m, "a fresh copy per attempt")
				}
			}
			for i, a := range retries {
				assert.Equal(t, i+2, a)
			}
			assert.Len(t, retries, tt.wantAttempts-1)
			assert.Empty(t, req.Header.Get(middleware.HeaderAttempt), "the caller's message is not changed")
		})
	}
}

func TestRetryStopsAtDeadline(t *testing.T) {
	// The backoff is so long that any wait would pass the deadline: Retry
	// must give up at once instead of sleeping into it.
	var reasons []string
	p := []middleware.RetryOption{
		middleware.WithBackoff(1e6*time.Hour, 1e6*time.Hour, 0),
		middleware.WithRetryBudget(middleware.UnlimitedRetryBudget()),
		middleware.OnGiveUp(func(_ context.Context, _ rpc.CallInfo, _ error, reason string) {
			reasons = append(reasons, reason)
		}),
	}
	s := &govScript{errs: []error{rpc.Errorf(rpc.Unavailable, "down")}}
	ctx, cancel := context.WithTimeout(govCallCtx(t, true), time.Hour)
	defer cancel()
	_, err := middleware.Retry(p...)(s).ServeMessage(ctx, &broker.Message{ID: "x"})
	assert.Equal(t, rpc.Unavailable, rpc.CodeOf(err))
	assert.NoError(t, ctx.Err(), "returned without waiting for the deadline")
	assert.Equal(t, 1, s.attempts())
	assert.Equal(t, []string{"deadline"}, reasons)
}

func TestRetryPerAttemptDeadline(t *testing.T) {
	// Each attempt carries its own deadline, earlier than the call's, so
	// the server gives up on an attempt the client gave up on.
	var deadlines []time.Time
	next := broker.HandlerFunc(func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
		d, ok := ctx.Deadline()
		require.True(t, ok)
		require.Equal(t, d, req.Deadline, "ctx and message agree")
		deadlines = append(deadlines, d)
		if len(deadlines) == 1 {
			<-ctx.Done() // the reply never comes
			return nil, fmt.Errorf("wait: %w: %w", broker.ErrTimeout, ctx.Err())
		}
		return &broker.Message{}, nil
	})
	ctx, cancel := context.WithTimeout(govCallCtx(t, true), time.Hour)
	defer cancel()
	start := time.Now()
	h := middleware.Retry(
		middleware.WithPerAttemptTimeout(20*time.Millisecond), middleware.WithBackoff(time.Microsecond, 0, 0),
		middleware.WithRetryBudget(middleware.UnlimitedRetryBudget()),
	)(next)
	_, err := h.ServeMessage(ctx, &broker.Message{ID: "x", Deadline: start.Add(time.Hour)})
	require.NoError(t, err)
	require.Len(t, deadlines, 2)
	call, _ := ctx.Deadline()
	for _, d := range deadlines {
		assert.True(t, d.Before(call), "attempt deadline %v before the call's %v", d, call)
	}
	assert.True(t, deadlines[1].After(deadlines[0]), "each attempt gets a fresh deadline")
}

func TestRetryBudget(t *testing.T) {
	t.Run("ratio", func(t *testing.T) {
		b := middleware.NewRetryBudget(0.1, 0)
		assert.False(t, b.TryWithdraw())
		for range 9 {
			b.Deposit()
		}
		assert.False(t, b.TryWithdraw(), "nine calls earn no retry at 10%")
		b.Deposit()
		assert.True(t, b.TryWithdraw(), "ten calls earn one")
		assert.False(t, b.TryWithdraw())
	})
	t.Run("cap", func(t *testing.T) {
		b := middleware.NewRetryBudget(1, 0)
		for range 5000 {
			b.Deposit()
		}
		n := 0
		for b.TryWithdraw() && n < 5000 {
			n++
		}
		assert.Equal(t, 1000, n, "the balance is capped at what 1000 calls earn")
	})
	t.Run("minimum per second", func(t *testing.T) {
		b := middleware.NewRetryBudget(0, 3)
		n := 0
		for b.TryWithdraw() && n < 100 {
			n++
		}
		assert.GreaterOrEqual(t, n, 3, "the burst of the per-second minimum")
		assert.Less(t, n, 100)
	})
	t.Run("unlimited", func(t *testing.T) {
		b := middleware.UnlimitedRetryBudget()
		for range 100 {
			require.True(t, b.TryWithdraw())
		}
	})
	t.Run("outage is not amplified", func(t *testing.T) {
		// Every attempt fails; with a budget of 50% of calls, 10 calls of
		// up to 3 attempts make 15 attempts instead of 30.
		var gaveUp atomic.Int32
		s := &govScript{errs: make([]error, 100)}
		for i := range s.errs {
			s.errs[i] = rpc.Errorf(rpc.Unavailable, "down")
		}
		h := middleware.Retry(
			middleware.WithBackoff(time.Microsecond, time.Microsecond, 0),
			middleware.WithRetryBudget(middleware.NewRetryBudget(0.5, 0)),
			middleware.OnGiveUp(func(_ context.Context, _ rpc.CallInfo, _ error, reason string) {
				assert.Equal(t, "budget", reason)
				gaveUp.Add(1)
			}),
		)(s)
		ctx := govCallCtx(t, true)
		for range 10 {
			_, err := h.ServeMessage(ctx, &broker.Message{ID: "x"})
			require.Equal(t, rpc.Unavailable, rpc.CodeOf(err))
		}
		assert.Equal(t, 15, s.attempts())
		assert.Equal(t, int32(10), gaveUp.Load())
	})
}

// govCounter serves "calc" with an Add method that counts its runs; block,
// when not nil, is called inside the handler on each run.
func govCounter(t *testing.T, b broker.Broker, block func(run int32), mw ...rpc.Middleware) *atomic.Int32 {
	t.Helper()
	var runs atomic.Int32
	srv := rpc.NewServer(rpc.WithServerMiddleware(mw...))
	require.NoError(t, rpc.Handle(srv, "Add", func(_ context.Context, in *govReq) (*govRes, error) {
		n := runs.Add(1)
		if block != nil {
			block(n)
		}
		return &govRes{Sum: in.A + in.B}, nil
	}))
	sub, err := b.Serve("calc", srv)
	require.NoError(t, err)
	t.Cleanup(func() { _ = sub.Stop(context.Background()) })
	return &runs
}

func TestRetryMemoryBroker(t *testing.T) {
	fast := func(p ...middleware.RetryOption) rpc.Middleware {
		return middleware.Retry(append([]middleware.RetryOption{
			middleware.WithBackoff(time.Millisecond, time.Millisecond, 0),
			middleware.WithRetryBudget(middleware.UnlimitedRetryBudget()),
		}, p...)...)
	}
	t.Run("dropped reply with per-attempt timeout", func(t *testing.T) {
		defer goleak.VerifyNone(t)
		b := memory.New()
		defer b.Close()
		runs := govCounter(t, b, nil)
		b.SetFaults(memory.Faults{DropReplies: 1})
		c := rpc.NewClient(b, rpc.WithClientMiddleware(fast(middleware.WithMaxAttempts(5), middleware.WithPerAttemptTimeout(time.Second))))
		got, err := rpc.Invoke[govReq, govRes](context.Background(), c, "calc", "Add", &govReq{A: 2, B: 3}, rpc.Idempotent())
		require.NoError(t, err)
		assert.Equal(t, 5, got.Sum)
		assert.GreaterOrEqual(t, runs.Load(), int32(2), "the idempotent call ran again")
	})
	t.Run("disconnect", func(t *testing.T) {
		tests := []struct {
			name       string
			idempotent bool
			wantRuns   int32
			wantErr    error
		}{
			{name: "idempotent retried", idempotent: true, wantRuns: 2},
			{name: "not idempotent fails", idempotent: false, wantRuns: 1, wantErr: broker.ErrDisconnected},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				defer goleak.VerifyNone(t)
				b := memory.New()
				defer b.Close()
				started, release := make(chan struct{}), make(chan struct{})
				runs := govCounter(t, b, func(run int32) {
					if run == 1 {
						close(started)
						<-release
					}
				})
				c := rpc.NewClient(b, rpc.WithClientMiddleware(fast()))
				done := make(chan error, 1)
				go func() {
					var opts []rpc.CallOption
					if tt.idempotent {
						opts = append(opts, rpc.Idempotent())
					}
					_, err := rpc.Invoke[govReq, govRes](context.Background(), c, "calc", "Add", &govReq{A: 1, B: 1}, opts...)
					done <- err
				}()
				<-started
				b.Disconnect()
				err := <-done
				close(release)
				if tt.wantErr != nil {
					require.ErrorIs(t, err, tt.wantErr)
					assert.Equal(t, rpc.Unavailable, rpc.CodeOf(err))
				} else {
					require.NoError(t, err)
				}
				assert.Equal(t, tt.wantRuns, runs.Load())
			})
		}
	})
	t.Run("no responders", func(t *testing.T) {
		defer goleak.VerifyNone(t)
		b := memory.New()
		defer b.Close()
		var retries atomic.Int32
		c := rpc.NewClient(b, rpc.WithClientMiddleware(fast(middleware.OnRetry(func(context.Context, rpc.CallInfo, int, error, time.Duration) { retries.Add(1) }))))
		err := c.Call(context.Background(), "nobody", "Add", &govReq{}, nil)
		require.ErrorIs(t, err, broker.ErrNoResponders)
		assert.Equal(t, rpc.Unavailable, rpc.CodeOf(err))
		assert.Equal(t, int32(2), retries.Load(), "not delivered, so retried although not idempotent")
	})
	t.Run("server unavailable then up", func(t *testing.T) {
		defer goleak.VerifyNone(t)
		b := memory.New()
		defer b.Close()
		var refused atomic.Int32
		flaky := func(next broker.Handler) broker.Handler {
			return broker.HandlerFunc(func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
				if refused.Add(1) == 1 {
					return nil, rpc.Errorf(rpc.Unavailable, "warming up")
				}
				return next.ServeMessage(ctx, req)
			})
		}
		runs := govCounter(t, b, nil, flaky)
		c := rpc.NewClient(b, rpc.WithClientMiddleware(fast()))
		var err error
		_, err = rpc.Invoke[govReq, govRes](context.Background(), c, "calc", "Add", &govReq{}, rpc.Idempotent())
		require.NoError(t, err)
		assert.Equal(t, int32(1), runs.Load())
		assert.Equal(t, int32(2), refused.Load())
		require.False(t, errors.Is(err, broker.ErrTimeout))
	})
}
