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
const CancelExchange = "mqrpc.cancel"

// consumeCancels declares CancelExchange and a queue of the channel's own
// bound to it for subject, and consumes it without acknowledgements.
func consumeCancels(ch *amqp091.Channel, subject string) (<-chan amqp091.Delivery, error) {
	if err := declareCancel(ch); err != nil {
		return nil, err
	}
	q, err := ch.QueueDeclare("", false, true, true, false, nil)
	if err != nil {
		return nil, fmt.Errorf("declare cancel queue: %w", err)
	}
	if err := ch.QueueBind(q.Name, subject, CancelExchange, false, nil); err != nil {
		return nil, fmt.Errorf("bind cancel queue for %s: %w", subject, err)
	}
	d, err := ch.Consume(q.Name, "", true, true, false, false, nil)
	if err != nil {
		return nil, fmt.Errorf("consume cancel queue: %w", err)
	}
	return d, nil
}

func declareCancel(ch *amqp091.Channel) error {
	if err := ch.ExchangeDeclare(CancelExchange, amqp091.ExchangeDirect, true, false, false, false, nil); err != nil {
		return fmt.Errorf("declare exchange %s: %w", CancelExchange, err)
	}
	return nil
}

// cancelKey marks CancelExchange declared in session.declared.
const cancelKey = "\x00cancel"

// notifyCancel tells the servers of subject that the caller of request id
// gave up. It is best effort: skipped while RabbitMQ blocks the connection
// (a publish would hang) and when the exchange cannot be declared; a
// server that has not started the request yet serves it.
func (b *Broker) notifyCancel(s *session, subject, id string) {
	if s.blocked.Load() {
		return
	}
	if err := s.declareOnce(cancelKey, declareCancel); err != nil {
		b.cfg.logger.Warn("amqp: cancel notice not sent", "subject", subject, "id", id, "err", err)
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
