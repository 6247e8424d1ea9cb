package dispatch

import (
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// source is a channel-backed message source; closing it ends the pool.
type source chan int

func (s source) recv() (int, bool) {
	m, ok := <-s
	return m, ok
}

func TestEveryMessageHandledOnce(t *testing.T) {
	src := make(source, 100)
	var mu sync.Mutex
	seen := map[int]int{}
	p := Start(8, src.recv, func(m int) {
		mu.Lock()
		seen[m]++
		mu.Unlock()
	})
	for i := range 10000 {
		src <- i
	}
	close(src)
	p.Wait()
	require.Len(t, seen, 10000)
	for m, n := range seen {
		require.Equal(t, 1, n, "message %d", m)
	}
	assert.Zero(t, p.Size())
}

// Handlers that block until all of them run need the pool to grow to the
// limit: the watchdog adds a goroutine per long-running handler.
func TestBlockedHandlersGetGoroutinesUpToTheLimit(t *testing.T) {
	const limit = 16
	src := make(source, 2*limit)
	var running, peak atomic.Int32
	all := make(chan struct{})
	var started sync.WaitGroup
	started.Add(limit)
	p := Start(limit, src.recv, func(m int) {
		n := running.Add(1)
		for {
			old := peak.Load()
			if n <= old || peak.CompareAndSwap(old, n) {
				break
			}
		}
		if m < limit {
			started.Done()
			<-all // released once limit handlers run at once
		}
		running.Add(-1)
	})
	for i := range 2 * limit {
		src <- i
	}
	waited := make(chan struct{})
	go func() { started.Wait(); close(waited) }()
	select {
	case <-waited:
	case <-time.After(10 * time.Second):
		t.Fatalf("only %d of %d blocked handlers ran at once (pool size %d)", running.Load(), limit, p.Size())
	}
	close(all)
	close(src)
	p.Wait()
	assert.Equal(t, int32(limit), peak.Load(), "handlers at once never exceed the limit")
}

// Once the long handlers are over, fast messages shrink the pool back to
// its base.
func TestPoolShrinksAfterLongHandlers(t *testing.T) {
	const limit = 32
	base := min(limit, max(2, runtime.GOMAXPROCS(0)))
	src := make(source)
	release := make(chan struct{})
	p := Start(limit, src.recv, func(m int) {
		if m < 0 {
			<-release
		}
	})
	defer func() {
		close(src)
		p.Wait()
	}()
	for i := range limit {
		src <- -1 - i // the sends block until a goroutine takes them
	}
	require.Equal(t, limit, p.Size(), "every blocked handler got a goroutine")
	close(release)
	// Each fast message lets one surplus goroutine retire after its
	// handler; bounded: a few thousand messages at most.
	for i := 0; i < 5000 && p.Size() > base; i++ {
		src <- i
		if i%100 == 99 {
			time.Sleep(2 * Tick)
		}
	}
	assert.Equal(t, base, p.Size())
}

// A fast handler under a steady stream does not wake the watchdog into
// adding goroutines: the pool stays at its base. Noise (a descheduled
// handler) may add one for a moment; it retires again.
func TestFastHandlersKeepTheBase(t *testing.T) {
	const limit = 64
	base := min(limit, max(2, runtime.GOMAXPROCS(0)))
	src := make(source, 1024)
	var maxSize atomic.Int32
	var p *Pool[int]
	ready := make(chan struct{})
	p = Start(limit, src.recv, func(int) {
		<-ready
		if n := int32(p.Size()); n > maxSize.Load() {
			maxSize.Store(n)
		}
	})
	close(ready)
	for i := range 50000 {
		src <- i
	}
	close(src)
	p.Wait()
	assert.Less(t, int(maxSize.Load()), limit/2, "fast handlers grew the pool towards the limit (base %d)", base)
}

func TestLimitBelowGOMAXPROCS(t *testing.T) {
	src := make(source)
	var running, peak atomic.Int32
	p := Start(1, src.recv, func(int) {
		n := running.Add(1)
		if n > peak.Load() {
			peak.Store(n)
		}
		time.Sleep(3 * Tick)
		running.Add(-1)
	})
	for i := range 10 {
		src <- i
	}
	close(src)
	p.Wait()
	assert.Equal(t, int32(1), peak.Load())
}

// Under light load some goroutine always waits for the next message, so
// the watchdog sleeps instead of ticking.
func TestWatchdogSleepsUnderLightLoad(t *testing.T) {
	src := make(source)
	done := make(chan struct{})
	p := Start(8, src.recv, func(int) { done <- struct{}{} })
	const n = 200
	for i := range n {
		src <- i
		<-done
		time.Sleep(100 * time.Microsecond) // let the handler's goroutine go back to recv
	}
	close(src)
	p.Wait()
	// A goroutine scheduled late can leave nobody receiving for a moment
	// and wake the watchdog for a tick or two; ticking through the run
	// would take n/10 ticks and more.
	assert.Less(t, p.tick.Load(), int64(n/10), "watchdog ticks during %d sequential calls", n)
}
