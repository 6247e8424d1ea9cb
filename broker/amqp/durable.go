package amqp

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// Durable mode counts the failed deliveries of a request (trusted only
// from a copy a server republished, see failures), retries a failed one
// after a delay through a retry queue and dead-letters it after
// maxDeliveries. A redelivered one (RabbitMQ's redelivered flag: a server
// held it and died, lost its channel or stopped) is not served again at
// once: that earlier delivery counts as failed, and the request moves to
// the suspect queue, whose requests each run alone in the broker (no other
// handler runs meanwhile). So a request that crashes its server is
// dead-lettered after maxDeliveries deliveries and never blocks the
// requests behind it, and the requests a crash took with it are counted
// once, then run alone and are done.

// admit counts x's failed deliveries and reports whether it is to be
// served: a redelivered request is moved to the suspect queue (or
// dead-lettered when it has failed often enough) instead.
func (d *driver) admit(x *delivery) bool {
	x.failed = d.failures(x)
	if !x.Redelivered {
		return true
	}
	failed := x.failed + 1
	if failed >= d.b.cfg.maxDeliveries {
		d.reject(x, failed, errLost)
		return false
	}
	d.b.cfg.logger.Warn("amqp: delivery lost; moved to the suspect queue", "queue", d.queue, "id", x.MessageId,
		"deliveries", failed)
	d.republish(x, "", suspectQueue(d.queue), republishing(x, failed, errLost))
	return false
}

// isolationWait bounds how long a suspect waits for the lane and for the
// handlers running in its broker to finish before it runs anyway, and how
// long a handler waits for a suspect running alone (kernel.Lane).
const isolationWait = 5 * time.Second

// failures returns how many deliveries of d failed before this one, as
// counted by servers. The count travels in x-mqrpc-deliveries, and is read
// only from the suspect queue (which servers alone publish to) and from a
// delivery that came through retryExchange: an internal exchange, which
// clients cannot publish to. So a client cannot make a server dead-letter
// its request early (and a copy taken from a dead-letter queue and
// published again starts afresh). RabbitMQ's own counts are not used: on
// 3.10 a client may set x-death and x-delivery-count, and they come
// through (RabbitMQ even adds to a client's x-death count).
func (d *driver) failures(x *delivery) int {
	if !x.suspect && x.Exchange != retryExchange {
		return 0
	}
	return min(max(headerInt(x.Headers, headerFailures), 0), d.b.cfg.maxDeliveries)
}

// retry handles a failed delivery; failed counts the failed deliveries of
// the request, this one included. Fast mode drops it (or RabbitMQ
// dead-letters it if the queue arguments name a dead-letter exchange).
// Durable mode publishes a copy with the count to the retry queue of its
// delay, from which RabbitMQ dead-letters it back to the request queue
// through retryExchange once the delay passed; after maxDeliveries failures
// the copy goes to the dead-letter exchange instead. The original is
// acknowledged only once RabbitMQ confirmed the copy.
func (d *driver) retry(x *delivery, failed int, cause error) {
	b := d.b
	if !d.durable || failed >= b.cfg.maxDeliveries {
		d.reject(x, failed, cause)
		return
	}
	delay := b.cfg.retryDelay(failed)
	p := republishing(x, failed, cause)
	// Jittered down to half, so requests that failed together (those a
	// crash took with it) come back apart. The retry queue's own TTL is
	// the full delay; RabbitMQ expires messages at the queue's head, so
	// none waits much longer than that.
	p.Expiration = expiration(delay/2 + rand.N(delay/2+1))
	b.cfg.logger.Warn("amqp: delivery failed; retrying", "queue", d.queue, "id", x.MessageId,
		"deliveries", failed, "delay", delay, "err", cause)
	d.republish(x, "", retryQueue(d.queue, delay), p)
}

// reject dead-letters x at once (durable mode) or drops it (fast mode),
// for a request that will not succeed however often it is delivered:
// failed times, or malformed.
func (d *driver) reject(x *delivery, failed int, cause error) {
	b := d.b
	if !d.durable {
		b.cfg.logger.Warn("amqp: delivery failed; dropped", "queue", d.queue, "id", x.MessageId, "err", cause)
		_ = x.Nack(false, false)
		return
	}
	b.cfg.logger.Warn("amqp: delivery failed; dead-lettered", "queue", d.queue, "id", x.MessageId,
		"deliveries", failed, "err", cause)
	d.republish(x, b.cfg.dlx, d.queue, republishing(x, failed, cause))
}

// republishing is a persistent copy of x with its failure count and last
// error (its first line: a panic's stack stays in the log), and without an
// expiration (the deadline header stays).
func republishing(x *delivery, failed int, cause error) amqp091.Publishing {
	p := amqp091.Publishing{
		Headers:       make(amqp091.Table, len(x.Headers)+2),
		ContentType:   x.ContentType,
		DeliveryMode:  amqp091.Persistent,
		CorrelationId: x.CorrelationId,
		ReplyTo:       x.ReplyTo,
		MessageId:     x.MessageId,
		Timestamp:     x.Timestamp,
		Type:          x.Type,
		AppId:         x.AppId,
		Body:          x.Body,
	}
	for k, v := range x.Headers {
		p.Headers[k] = v
	}
	msg, _, _ := strings.Cut(cause.Error(), "\n")
	p.Headers[headerFailures] = int32(failed)
	p.Headers[headerError] = msg
	return p
}

// republish publishes p on x's channel, waits for RabbitMQ's confirm and
// then acknowledges x; if the copy is not confirmed, x goes back to the
// queue.
func (d *driver) republish(x *delivery, exchange, key string, p amqp091.Publishing) {
	b := d.b
	dc, err := x.channel().PublishWithDeferredConfirm(exchange, key, false, false, p)
	if err == nil && dc != nil {
		ctx, cancel := context.WithTimeout(b.ctx, b.cfg.dialTimeout)
		var ok bool
		ok, err = dc.WaitContext(ctx)
		cancel()
		if err == nil && !ok {
			err = errNack
		}
	}
	if err != nil {
		// RabbitMQ keeps the original and redelivers it (flagged
		// redelivered, so counted).
		b.cfg.logger.Warn("amqp: republish failed; requeued", "queue", d.queue, "id", x.MessageId, "err", err)
		_ = x.Nack(false, true)
		return
	}
	_ = x.Ack(false)
}

// retryDelay is the delay before the delivery that follows failed failed
// deliveries: retryMin, doubling up to retryMax.
func (c *config) retryDelay(failed int) time.Duration {
	d := c.retryMin
	for i := 1; i < failed && d < c.retryMax; i++ {
		d *= 2
	}
	return min(d, c.retryMax)
}

// suspectQueue names the suspect queue of queue.
func suspectQueue(queue string) string { return queue + ".suspect" }

// retryQueue names the retry queue of queue for delay.
func retryQueue(queue string, delay time.Duration) string {
	return queue + ".retry-" + strconv.FormatInt(delay.Milliseconds(), 10) + "ms"
}

// declareQueue declares a request queue: transient and auto-deleted in fast
// mode, durable (classic or quorum) in durable mode.
func (b *Broker) declareQueue(ch *amqp091.Channel, name string) error {
	args := make(amqp091.Table, len(b.cfg.queueArgs)+1)
	for k, v := range b.cfg.queueArgs {
		args[k] = v
	}
	var err error
	if b.cfg.durable {
		if b.cfg.queueType == QuorumQueue {
			args["x-queue-type"] = string(QuorumQueue)
		}
		_, err = ch.QueueDeclare(name, true, false, false, false, args)
	} else {
		_, err = ch.QueueDeclare(name, false, true, false, false, args)
	}
	if err != nil {
		return fmt.Errorf("declare queue %s: %w", name, err)
	}
	return nil
}

func (b *Broker) declareExchange(ch *amqp091.Channel) error {
	if err := ch.ExchangeDeclare(b.cfg.exchange, amqp091.ExchangeDirect, true, false, false, false, nil); err != nil {
		return fmt.Errorf("declare exchange %s: %w", b.cfg.exchange, err)
	}
	return nil
}

// declareRetry declares the retry queues of queue, one per delay a request
// may wait before its next delivery, and binds queue to the internal
// retryExchange through which they hand requests back. A retry queue's
// messages expire after its delay at most and are dead-lettered by
// RabbitMQ to retryExchange with queue as routing key. In quorum mode the
// retry queues are quorum queues too, dead-lettering at least once.
func (b *Broker) declareRetry(ch *amqp091.Channel, queue string) error {
	if err := ch.ExchangeDeclare(retryExchange, amqp091.ExchangeDirect, true, false, true, false, nil); err != nil {
		return fmt.Errorf("declare retry exchange %s: %w", retryExchange, err)
	}
	if err := ch.QueueBind(queue, queue, retryExchange, false, nil); err != nil {
		return fmt.Errorf("bind queue %s to retry exchange: %w", queue, err)
	}
	var suspectArgs amqp091.Table
	if b.cfg.queueType == QuorumQueue {
		suspectArgs = amqp091.Table{"x-queue-type": string(QuorumQueue)}
	}
	if _, err := ch.QueueDeclare(suspectQueue(queue), true, false, false, false, suspectArgs); err != nil {
		return fmt.Errorf("declare suspect queue %s: %w", suspectQueue(queue), err)
	}
	var last time.Duration
	for failed := 1; failed < b.cfg.maxDeliveries; failed++ {
		delay := b.cfg.retryDelay(failed)
		if delay == last {
			break // the delays have reached retryMax
		}
		last = delay
		args := amqp091.Table{
			"x-message-ttl":             delay.Milliseconds(),
			"x-dead-letter-exchange":    retryExchange,
			"x-dead-letter-routing-key": queue,
		}
		if b.cfg.queueType == QuorumQueue {
			args["x-queue-type"] = string(QuorumQueue)
			// At-least-once dead-lettering needs reject-publish.
			args["x-dead-letter-strategy"] = "at-least-once"
			args["x-overflow"] = "reject-publish"
		}
		name := retryQueue(queue, delay)
		if _, err := ch.QueueDeclare(name, true, false, false, false, args); err != nil {
			return fmt.Errorf("declare retry queue %s: %w", name, err)
		}
	}
	return nil
}

// declareDeadLetter declares the dead-letter exchange and the queue
// "<queue>.dead-letter" that keeps the failed requests of queue, on ch (or,
// for a quorum queue, first on a channel of its own on conn). In quorum
// mode the dead-letter queue is a quorum queue too: a classic queue lives
// on one node, and while that node is down every server's declaration of
// it fails ("home node ... is down"), so a server whose connection was lost
// with another node could not consume again until that node was back. A
// classic dead-letter queue an earlier version declared is kept (RabbitMQ
// refuses to redeclare it as a quorum queue), with a warning.
func (b *Broker) declareDeadLetter(conn *amqp091.Connection, ch *amqp091.Channel, queue string) error {
	if err := ch.ExchangeDeclare(b.cfg.dlx, amqp091.ExchangeDirect, true, false, false, false, nil); err != nil {
		return fmt.Errorf("declare dead-letter exchange %s: %w", b.cfg.dlx, err)
	}
	dlq := queue + ".dead-letter"
	classic := true
	if b.cfg.queueType == QuorumQueue {
		// On a channel of its own: a refused declaration closes it.
		err := withChannel(conn, func(qch *amqp091.Channel) error {
			_, err := qch.QueueDeclare(dlq, true, false, false, false, amqp091.Table{"x-queue-type": string(QuorumQueue)})
			return err
		})
		var aerr *amqp091.Error
		switch {
		case err == nil:
			classic = false
		case errors.As(err, &aerr) && aerr.Code == amqp091.PreconditionFailed:
			b.cfg.logger.Warn("amqp: the dead-letter queue is a classic queue, on one node: while that node is down, "+
				"servers cannot consume again after a lost connection; delete it (once empty) to have it declared "+
				"as a quorum queue", "queue", dlq, "err", aerr.Reason)
		default:
			return fmt.Errorf("declare dead-letter queue %s: %w", dlq, err)
		}
	}
	if classic {
		if _, err := ch.QueueDeclare(dlq, true, false, false, false, nil); err != nil {
			return fmt.Errorf("declare dead-letter queue %s: %w", dlq, err)
		}
	}
	if err := ch.QueueBind(dlq, queue, b.cfg.dlx, false, nil); err != nil {
		return fmt.Errorf("bind dead-letter queue %s: %w", dlq, err)
	}
	return nil
}
