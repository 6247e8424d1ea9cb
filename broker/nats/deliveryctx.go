package nats

import (
	"context"
	"sync"
	"time"
)

// deliveryCtx is the context of one delivery: the subscription's context
// bounded by the request's deadline. A context.WithDeadline per request
// costs a timer and eight allocations, and most handlers never wait on
// Done; so the real context is made only when Done, Err (once it would be
// non-nil) or a derived cancelable context needs it.
type deliveryCtx struct {
	parent   context.Context
	deadline time.Time

	mu     sync.Mutex
	real   context.Context // nil until needed
	cancel context.CancelFunc
}

var _ context.Context = (*deliveryCtx)(nil)

func newDeliveryCtx(parent context.Context, deadline time.Time) *deliveryCtx {
	return &deliveryCtx{parent: parent, deadline: deadline}
}

func (c *deliveryCtx) materialize() context.Context {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.real == nil {
		c.real, c.cancel = context.WithDeadline(c.parent, c.deadline)
	}
	return c.real
}

func (c *deliveryCtx) materialized() context.Context {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.real
}

// Deadline returns the request's deadline.
func (c *deliveryCtx) Deadline() (time.Time, bool) {
	if d, ok := c.parent.Deadline(); ok && d.Before(c.deadline) {
		return d, true
	}
	return c.deadline, true
}

// Done returns the real context's channel, making it on first use.
func (c *deliveryCtx) Done() <-chan struct{} { return c.materialize().Done() }

// Err is nil without making the real context while the deadline holds and
// the parent lives; after that the real context answers, so Err and Done
// stay consistent and Err sticks.
func (c *deliveryCtx) Err() error {
	if r := c.materialized(); r != nil {
		return r.Err()
	}
	if c.parent.Err() == nil && time.Now().Before(c.deadline) {
		return nil
	}
	return c.materialize().Err()
}

// Value looks keys up in the real context once it exists, so that derived
// contexts find its cancellation and register with it directly.
func (c *deliveryCtx) Value(key any) any {
	if r := c.materialized(); r != nil {
		return r.Value(key)
	}
	return c.parent.Value(key)
}

// release frees the timer, if one was made; call it when the handler
// returned.
func (c *deliveryCtx) release() {
	c.mu.Lock()
	cancel := c.cancel
	c.mu.Unlock()
	if cancel != nil {
		cancel()
	}
}
