// Package dispatch runs a subscription's receive-and-handle loop on an
// adaptive set of goroutines, for the brokers' Serve.
//
// The two plain ways to serve messages concurrently both cost a goroutine
// wake-up per message: a goroutine per message, or a fixed set of as many
// goroutines as the concurrency limit, all waiting on one channel. On a busy
// server those wake-ups (and the scheduler work and thread wake-ups behind
// them) are a good part of what a request costs; the plain nats.go responder,
// which handles every message in its delivery goroutine, does without them
// but handles one message at a time.
//
// A Pool keeps a few goroutines (GOMAXPROCS but at least two, at most the
// limit) that each receive a message and handle it themselves, so under
// load the goroutine that received a message handles it and picks the next
// one up without sleeping. While every goroutine is busy handling, a
// watchdog ticks and adds a goroutine for every handler that has run for
// longer than a tick: a handler waiting on I/O, a lock or a slow downstream
// service never keeps the next message waiting for more than about two
// ticks, up to the limit of handlers at once. Goroutines beyond the base
// retire after their handler once the handlers that called for them have
// finished. While some goroutine waits for a message, the watchdog sleeps:
// a server under light load pays nothing for it.
package dispatch

import (
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// Tick is how often the watchdog looks for long-running handlers while no
// goroutine waits for a message. A handler running for between one and two ticks counts as
// long-running.
const Tick = time.Millisecond

// Pool is a running receive-and-handle loop. Make it with Start.
type Pool[M any] struct {
	recv   func() (M, bool)
	handle func(M)
	max    int
	base   int

	tick      atomic.Int64 // watchdog ticks so far
	receiving atomic.Int32 // goroutines waiting in recv
	want      atomic.Int32 // goroutines wanted: base + long-running handlers
	alive     atomic.Int32 // goroutines receiving or handling
	idle      atomic.Bool  // the watchdog waits for wake
	wake      chan struct{}
	quit      chan struct{} // closed once the last goroutine retired for good

	mu       sync.Mutex
	workers  map[*worker]struct{}
	finished bool // recv reported the end: start no more goroutines
	wg       sync.WaitGroup
}

type worker struct {
	// started is 1 + the tick at which the running handler started, or 0
	// while the worker receives.
	started atomic.Int64
}

// Start starts serving: goroutines call recv for the next message, which
// blocks until there is one, and handle it. recv reports false when there
// are no more messages (the subscription was drained or closed); every
// goroutine then ends, and so does the pool. At most limit handlers run at
// once (at least one).
func Start[M any](limit int, recv func() (M, bool), handle func(M)) *Pool[M] {
	limit = max(limit, 1)
	p := &Pool[M]{
		recv:    recv,
		handle:  handle,
		max:     limit,
		base:    min(limit, max(2, runtime.GOMAXPROCS(0))),
		wake:    make(chan struct{}, 1),
		quit:    make(chan struct{}),
		workers: make(map[*worker]struct{}),
	}
	p.want.Store(int32(p.base))
	p.idle.Store(true)
	p.mu.Lock()
	for range p.base {
		p.spawnLocked()
	}
	p.mu.Unlock()
	if p.max > p.base {
		p.wg.Add(1)
		go p.watch()
	} else {
		p.idle.Store(false) // no watchdog: the pool cannot grow
	}
	return p
}

// Wait waits until recv reported the end and every handler returned.
func (p *Pool[M]) Wait() { p.wg.Wait() }

// Size returns how many goroutines serve at the moment, for tests.
func (p *Pool[M]) Size() int { return int(p.alive.Load()) }

func (p *Pool[M]) spawnLocked() {
	w := &worker{}
	p.workers[w] = struct{}{}
	p.alive.Add(1)
	p.wg.Add(1)
	go p.work(w)
}

func (p *Pool[M]) work(w *worker) {
	defer p.wg.Done()
	for {
		p.receiving.Add(1)
		m, ok := p.recv()
		last := p.receiving.Add(-1) == 0
		if !ok {
			p.retire(w, true)
			return
		}
		w.started.Store(p.tick.Load() + 1)
		if last && p.idle.Load() && p.idle.CompareAndSwap(true, false) {
			// Nobody receives while this handler runs: watch it.
			select {
			case p.wake <- struct{}{}:
			default:
			}
		}
		p.handle(m)
		w.started.Store(0)
		if p.alive.Load() > p.want.Load() && p.retire(w, false) {
			return
		}
	}
}

// retire ends w when the pool has more goroutines than it wants, or for
// good (end) when recv reported the end. It reports whether w ended.
func (p *Pool[M]) retire(w *worker, end bool) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if end {
		p.finished = true
	} else if p.finished || p.alive.Load() <= p.want.Load() {
		return false
	}
	delete(p.workers, w)
	if p.alive.Add(-1) == 0 && p.finished {
		close(p.quit)
	}
	return true
}

// watch ticks while no goroutine receives, and keeps base + (handlers
// running for longer than a tick) goroutines alive, up to the limit.
func (p *Pool[M]) watch() {
	defer p.wg.Done()
	t := time.NewTimer(Tick)
	t.Stop()
	for {
		select {
		case <-p.wake:
		case <-p.quit:
			return
		}
		for active := true; active; {
			t.Reset(Tick)
			select {
			case <-t.C:
			case <-p.quit:
				t.Stop()
				return
			}
			active = p.check()
		}
	}
}

// check is one tick of the watchdog. It reports false when a goroutine
// waits for a message, so the watchdog may sleep until none does.
func (p *Pool[M]) check() bool {
	now := p.tick.Add(1)
	p.mu.Lock()
	long := 0
	for w := range p.workers {
		// Started before the previous tick: it has run for a tick at
		// least.
		if s := w.started.Load(); s != 0 && s-1 <= now-2 {
			long++
		}
	}
	want := min(p.max, p.base+long)
	p.want.Store(int32(want))
	for !p.finished && int(p.alive.Load()) < want {
		p.spawnLocked()
	}
	p.mu.Unlock()
	if p.receiving.Load() == 0 {
		return true
	}
	p.idle.Store(true)
	// A goroutine that took a message between the load and the store
	// found the watchdog busy and sent no wake-up: look again.
	return p.receiving.Load() == 0 && p.idle.CompareAndSwap(true, false)
}
