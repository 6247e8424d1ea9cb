package kernel

import (
	"context"
	"time"
)

// Lane runs suspect deliveries one at a time: those that may have crashed
// their process (a redelivery whose last start has no known outcome). A
// suspect that crashes the process while no other suspect runs is the one
// charged for it, and the suspects waiting behind it never started, so
// they are not. What makes a delivery a suspect (a broker's redelivery
// flag, a record of started deliveries, a journal) is the driver's
// business; its Admit enters the lane, and the delivery leaves it once
// settled. Deliveries that are not suspect do not use the lane.
//
// A crash spans the whole process, so one Lane usually does too (a
// package variable of the broker). Make it with NewLane.
type Lane struct{ ch chan struct{} }

// NewLane returns an empty lane.
func NewLane() *Lane { return &Lane{ch: make(chan struct{}, 1)} }

// Enter waits for the lane, at most wait: a suspect whose handler waits
// for another suspect of the same process (a call to another service
// whose request was also in flight at the crash) must not deadlock. It
// returns the func that leaves the lane, and whether the suspect got it:
// alone false means the wait ran out, and leave is a no-op (the caller
// decides whether to run beside the others or to hand the delivery back).
// It returns ctx's error when ctx ended first.
func (l *Lane) Enter(ctx context.Context, wait time.Duration) (leave func(), alone bool, err error) {
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case l.ch <- struct{}{}:
		return l.leave, true, nil
	case <-t.C:
		return nop, false, nil
	case <-ctx.Done():
		return nil, false, ctx.Err()
	}
}

func (l *Lane) leave() { <-l.ch }
