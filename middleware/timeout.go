// Package middleware holds the governance middleware of mqrpc: timeouts
// and end-to-end deadlines, retries with a retry budget, routing,
// deduplication, circuit breaking, concurrency and rate limits, and
// audit, logging, recovery, authorization and signing. Every middleware is
// an rpc.Middleware, the same type on clients and servers; each one's doc
// says on which side it belongs, and a one-sided one panics when it is
// installed on the other side (rpc.ClientOnly, rpc.ServerOnly). They are
// configured with functional options.
//
// A client chain that uses several of them reads, outermost first:
//
//	breakers := middleware.NewCircuitBreaker()
//	client := rpc.NewClient(b, rpc.WithClientMiddleware(
//		middleware.Timeout(5*time.Second), // bounds the whole call
//		middleware.Retry(),                // repeats failed attempts
//		middleware.Routing(routes...),     // picks the subject per attempt
//		breakers.Middleware,               // one circuit per subject
//	))
//
// and a server chain:
//
//	guard := &middleware.DeadlineGuard{}          // guard.Expired() counts refusals
//	srv := rpc.NewServer(rpc.WithServerMiddleware(
//		guard.Middleware,                           // refuses expired work
//		middleware.Dedup(), // answers repeats from a cache
//		middleware.ConcurrencyLimit(100),           // refuses excess at once
//	))
//
// Retry and Dedup together make any call, idempotent or not, execute
// exactly once while the dedup store keeps its outcome: a client with
// WithIdempotent(AlwaysIdempotent) repeats a lost call with
// the same Message.ID, and the server answers the repeat from the store.
//
// All middleware in this package is safe for concurrent use and never
// logs: it reports through callbacks, counters or an injected logger.
package middleware

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/rpc"
)

// Timeout returns client middleware that bounds each call to d: the call's
// ctx gets a deadline d from now, and the request's Message.Deadline (which
// travels to the server) is moved to that deadline. The earlier of the
// existing ctx deadline, the existing Message.Deadline and now+d wins, so
// Timeout never extends a deadline. d <= 0 leaves the deadlines unchanged
// but still makes the ctx and Message.Deadline agree.
//
// Place it outside Retry to bound the whole call including its retries;
// WithPerAttemptTimeout bounds each attempt. On a server use
// ServerTimeout or a DeadlineGuard instead.
func Timeout(d time.Duration) rpc.Middleware {
	return rpc.ClientOnly("middleware.Timeout", func(next broker.Handler) broker.Handler {
		return broker.HandlerFunc(func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
			deadline, ok := ctx.Deadline()
			if d > 0 {
				if t := time.Now().Add(d); !ok || t.Before(deadline) {
					deadline, ok = t, true
				}
			}
			if !req.Deadline.IsZero() && (!ok || req.Deadline.Before(deadline)) {
				deadline, ok = req.Deadline, true
			}
			if !ok {
				return next.ServeMessage(ctx, req)
			}
			req.Deadline = deadline
			if cur, has := ctx.Deadline(); has && !deadline.Before(cur) {
				return next.ServeMessage(ctx, req)
			}
			ctx, cancel := context.WithDeadline(ctx, deadline)
			defer cancel()
			return next.ServeMessage(ctx, req)
		})
	})
}

// DeadlineGuard is server middleware that enforces end-to-end deadlines:
// it rebuilds the handler's ctx deadline from the request's
// Message.Deadline (the caller's deadline, carried by the broker), refuses
// a request whose deadline has already passed with DeadlineExceeded
// without calling the next handler, and counts the refusals.
//
// Because the handler's ctx carries the caller's deadline, calls a handler
// makes with that ctx through an rpc.Client inherit the remaining time:
// deadlines propagate through nested calls with no extra code.
//
// The zero value is ready to use. Use its Middleware method as an
// rpc.Middleware; one DeadlineGuard may guard several servers, and its
// counter then sums them. It is safe for concurrent use; set the fields
// before the first request.
type DeadlineGuard struct {
	// MaxDuration caps the time one request may run on this server, also
	// when the caller sent no deadline. Zero (the default) means no cap:
	// only the caller's deadline applies.
	MaxDuration time.Duration
	// OnExpired, if not nil, is called for each refused request with how
	// long ago its deadline passed. It runs on the serving goroutine and
	// must not retain req.
	OnExpired func(ctx context.Context, req *broker.Message, late time.Duration)

	expired atomic.Uint64
}

// ServerTimeout returns server middleware that refuses expired requests
// and bounds each request to max (no bound when max <= 0). It is a
// DeadlineGuard whose counter nobody reads; make a DeadlineGuard to read
// it.
func ServerTimeout(max time.Duration) rpc.Middleware {
	g := &DeadlineGuard{MaxDuration: max}
	return g.Middleware
}

// Expired returns how many requests the guard refused because their
// deadline had passed before they were served.
func (g *DeadlineGuard) Expired() uint64 { return g.expired.Load() }

// Middleware is the guard as server middleware: a client chain with it
// panics when it is built.
func (g *DeadlineGuard) Middleware(next broker.Handler) broker.Handler {
	return rpc.ServerOnly("middleware.DeadlineGuard", g.wrap)(next)
}

func (g *DeadlineGuard) wrap(next broker.Handler) broker.Handler {
	return broker.HandlerFunc(func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
		now := time.Now()
		if req.Expired(now) {
			g.expired.Add(1)
			if g.OnExpired != nil {
				g.OnExpired(ctx, req, now.Sub(req.Deadline))
			}
			return nil, rpc.Errorf(rpc.DeadlineExceeded,
				"deadline passed %s before the request was served", now.Sub(req.Deadline).Round(time.Millisecond))
		}
		deadline := req.Deadline
		if g.MaxDuration > 0 {
			if t := now.Add(g.MaxDuration); deadline.IsZero() || t.Before(deadline) {
				deadline = t
			}
		}
		if deadline.IsZero() {
			return next.ServeMessage(ctx, req)
		}
		if cur, ok := ctx.Deadline(); ok && !deadline.Before(cur) {
			return next.ServeMessage(ctx, req)
		}
		ctx, cancel := context.WithDeadline(ctx, deadline)
		defer cancel()
		return next.ServeMessage(ctx, req)
	})
}
