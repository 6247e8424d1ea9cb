package kernel

import (
	"context"
	"sync"
	"time"
)

// Lane runs suspect deliveries alone: those that may have crashed their
// process (a redelivery whose last start has no known outcome). A suspect
// that crashes the process while nothing else runs beside it is the one
// charged for it, and the deliveries waiting behind it never started, so
// they are not. What makes a delivery a suspect (a broker's redelivery
// flag, a record of started deliveries, a journal) is the driver's
// business; its Admit enters the lane, and the delivery leaves it once
// settled.
//
// A suspect is alone among suspects. A driver that also wants it alone
// among the other deliveries runs those through Shared: a suspect then
// waits for the shared deliveries running to end, and new ones wait while
// it runs. Every wait is bounded, because a handler may itself wait for a
// call served by the same process (one service calling another), which
// the lane would otherwise hold back for ever.
//
// A crash spans the whole process, so one Lane usually does too (a package
// variable of the broker). Make it with NewLane.
type Lane struct {
	slot chan struct{} // held by the suspect in the lane

	mu     sync.Mutex
	shared int           // deliveries between Shared and its leave
	gate   chan struct{} // while a suspect holds the lane: closed when it leaves
	idle   chan struct{} // while the suspect waits for shared to drop to 0: closed then
}

// NewLane returns an empty lane.
func NewLane() *Lane { return &Lane{slot: make(chan struct{}, 1)} }

// Enter waits for the lane, at most wait, then for the shared deliveries
// running to end, at most wait again. It returns the func that leaves the
// lane (call it in every case; a no-op when the lane was not had) and
// whether the suspect runs alone: false when a wait ran out (the caller
// decides whether to run beside the others or to hand the delivery back).
// It returns ctx's error when ctx ended first.
func (l *Lane) Enter(ctx context.Context, wait time.Duration) (leave func(), alone bool, err error) {
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case l.slot <- struct{}{}:
	case <-t.C:
		return nop, false, nil
	case <-ctx.Done():
		return nil, false, ctx.Err()
	}
	gate := make(chan struct{})
	var idle chan struct{}
	l.mu.Lock()
	l.gate = gate
	if l.shared > 0 {
		idle = make(chan struct{})
		l.idle = idle
	}
	l.mu.Unlock()
	leave = func() {
		l.mu.Lock()
		l.gate, l.idle = nil, nil
		l.mu.Unlock()
		close(gate)
		<-l.slot
	}
	if idle == nil {
		return leave, true, nil
	}
	t.Reset(wait)
	select {
	case <-idle:
		return leave, true, nil
	case <-t.C:
		return leave, false, nil
	case <-ctx.Done():
		leave()
		return nil, false, ctx.Err()
	}
}

// Shared waits while a suspect holds the lane, at most wait (or until ctx
// ends), then counts a delivery that is no suspect in; the returned func
// counts it out. Suspects that are to run alone among every delivery wait
// for it.
func (l *Lane) Shared(ctx context.Context, wait time.Duration) (leave func()) {
	l.mu.Lock()
	if g := l.gate; g != nil {
		l.mu.Unlock()
		t := time.NewTimer(wait)
		select {
		case <-g:
		case <-t.C:
		case <-ctx.Done():
		}
		t.Stop()
		l.mu.Lock()
	}
	l.shared++
	l.mu.Unlock()
	return l.unshare
}

func (l *Lane) unshare() {
	l.mu.Lock()
	l.shared--
	if l.shared == 0 && l.idle != nil {
		close(l.idle)
		l.idle = nil
	}
	l.mu.Unlock()
}
