package kernel_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/broker/kernel"
)

// Suspects run one at a time, but a suspect never waits for the lane
// longer than its bound (a suspect whose handler calls another suspect of
// the same process would deadlock), and a stopping server stops waiting.
func TestLane(t *testing.T) {
	lane := kernel.NewLane()
	leave, alone, err := lane.Enter(context.Background(), time.Minute)
	require.NoError(t, err)
	require.True(t, alone)

	entered := make(chan struct{})
	go func() {
		l, alone, err := lane.Enter(context.Background(), time.Minute)
		assert.NoError(t, err)
		assert.True(t, alone)
		close(entered)
		l()
	}()
	select {
	case <-entered:
		t.Fatal("two suspects in the lane at once")
	case <-time.After(100 * time.Millisecond):
	}

	start := time.Now()
	l, alone, err := lane.Enter(context.Background(), 50*time.Millisecond)
	require.NoError(t, err, "runs outside the lane once the wait ran out")
	assert.False(t, alone)
	assert.GreaterOrEqual(t, time.Since(start), 50*time.Millisecond)
	l() // a no-op: it must not free the lane held above
	select {
	case <-entered:
		t.Fatal("leaving after a timed-out wait freed the lane")
	case <-time.After(100 * time.Millisecond):
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, _, err = lane.Enter(ctx, time.Minute)
	assert.ErrorIs(t, err, context.Canceled)

	leave()
	select {
	case <-entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the waiting suspect did not get the lane")
	}
}

// A suspect that is to run alone among every delivery waits for the
// shared deliveries running (at most its bound), and new shared
// deliveries wait while it runs (at most theirs).
func TestLaneShared(t *testing.T) {
	lane := kernel.NewLane()
	ctx := context.Background()
	unshare := lane.Shared(ctx, time.Minute) // no suspect: at once

	entered := make(chan bool, 1)
	var leave func()
	go func() {
		l, alone, err := lane.Enter(ctx, time.Minute)
		assert.NoError(t, err)
		leave = l
		entered <- alone
	}()
	select {
	case <-entered:
		t.Fatal("the suspect ran beside a shared delivery")
	case <-time.After(100 * time.Millisecond):
	}
	unshare()
	select {
	case alone := <-entered:
		assert.True(t, alone)
	case <-time.After(10 * time.Second):
		t.Fatal("the suspect did not run once the shared delivery ended")
	}

	shared := make(chan struct{})
	go func() {
		l := lane.Shared(ctx, time.Minute)
		close(shared)
		l()
	}()
	select {
	case <-shared:
		t.Fatal("a shared delivery ran beside the suspect")
	case <-time.After(100 * time.Millisecond):
	}
	start := time.Now()
	lane.Shared(ctx, 50*time.Millisecond)() // its bound ran out: it runs anyway
	assert.GreaterOrEqual(t, time.Since(start), 50*time.Millisecond)
	leave()
	select {
	case <-shared:
	case <-time.After(10 * time.Second):
		t.Fatal("the shared delivery did not run once the suspect left")
	}

	// A shared delivery that never ends holds a suspect back only for its
	// bound: the suspect then runs, not alone.
	stuck := lane.Shared(ctx, time.Minute)
	l, alone, err := lane.Enter(ctx, 50*time.Millisecond)
	require.NoError(t, err)
	assert.False(t, alone)
	l()
	stuck()
}
