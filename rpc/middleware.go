package rpc

import (
	"context"
	"fmt"

	"github.com/mqrpc/mqrpc/broker"
)

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
//
// A middleware that makes sense on one side only says so with ClientOnly
// or ServerOnly, and installing it on the other side panics when the
// chain is built (NewClient, NewServer, Chain), not at the first call.
type Middleware func(next broker.Handler) broker.Handler

// Side is the side of a call a middleware chain runs on.
type Side uint8

// The sides of a call.
const (
	ClientSide Side = 1
	ServerSide Side = 2
)

// String returns "client" or "server".
func (s Side) String() string {
	switch s {
	case ClientSide:
		return "client"
	case ServerSide:
		return "server"
	}
	return fmt.Sprintf("side(%d)", uint8(s))
}

// sided is the handler each middleware of a chain is given while the
// chain is built: next, plus the side of the chain, so that a one-sided
// middleware can refuse the other side.
type sided struct {
	next broker.Handler
	side Side
}

func (h sided) ServeMessage(ctx context.Context, req *broker.Message) (*broker.Message, error) {
	return h.next.ServeMessage(ctx, req)
}

// Chain wraps h, the innermost handler of side's chain, in mw, the first
// outermost. It panics when a middleware marked with ClientOnly or
// ServerOnly is given the other side.
func Chain(side Side, h broker.Handler, mw ...Middleware) broker.Handler {
	for i := len(mw) - 1; i >= 0; i-- {
		h = mw[i](sided{next: h, side: side})
	}
	return h
}

// ClientOnly marks mw, named name in the panic message, as client
// middleware: building a server chain with it panics.
func ClientOnly(name string, mw Middleware) Middleware { return only(ClientSide, name, mw) }

// ServerOnly marks mw, named name in the panic message, as server
// middleware: building a client chain with it panics.
func ServerOnly(name string, mw Middleware) Middleware { return only(ServerSide, name, mw) }

func only(side Side, name string, mw Middleware) Middleware {
	return func(next broker.Handler) broker.Handler {
		if s, ok := next.(sided); ok && s.side != side {
			panic(fmt.Sprintf("rpc: %s is %s middleware; it cannot run in a %s chain", name, side, s.side))
		}
		return mw(next)
	}
}
