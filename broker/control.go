package broker

import "context"

// Broadcaster is an optional ability of a Broker, found by type assertion
// (as http.Flusher is): a request that reaches every server of a subject,
// not one of a group, and the replies of all of them gathered by the
// caller. Discovery and health checks need it (rpc/control): "which
// instances of Calculator are up?" must be answered by each instance, and
// [Broker.Serve]'s competing consumers hand a request to one.
//
//	if bc, ok := b.(broker.Broadcaster); ok {
//		err := bc.Gather(ctx, &broker.Message{Subject: "$SRV.PING"}, 0,
//			func(m *broker.Message) bool { fmt.Println(string(m.Body)); return true })
//	}
//
// Broadcast subjects are a namespace of their own, apart from Serve's: a
// Gather reaches ServeEach subscriptions only, and a Request or Send never
// does. Nothing is stored: an instance that is down when a Gather is
// published does not see it later. broker/memory, broker/nats, broker/amqp
// and broker/rocketmq implement it; docs/PROTOCOL.md ("Control plane") has
// the wire format of each.
type Broadcaster interface {
	// ServeEach starts delivering messages that Gather publishes to
	// subject to h, on this connection and on every other one serving the
	// subject: each of them gets its own copy (there is no queue group,
	// and the ServeOption Queue is ignored). A non-nil reply of h goes
	// back to the gathering caller; a nil reply or an error sends nothing.
	// The Handler contract is the same as Serve's. Serving continues until
	// the Subscription is stopped or the broker is closed.
	ServeEach(subject string, h Handler, opts ...ServeOption) (Subscription, error)

	// Gather publishes req to every ServeEach subscription of req.Subject
	// and calls fn with each reply as it arrives, one at a time (never
	// concurrently); fn owns the reply. Gather returns nil when the wait
	// ends normally: ctx ended or req.Deadline passed (the wait is the
	// point: no reply in time is no instance, not an error), max replies
	// arrived (max > 0), or fn returned false. It returns an error
	// wrapping ErrNoResponders at once when the broker can tell that
	// nobody serves the subject, ErrClosed after Close, and the broker's
	// error when the request could not be published. The earlier of the
	// ctx deadline and req.Deadline travels with the request, as with
	// Request; with neither, Gather waits until ctx ends.
	Gather(ctx context.Context, req *Message, max int, fn func(reply *Message) bool) error
}
