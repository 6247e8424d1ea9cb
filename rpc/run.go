package rpc

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/rpc/control"
)

// DefaultDrainTimeout is how long Run lets requests in flight finish when
// its ctx ends.
const DefaultDrainTimeout = 30 * time.Second

// Run serves h on each subject of b until ctx ends, then shuts down
// gracefully: it stops taking requests, lets those in flight finish and
// send their replies for up to DefaultDrainTimeout (StopAll), and closes
// b. Each subject is served with the control plane on (control.Serve, as
// Server.Serve does), so the instance shows in discovery and reports
// NOT_SERVING while it drains. It returns nil after a clean shutdown, or the error that kept it
// from serving or from stopping. A program's main often reads:
//
//	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
//	defer stop()
//	err := rpc.Run(ctx, b, srv, "Calculator")
func Run(ctx context.Context, b broker.Broker, h broker.Handler, subjects ...string) error {
	return RunDrain(ctx, b, h, DefaultDrainTimeout, subjects...)
}

// RunDrain is Run with drain as the time requests in flight have to
// finish once ctx ends.
func RunDrain(ctx context.Context, b broker.Broker, h broker.Handler, drain time.Duration, subjects ...string) error {
	if len(subjects) == 0 {
		return errors.Join(errors.New("rpc: Run without a subject"), b.Close())
	}
	subs := make([]broker.Subscription, 0, len(subjects))
	stop := func() error {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), drain)
		defer cancel()
		return errors.Join(StopAll(dctx, subs...), b.Close())
	}
	for _, s := range subjects {
		sub, err := control.Serve(b, s, h)
		if err != nil {
			return errors.Join(fmt.Errorf("rpc: serve %s: %w", s, err), stop())
		}
		subs = append(subs, sub)
	}
	<-ctx.Done()
	return stop()
}

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
