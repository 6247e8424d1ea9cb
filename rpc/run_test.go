package rpc_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/memory"
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
		require.NoError(t, rpc.Handle(srv, "Add", func(_ context.Context, in *addReq) (*addRes, error) {
			started <- struct{}{}
			<-release
			finished.Add(1)
			return &addRes{Sum: in.A + in.B}, nil
		}))
		sub, err := b.Serve(subject, srv)
		require.NoError(t, err)
		subs = append(subs, sub)
	}
	c := rpc.NewClient(b)
	replies := make(chan error, 2)
	for _, subject := range []string{"a", "b"} {
		go func() { replies <- c.Call(context.Background(), subject, "Add", &addReq{A: 1}, nil) }()
	}
	<-started
	<-started

	t.Run("bounded by ctx", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
		defer cancel()
		err := rpc.StopAll(ctx, subs...)
		assert.ErrorIs(t, err, context.DeadlineExceeded)
		assert.Zero(t, finished.Load())
	})
	t.Run("past its ctx the callers hear Unavailable", func(t *testing.T) {
		for range 2 {
			select {
			case err := <-replies:
				assert.Equal(t, rpc.Unavailable, rpc.CodeOf(err), "%v", err)
			case <-time.After(time.Second):
				t.Fatal("a caller in flight got no answer within 1s of the abandoned drain")
			}
		}
	})
	t.Run("a later StopAll waits for the handlers", func(t *testing.T) {
		// Nothing new is taken while draining.
		err := c.Call(context.Background(), "a", "Add", &addReq{}, nil)
		assert.ErrorIs(t, err, broker.ErrNoResponders)
		close(release)
		require.NoError(t, rpc.StopAll(context.Background(), append(subs, nil)...))
		assert.Equal(t, int32(2), finished.Load())
	})
}

// Run serves until its ctx ends, then lets the request in flight finish
// and send its reply, and closes the broker.
func TestRun(t *testing.T) {
	b := memory.New()
	srv := rpc.NewServer()
	started, release := make(chan struct{}), make(chan struct{})
	require.NoError(t, rpc.Handle(srv, "Add", func(_ context.Context, in *addReq) (*addRes, error) {
		close(started)
		<-release
		return &addRes{Sum: in.A + in.B}, nil
	}))
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- rpc.Run(ctx, b, srv, "calc", "calc2") }()
	c := rpc.NewClient(b)
	reply := make(chan error, 1)
	go func() {
		// Run may not have served yet: retry until it has.
		for {
			err := c.Call(context.Background(), "calc", "Add", &addReq{A: 1, B: 2}, nil)
			if !errors.Is(err, broker.ErrNoResponders) {
				reply <- err
				return
			}
			time.Sleep(time.Millisecond)
		}
	}()
	<-started
	cancel()
	select {
	case err := <-ran:
		t.Fatalf("Run returned %v with a request in flight", err)
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	require.NoError(t, <-reply, "the request in flight is answered")
	require.NoError(t, <-ran)
	assert.ErrorIs(t, c.Call(context.Background(), "calc", "Add", &addReq{}, nil), broker.ErrClosed, "Run closed the broker")

	assert.Error(t, rpc.Run(context.Background(), memory.New(), srv), "no subject")
}
