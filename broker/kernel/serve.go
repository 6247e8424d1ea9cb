package kernel

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"
	"time"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/kernel/deliveryctx"
	"github.com/mqrpc/mqrpc/broker/kernel/dispatch"
	"github.com/mqrpc/mqrpc/broker/kernel/msgpool"
)

// Driver is the wire of one subscription, all a broker implements to
// serve: D is the broker's own form of a received message (a *nats.Msg, an
// amqp.Delivery, ...). The kernel calls Next, Decode, Reply and Settle
// from several goroutines at once (up to the serve concurrency); Drain and
// Abort once each at most.
type Driver[D any] interface {
	// Next blocks until the next delivery and reports false once the
	// subscription has ended: drained and emptied, aborted, or its
	// connection closed. ctx is cancelled on abort.
	Next(ctx context.Context) (D, bool)
	// Decode fills m, a zero message except that its Header may be an
	// empty map to fill, from d: ID, Subject, Header (names in lower
	// case), Body and Deadline. An error (a *broker.HeaderError, for
	// instance) rejects the request as Malformed; m then holds what was
	// decoded.
	Decode(d D, m *broker.Message) error
	// Reply sends rep to the caller of d. It does nothing for a one-way
	// message. An error wrapping broker.ErrMessageTooLarge makes the
	// kernel ask the handler for a TooLarge rejection reply and send that
	// instead.
	Reply(d D, rep *broker.Message) error
	// Settle ends the delivery: Done (acknowledge), Failed (negatively
	// acknowledge: redeliver or dead-letter) or Dropped (never to be
	// delivered again: expired or malformed). Fast brokers do nothing.
	Settle(d D, o Outcome)
	// Drain stops taking new deliveries; Next returns false once those
	// already taken from the broker are handed out. Messages not yet
	// taken stay with the broker for other servers where it can keep
	// them.
	Drain()
	// Abort stops at once: Next returns false as soon as it can.
	Abort()
}

// Flusher is an optional ability of a Driver: Flush waits until the
// replies and acknowledgements sent so far reached the broker. Stop calls
// it after the drain.
type Flusher interface {
	Flush(ctx context.Context) error
}

// Outcome is how a delivery ended, for Driver.Settle.
type Outcome int

// The outcomes of a delivery.
const (
	// Done: served (the reply, if any, was sent): acknowledge.
	Done Outcome = iota
	// Failed: the handler failed the delivery (an error or a panic):
	// durable brokers redeliver it or dead-letter it.
	Failed
	// Dropped: the message is never to be served (expired, malformed):
	// acknowledge without serving.
	Dropped
)

// Options configure Serve.
type Options struct {
	// Name prefixes errors and log entries ("nats: stop calc").
	Name string
	// Log receives the warnings of serving (refused requests, failed
	// replies). Default: discard.
	Log *slog.Logger
	// Streamer, when the broker has inboxes, goes into every delivery's
	// ctx (broker.ContextWithStreamer), so handlers can answer streams.
	Streamer broker.Streamer
}

// Subscription is a running Serve. It implements broker.Subscription.
type Subscription[D any] struct {
	drv     Driver[D]
	h       broker.Handler
	subject string
	name    string
	log     *slog.Logger
	ctx     context.Context // parent of every delivery's ctx
	cancel  context.CancelFunc
	pool    *dispatch.Pool[D]
	ab      abilities[D]

	drain   sync.Once
	aborted sync.Once

	mu       sync.Mutex
	inflight map[*broker.Message]flight[D] // by the pooled request
	aborting bool
}

var _ broker.Subscription = (*Subscription[int])(nil)

var discard = slog.New(slog.DiscardHandler)

// Serve starts serving h over drv, with up to cfg.Concurrency handlers at
// once on an adaptive pool of goroutines (package dispatch).
func Serve[D any](drv Driver[D], subject string, h broker.Handler, cfg broker.ServeConfig, o Options) *Subscription[D] {
	s := &Subscription[D]{drv: drv, h: h, subject: subject, name: o.Name, log: o.Log,
		inflight: make(map[*broker.Message]flight[D]), ab: abilitiesOf(drv)}
	if s.log == nil {
		s.log = discard
	}
	parent := context.Background()
	if o.Streamer != nil {
		parent = broker.ContextWithStreamer(parent, o.Streamer)
	}
	s.ctx, s.cancel = context.WithCancel(parent)
	s.pool = dispatch.Start(cfg.Concurrency, s.next, s.Deliver)
	return s
}

func (s *Subscription[D]) next() (D, bool) { return s.drv.Next(s.ctx) }

// Deliver runs the pipeline for one delivery: decode, drop if expired,
// call the handler with a delivery ctx (the caller's deadline, cancelled by
// Cancel or Abort) and a recover, then reply and settle. Serve's pool calls
// it; a driver that runs its own goroutines may call it directly.
func (s *Subscription[D]) Deliver(d D) {
	req := msgpool.Get()
	defer msgpool.Put(req)
	if err := s.drv.Decode(d, req); err != nil {
		s.log.Warn(s.name+": refused request", "subject", s.subject, "error", err)
		s.reject(d, req, &broker.Rejection{Reason: broker.Malformed, Err: err})
		s.settle(d, Dropped, err)
		return
	}
	if req.Expired(time.Now()) {
		s.log.Debug(s.name+": dropped expired request", "subject", s.subject, "id", req.ID)
		s.settle(d, Dropped, nil)
		return
	}
	if s.ab.admit != nil {
		if !s.ab.admit.Admit(s.ctx, d, req) {
			return
		}
		if req.Expired(time.Now()) { // it may have waited
			s.settle(d, Dropped, nil)
			return
		}
	}
	dc := deliveryctx.New(s.ctx, req.Deadline)
	defer dc.Release()
	s.mu.Lock()
	if s.aborting {
		// Taken from the broker just before the abort: the caller hears
		// now, and a durable broker keeps the message for another server.
		s.reject(d, req, &broker.Rejection{Reason: broker.Unavailable, Err: errStopped})
		s.mu.Unlock()
		if !s.abandoned(d) {
			s.settle(d, Failed, errStopped)
		}
		return
	}
	s.inflight[req] = flight[D]{d: d, dc: dc}
	s.mu.Unlock()

	rep, err := s.call(dc, req)

	s.mu.Lock()
	_, mine := s.inflight[req] // false: Abort answered the caller already
	delete(s.inflight, req)
	s.mu.Unlock()
	if !mine && s.abandoned(d) {
		return
	}
	if err != nil {
		s.log.Warn(s.name+": delivery failed", "subject", s.subject, "id", req.ID, "error", err)
		s.settle(d, Failed, err)
		return
	}
	if rep != nil && mine {
		if err := s.drv.Reply(d, rep); err != nil {
			s.log.Warn(s.name+": reply failed", "subject", s.subject, "id", req.ID, "error", err)
			if errors.Is(err, broker.ErrMessageTooLarge) {
				s.reject(d, req, &broker.Rejection{Reason: broker.TooLarge, Err: err})
			}
		}
	}
	s.settle(d, Done, nil)
}

// flight is a delivery whose handler runs.
type flight[D any] struct {
	d  D
	dc *deliveryctx.Ctx
}

var errStopped = errors.New("the server stopped before it answered")

// call runs the handler with the delivery's ctx. A panic becomes a
// delivery failure rather than taking the process down from a goroutine
// the caller does not own.
func (s *Subscription[D]) call(ctx context.Context, req *broker.Message) (rep *broker.Message, err error) {
	defer func() {
		if p := recover(); p != nil {
			rep, err = nil, fmt.Errorf("handler panic: %v\n%s", p, debug.Stack())
		}
	}()
	return s.h.ServeMessage(ctx, req)
}

// Cancel cancels the ctx of the deliveries in flight with message ID id:
// the caller's cancel notice, which a driver receives its own way.
func (s *Subscription[D]) Cancel(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for req, f := range s.inflight {
		if req.ID == id {
			f.dc.Cancel()
		}
	}
}

// reject sends the handler's reply to a rejection, when it has one.
func (s *Subscription[D]) reject(d D, req *broker.Message, r *broker.Rejection) {
	rep := broker.RejectReply(s.h, req, r)
	if rep == nil {
		return
	}
	if err := s.drv.Reply(d, rep); err != nil {
		s.log.Warn(s.name+": rejection reply failed", "subject", s.subject, "id", req.ID, "error", err)
	}
}

// Stop implements broker.Subscription: the driver drains, the handlers in
// flight finish and their replies are flushed, or, once ctx ends, the
// subscription aborts (handlers see their ctx cancelled) and Stop returns
// ctx's error at once. A later Stop waits again for the handlers still
// running.
func (s *Subscription[D]) Stop(ctx context.Context) error {
	s.drain.Do(s.drv.Drain)
	done := make(chan struct{})
	go func() { s.pool.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		s.Abort()
		return fmt.Errorf("%s: stop %s: %w", s.name, s.subject, ctx.Err())
	}
	s.cancel()
	if f, ok := s.drv.(Flusher); ok {
		if err := f.Flush(ctx); err != nil {
			return fmt.Errorf("%s: stop %s: flush: %w", s.name, s.subject, err)
		}
	}
	return nil
}

// Abort stops at once, without draining: the callers of the deliveries in
// flight get the handler's reply to an Unavailable rejection at once (the
// handler's own reply, when it comes, is not sent), the handlers see their
// ctx cancelled and the driver aborts. It does not wait for the handlers
// (Wait does). Brokers call it from Close, before closing the connection
// the replies need.
func (s *Subscription[D]) Abort() {
	s.aborted.Do(func() {
		// Under the lock, so that no handler returns (and gives its
		// request back to the pool) while its rejection is built.
		s.mu.Lock()
		s.aborting = true
		for req, f := range s.inflight {
			s.reject(f.d, req, &broker.Rejection{Reason: broker.Unavailable, Err: errStopped})
			delete(s.inflight, req)
		}
		s.mu.Unlock()
		s.cancel()
		s.drv.Abort()
	})
}

// Wait waits until every handler returned, after a Stop or an Abort.
func (s *Subscription[D]) Wait() { s.pool.Wait() }

// Context is the parent of every delivery's ctx: cancelled once the
// subscription stopped or aborted.
func (s *Subscription[D]) Context() context.Context { return s.ctx }
