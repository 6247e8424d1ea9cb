// Package broker is the transport layer of mqrpc: it moves opaque messages
// between callers and servers over a message broker.
//
// A broker knows bytes and headers. It never knows codecs, services or
// methods; those belong to package rpc, which is built on top of this one.
//
// Every broker implementation (broker/memory, broker/nats, broker/amqp,
// broker/rocketmq, or one of your own) implements [Broker] and must pass the
// conformance suite in broker/brokertest.
package broker

import (
	"context"
	"errors"
	"strconv"
)

// Handler processes one delivered message and returns the reply.
//
// It is the byte-in/byte-out processor of the stack and is used on both
// sides: a server serves a Handler, and a client's call path is a Handler
// whose innermost step is [Broker.Request], so the same middleware wraps
// either.
//
// A nil reply with a nil error means the message was one-way (or needs no
// answer). A non-nil error means "this delivery failed": durable brokers
// negatively acknowledge the delivery so it is redelivered or dead-lettered,
// and fast brokers drop it; callers see no reply. Application errors are
// not delivery failures: report them as a reply carrying a status header.
// rpc.Server does so for every error except one wrapping
// [ErrDeliveryFailed], the way to ask for a delivery failure on purpose.
//
// ServeMessage is called concurrently from several goroutines (up to the
// serve concurrency). The ctx carries the caller's deadline (from
// [Message.Deadline]) and is cancelled when the delivery is abandoned.
// Each delivery gets a message of its own, which the handler may change
// while it runs, except for the bytes of req.Body: an in-process broker
// shares them with the caller. Implementations must not retain req, or its
// Body and Header, after they return; a broker may reuse them.
type Handler interface {
	ServeMessage(ctx context.Context, req *Message) (*Message, error)
}

// HandlerFunc is an adapter to allow the use of ordinary functions as
// message handlers.
type HandlerFunc func(ctx context.Context, req *Message) (*Message, error)

// ServeMessage calls f(ctx, req).
func (f HandlerFunc) ServeMessage(ctx context.Context, req *Message) (*Message, error) {
	return f(ctx, req)
}

// Broker carries messages to servers and replies back to callers.
//
// All methods are safe for concurrent use. Request and Send take ownership
// of the message: the caller must not modify it, its Header or its Body
// after the call starts. A broker in turn treats the message's Header and
// Body as read-only (it may set the message's other fields, such as an
// empty ID): callers may share one Header map, or one Body, among
// messages, also among calls in flight at once.
type Broker interface {
	// Request sends req to req.Subject and waits for the reply of one
	// server. It returns ErrNoResponders at once when no server can
	// receive the request (brokers that can tell), an error wrapping
	// ErrTimeout and ctx.Err() when ctx ends first (a broker built on
	// broker/kernel wraps context.Canceled alone when the caller
	// cancelled, and tells the server, whose handler's ctx is cancelled
	// too), ErrDisconnected when
	// the connection is lost (or is down when the call starts), and
	// ErrClosed after Close.
	//
	// The earlier of the ctx deadline and req.Deadline bounds the wait and
	// is the deadline sent with the request. With neither, Request waits
	// as long as ctx lives.
	Request(ctx context.Context, req *Message) (*Message, error)

	// Send delivers msg to msg.Subject without waiting for a reply
	// (one-way). It returns once the broker has accepted the message (for
	// durable brokers: once the broker confirmed it stored it).
	Send(ctx context.Context, msg *Message) error

	// Serve starts delivering messages published to subject to h, as one
	// of a group of competing consumers: each message goes to one of the
	// servers serving the subject under the same queue name. Serving
	// continues until the returned Subscription is stopped or the broker
	// is closed.
	Serve(subject string, h Handler, opts ...ServeOption) (Subscription, error)

	// Close stops every subscription without draining, fails calls in
	// flight with ErrClosed, and releases the connection. Close is
	// idempotent.
	Close() error
}

// Subscription is a running server started by [Broker.Serve].
type Subscription interface {
	// Stop stops taking new messages and waits until the handlers in
	// flight have returned and their replies were sent (drain), or ctx
	// ends, whichever is first. Messages not yet taken stay with the
	// broker for other servers when the broker can keep them. Stop is
	// idempotent.
	Stop(ctx context.Context) error
}

// Sentinel errors returned (wrapped) by every broker. Test with errors.Is.
var (
	// ErrNoResponders means no server could receive the request: nobody
	// serves the subject (NATS no responders, an unroutable AMQP publish,
	// a RocketMQ topic without consumers). It is returned quickly, without
	// waiting for the deadline.
	ErrNoResponders = errors.New("broker: no responders")

	// ErrClosed means the broker or subscription was closed.
	ErrClosed = errors.New("broker: closed")

	// ErrTimeout means no reply arrived before the deadline or the ctx
	// ended. Errors wrapping it also wrap the ctx error, so
	// errors.Is(err, context.DeadlineExceeded) works too.
	ErrTimeout = errors.New("broker: timeout")

	// ErrDisconnected means the connection to the broker was lost while a
	// request was in flight, or was down when the call started. The
	// request may or may not have been served; retry only when that is
	// safe (the call is idempotent or deduplicated). Brokers reconnect by
	// themselves, so a later call may succeed.
	ErrDisconnected = errors.New("broker: disconnected")

	// ErrMessageTooLarge means a message exceeds the size limit of the
	// broker or of the configured maximum.
	ErrMessageTooLarge = errors.New("broker: message too large")

	// ErrDeliveryFailed is what a handler returns (wrapped) to fail a
	// delivery on purpose: the caller gets no reply, durable brokers
	// redeliver the message (or dead-letter it after their limit), fast
	// brokers drop it. rpc.Server answers every other error with a
	// status reply.
	ErrDeliveryFailed = errors.New("broker: delivery failed")
)

// Reason says why a broker rejected a message: why it could not hand a
// request to its handler, or could not send the handler's reply.
type Reason int

// The reasons of a Rejection.
const (
	// Malformed: the request could not be decoded (a bad header, for
	// instance).
	Malformed Reason = iota + 1
	// TooLarge: the request or the reply exceeds a size limit of the
	// broker.
	TooLarge
	// Expired: the request's deadline passed before it was served.
	Expired
	// Unavailable: the server stopped (Stop past its drain ctx, or Close)
	// before the handler answered.
	Unavailable
)

var reasonNames = [...]string{Malformed: "malformed", TooLarge: "too large", Expired: "expired", Unavailable: "unavailable"}

func (r Reason) String() string {
	if r > 0 && int(r) < len(reasonNames) {
		return reasonNames[r]
	}
	return "reason " + strconv.Itoa(int(r))
}

// Rejection is the typed error a broker reports when it cannot hand a
// request to its handler or cannot send the handler's reply. The broker
// writes no status of its own: it asks the handler, when it is a
// [Rejecter] (rpc.Server is), for the reply to send instead.
type Rejection struct {
	Reason Reason
	Err    error // the cause; may be nil
}

func (r *Rejection) Error() string {
	if r.Err == nil {
		return "broker: rejected: " + r.Reason.String()
	}
	return "broker: rejected: " + r.Reason.String() + ": " + r.Err.Error()
}

// Unwrap returns the cause, so errors.Is finds ErrMessageTooLarge and the
// like through a Rejection.
func (r *Rejection) Unwrap() error { return r.Err }

// Rejecter is an optional ability of a Handler: it builds the reply a
// caller gets for a request the broker rejected (req carries what could be
// decoded of it; possibly nothing but its ID). A nil reply means the
// caller gets none. Middleware that wraps a Rejecter should forward
// Reject (see [RejectReply]).
type Rejecter interface {
	Reject(req *Message, r *Rejection) *Message
}

// RejectReply returns h's reply to the rejection r of req, or nil when h is
// not a [Rejecter].
func RejectReply(h Handler, req *Message, r *Rejection) *Message {
	if rj, ok := h.(Rejecter); ok {
		return rj.Reject(req, r)
	}
	return nil
}
