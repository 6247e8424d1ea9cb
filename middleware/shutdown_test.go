package middleware_test

import (
	"context"
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

func TestStopAll(t *testing.T) {
	defer goleak.VerifyNone(t)
	b := memory.New()
	defer b.Close()
	started, release := make(chan struct{}, 2), make(chan struct{})
	var finished atomic.Int32
	var subs []broker.Subscription
	for _, subject := range []string{"a", "b"} {
		srv := rpc.NewServer()
		require.NoError(t, rpc.Handle(srv, "Add", func(_ context.Context, in *govReq) (*govRes, error) {
			started <- struct{}{}
			<-release
			finished.Add(1)
			return &govRes{Sum: in.A + in.B}, nil
		}))
		sub, err := b.Serve(subject, srv)
		require.NoError(t, err)
		subs = append(subs, sub)
	}
	c := rpc.NewClient(b)
	replies := make(chan error, 2)
	for _, subject := range []string{"a", "b"} {
		go func() { replies <- c.Call(context.Background(), subject, "Add", &govReq{A: 1}, nil) }()
	}
	<-started
	<-started

	t.Run("bounded by ctx", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
		defer cancel()
		err := middleware.StopAll(ctx, subs...)
		assert.ErrorIs(t, err, context.DeadlineExceeded)
		assert.Zero(t, finished.Load())
	})
	t.Run("drains in-flight work", func(t *testing.T) {
		// Nothing new is taken while draining.
		err := c.Call(context.Background(), "a", "Add", &govReq{}, nil)
		assert.ErrorIs(t, err, broker.ErrNoResponders)
		close(release)
		require.NoError(t, middleware.StopAll(context.Background(), append(subs, nil)...))
		assert.Equal(t, int32(2), finished.Load())
		require.NoError(t, <-replies, "replies of in-flight requests are sent")
		require.NoError(t, <-replies)
	})
}
