package middleware_test

import (
	"context"
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

// govReq and govRes are the request and reply of the test services of the
// governance middleware tests.
type govReq struct{ A, B int }
type govRes struct{ Sum int }

// govCapture is an innermost handler that records what reached it.
type govCapture struct {
	ctx   context.Context
	req   *broker.Message
	calls int
}

func (c *govCapture) ServeMessage(ctx context.Context, req *broker.Message) (*broker.Message, error) {
	c.ctx, c.req = ctx, req
	c.calls++
	return &broker.Message{Body: []byte("ok")}, nil
}

// govBroker returns a memory broker closed at the end of the test.
func govBroker(t *testing.T, opts ...memory.Option) *memory.Broker {
	t.Helper()
	b := memory.New(opts...)
	t.Cleanup(func() { _ = b.Close() })
	return b
}

func TestTimeout(t *testing.T) {
	now := time.Now()
	tests := []struct {
		name     string
		d        time.Duration
		ctxAt    time.Time // zero: no ctx deadline
		msgAt    time.Time // zero: no message deadline
		wantAt   time.Time // zero: none
		wantNear bool      // wantAt is approximate (now+d)
	}{
		{name: "adds d", d: time.Hour, wantAt: now.Add(time.Hour), wantNear: true},
		{name: "ctx earlier wins", d: time.Hour, ctxAt: now.Add(time.Minute), wantAt: now.Add(time.Minute)},
		{name: "message earlier wins", d: time.Hour, ctxAt: now.Add(2 * time.Minute), msgAt: now.Add(time.Minute), wantAt: now.Add(time.Minute)},
		{name: "d earliest", d: time.Minute, ctxAt: now.Add(time.Hour), msgAt: now.Add(time.Hour), wantAt: now.Add(time.Minute), wantNear: true},
		{name: "zero d keeps ctx", ctxAt: now.Add(time.Minute), wantAt: now.Add(time.Minute)},
		{name: "zero d and nothing", wantAt: time.Time{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			if !tt.ctxAt.IsZero() {
				var cancel context.CancelFunc
				ctx, cancel = context.WithDeadline(ctx, tt.ctxAt)
				defer cancel()
			}
			var c govCapture
			h := middleware.Timeout(tt.d)(&c)
			_, err := h.ServeMessage(ctx, &broker.Message{Subject: "s", Deadline: tt.msgAt})
			require.NoError(t, err)
			require.Equal(t, 1, c.calls)
			got, ok := c.ctx.Deadline()
			if tt.wantAt.IsZero() {
				assert.False(t, ok)
				assert.True(t, c.req.Deadline.IsZero())
				return
			}
			require.True(t, ok)
			assert.Equal(t, got, c.req.Deadline, "ctx and message agree")
			if tt.wantNear {
				assert.WithinDuration(t, tt.wantAt, got, time.Minute/2)
			} else {
				assert.True(t, tt.wantAt.Equal(got), "deadline %v, want %v", got, tt.wantAt)
			}
		})
	}
}

func TestDeadlineGuard(t *testing.T) {
	now := time.Now()
	tests := []struct {
		name        string
		max         time.Duration
		deadline    time.Time
		wantRefused bool
		wantAt      time.Time // zero: no deadline; checked within a minute when max is set
	}{
		{name: "expired is refused", deadline: now.Add(-time.Second), wantRefused: true},
		{name: "caller deadline rebuilt", deadline: now.Add(time.Hour), wantAt: now.Add(time.Hour)},
		{name: "no deadline", wantAt: time.Time{}},
		{name: "max caps", max: time.Minute, deadline: now.Add(time.Hour), wantAt: now.Add(time.Minute)},
		{name: "max without caller deadline", max: time.Minute, wantAt: now.Add(time.Minute)},
		{name: "caller earlier than max", max: time.Hour, deadline: now.Add(time.Minute), wantAt: now.Add(time.Minute)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var late []time.Duration
			g := &middleware.DeadlineGuard{
				MaxDuration: tt.max,
				OnExpired: func(_ context.Context, _ *broker.Message, d time.Duration) {
					late = append(late, d)
				},
			}
			var c govCapture
			h := g.Middleware(&c)
			reply, err := h.ServeMessage(context.Background(), &broker.Message{Deadline: tt.deadline})
			if tt.wantRefused {
				assert.Nil(t, reply)
				assert.Equal(t, rpc.DeadlineExceeded, rpc.CodeOf(err))
				assert.Zero(t, c.calls, "expired work never starts")
				assert.Equal(t, uint64(1), g.Expired())
				require.Len(t, late, 1)
				assert.Greater(t, late[0], time.Duration(0))
				return
			}
			require.NoError(t, err)
			assert.Equal(t, 1, c.calls)
			assert.Zero(t, g.Expired())
			got, ok := c.ctx.Deadline()
			if tt.wantAt.IsZero() {
				assert.False(t, ok)
				return
			}
			require.True(t, ok)
			assert.WithinDuration(t, tt.wantAt, got, 30*time.Second)
		})
	}
}

// TestNestedDeadline checks that a handler calling another service with
// its own ctx passes the caller's remaining deadline on, and that a server
// behind a DeadlineGuard never starts a request that expired on the way.
func TestNestedDeadline(t *testing.T) {
	defer goleak.VerifyNone(t)
	b := govBroker(t)
	inner := make(chan time.Time, 1)

	back := rpc.NewServer()
	require.NoError(t, rpc.Handle(back, "Add", func(ctx context.Context, in *govReq) (*govRes, error) {
		d, _ := ctx.Deadline()
		inner <- d
		return &govRes{Sum: in.A + in.B}, nil
	}))
	_, err := b.Serve("back", back)
	require.NoError(t, err)

	client := rpc.NewClient(b)
	guard := &middleware.DeadlineGuard{}
	outerDeadline := make(chan time.Time, 1)
	front := rpc.NewServer(rpc.WithServerMiddleware(guard.Middleware))
	require.NoError(t, rpc.Handle(front, "Add", func(ctx context.Context, in *govReq) (*govRes, error) {
		d, _ := ctx.Deadline()
		outerDeadline <- d
		return rpc.Invoke[govReq, govRes](ctx, client, "back", "Add", in)
	}))
	_, err = b.Serve("front", front)
	require.NoError(t, err)

	start := time.Now()
	caller := rpc.NewClient(b, rpc.WithClientMiddleware(middleware.Timeout(10*time.Second)))
	got, err := rpc.Invoke[govReq, govRes](context.Background(), caller, "front", "Add", &govReq{A: 1, B: 2})
	require.NoError(t, err)
	assert.Equal(t, 3, got.Sum)
	od, id := <-outerDeadline, <-inner
	require.False(t, od.IsZero())
	assert.True(t, od.After(start) && !od.After(time.Now().Add(10*time.Second)),
		"Timeout(10s) is shorter than the client default: deadline %v", od)
	assert.True(t, id.Equal(od), "nested call inherits the deadline: inner %v, outer %v", id, od)

	// A request that expired on the way (a broker that delivers late) is
	// refused and counted, and the method never runs.
	reply, err := front.ServeMessage(context.Background(), &broker.Message{
		ID: "late", Header: broker.Header{broker.HeaderMethod: "Add"}, Body: []byte(`{"A":1,"B":2}`),
		Deadline: time.Now().Add(-time.Millisecond),
	})
	require.NoError(t, err)
	assert.Equal(t, rpc.DeadlineExceeded, rpc.CodeOf(rpc.ErrorFromReply(reply)))
	assert.Equal(t, uint64(1), guard.Expired())
	assert.Empty(t, outerDeadline, "expired work never starts")
	require.NoError(t, b.Close())
}

// TestTimeoutWithDelay: a broker that delays delivery past the call's
// timeout makes the call fail with DeadlineExceeded, and the expired work
// never runs.
func TestTimeoutWithDelay(t *testing.T) {
	defer goleak.VerifyNone(t)
	b := memory.New()
	defer b.Close()
	runs := govCounter(t, b, nil, middleware.ServerTimeout(0))
	c := rpc.NewClient(b, rpc.WithClientMiddleware(middleware.Timeout(20*time.Millisecond)))

	b.SetFaults(memory.Faults{Delay: time.Hour})
	err := c.Call(context.Background(), "calc", "Add", &govReq{}, nil)
	assert.Equal(t, rpc.DeadlineExceeded, rpc.CodeOf(err), "error %v", err)
	assert.ErrorIs(t, err, broker.ErrTimeout)

	b.SetFaults(memory.Faults{})
	got, err := rpc.Invoke[govReq, govRes](context.Background(), rpc.NewClient(b), "calc", "Add", &govReq{A: 2, B: 2})
	require.NoError(t, err)
	assert.Equal(t, 4, got.Sum)
	require.NoError(t, b.Close())
	assert.Equal(t, int32(1), runs.Load(), "the delayed request never ran")
}
