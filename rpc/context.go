package rpc

import (
	"context"

	"github.com/mqrpc/mqrpc/broker"
)

// CallInfo describes a client call in progress. Client middleware reads it
// with CallInfoFromContext.
type CallInfo struct {
	// Service and Method are what Call was given. The request's Subject
	// starts as Service; routing middleware may change the Subject.
	Service, Method string
	// Idempotent is true when the call was marked safe to repeat (the
	// Idempotent call option).
	Idempotent bool
	// OneWay is true for Notify.
	OneWay bool
}

// callCtx carries the CallInfo with a single allocation.
type callCtx struct {
	context.Context
	info CallInfo
}

type callInfoKey struct{}

func (c *callCtx) Value(key any) any {
	if key == (callInfoKey{}) {
		return &c.info
	}
	return c.Context.Value(key)
}

// ContextWithCallInfo returns a ctx carrying info, for clients built on
// rpc.Middleware other than Client (adapters of other RPC systems), so
// client middleware such as retry sees what the call is.
func ContextWithCallInfo(ctx context.Context, info CallInfo) context.Context {
	return &callCtx{Context: ctx, info: info}
}

// CallInfoFromContext returns the CallInfo of the client call ctx belongs
// to.
func CallInfoFromContext(ctx context.Context) (CallInfo, bool) {
	if ci, ok := ctx.Value(callInfoKey{}).(*CallInfo); ok {
		return *ci, true
	}
	return CallInfo{}, false
}

// serverCall is the state of one request on the server, reachable from the
// handler's ctx.
type serverCall struct {
	context.Context
	req         *broker.Message
	replyHeader broker.Header
}

type serverCallKey struct{}

func (c *serverCall) Value(key any) any {
	if key == (serverCallKey{}) {
		return c
	}
	return c.Context.Value(key)
}

func serverCallFrom(ctx context.Context) *serverCall {
	sc, _ := ctx.Value(serverCallKey{}).(*serverCall)
	return sc
}

// RequestHeader returns the headers of the request a typed handler is
// serving (caller metadata, trace context, ...), or nil outside a handler.
// The returned map must not be modified, and not be read after the handler
// returned (brokers reuse it for later requests): Clone it to keep it.
func RequestHeader(ctx context.Context) broker.Header {
	if sc := serverCallFrom(ctx); sc != nil {
		return sc.req.Header
	}
	return nil
}

// RequestMessage returns the request message a typed handler is serving,
// or nil outside a handler. It must not be modified, and not be used after
// the handler returned: brokers reuse it.
func RequestMessage(ctx context.Context) *broker.Message {
	if sc := serverCallFrom(ctx); sc != nil {
		return sc.req
	}
	return nil
}

// SetReplyHeader sets a header on the reply of the request a typed handler
// is serving. It reports false outside a handler. Names reserved by mqrpc
// (content-type, mqrpc-status, mqrpc-message) are the server's to set.
func SetReplyHeader(ctx context.Context, name, value string) bool {
	sc := serverCallFrom(ctx)
	if sc == nil {
		return false
	}
	if sc.replyHeader == nil {
		sc.replyHeader = make(broker.Header, 4)
	}
	sc.replyHeader.Set(name, value)
	return true
}
