package amqp

import (
	"context"
	"fmt"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/kernel"
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
	if subject == "" || h == nil {
		return nil, fmt.Errorf("amqp: serve each %q: empty subject or nil handler", subject)
	}
	cfg := broker.NewServeConfig(subject, opts...)
	d := &driver{b: b, subject: subject, queue: subject, autoAck: true}
	d.setup = d.setupEach
	return b.serve(d, h, cfg, "serve each")
}

// setupEach opens a channel on s with an exclusive queue bound to
// ControlExchange for the subject, and consumes it without acks.
func (d *driver) setupEach(s *session) (*consumer, error) {
	ch, err := s.conn.Channel()
	if err != nil {
		return nil, fmt.Errorf("%w: open channel: %w", broker.ErrDisconnected, err)
	}
	c := newConsumer(ch)
	err = func() error {
		if err := declareControl(ch); err != nil {
			return err
		}
		q, err := ch.QueueDeclare("", false, true, true, false, nil)
		if err != nil {
			return fmt.Errorf("declare queue: %w", err)
		}
		if err := ch.QueueBind(q.Name, d.subject, ControlExchange, false, nil); err != nil {
			return fmt.Errorf("bind %s: %w", d.subject, err)
		}
		c.tag = "mqrpc-" + broker.NewID()
		c.deliveries, err = ch.Consume(q.Name, c.tag, true, true, false, false, nil)
		return err
	}()
	if err != nil {
		c.close()
		return nil, err
	}
	return c, nil
}

func declareControl(ch *amqp091.Channel) error {
	if err := ch.ExchangeDeclare(ControlExchange, amqp091.ExchangeDirect, true, false, false, false, nil); err != nil {
		return fmt.Errorf("declare exchange %s: %w", ControlExchange, err)
	}
	return nil
}

// Gather implements broker.Broadcaster: req goes to ControlExchange with
// the subject as routing key, mandatory, with direct reply-to on a
// channel of its own, which takes any number of replies. A request no
// queue is bound for comes back as a return: broker.ErrNoResponders at
// once.
func (b *Broker) Gather(ctx context.Context, req *broker.Message, max int, fn func(*broker.Message) bool) error {
	const op = "amqp: gather"
	ctx, cancel, err := kernel.Prepare(ctx, req, op)
	defer cancel()
	if err != nil {
		return err
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
	deliveries, err := ch.Consume("amq.rabbitmq.reply-to", "", true, false, false, false, nil)
	if err != nil {
		return fmt.Errorf("amqp: gather %s: consume replies: %w", req.Subject, err)
	}
	returns := ch.NotifyReturn(make(chan amqp091.Return, 1))
	closed := ch.NotifyClose(make(chan *amqp091.Error, 1))
	p := toPublishing(req, req.Deadline, time.Now(), false)
	p.ReplyTo = "amq.rabbitmq.reply-to"
	p.CorrelationId = req.ID
	if err := ch.PublishWithContext(ctx, ControlExchange, req.Subject, true, false, p); err != nil {
		return fmt.Errorf("amqp: gather %s: publish: %w", req.Subject, err)
	}
	replies := kernel.NewReplies(max, fn)
	for {
		select {
		case d, ok := <-deliveries:
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
			if replies.Take(rep) {
				return nil
			}
		case <-returns:
			if replies.Taken() == 0 {
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
