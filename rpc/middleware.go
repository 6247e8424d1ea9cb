package rpc

import "github.com/mqrpc/mqrpc/broker"

// Middleware wraps a broker.Handler with behaviour of its own: retry,
// timeout, routing, logging, metrics, tracing, audit, dedup and so on.
//
// The same type works on both sides of a call:
//
//   - On a Client, the innermost handler sends the request through the
//     broker and turns an error reply into an *Error. A middleware sees
//     the request before it is sent (and may change its Subject, Header or
//     Deadline) and the reply or error after.
//   - On a Server, the innermost handler is the method dispatcher. A
//     middleware sees each delivered request before the method runs and
//     the reply after; it answers a request itself by returning an *Error
//     (the Server turns it into an error reply) or a reply message.
//
// In both chains an *Error returned as the error is an application status
// that reaches the caller; any other error on the server side means the
// delivery failed (see broker.Handler). Middleware must be safe for
// concurrent use. Middlewares listed first run outermost.
type Middleware func(next broker.Handler) broker.Handler

// Chain wraps h in mw, the first outermost.
func Chain(h broker.Handler, mw ...Middleware) broker.Handler {
	for i := len(mw) - 1; i >= 0; i-- {
		h = mw[i](h)
	}
	return h
}
