package rpc_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/memory"
	"github.com/mqrpc/mqrpc/rpc"
)

type blob struct{ Data string }

func blobServer(t *testing.T, b broker.Broker, opts ...rpc.ServerOption) {
	t.Helper()
	srv := rpc.NewServer(opts...)
	require.NoError(t, rpc.Handle(srv, "Echo", func(_ context.Context, in *blob) (*blob, error) { return in, nil }))
	require.NoError(t, rpc.Handle(srv, "Grow", func(_ context.Context, in *blob) (*blob, error) {
		return &blob{Data: strings.Repeat("x", len(in.Data)*10)}, nil
	}))
	_, err := b.Serve("blob", srv)
	require.NoError(t, err)
}

func TestMessageSizeLimits(t *testing.T) {
	b := memory.New()
	defer b.Close()
	blobServer(t, b, rpc.WithMaxMessageSize(1000))
	ctx := context.Background()

	t.Run("ServerRefusesLargeRequest", func(t *testing.T) {
		err := rpc.NewClient(b).Call(ctx, "blob", "Echo", &blob{Data: strings.Repeat("a", 2000)}, &blob{})
		assert.Equal(t, rpc.ResourceExhausted, rpc.CodeOf(err))
		assert.Contains(t, err.Error(), "exceeds the server's limit of 1000")
	})
	t.Run("ServerRefusesLargeReply", func(t *testing.T) {
		err := rpc.NewClient(b).Call(ctx, "blob", "Grow", &blob{Data: strings.Repeat("a", 500)}, &blob{})
		assert.Equal(t, rpc.ResourceExhausted, rpc.CodeOf(err))
		assert.Contains(t, err.Error(), "reply of")
	})
	t.Run("ClientRefusesLargeRequest", func(t *testing.T) {
		err := rpc.NewClient(b, rpc.WithMaxMessageSize(100)).Call(ctx, "blob", "Echo", &blob{Data: strings.Repeat("a", 200)}, &blob{})
		assert.Equal(t, rpc.ResourceExhausted, rpc.CodeOf(err))
		assert.ErrorIs(t, err, broker.ErrMessageTooLarge)
		var e *rpc.Error
		require.ErrorAs(t, err, &e)
		assert.False(t, e.Wire(), "refused locally, never sent")
	})
	t.Run("ClientRefusesLargeReply", func(t *testing.T) {
		err := rpc.NewClient(b, rpc.WithMaxMessageSize(300)).Call(ctx, "blob", "Grow", &blob{Data: strings.Repeat("a", 50)}, &blob{})
		assert.Equal(t, rpc.ResourceExhausted, rpc.CodeOf(err))
		assert.ErrorIs(t, err, broker.ErrMessageTooLarge)
	})
	t.Run("WithinLimits", func(t *testing.T) {
		var out blob
		require.NoError(t, rpc.NewClient(b).Call(ctx, "blob", "Echo", &blob{Data: "ok"}, &out))
		assert.Equal(t, "ok", out.Data)
	})
}

func TestHeaderLimit(t *testing.T) {
	b := memory.New()
	defer b.Close()
	blobServer(t, b, rpc.WithMaxHeaderBytes(256))
	c := rpc.NewClient(b)
	err := c.Call(context.Background(), "blob", "Echo", &blob{}, &blob{}, rpc.WithHeader("x-big", strings.Repeat("h", 300)))
	assert.Equal(t, rpc.ResourceExhausted, rpc.CodeOf(err))
	require.NoError(t, c.Call(context.Background(), "blob", "Echo", &blob{}, &blob{}, rpc.WithHeader("x-small", "h")))
}

func TestMaxInFlight(t *testing.T) {
	b := memory.New()
	defer b.Close()
	release := make(chan struct{})
	var mu sync.Mutex
	running, peak := 0, 0
	srv := rpc.NewServer()
	require.NoError(t, rpc.Handle(srv, "Wait", func(ctx context.Context, _ *blob) (*blob, error) {
		mu.Lock()
		running++
		peak = max(peak, running)
		mu.Unlock()
		defer func() { mu.Lock(); running--; mu.Unlock() }()
		select {
		case <-release:
		case <-ctx.Done():
		}
		return &blob{}, nil
	}))
	_, err := b.Serve("w", srv)
	require.NoError(t, err)
	c := rpc.NewClient(b, rpc.WithMaxInFlight(2))

	var wg sync.WaitGroup
	for i := 0; i < 2; i++ {
		wg.Add(1)
		go func() { defer wg.Done(); assert.NoError(t, c.Call(context.Background(), "w", "Wait", &blob{}, nil)) }()
	}
	require.Eventually(t, func() bool { mu.Lock(); defer mu.Unlock(); return running == 2 }, 5*time.Second, time.Millisecond)
	// A third call cannot start and gives up at its deadline.
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	err = c.Call(ctx, "w", "Wait", &blob{}, nil)
	assert.Equal(t, rpc.DeadlineExceeded, rpc.CodeOf(err))
	close(release)
	wg.Wait()
	assert.Equal(t, 2, peak)
}
