package amqp

import (
	"context"
	"errors"
	"fmt"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/kernel"
)

// errNack is the result of a publish RabbitMQ refused to take
// responsibility for (basic.nack), which it does on internal errors such as
// a quorum queue without a majority.
var errNack = errors.New("not confirmed by the broker (basic.nack)")

// Request implements broker.Broker. The request is published with mandatory
// set, reply_to amq.rabbitmq.reply-to and a fresh correlation id; the reply
// comes back on the connection's single reply consumer. When ctx is
// cancelled before the reply (no deadline passed), the servers of the
// subject get a cancel notice through CancelExchange.
func (b *Broker) Request(ctx context.Context, req *broker.Message) (*broker.Message, error) {
	const op = "amqp: request"
	ctx, cancel, err := kernel.Prepare(ctx, req, op)
	defer cancel()
	if err != nil {
		return nil, err
	}
	s, c, err := b.publish(ctx, req, false)
	if err != nil {
		return nil, err
	}
	select {
	case r := <-c.res:
		if r.err != nil {
			return nil, fmt.Errorf("%s %s: %w", op, req.Subject, b.closedOr(r.err))
		}
		return r.reply, nil
	case <-ctx.Done():
		s.forget(c)
		if kernel.Canceled(ctx) {
			b.notifyCancel(s, req.Subject, req.ID)
		}
		return nil, kernel.WaitError(ctx, op, req.Subject)
	case <-b.ctx.Done():
		return nil, fmt.Errorf("%s %s: %w", op, req.Subject, broker.ErrClosed)
	}
}

// Send implements broker.Broker. It returns once RabbitMQ confirmed the
// message, with broker.ErrNoResponders when no queue took it. In durable mode
// a confirmed message is on disk (persistent message on a durable queue).
// msg.Deadline, when set, becomes the AMQP expiration; the ctx deadline only
// bounds how long Send waits.
func (b *Broker) Send(ctx context.Context, msg *broker.Message) error {
	const op = "amqp: send"
	if err := kernel.PrepareSend(ctx, msg, op); err != nil {
		return err
	}
	s, c, err := b.publish(ctx, msg, true)
	if err != nil {
		return err
	}
	select {
	case r := <-c.res:
		if r.err != nil {
			return fmt.Errorf("%s %s: %w", op, msg.Subject, b.closedOr(r.err))
		}
		return nil
	case <-ctx.Done():
		s.forget(c)
		return kernel.WaitError(ctx, op, msg.Subject)
	case <-b.ctx.Done():
		return fmt.Errorf("%s %s: %w", op, msg.Subject, broker.ErrClosed)
	}
}

// publish sends m as a request (oneway false: with reply_to) or a one-way
// message, and returns the call that receives its outcome.
func (b *Broker) publish(ctx context.Context, m *broker.Message, oneway bool) (*session, *call, error) {
	op := "request"
	if oneway {
		op = "send"
	}
	if m.Subject == "" {
		return nil, nil, fmt.Errorf("amqp: %s: empty subject", op)
	}
	if len(m.Body) > b.cfg.maxSize {
		return nil, nil, fmt.Errorf("amqp: %s %s: %w: %d bytes, limit %d", op, m.Subject, broker.ErrMessageTooLarge, len(m.Body), b.cfg.maxSize)
	}
	s, err := b.session(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("amqp: %s %s: %w", op, m.Subject, err)
	}
	if err := b.declareForClient(s, m.Subject); err != nil {
		return nil, nil, fmt.Errorf("amqp: %s %s: %w", op, m.Subject, err)
	}
	if err := s.waitUnblocked(ctx); err != nil {
		return nil, nil, fmt.Errorf("amqp: %s %s: %w", op, m.Subject, err)
	}
	c, err := s.register(oneway)
	if err != nil {
		return nil, nil, fmt.Errorf("amqp: %s %s: %w", op, m.Subject, err)
	}
	p := toPublishing(m, m.Deadline, time.Now(), b.cfg.durable)
	p.CorrelationId = c.corr
	if !oneway {
		p.ReplyTo = directReplyTo
	}
	pc := s.req
	if oneway {
		pc = s.send
	}
	dc, err := pc.ch.PublishWithDeferredConfirm(b.cfg.exchange, m.Subject, true, false, p)
	if err != nil {
		s.forget(c)
		// A publish fails only when the channel or connection is gone.
		return nil, nil, fmt.Errorf("amqp: %s %s: %w: %w", op, m.Subject, b.closedOr(broker.ErrDisconnected), err)
	}
	if dc != nil { // nil when pc is not in confirm mode
		s.published(pc, c, dc.DeliveryTag)
	}
	return s, c, nil
}

// declareForClient declares, once per connection, what a publish needs: the
// exchange, if one is configured (publishing to a missing exchange would
// close the channel), and in durable mode on the default exchange the
// subject's queue, so a request sent before any server started is kept.
func (b *Broker) declareForClient(s *session, subject string) error {
	switch {
	case b.cfg.exchange != "":
		return s.declareOnce("\x00exchange", b.declareExchange)
	case b.cfg.durable:
		return s.declareOnce(subject, func(ch *amqp091.Channel) error { return b.declareQueue(ch, subject) })
	}
	return nil
}

// declareOnce runs declare on a channel of its own unless it succeeded
// under key on this connection before.
func (s *session) declareOnce(key string, declare func(*amqp091.Channel) error) error {
	s.mu.Lock()
	done := s.declared[key]
	s.mu.Unlock()
	if done {
		return nil
	}
	s.declMu.Lock()
	defer s.declMu.Unlock()
	s.mu.Lock()
	done = s.declared[key]
	s.mu.Unlock()
	if done {
		return nil
	}
	if err := withChannel(s.conn, declare); err != nil {
		return err
	}
	s.mu.Lock()
	s.declared[key] = true
	s.mu.Unlock()
	return nil
}

// withChannel runs f on a short-lived channel. Declarations use their own
// channel because amqp091-go does not pair concurrent synchronous methods
// with their replies on one channel, and a refused declaration closes the
// channel it was made on.
func withChannel(conn *amqp091.Connection, f func(*amqp091.Channel) error) error {
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("%w: open channel: %w", broker.ErrDisconnected, err)
	}
	err = f(ch)
	_ = ch.Close()
	return err
}

// closedOr reports ErrClosed instead of err once Close has begun: Close also
// drops the connection, and its callers must see why.
func (b *Broker) closedOr(err error) error {
	if b.ctx.Err() != nil && errors.Is(err, broker.ErrDisconnected) {
		return broker.ErrClosed
	}
	return err
}
