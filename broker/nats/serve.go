package nats

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/kernel/deliveryctx"
	"github.com/mqrpc/mqrpc/broker/kernel/dispatch"
	"github.com/mqrpc/mqrpc/broker/kernel/msgpool"
)

// Status codes the broker itself puts in replies (gRPC's numbers, as in
// docs/PROTOCOL.md) when it cannot hand a request to the handler or cannot
// send the handler's reply.
const (
	statusInvalidArgument   = 3
	statusResourceExhausted = 8
)

// Serve starts serving subject with h as a member of the queue group
// opts select (default: the subject), handling up to the configured
// concurrency at once. In core mode subject may contain NATS wildcards.
//
// In durable mode every queue group of a subject is one durable JetStream
// consumer on the work-queue stream; a work-queue stream allows only one
// group per subject.
func (b *Broker) Serve(subject string, h broker.Handler, opts ...broker.ServeOption) (broker.Subscription, error) {
	if b.closed.Load() {
		return nil, fmt.Errorf("nats: serve %s: %w", subject, broker.ErrClosed)
	}
	if subject == "" || h == nil {
		return nil, fmt.Errorf("nats: serve %q: empty subject or nil handler", subject)
	}
	cfg := broker.NewServeConfig(subject, opts...)
	s := &subscription{
		b:       b,
		subject: subject,
		h:       h,
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	if !b.addSub(s) {
		s.cancel()
		return nil, fmt.Errorf("nats: serve %s: %w", subject, broker.ErrClosed)
	}
	var err error
	if b.js == nil {
		err = s.startCore(cfg)
	} else {
		err = s.startDurable(cfg)
	}
	if err != nil {
		b.removeSub(s)
		s.cancel()
		return nil, fmt.Errorf("nats: serve %s: %w", subject, err)
	}
	return s, nil
}

// subscription is one Serve: a NATS queue subscription read by a fixed
// set of workers (core mode), or a JetStream consumer feeding a bounded set
// of handler goroutines (durable mode).
type subscription struct {
	b       *Broker
	subject string
	h       broker.Handler
	sem     chan struct{} // durable mode: one slot per handler running
	ctx     context.Context
	cancel  context.CancelFunc // cancels every delivery's ctx

	sub       *natsgo.Subscription        // core mode
	pool      *dispatch.Pool[*natsgo.Msg] // core mode
	cc        jetstream.ConsumeContext    // durable mode
	consumer  jetstream.ConsumerConfig    // durable mode
	repairing atomic.Bool                 // durable mode: consumer being recreated

	mu      sync.Mutex
	stopped bool // no new handler goroutine may start
	wg      sync.WaitGroup

	stopMu   sync.Mutex
	stopDone bool
}

func (s *subscription) startCore(cfg broker.ServeConfig) error {
	sub, err := s.b.nc.QueueSubscribeSync(s.subject, cfg.Queue)
	if err != nil {
		return mapPublishError(err)
	}
	s.mu.Lock()
	s.sub = sub
	s.mu.Unlock()
	// Serve returns once the server knows the subscription, so a request
	// sent right after (from any connection) finds this server.
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	if err := s.b.nc.FlushWithContext(ctx); err != nil {
		_ = sub.Unsubscribe()
		return fmt.Errorf("flush subscription: %w", mapPublishError(err))
	}
	// The pool's goroutines take messages straight from the connection's
	// reader and handle them themselves: under load no goroutine hand-off
	// per request, as with a plain nats.go responder, but without its
	// one-at-a-time handling (see internal/dispatch).
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return broker.ErrClosed
	}
	s.pool = dispatch.Start(cfg.Concurrency, s.nextCore, s.handleCore)
	return nil
}

// nextCore returns the next request for the pool, or false once the
// subscription is drained, unsubscribed or closed.
func (s *subscription) nextCore() (*natsgo.Msg, bool) {
	for {
		m, err := s.sub.NextMsgWithContext(s.ctx)
		if err == nil {
			return m, true
		}
		if !errors.Is(err, natsgo.ErrSlowConsumer) {
			return nil, false
		}
		s.b.log.Warn("nats: slow consumer, messages dropped", "subject", s.subject)
	}
}

// dispatch runs fn on a handler goroutine once a concurrency slot is free.
// It blocks the delivering goroutine meanwhile, which pushes back on the
// server. It reports false when the subscription stops first.
func (s *subscription) dispatch(fn func()) bool {
	select {
	case s.sem <- struct{}{}:
	case <-s.ctx.Done():
		return false
	}
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		<-s.sem
		return false
	}
	s.wg.Add(1)
	s.mu.Unlock()
	go func() {
		defer func() {
			<-s.sem
			s.wg.Done()
		}()
		fn()
	}()
	return true
}

func (s *subscription) handleCore(m *natsgo.Msg) {
	// Handlers do not keep a request after they return (broker.Handler),
	// so the message and its header map are reused from request to
	// request.
	req := msgpool.Get()
	defer msgpool.Put(req)
	err := decodeInto(req, m, m.Subject)
	if err != nil {
		s.b.log.Warn("nats: refused request", "subject", m.Subject, "error", err)
		if m.Reply != "" {
			s.replyStatus(m.Reply, statusInvalidArgument, err.Error())
		}
		return
	}
	if req.Expired(time.Now()) {
		s.b.log.Debug("nats: dropped expired request", "subject", m.Subject, "id", req.ID)
		return
	}
	rep, err := s.serve(req)
	if err != nil {
		s.b.log.Warn("nats: delivery failed", "subject", m.Subject, "id", req.ID, "error", err)
		return
	}
	if rep == nil || m.Reply == "" {
		return
	}
	if err := s.sendReply(m.Reply, rep); err != nil {
		s.b.log.Warn("nats: reply failed", "subject", m.Subject, "id", req.ID, "error", err)
	}
}

// serve calls the handler with a ctx carrying the request's deadline. A
// panic is turned into a delivery failure rather than taking the process
// down from a goroutine the caller does not own.
func (s *subscription) serve(req *broker.Message) (rep *broker.Message, err error) {
	ctx := s.ctx
	if !req.Deadline.IsZero() {
		dc := deliveryctx.New(s.ctx, req.Deadline)
		defer dc.Release()
		ctx = dc
	}
	defer func() {
		if p := recover(); p != nil {
			rep, err = nil, fmt.Errorf("handler panic: %v\n%s", p, debug.Stack())
		}
	}()
	return s.h.ServeMessage(ctx, req)
}

// sendReply publishes rep to reply. A reply too large for the server is
// replaced by a ResourceExhausted status so the caller does not wait for
// nothing.
func (s *subscription) sendReply(reply string, rep *broker.Message) error {
	o := newOutbound(reply, rep, rep.ID, time.Time{})
	err := mapPublishError(s.b.nc.PublishMsg(&o.msg))
	o.release()
	if errors.Is(err, broker.ErrMessageTooLarge) {
		s.replyStatus(reply, statusResourceExhausted,
			"reply of "+strconv.Itoa(len(rep.Body))+" bytes exceeds the NATS max payload")
	}
	return err
}

func (s *subscription) replyStatus(reply string, code int, msg string) {
	m := &natsgo.Msg{Subject: reply, Header: natsgo.Header{
		broker.HeaderStatus:        {strconv.Itoa(code)},
		broker.HeaderStatusMessage: {msg},
	}}
	if err := s.b.nc.PublishMsg(m); err != nil {
		s.b.log.Warn("nats: status reply failed", "subject", s.subject, "error", err)
	}
}

// Stop stops taking messages, lets the messages already delivered to this
// client and the handlers in flight finish, and flushes their replies (in
// durable mode also their acknowledgements), or gives up when ctx ends. In
// durable mode messages not yet delivered stay in the stream for the other
// servers.
func (s *subscription) Stop(ctx context.Context) error {
	s.stopMu.Lock()
	defer s.stopMu.Unlock()
	if s.stopDone {
		return nil
	}
	s.stopDone = true
	defer s.b.removeSub(s)

	drained := s.drain()
	select {
	case <-drained:
	case <-s.ctx.Done(): // the broker was closed meanwhile
	case <-ctx.Done():
		s.abort()
		return fmt.Errorf("nats: stop %s: %w", s.subject, ctx.Err())
	}
	s.mu.Lock()
	s.stopped = true
	s.mu.Unlock()

	done := make(chan struct{})
	go func() {
		s.wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		s.abort()
		return fmt.Errorf("nats: stop %s: %w", s.subject, ctx.Err())
	}
	s.cancel()
	if s.b.closed.Load() {
		return nil
	}
	if err := s.b.nc.FlushWithContext(ctx); err != nil {
		return fmt.Errorf("nats: stop %s: flush: %w", s.subject, mapPublishError(err))
	}
	return nil
}

// drain stops taking new messages and returns a channel closed once the
// messages already delivered to this client were handed to handlers.
func (s *subscription) drain() <-chan struct{} {
	if s.cc != nil {
		s.cc.Drain()
		return s.cc.Closed()
	}
	// The workers handle what was delivered and return once the drained
	// subscription is closed; the wait for them follows in Stop.
	out := make(chan struct{})
	if err := s.sub.Drain(); err != nil {
		s.abort()
	}
	close(out)
	return out
}

// abort stops the subscription at once: no new handlers, in-flight
// handlers see their ctx cancelled.
func (s *subscription) abort() {
	s.mu.Lock()
	s.stopped = true
	cc, sub := s.cc, s.sub
	s.mu.Unlock()
	s.cancel()
	if cc != nil {
		cc.Stop()
	} else if sub != nil {
		_ = sub.Unsubscribe()
	}
}

// wait waits for the handlers in flight to return.
func (s *subscription) wait() {
	s.mu.Lock()
	pool := s.pool
	s.mu.Unlock()
	if pool != nil {
		pool.Wait()
	}
	s.wg.Wait()
}
