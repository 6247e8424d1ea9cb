package broker

import "context"

// Streamer is an optional ability of a Broker, found by type assertion (as
// [Broadcaster] is): inboxes, the path a stream's messages travel. Package
// broker/stream builds streams on it once for every broker (sequence
// numbers, credit-based flow control, heartbeats, end and cancel), and
// package rpc builds its typed streaming API on that.
//
// An inbox is an address on this connection. Messages posted to it arrive
// in the order each sender posted them, and are handed to the inbox's
// function one at a time. Nothing is stored: a message posted to an inbox
// that is closed, or whose connection went away, is dropped (silently, or
// with an error wrapping ErrNoResponders when the broker can tell), and a
// message may be lost when the connection fails. The stream engine detects
// both with sequence numbers and heartbeats. Inboxes are cheap: a broker
// multiplexes them over its connection (never a subscription per message).
//
// A broker that implements Streamer puts itself into the ctx of every
// delivery of its Serve subscriptions (see [ContextWithStreamer]), so a
// handler can answer a stream's opening request over the same connection.
// broker/memory, broker/nats, broker/amqp and broker/rocketmq implement it;
// docs/PROTOCOL.md ("Streams") has the wire format of each.
type Streamer interface {
	// OpenInbox opens an inbox and calls fn with each message posted to
	// it, one at a time, in the order of each sender, until the inbox is
	// closed or the broker is. fn owns the message; it must return
	// quickly, as it may run on the goroutine that receives for the whole
	// connection.
	OpenInbox(fn func(*Message)) (Inbox, error)

	// Post sends msg to the inbox at addr: fast, nothing stored, ordered
	// per sender and address. It returns once the broker accepted the
	// message (not once it arrived). msg.Subject is ignored. Post takes
	// ownership of msg, as Send does.
	Post(ctx context.Context, addr string, msg *Message) error
}

// Inbox is an open inbox of a [Streamer].
type Inbox interface {
	// Addr is the inbox's address, for other connections to Post to.
	Addr() string
	// Close closes the inbox: messages posted to it from then on are
	// dropped, and its function is not called again once a call in
	// progress returned. Close is idempotent and may be called from the
	// inbox's function.
	Close() error
}

type streamerKey struct{}

// ContextWithStreamer returns ctx carrying s. A broker that implements
// [Streamer] makes its deliveries' ctx with it.
func ContextWithStreamer(ctx context.Context, s Streamer) context.Context {
	return context.WithValue(ctx, streamerKey{}, s)
}

// StreamerFromContext returns the Streamer of the connection that
// delivered the request ctx belongs to, if the broker has one.
func StreamerFromContext(ctx context.Context) (Streamer, bool) {
	s, ok := ctx.Value(streamerKey{}).(Streamer)
	return s, ok
}
