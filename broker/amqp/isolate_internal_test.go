package amqp

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

// TestIsolation: a suspect waits for the handlers running, new handlers
// wait for the suspect, and both waits end after maxWait at the latest.
func TestIsolation(t *testing.T) {
	const long = time.Minute
	var i isolation
	i.enter(long)
	var alone atomic.Bool
	released := make(chan func())
	go func() {
		r := i.alone(long)
		alone.Store(true)
		released <- r
	}()
	time.Sleep(50 * time.Millisecond)
	assert.False(t, alone.Load(), "the suspect ran beside a handler")
	entered := make(chan struct{})
	go func() {
		i.enter(long) // the gate is closed
		close(entered)
	}()
	i.leave()
	release := <-released
	select {
	case <-entered:
		t.Fatal("a handler started while the suspect ran alone")
	case <-time.After(50 * time.Millisecond):
	}
	release()
	<-entered
	i.leave()

	// Bounded: a handler that never leaves, a suspect that never releases.
	i.enter(long)
	start := time.Now()
	release = i.alone(100 * time.Millisecond)
	assert.GreaterOrEqual(t, time.Since(start), 100*time.Millisecond)
	start = time.Now()
	i.enter(100 * time.Millisecond)
	assert.GreaterOrEqual(t, time.Since(start), 100*time.Millisecond)
	assert.Less(t, time.Since(start), 30*time.Second)
	release()
}
