package middleware

import (
	"context"
	"time"

	"golang.org/x/time/rate"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/rpc"
)

// LimitConfig configures how ConcurrencyLimit and RateLimit refuse
// requests. The zero value refuses excess requests at once with
// ResourceExhausted.
type LimitConfig struct {
	// Code answers a refused request. Default ResourceExhausted, which
	// Retry does not retry by default: a server shedding load is not sent
	// more. Use Unavailable to have clients retry (within their retry
	// budget), for instance when other servers may have room.
	Code rpc.Code
	// MaxWait is how long a request may wait for a slot or a token before
	// it is refused, and never past its deadline. Default 0: refuse at
	// once. The broker already queues requests that no server has taken,
	// where other servers can take them, so a server should queue little
	// of its own.
	MaxWait time.Duration
	// OnRefused, if not nil, is called for each refused request. It runs
	// on the serving goroutine and must not retain req.
	OnRefused func(ctx context.Context, req *broker.Message)
}

func (c *LimitConfig) refuse(ctx context.Context, req *broker.Message, format string, args ...any) error {
	if c.OnRefused != nil {
		c.OnRefused(ctx, req)
	}
	code := c.Code
	if code == rpc.OK {
		code = rpc.ResourceExhausted
	}
	return rpc.Errorf(code, format, args...)
}

// waitBudget returns how long a request may wait: MaxWait, cut to the
// time left before ctx's deadline.
func (c *LimitConfig) waitBudget(ctx context.Context) time.Duration {
	w := c.MaxWait
	if d, ok := ctx.Deadline(); ok {
		w = min(w, time.Until(d))
	}
	return max(w, 0)
}

// ConcurrencyLimit returns server middleware that lets at most max
// requests run at once through it and refuses the excess (see
// LimitConfig), so a burst is answered quickly instead of piling up in
// memory. Values of max below 1 mean 1.
//
// A broker subscription already bounds its own concurrency
// (broker.WithConcurrency); ConcurrencyLimit bounds a Server served on
// several subjects or brokers at once, or a group of methods when it wraps
// only them. One ConcurrencyLimit middleware shares its slots among every
// server it wraps.
func ConcurrencyLimit(max int, cfg LimitConfig) rpc.Middleware {
	if max < 1 {
		max = 1
	}
	slots := make(chan struct{}, max)
	return func(next broker.Handler) broker.Handler {
		return broker.HandlerFunc(func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
			select {
			case slots <- struct{}{}:
			default:
				if !acquireWithin(ctx, slots, cfg.waitBudget(ctx)) {
					return nil, cfg.refuse(ctx, req, "server busy: %d requests in flight", max)
				}
			}
			defer func() { <-slots }()
			return next.ServeMessage(ctx, req)
		})
	}
}

func acquireWithin(ctx context.Context, slots chan struct{}, wait time.Duration) bool {
	if wait <= 0 {
		return false
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case slots <- struct{}{}:
		return true
	case <-t.C:
		return false
	case <-ctx.Done():
		return false
	}
}

// RateLimit returns server middleware that admits requests at the rate of
// l (golang.org/x/time/rate: a token bucket with a rate and a burst) and
// refuses the excess (see LimitConfig). l may be shared with other code,
// and changed while serving with its SetLimit and SetBurst methods.
func RateLimit(l *rate.Limiter, cfg LimitConfig) rpc.Middleware {
	return func(next broker.Handler) broker.Handler {
		return broker.HandlerFunc(func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
			if !l.Allow() && !reserveWithin(ctx, l, cfg.waitBudget(ctx)) {
				return nil, cfg.refuse(ctx, req, "rate limit of %g requests per second exceeded", float64(l.Limit()))
			}
			return next.ServeMessage(ctx, req)
		})
	}
}

func reserveWithin(ctx context.Context, l *rate.Limiter, wait time.Duration) bool {
	if wait <= 0 {
		return false
	}
	r := l.Reserve()
	if !r.OK() {
		return false
	}
	d := r.Delay()
	if d > wait {
		r.Cancel()
		return false
	}
	if d == 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		r.Cancel()
		return false
	}
}
