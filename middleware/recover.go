package middleware

import (
	"context"
	"fmt"
	"log/slog"
	"runtime/debug"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/rpc"
)

// PanicError is the error a recovered panic becomes. Recover returns it
// wrapped in an *rpc.Error with code rpc.Internal, so errors.As finds it in
// the error a client middleware chain returns. Only its Error text (never
// the stack) reaches a remote caller.
type PanicError struct {
	// Value is what was passed to panic.
	Value any
	// Stack is the stack of the panicking goroutine, as debug.Stack
	// formats it.
	Stack []byte
}

// Error returns "panic: " and the panic value.
func (e *PanicError) Error() string { return fmt.Sprintf("panic: %v", e.Value) }

// Unwrap returns the panic value when it is an error (as panic(err) and
// runtime errors are), so errors.Is and errors.As see through the panic.
func (e *PanicError) Unwrap() error {
	err, _ := e.Value.(error)
	return err
}

// PanicHandler is told about a panic Recover caught: the request being
// handled when it happened and the panic with its stack. It runs on the
// goroutine that panicked, before the error is returned, and must be safe
// for concurrent use. It must not retain req.
type PanicHandler func(ctx context.Context, req *broker.Message, p *PanicError)

// RecoverOption configures Recover.
type RecoverOption func(*recoverConfig)

type recoverConfig struct {
	logger  *slog.Logger
	handler PanicHandler
}

// WithPanicLogger makes Recover log each panic at level Error through
// logger, with the method, subject, message id, panic value and stack.
// Default: nil, no logging.
func WithPanicLogger(logger *slog.Logger) RecoverOption {
	return func(c *recoverConfig) { c.logger = logger }
}

// WithPanicHandler makes Recover call fn for each panic, for example to
// count it or to report it to an error tracker. Default: nil, none.
func WithPanicHandler(fn PanicHandler) RecoverOption {
	return func(c *recoverConfig) { c.handler = fn }
}

// Recover returns a middleware that turns a panic in the rest of the chain
// (inner middleware and, on a client, the broker round trip) into an
// *rpc.Error with code rpc.Internal wrapping a *PanicError, so one bad
// request cannot crash the process.
//
// It works on both sides. On a server, the rpc.Server answers the caller
// with an Internal error reply (the dispatcher already recovers panics in
// method handlers; Recover also covers the middleware between it and the
// dispatcher, so put it outermost). On a client, the call returns the
// error.
//
// Recover does not stop runtime.Goexit and cannot catch a panic on another
// goroutine. It is safe for concurrent use.
func Recover(opts ...RecoverOption) rpc.Middleware {
	var cfg recoverConfig
	for _, o := range opts {
		o(&cfg)
	}
	return func(next broker.Handler) broker.Handler {
		return broker.HandlerFunc(func(ctx context.Context, req *broker.Message) (reply *broker.Message, err error) {
			defer func() {
				r := recover()
				if r == nil {
					return
				}
				p := &PanicError{Value: r, Stack: debug.Stack()}
				cfg.report(ctx, req, p)
				reply, err = nil, rpc.NewError(rpc.Internal, p)
			}()
			return next.ServeMessage(ctx, req)
		})
	}
}

func (c *recoverConfig) report(ctx context.Context, req *broker.Message, p *PanicError) {
	if c.handler != nil {
		c.handler(ctx, req, p)
	}
	if c.logger != nil && c.logger.Enabled(ctx, slog.LevelError) {
		c.logger.LogAttrs(ctx, slog.LevelError, "mqrpc: panic recovered",
			slog.String("side", callSide(ctx)),
			slog.String("method", req.Header.Get(broker.HeaderMethod)),
			slog.String("subject", req.Subject),
			slog.String("id", req.ID),
			slog.Any("panic", p.Value),
			slog.String("stack", string(p.Stack)),
		)
	}
}
