package middleware

import (
	"context"
	"time"

	"golang.org/x/sync/semaphore"
	"golang.org/x/time/rate"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/rpc"
)

// limitConfig is what the LimitOptions set.
type limitConfig struct {
	code      rpc.Code
	maxWait   time.Duration
	onRefused func(ctx context.Context, req *broker.Message)
}

// LimitOption configures how ConcurrencyLimit and RateLimit refuse
// requests. Without options they refuse excess requests at once with
// ResourceExhausted.
type LimitOption func(*limitConfig)

// WithRefusalCode sets the code that answers a refused request. Default
// ResourceExhausted, which Retry does not retry by default: a server
// shedding load is not sent more. Use Unavailable to have clients retry
// (within their retry budget), for instance when other servers may have
// room. OK selects the default.
func WithRefusalCode(c rpc.Code) LimitOption { return func(cfg *limitConfig) { cfg.code = c } }

// WithMaxWait sets how long a request may wait for a slot or a token
// before it is refused, and never past its deadline. Default 0: refuse at
// once. The broker already queues requests that no server has taken,
// where other servers can take them, so a server should queue little of
// its own.
func WithMaxWait(d time.Duration) LimitOption { return func(cfg *limitConfig) { cfg.maxWait = d } }

// OnRefused sets a function called for each refused request. It runs on
// the serving goroutine and must not retain req. Default: none.
func OnRefused(fn func(ctx context.Context, req *broker.Message)) LimitOption {
	return func(cfg *limitConfig) { cfg.onRefused = fn }
}

func newLimitConfig(opts []LimitOption) *limitConfig {
	cfg := &limitConfig{}
	for _, o := range opts {
		o(cfg)
	}
	if cfg.code == rpc.OK {
		cfg.code = rpc.ResourceExhausted
	}
	return cfg
}

func (c *limitConfig) refuse(ctx context.Context, req *broker.Message, format string, args ...any) error {
	if c.onRefused != nil {
		c.onRefused(ctx, req)
	}
	return rpc.Errorf(c.code, format, args...)
}

// waitBudget returns how long a request may wait: the max wait, cut to
// the time left before ctx's deadline.
func (c *limitConfig) waitBudget(ctx context.Context) time.Duration {
	w := c.maxWait
	if d, ok := ctx.Deadline(); ok {
		w = min(w, time.Until(d))
	}
	return max(w, 0)
}

// ConcurrencyLimit returns server middleware that lets at most max
// requests run at once through it and refuses the excess (see
// LimitOption), so a burst is answered quickly instead of piling up in
// memory. Values of max below 1 mean 1.
//
// A broker subscription already bounds its own concurrency
// (broker.WithConcurrency); ConcurrencyLimit bounds a Server served on
// several subjects or brokers at once, or a group of methods when it wraps
// only them. One ConcurrencyLimit middleware shares its slots among every
// server it wraps.
func ConcurrencyLimit(max int, opts ...LimitOption) rpc.Middleware {
	if max < 1 {
		max = 1
	}
	cfg := newLimitConfig(opts)
	slots := semaphore.NewWeighted(int64(max))
	return rpc.ServerOnly("middleware.ConcurrencyLimit", func(next broker.Handler) broker.Handler {
		return broker.HandlerFunc(func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
			if !slots.TryAcquire(1) && !acquireWithin(ctx, slots, cfg.waitBudget(ctx)) {
				return nil, cfg.refuse(ctx, req, "server busy: %d requests in flight", max)
			}
			defer slots.Release(1)
			return next.ServeMessage(ctx, req)
		})
	})
}

func acquireWithin(ctx context.Context, slots *semaphore.Weighted, wait time.Duration) bool {
	if wait <= 0 {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	return slots.Acquire(ctx, 1) == nil
}

// RateLimit returns server middleware that admits requests at the rate of
// l (golang.org/x/time/rate: a token bucket with a rate and a burst) and
// refuses the excess (see LimitOption). l may be shared with other code,
// and changed while serving with its SetLimit and SetBurst methods.
func RateLimit(l *rate.Limiter, opts ...LimitOption) rpc.Middleware {
	cfg := newLimitConfig(opts)
	return rpc.ServerOnly("middleware.RateLimit", func(next broker.Handler) broker.Handler {
		return broker.HandlerFunc(func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
			if !l.Allow() && !reserveWithin(ctx, l, cfg.waitBudget(ctx)) {
				return nil, cfg.refuse(ctx, req, "rate limit of %g requests per second exceeded", float64(l.Limit()))
			}
			return next.ServeMessage(ctx, req)
		})
	})
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
