package amqp

import (
	"context"
	"fmt"
	"sync"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/mqrpc/mqrpc/broker"
)

// ControlExchange is the exchange that broadcast messages (ServeEach and
// Gather, the control plane's PING, INFO and STATS) travel through: a
// durable direct exchange where each ServeEach subscription binds an
// exclusive, server-named queue of its own with the subject as binding
// key, so every subscriber gets a copy.
const ControlExchange = "mqrpc.control"

var _ broker.Broadcaster = (*Broker)(nil)

// ServeEach implements broker.Broadcaster: subject is bound to a queue of
// this subscription's own on ControlExchange, consumed without acks
// (nothing is stored for an instance that is down), and re-made after a
// connection loss.
func (b *Broker) ServeEach(subject string, h broker.Handler, opts ...broker.ServeOption) (broker.Subscription, error) {
	cfg := broker.NewServeConfig(subject, opts...)
	s := &eachSub{b: b, subject: subject, h: h, sem: make(chan struct{}, cfg.Concurrency), quit: make(chan struct{}), done: make(chan struct{})}
	sess, err := b.session(b.ctx)
	if err != nil {
		return nil, fmt.Errorf("amqp: serve each %s: %w", subject, err)
	}
	ch, deliveries, err := s.setup(sess)
	if err != nil {
		return nil, fmt.Errorf("amqp: serve each %s: %w", subject, err)
	}
	b.wg.Add(1)
	go s.run(sess, ch, deliveries)
	return s, nil
}

type eachSub struct {
	b       *Broker
	subject string
	h       broker.Handler
	sem     chan struct{}
	wg      sync.WaitGroup // handlers in flight
	quit    chan struct{}  // closed by Stop
	once    sync.Once
	done    chan struct{} // closed when run returned
}

func (s *eachSub) setup(sess *session) (*amqp091.Channel, <-chan amqp091.Delivery, error) {
	ch, err := sess.conn.Channel()
	if err != nil {
		return nil, nil, fmt.Errorf("%w: open channel: %w", broker.ErrDisconnected, err)
	}
	deliveries, err := func() (<-chan amqp091.Delivery, error) {
		if err := declareControl(ch); err != nil {
			return nil, err
		}
		q, err := ch.QueueDeclare("", false, true, true, false, nil)
		if err != nil {
			return nil, fmt.Errorf("declare queue: %w", err)
		}
		if err := ch.QueueBind(q.Name, s.subject, ControlExchange, false, nil); err != nil {
			return nil, fmt.Errorf("bind %s: %w", s.subject, err)
		}
		return ch.Consume(q.Name, "", true, true, false, false, nil)
	}()
	if err != nil {
		_ = ch.Close()
		return nil, nil, err
	}
	return ch, deliveries, nil
}

func declareControl(ch *amqp091.Channel) error {
	if err := ch.ExchangeDeclare(ControlExchange, amqp091.ExchangeDirect, true, false, false, false, nil); err != nil {
		return fmt.Errorf("declare exchange %s: %w", ControlExchange, err)
	}
	return nil
}

// run consumes until Stop or Close, setting the queue up again on every
// new connection.
func (s *eachSub) run(sess *session, ch *amqp091.Channel, deliveries <-chan amqp091.Delivery) {
	b := s.b
	defer b.wg.Done()
	defer close(s.done)
	for {
	consume:
		for {
			select {
			case d, ok := <-deliveries:
				if !ok {
					break consume
				}
				s.dispatch(ch, d)
			case <-s.quit:
				_ = ch.Close() // the exclusive queue goes with it
				return
			case <-b.ctx.Done():
				return
			}
		}
		_ = ch.Close()
		for {
			next, err := b.nextSession(sess)
			if err != nil {
				return // closed
			}
			sess = next
			select {
			case <-s.quit:
				return
			default:
			}
			var err2 error
			if ch, deliveries, err2 = s.setup(sess); err2 == nil {
				break
			}
			b.cfg.logger.Warn("amqp: control subscription", "subject", s.subject, "error", err2)
			if !sleepCtx(b.ctx, time.Second) {
				return
			}
		}
	}
}

func (s *eachSub) dispatch(ch *amqp091.Channel, d amqp091.Delivery) {
	if d.ReplyTo == "" {
		return
	}
	select {
	case s.sem <- struct{}{}:
	case <-s.quit:
		return
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer func() { <-s.sem }()
		req, err := fromDelivery(&d)
		if err != nil || req.Expired(time.Now()) {
			return
		}
		ctx := s.b.ctx
		if !req.Deadline.IsZero() {
			var cancel context.CancelFunc
			ctx, cancel = context.WithDeadline(ctx, req.Deadline)
			defer cancel()
		}
		rep, err := serveSafely(ctx, s.h, req)
		if err != nil || rep == nil {
			return
		}
		p := toReply(rep)
		p.CorrelationId = d.CorrelationId
		if err := ch.PublishWithContext(ctx, "", d.ReplyTo, false, false, p); err != nil {
			s.b.cfg.logger.Warn("amqp: control reply", "subject", s.subject, "error", err)
		}
	}()
}

// Stop implements broker.Subscription.
func (s *eachSub) Stop(ctx context.Context) error {
	s.once.Do(func() { close(s.quit) })
	done := make(chan struct{})
	go func() { <-s.done; s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("amqp: stop %s: %w", s.subject, ctx.Err())
	}
}

// Gather implements broker.Broadcaster: req goes to ControlExchange with
// the subject as routing key, mandatory, with direct reply-to on a
// channel of its own, which takes any number of replies. A request no
// queue is bound for comes back as a return: broker.ErrNoResponders at
// once.
func (b *Broker) Gather(ctx context.Context, req *broker.Message, max int, fn func(*broker.Message) bool) error {
	deadline := req.Deadline
	if d, ok := ctx.Deadline(); ok && (deadline.IsZero() || d.Before(deadline)) {
		deadline = d
	}
	if !deadline.IsZero() {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, deadline)
		defer cancel()
	}
	sess, err := b.session(ctx)
	if err != nil {
		return fmt.Errorf("amqp: gather %s: %w", req.Subject, err)
	}
	ch, err := sess.conn.Channel()
	if err != nil {
		return fmt.Errorf("amqp: gather %s: %w: open channel: %w", req.Subject, broker.ErrDisconnected, err)
	}
	defer ch.Close() //nolint:errcheck // nothing to do about it
	if err := declareControl(ch); err != nil {
		return fmt.Errorf("amqp: gather %s: %w", req.Subject, err)
	}
	replies, err := ch.Consume("amq.rabbitmq.reply-to", "", true, false, false, false, nil)
	if err != nil {
		return fmt.Errorf("amqp: gather %s: consume replies: %w", req.Subject, err)
	}
	returns := ch.NotifyReturn(make(chan amqp091.Return, 1))
	closed := ch.NotifyClose(make(chan *amqp091.Error, 1))
	if req.ID == "" {
		req.ID = broker.NewID()
	}
	p := toPublishing(req, deadline, time.Now(), false)
	p.ReplyTo = "amq.rabbitmq.reply-to"
	p.CorrelationId = req.ID
	if err := ch.PublishWithContext(ctx, ControlExchange, req.Subject, true, false, p); err != nil {
		return fmt.Errorf("amqp: gather %s: publish: %w", req.Subject, err)
	}
	got := 0
	for {
		select {
		case d, ok := <-replies:
			if !ok {
				return fmt.Errorf("amqp: gather %s: %w", req.Subject, broker.ErrDisconnected)
			}
			if d.CorrelationId != req.ID {
				continue
			}
			rep, err := fromDelivery(&d)
			if err != nil {
				continue
			}
			got++
			if !fn(rep) {
				return nil
			}
			if max > 0 && got >= max {
				return nil
			}
		case <-returns:
			if got == 0 {
				return fmt.Errorf("amqp: gather %s: %w", req.Subject, broker.ErrNoResponders)
			}
		case e := <-closed:
			if e != nil {
				return fmt.Errorf("amqp: gather %s: %w: %w", req.Subject, broker.ErrDisconnected, e)
			}
			return nil
		case <-ctx.Done():
			return nil
		case <-b.ctx.Done():
			return fmt.Errorf("amqp: gather %s: %w", req.Subject, broker.ErrClosed)
		}
	}
}
