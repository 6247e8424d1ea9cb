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
	"golang.org/x/time/rate"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/memory"
	"github.com/mqrpc/mqrpc/middleware"
	"github.com/mqrpc/mqrpc/rpc"
)

// govGate is an innermost server handler that blocks each request until
// released, announcing each one on entered.
type govGate struct {
	entered chan struct{}
	release chan struct{}
}

func newGovGate() *govGate {
	return &govGate{entered: make(chan struct{}, 100), release: make(chan struct{})}
}

func (g *govGate) ServeMessage(context.Context, *broker.Message) (*broker.Message, error) {
	g.entered <- struct{}{}
	<-g.release
	return &broker.Message{Body: []byte("ok")}, nil
}

func TestConcurrencyLimit(t *testing.T) {
	defer goleak.VerifyNone(t)
	tests := []struct {
		name     string
		opts     []middleware.LimitOption
		wantCode rpc.Code
	}{
		{name: "default code", wantCode: rpc.ResourceExhausted},
		{name: "unavailable", opts: []middleware.LimitOption{middleware.WithRefusalCode(rpc.Unavailable)}, wantCode: rpc.Unavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var refused atomic.Int32
			opts := append(tt.opts, middleware.OnRefused(func(context.Context, *broker.Message) { refused.Add(1) }))
			g := newGovGate()
			h := middleware.ConcurrencyLimit(2, opts...)(g)
			var wg sync.WaitGroup
			for range 2 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					_, err := h.ServeMessage(context.Background(), &broker.Message{})
					assert.NoError(t, err)
				}()
			}
			<-g.entered
			<-g.entered
			_, err := h.ServeMessage(context.Background(), &broker.Message{})
			assert.Equal(t, tt.wantCode, rpc.CodeOf(err), "the third is refused at once")
			assert.Equal(t, int32(1), refused.Load())
			close(g.release)
			wg.Wait()
			reply, err := h.ServeMessage(context.Background(), &broker.Message{})
			require.NoError(t, err, "slots are given back")
			assert.Equal(t, "ok", string(reply.Body))
		})
	}
}

func TestConcurrencyLimitWait(t *testing.T) {
	defer goleak.VerifyNone(t)
	g := newGovGate()
	h := middleware.ConcurrencyLimit(1, middleware.WithMaxWait(time.Hour))(g)
	first := make(chan error, 1)
	go func() {
		_, err := h.ServeMessage(context.Background(), &broker.Message{})
		first <- err
	}()
	<-g.entered

	// The wait never passes the request's deadline.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	_, err := h.ServeMessage(ctx, &broker.Message{})
	cancel()
	assert.Equal(t, rpc.ResourceExhausted, rpc.CodeOf(err))

	// Without a deadline it waits (up to MaxWait) for the slot.
	second := make(chan error, 1)
	go func() {
		_, err := h.ServeMessage(context.Background(), &broker.Message{})
		second <- err
	}()
	close(g.release)
	require.NoError(t, <-first)
	require.NoError(t, <-second)
}

func TestRateLimit(t *testing.T) {
	next := broker.HandlerFunc(func(context.Context, *broker.Message) (*broker.Message, error) {
		return &broker.Message{}, nil
	})
	t.Run("burst then refuse", func(t *testing.T) {
		var refused atomic.Int32
		h := middleware.RateLimit(rate.NewLimiter(rate.Every(time.Hour), 2), middleware.OnRefused(func(context.Context, *broker.Message) { refused.Add(1) }))(next)
		for range 2 {
			_, err := h.ServeMessage(context.Background(), &broker.Message{})
			require.NoError(t, err)
		}
		_, err := h.ServeMessage(context.Background(), &broker.Message{})
		assert.Equal(t, rpc.ResourceExhausted, rpc.CodeOf(err))
		assert.Equal(t, int32(1), refused.Load())
	})
	t.Run("wait longer than allowed is refused at once", func(t *testing.T) {
		h := middleware.RateLimit(rate.NewLimiter(rate.Every(time.Hour), 1), middleware.WithMaxWait(time.Minute), middleware.WithRefusalCode(rpc.Unavailable))(next)
		_, err := h.ServeMessage(context.Background(), &broker.Message{})
		require.NoError(t, err)
		_, err = h.ServeMessage(context.Background(), &broker.Message{})
		assert.Equal(t, rpc.Unavailable, rpc.CodeOf(err))
	})
	t.Run("short wait is taken", func(t *testing.T) {
		h := middleware.RateLimit(rate.NewLimiter(rate.Every(time.Millisecond), 1), middleware.WithMaxWait(time.Hour))(next)
		for range 5 {
			_, err := h.ServeMessage(context.Background(), &broker.Message{})
			require.NoError(t, err)
		}
	})
}

// TestLimitOverBroker: a refused request reaches the caller as its status,
// and the server never queues beyond its limit.
func TestLimitOverBroker(t *testing.T) {
	defer goleak.VerifyNone(t)
	b := memory.New()
	defer b.Close()
	started, release := make(chan struct{}, 10), make(chan struct{})
	govCounter(t, b, func(int32) {
		started <- struct{}{}
		<-release
	}, middleware.ConcurrencyLimit(1))
	c := rpc.NewClient(b)
	first := make(chan error, 1)
	go func() { first <- c.Call(context.Background(), "calc", "Add", &govReq{}, nil) }()
	<-started
	err := c.Call(context.Background(), "calc", "Add", &govReq{}, nil)
	var e *rpc.Error
	require.ErrorAs(t, err, &e)
	assert.Equal(t, rpc.ResourceExhausted, e.Code())
	assert.True(t, e.Wire(), "answered by the server")
	close(release)
	require.NoError(t, <-first)
}
