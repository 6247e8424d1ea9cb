// Package deliveryctx is the context a broker hands a handler for one
// delivery: the subscription's context bounded by the request's deadline,
// made without a timer until someone waits on it.
package deliveryctx

import (
	"context"
	"sync"
	"time"
)

// Ctx is the context of one delivery. A context.WithDeadline per request
// costs a timer and four allocations, and most handlers never wait on
// Done; so the real context is made only when Done, Err (once it would be
// non-nil) or a derived cancelable context needs it.
type Ctx struct {
	parent   context.Context
	deadline time.Time

	mu     sync.Mutex
	real   context.Context // nil until needed
	cancel context.CancelFunc
}

var _ context.Context = (*Ctx)(nil)

// New returns parent bounded by deadline (none when zero), cancelable with
// Cancel. Call Release once the handler returned.
func New(parent context.Context, deadline time.Time) *Ctx {
	return &Ctx{parent: parent, deadline: deadline}
}

func (c *Ctx) materialize() context.Context {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.real == nil {
		if c.deadline.IsZero() {
			c.real, c.cancel = context.WithCancel(c.parent)
		} else {
			c.real, c.cancel = context.WithDeadline(c.parent, c.deadline)
		}
	}
	return c.real
}

func (c *Ctx) materialized() context.Context {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.real
}

// Deadline returns the request's deadline.
func (c *Ctx) Deadline() (time.Time, bool) {
	if c.deadline.IsZero() {
		return c.parent.Deadline()
	}
	if d, ok := c.parent.Deadline(); ok && d.Before(c.deadline) {
		return d, true
	}
	return c.deadline, true
}

// Done returns the real context's channel, making it on first use.
func (c *Ctx) Done() <-chan struct{} { return c.materialize().Done() }

// Err is nil without making the real context while the deadline holds and
// the parent lives; after that the real context answers, so Err and Done
// stay consistent and Err sticks.
func (c *Ctx) Err() error {
	if r := c.materialized(); r != nil {
		return r.Err()
	}
	if c.parent.Err() == nil && (c.deadline.IsZero() || time.Now().Before(c.deadline)) {
		return nil
	}
	return c.materialize().Err()
}

// Value looks keys up in the real context once it exists, so that derived
// contexts find its cancellation and register with it directly.
func (c *Ctx) Value(key any) any {
	if r := c.materialized(); r != nil {
		return r.Value(key)
	}
	return c.parent.Value(key)
}

// Cancel cancels the context, as the caller's cancel notice asks: Err
// says context.Canceled from then on.
func (c *Ctx) Cancel() { c.materialize(); c.Release() }

// Release frees the timer, if one was made; call it when the handler
// returned. The context is done afterwards only if it was made real.
func (c *Ctx) Release() {
	c.mu.Lock()
	cancel := c.cancel
	c.mu.Unlock()
	if cancel != nil {
		cancel()
	}
}
