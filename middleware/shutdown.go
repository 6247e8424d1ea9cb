package middleware

import (
	"context"
	"errors"
	"sync"

	"github.com/mqrpc/mqrpc/broker"
)

// StopAll shuts servers down gracefully: it stops every subscription at
// once, so each takes no new message and finishes the requests it has in
// flight (sending their replies), and returns when all have drained or ctx
// ends, whichever is first. Because the subscriptions stop concurrently,
// the time it takes is that of the slowest one, not the sum.
//
// The result joins the errors of the subscriptions that failed to stop,
// an error wrapping ctx.Err() for those still draining when ctx ended.
// Messages not yet taken stay with the broker for other servers when the
// broker can keep them (see broker.Subscription). StopAll does not close
// the brokers.
func StopAll(ctx context.Context, subs ...broker.Subscription) error {
	errs := make([]error, len(subs))
	var wg sync.WaitGroup
	for i, s := range subs {
		if s == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = s.Stop(ctx)
		}()
	}
	// Stop returns when ctx ends, so this wait is bounded by ctx.
	wg.Wait()
	return errors.Join(errs...)
}
