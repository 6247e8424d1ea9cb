package amqp

import (
	"fmt"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// CancelExchange is the exchange cancel notices travel through: a durable
// direct exchange where each subscription binds an exclusive, server-named
// queue of its own with its subject as binding key. A caller that cancels
// a request (its ctx cancelled before the reply, no deadline passed)
// publishes an empty message with the request's message_id and the
// subject as routing key; every server of the subject gets it and cancels
// the ctx of that request's handler if it runs one.
//
// Cancel notices are best effort, and optional: a client or server whose
// user may not declare the exchange or a server-named queue (RabbitMQ
// permissions) works without them.
const CancelExchange = "mqrpc.cancel"

// consumeCancels opens a channel on s with a queue of its own bound to
// CancelExchange for subject, consumed without acknowledgements. Its
// channel closes with c. Without permission for it, the subscription
// serves without cancel notices.
func (d *driver) consumeCancels(s *session, c *consumer) {
	ch, err := s.conn.Channel()
	if err == nil {
		c.cch = ch
		err = func() error {
			if err := declareCancel(ch); err != nil {
				return err
			}
			q, err := ch.QueueDeclare("", false, true, true, false, nil)
			if err != nil {
				return fmt.Errorf("declare cancel queue: %w", err)
			}
			if err := ch.QueueBind(q.Name, d.subject, CancelExchange, false, nil); err != nil {
				return fmt.Errorf("bind cancel queue for %s: %w", d.subject, err)
			}
			c.cancels, err = ch.Consume(q.Name, "", true, true, false, false, nil)
			return err
		}()
	}
	if err != nil {
		c.cancels = nil
		d.b.cfg.logger.Warn("amqp: serving without cancel notices", "subject", d.subject, "err", err)
	}
}

func declareCancel(ch *amqp091.Channel) error {
	if err := ch.ExchangeDeclare(CancelExchange, amqp091.ExchangeDirect, true, false, false, false, nil); err != nil {
		return fmt.Errorf("declare exchange %s: %w", CancelExchange, err)
	}
	return nil
}

// cancelKey marks CancelExchange declared in session.declared.
const cancelKey = "\x00cancel"

// declareCancelExchange declares CancelExchange for the cancel notices the
// session's callers send; without permission for it, they send none.
func (s *session) declareCancelExchange() {
	if err := withChannel(s.conn, declareCancel); err != nil {
		s.b.cfg.logger.Warn("amqp: calling without cancel notices", "err", err)
		return
	}
	s.mu.Lock()
	s.declared[cancelKey] = true
	s.mu.Unlock()
}

// notifyCancel tells the servers of subject that the caller of request id
// gave up. It never waits: it is skipped while RabbitMQ blocks the
// connection and when CancelExchange could not be declared. A server that
// has not started the request yet serves it.
func (b *Broker) notifyCancel(s *session, subject, id string) {
	s.mu.Lock()
	ok := s.declared[cancelKey] && !s.dead
	s.mu.Unlock()
	if !ok || s.blocked.Load() {
		return
	}
	pc := s.req
	dc, err := pc.ch.PublishWithDeferredConfirm(CancelExchange, subject, false, false,
		amqp091.Publishing{MessageId: id, DeliveryMode: amqp091.Transient})
	if err != nil {
		b.cfg.logger.Warn("amqp: cancel notice not sent", "subject", subject, "id", id, "err", err)
		return
	}
	if dc != nil {
		// Durable mode's request channel confirms: the confirm must find
		// a call, or it would wait in pc.early for ever.
		s.published(pc, &call{oneway: true, res: make(chan result, 1)}, dc.DeliveryTag)
	}
}
