package middleware_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/memory"
	"github.com/mqrpc/mqrpc/middleware"
	"github.com/mqrpc/mqrpc/rpc"
)

// The breaker's options: which codes count (WithFailureCodes), when it
// trips (WithTripWhen), how many probes a half-open circuit lets through
// (WithProbes), and the count interval (WithCountInterval, here long
// enough never to pass).
func TestBreakerOptions(t *testing.T) {
	b := memory.New()
	defer b.Close()
	govCounter(t, b, nil) // serves "calc"
	var changes []string
	cb := middleware.NewCircuitBreaker(
		middleware.WithFailureCodes(rpc.Unimplemented),
		middleware.WithTripWhen(func(c middleware.BreakerCounts) bool { return c.ConsecutiveFailures >= 2 }),
		middleware.WithProbes(2),
		middleware.WithCountInterval(time.Hour),
		middleware.WithOpenTimeout(time.Second), // long enough to see it open on a loaded machine
		middleware.OnStateChange(func(_ string, from, to middleware.BreakerState) { changes = append(changes, to.String()) }),
	)
	c := rpc.NewClient(b, rpc.WithClientMiddleware(cb.Middleware))
	ctx := context.Background()
	for range 2 { // Unimplemented counts as a failure now
		require.Equal(t, rpc.Unimplemented, rpc.CodeOf(c.Call(ctx, "calc", "Nope", &govReq{}, nil)))
	}
	assert.Equal(t, middleware.BreakerOpen, cb.State("calc"), "two failures trip it")
	time.Sleep(1100 * time.Millisecond) // past the open timeout
	require.NoError(t, c.Call(ctx, "calc", "Add", &govReq{}, nil))
	assert.Equal(t, middleware.BreakerHalfOpen, cb.State("calc"), "one probe of two succeeded")
	require.NoError(t, c.Call(ctx, "calc", "Add", &govReq{}, nil))
	assert.Equal(t, middleware.BreakerClosed, cb.State("calc"))
	assert.Equal(t, []string{"open", "half-open", "closed"}, changes)
}

// WithMaxSkew sets how old a signature may be: a request signed 10 s ago
// passes with a minute's skew and fails with a second's.
func TestSignerMaxSkew(t *testing.T) {
	key := []byte("0123456789abcdef0123456789abcdef")
	old := middleware.NewHMACSigner("k1", key, middleware.WithSignClock(func() time.Time { return time.Now().Add(-10 * time.Second) }))
	for _, tt := range []struct {
		skew time.Duration
		want rpc.Code
	}{{time.Minute, rpc.OK}, {time.Second, rpc.Unauthenticated}} {
		h := middleware.NewHMACSigner("k1", key, middleware.WithMaxSkew(tt.skew)).Server()(broker.HandlerFunc(
			func(context.Context, *broker.Message) (*broker.Message, error) { return &broker.Message{}, nil }))
		var reply *broker.Message
		signed := old.Client()(broker.HandlerFunc(func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
			var err error
			reply, err = h.ServeMessage(ctx, req)
			return nil, err
		}))
		_, err := signed.ServeMessage(context.Background(), &broker.Message{Subject: "bank", Header: broker.Header{}})
		require.NoError(t, err)
		assert.Equal(t, tt.want, rpc.CodeOf(rpc.ErrorFromReply(reply)), "skew %v", tt.skew)
	}
}

// Retry waits with full jitter: uniformly between zero and a cap that
// grows from the initial backoff by the multiplier up to the maximum.
func TestRetryBackoffFullJitter(t *testing.T) {
	caps := map[int]time.Duration{2: time.Millisecond, 3: 2 * time.Millisecond, 4: 3 * time.Millisecond}
	waits := map[int][]time.Duration{}
	h := middleware.Retry(
		middleware.WithMaxAttempts(4),
		middleware.WithBackoff(time.Millisecond, 3*time.Millisecond, 2),
		middleware.WithRetryBudget(middleware.UnlimitedRetryBudget()),
		middleware.OnRetry(func(_ context.Context, _ rpc.CallInfo, attempt int, _ error, wait time.Duration) {
			waits[attempt] = append(waits[attempt], wait)
		}),
	)(broker.HandlerFunc(func(context.Context, *broker.Message) (*broker.Message, error) {
		return nil, rpc.Errorf(rpc.Unavailable, "down")
	}))
	for range 100 {
		_, err := h.ServeMessage(govCallCtx(t, true), &broker.Message{ID: "x"})
		require.Equal(t, rpc.Unavailable, rpc.CodeOf(err))
	}
	for attempt, cp := range caps {
		ws := waits[attempt]
		require.Len(t, ws, 100, "attempt %d", attempt)
		lo, hi := ws[0], ws[0]
		for _, w := range ws {
			lo, hi = min(lo, w), max(hi, w)
		}
		assert.LessOrEqual(t, hi, cp, "attempt %d: never above the cap", attempt)
		assert.Greater(t, hi, cp*3/4, "attempt %d: up to the cap", attempt)
		assert.Less(t, lo, cp/4, "attempt %d: down to zero", attempt)
	}
}
