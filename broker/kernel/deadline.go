package kernel

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/mqrpc/mqrpc/broker"
)

// Prepare is the preamble of a request: it fills an
// empty m.ID with broker.NewID and makes the earlier of ctx's deadline and
// m.Deadline govern both the wait (the returned ctx) and the message
// (m.Deadline). When the two are equal, the usual case as rpc.Client
// copies the ctx deadline into the message, ctx is returned as it is,
// without a timer. It returns an error wrapping broker.ErrTimeout and
// context.DeadlineExceeded when that deadline has passed already, and
// WaitError's when ctx has ended already (nothing to send, nobody to
// notify); op names the operation in errors ("nats: request", followed by
// the subject). Call cancel when done, also on error.
func Prepare(ctx context.Context, m *broker.Message, op string) (context.Context, context.CancelFunc, error) {
	if m.ID == "" {
		m.ID = broker.NewID()
	}
	cancel := context.CancelFunc(nop)
	if d, ok := ctx.Deadline(); ok && (m.Deadline.IsZero() || !m.Deadline.Before(d)) {
		m.Deadline = d
	} else if !m.Deadline.IsZero() {
		ctx, cancel = context.WithDeadline(ctx, m.Deadline)
	}
	if m.Expired(time.Now()) {
		return ctx, cancel, fmt.Errorf("%s %s: deadline passed before sending: %w: %w",
			op, m.Subject, broker.ErrTimeout, context.DeadlineExceeded)
	}
	if ctx.Err() != nil {
		return ctx, cancel, WaitError(ctx, op, m.Subject)
	}
	return ctx, cancel, nil
}

func nop() {}

// PrepareSend is the preamble of a one-way send: it fills an empty m.ID
// and fails when m's own deadline has passed or ctx has ended. ctx bounds
// only the sending: a one-way message lives until m.Deadline, whatever
// ctx's deadline.
func PrepareSend(ctx context.Context, m *broker.Message, op string) error {
	if m.ID == "" {
		m.ID = broker.NewID()
	}
	if m.Expired(time.Now()) {
		return fmt.Errorf("%s %s: deadline passed before sending: %w: %w",
			op, m.Subject, broker.ErrTimeout, context.DeadlineExceeded)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%s %s: %w: %w", op, m.Subject, broker.ErrTimeout, err)
	}
	return nil
}

// MaxTTL is the longest time to live TTL returns: about 24.8 days, the
// largest number of milliseconds a signed 32-bit field holds, so every
// broker's time-to-live field (AMQP expiration, RocketMQ properties, ...)
// takes it without overflow.
const MaxTTL = time.Duration(1<<31-1) * time.Millisecond

// TTL returns how long a message with the given deadline should live from
// now: zero for no deadline (live forever), at least a millisecond for a
// deadline that has passed (brokers treat zero as "none"), and never more
// than MaxTTL, so a far-future deadline neither overflows nor wraps
// around. It rounds up to whole milliseconds, the unit brokers carry.
func TTL(deadline, now time.Time) time.Duration {
	if deadline.IsZero() {
		return 0
	}
	d := deadline.Sub(now) // saturates instead of overflowing
	switch {
	case d < time.Millisecond:
		return time.Millisecond
	case d >= MaxTTL:
		return MaxTTL
	}
	return (d + time.Millisecond - 1).Truncate(time.Millisecond)
}

// WaitError is the error of a request whose ctx ended before the reply
// came: when the deadline passed it wraps broker.ErrTimeout and
// context.DeadlineExceeded; when the caller cancelled it says so and wraps
// context.Canceled alone (a cancel is no timeout; the broker sends the
// servers a cancel notice). op and subject name the operation ("memory:
// request", "calc").
func WaitError(ctx context.Context, op, subject string) error {
	err := ctx.Err()
	if errors.Is(err, context.Canceled) {
		return fmt.Errorf("%s %s: canceled by the caller: %w", op, subject, err)
	}
	return fmt.Errorf("%s %s: %w: %w", op, subject, broker.ErrTimeout, err)
}

// Canceled reports whether a request's wait ended because the caller
// cancelled ctx (not because a deadline passed): the servers should get a
// cancel notice.
func Canceled(ctx context.Context) bool { return errors.Is(ctx.Err(), context.Canceled) }
