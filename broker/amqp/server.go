package amqp

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/kernel/deliveryctx"
	"github.com/mqrpc/mqrpc/broker/kernel/dispatch"
	"github.com/mqrpc/mqrpc/broker/kernel/msgpool"
)

// Serve implements broker.Broker. It declares the request queue, sets the
// prefetch to the concurrency (or WithPrefetch) and consumes with manual
// acknowledgement: a request is acknowledged after its handler returned and
// its reply was published. A request whose deadline has passed is dropped
// without reaching h. A handler that returns an error or panics fails the
// delivery: fast mode drops it, durable mode retries it and finally
// dead-letters it (WithDeadLetter). The queue and consumer are re-created
// after a reconnection.
//
// On the default exchange the queue is named after the subject and
// broker.WithQueue has no effect: all servers of a subject compete on that
// queue. With WithExchange the queue is named ServeConfig.Queue and bound to
// the exchange with the subject as routing key, so servers with different
// queue names each get a copy of every request.
func (b *Broker) Serve(subject string, h broker.Handler, opts ...broker.ServeOption) (broker.Subscription, error) {
	cfg := broker.NewServeConfig(subject, opts...)
	if subject == "" {
		return nil, errors.New("amqp: serve: empty subject")
	}
	if b.cfg.exchange == "" {
		// The default exchange routes by queue name only, so every server
		// of a subject competes on the subject's queue; a queue group of
		// another name needs WithExchange to be bound.
		cfg.Queue = subject
	}
	prefetch := b.cfg.prefetch
	if prefetch < 1 {
		prefetch = cfg.Concurrency
	}
	sub := &subscription{
		b:           b,
		subject:     subject,
		queue:       cfg.Queue,
		h:           h,
		prefetch:    prefetch,
		concurrency: cfg.Concurrency,
		done:        make(chan struct{}),
	}
	sub.ctx, sub.cancel = context.WithCancel(b.ctx)
	ctx, cancel := context.WithTimeout(b.ctx, b.cfg.dialTimeout)
	defer cancel()
	s, err := b.session(ctx)
	if err != nil {
		return nil, fmt.Errorf("amqp: serve %s: %w", subject, err)
	}
	c, err := sub.setup(s)
	if err != nil {
		sub.cancel()
		return nil, fmt.Errorf("amqp: serve %s: %w", subject, err)
	}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		sub.cancel()
		_ = c.ch.Close()
		return nil, fmt.Errorf("amqp: serve %s: %w", subject, broker.ErrClosed)
	}
	b.wg.Add(1)
	b.mu.Unlock()
	go sub.run(c)
	return sub, nil
}

// subscription is one Serve: a consumer on its own channel, re-created
// after connection or channel loss until Stop or Close.
type subscription struct {
	b              *Broker
	subject, queue string
	h              broker.Handler
	prefetch       int
	concurrency    int            // handlers running at once, at most
	handlers       sync.WaitGroup // every consumer's pool and channel, across reconnections

	// ctx ends with Stop or Close and bounds resuming; handlers' contexts
	// derive from the broker's instead, since Stop drains them.
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{} // closed when the consumer and all handlers ended
}

var _ broker.Subscription = (*subscription)(nil)

// Stop implements broker.Subscription. It cancels the consumer, waits for
// the handlers in flight to finish and acknowledge, then closes the channel,
// which hands prefetched requests that were not started back to RabbitMQ
// for other servers. In fast mode the auto-delete queue disappears with its
// last server, and requests still in it with it.
func (sub *subscription) Stop(ctx context.Context) error {
	sub.cancel()
	select {
	case <-sub.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("amqp: stop %s: %w", sub.subject, ctx.Err())
	}
}

// consumer is one consumer of a subscription on its own channel.
type consumer struct {
	ch         *amqp091.Channel
	tag        string
	deliveries <-chan amqp091.Delivery
}

// setup opens a channel on s and declares and consumes the queue.
func (sub *subscription) setup(s *session) (consumer, error) {
	b := sub.b
	ch, err := s.conn.Channel()
	if err != nil {
		return consumer{}, fmt.Errorf("%w: open channel: %w", broker.ErrDisconnected, err)
	}
	tag := "mqrpc-" + broker.NewID()
	deliveries, err := func() (<-chan amqp091.Delivery, error) {
		if b.cfg.durable {
			// Confirms make republishing a failed request (retry or dead
			// letter) safe before the original is acknowledged.
			if err := ch.Confirm(false); err != nil {
				return nil, fmt.Errorf("confirm mode: %w", err)
			}
		}
		if err := b.declareQueue(ch, sub.queue); err != nil {
			return nil, err
		}
		if b.cfg.exchange != "" {
			if err := b.declareExchange(ch); err != nil {
				return nil, err
			}
			if err := ch.QueueBind(sub.queue, sub.subject, b.cfg.exchange, false, nil); err != nil {
				return nil, fmt.Errorf("bind queue %s to exchange %s: %w", sub.queue, b.cfg.exchange, err)
			}
		}
		if b.cfg.durable {
			if err := b.declareDeadLetter(ch, sub.queue); err != nil {
				return nil, err
			}
		}
		if err := ch.Qos(sub.prefetch, 0, false); err != nil {
			return nil, fmt.Errorf("qos %d: %w", sub.prefetch, err)
		}
		d, err := ch.Consume(sub.queue, tag, false, false, false, false, nil)
		if err != nil {
			return nil, fmt.Errorf("consume %s: %w", sub.queue, err)
		}
		return d, nil
	}()
	if err != nil {
		_ = ch.Close()
		return consumer{}, err
	}
	return consumer{ch: ch, tag: tag, deliveries: deliveries}, nil
}

// run consumes until Stop or Close, resuming after losses.
func (sub *subscription) run(c consumer) {
	b := sub.b
	defer b.wg.Done()
	defer close(sub.done)
	// Stop returns only when the handlers of lost channels are done too.
	defer sub.handlers.Wait()
	defer sub.cancel()
	for {
		sub.handlers.Add(1) // done when the pool and the channel are
		pool, stopped := sub.consume(c)
		if stopped {
			// Drain: no new deliveries, and the handlers acknowledge on
			// the channel, so it closes after them; closing it returns
			// deliveries prefetched but not started to the queue.
			_ = c.ch.Cancel(c.tag, false)
			pool.Wait()
			_ = c.ch.Close()
			sub.handlers.Done()
			return
		}
		// The channel or connection is gone (or the queue was deleted):
		// its handlers finish on their own, and it is closed after them.
		b.wg.Add(1)
		go func(ch *amqp091.Channel) {
			defer b.wg.Done()
			pool.Wait()
			_ = ch.Close()
			sub.handlers.Done()
		}(c.ch)
		b.cfg.logger.Warn("amqp: consumer lost; resuming", "queue", sub.queue)
		for attempt := 0; ; attempt++ {
			if !sleepCtx(sub.ctx, backoff(b.cfg.minBackoff, b.cfg.maxBackoff, attempt)) {
				return
			}
			s, err := b.session(sub.ctx)
			if err != nil {
				return
			}
			if c, err = sub.setup(s); err == nil {
				b.cfg.logger.Info("amqp: consumer resumed", "queue", sub.queue)
				break
			}
			b.cfg.logger.Warn("amqp: resume consumer failed", "queue", sub.queue, "attempt", attempt+1, "err", err)
		}
	}
}

// consume serves c's deliveries on a dispatch pool until the delivery
// channel closes (stopped false) or Stop or Close (stopped true). The pool's
// goroutines receive deliveries and handle them themselves, so under load a
// delivery costs no goroutine start and no hand-off; the pool bounds the
// handlers running at once to the concurrency. Its Wait returns once the
// handlers of c are done: the channel they acknowledge on may close then.
func (sub *subscription) consume(c consumer) (pool *dispatch.Pool[amqp091.Delivery], stopped bool) {
	lost := make(chan struct{})
	var lostOnce sync.Once
	// sub.ctx ends with Stop and with Close.
	stop := sub.ctx.Done()
	recv := func() (amqp091.Delivery, bool) {
		select {
		case d, ok := <-c.deliveries:
			if !ok {
				lostOnce.Do(func() { close(lost) })
				return d, false
			}
			select {
			case <-stop:
				// Not started: closing the channel requeues it.
				return d, false
			default:
				return d, true
			}
		case <-stop:
			return amqp091.Delivery{}, false
		}
	}
	pool = dispatch.Start(sub.concurrency, recv, func(d amqp091.Delivery) { sub.handle(c.ch, &d) })
	select {
	case <-lost:
		return pool, false
	case <-stop:
		return pool, true
	}
}

// handle serves one delivery and acknowledges it after the reply was
// published.
func (sub *subscription) handle(ch *amqp091.Channel, d *amqp091.Delivery) {
	b := sub.b
	// Handlers do not keep a request after they return (broker.Handler),
	// so the message and its header map are reused from request to
	// request.
	m := msgpool.Get()
	defer msgpool.Put(m)
	if err := decodeDelivery(m, d); err != nil {
		sub.fail(ch, d, err)
		return
	}
	m.Subject = sub.subject
	now := time.Now()
	if m.Expired(now) {
		b.cfg.logger.Debug("amqp: dropped expired request", "queue", sub.queue, "id", m.ID)
		_ = d.Ack(false)
		return
	}
	ctx := b.ctx
	if !m.Deadline.IsZero() {
		dc := deliveryctx.New(ctx, m.Deadline)
		defer dc.Release()
		ctx = dc
	}
	reply, err := serveSafely(ctx, sub.h, m)
	if err != nil {
		sub.fail(ch, d, err)
		return
	}
	if reply != nil && d.ReplyTo != "" {
		if len(reply.Body) > b.cfg.maxSize {
			sub.fail(ch, d, fmt.Errorf("reply: %w: %d bytes, limit %d", broker.ErrMessageTooLarge, len(reply.Body), b.cfg.maxSize))
			return
		}
		// A reply has a message_id only when the handler gave it an ID,
		// as on the other brokers: nothing deduplicates replies.
		p := toReply(reply)
		// Plain clients (the RabbitMQ tutorial's) set only correlation_id;
		// some set only message_id.
		p.CorrelationId = d.CorrelationId
		if p.CorrelationId == "" {
			p.CorrelationId = d.MessageId
		}
		if err := ch.Publish("", d.ReplyTo, false, false, p); err != nil {
			b.cfg.logger.Warn("amqp: publish reply failed", "queue", sub.queue, "id", m.ID, "err", err)
			// The channel is gone or the reply is malformed; either way
			// the request is not acknowledged, so a durable queue
			// redelivers it.
			_ = d.Nack(false, b.cfg.durable)
			return
		}
	}
	if err := d.Ack(false); err != nil {
		b.cfg.logger.Warn("amqp: ack failed", "queue", sub.queue, "id", m.ID, "err", err)
	}
}

func serveSafely(ctx context.Context, h broker.Handler, m *broker.Message) (reply *broker.Message, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("handler panicked: %v", r)
		}
	}()
	return h.ServeMessage(ctx, m)
}

// fail handles a failed delivery. Fast mode drops it (or RabbitMQ
// dead-letters it if the queue arguments name a dead-letter exchange).
// Durable mode republishes it with its failure count, and after
// maxDeliveries failures publishes it to the dead-letter exchange with the
// error; the original is acknowledged only once RabbitMQ confirmed the copy.
func (sub *subscription) fail(ch *amqp091.Channel, d *amqp091.Delivery, cause error) {
	b := sub.b
	if !b.cfg.durable {
		b.cfg.logger.Warn("amqp: delivery failed; dropped", "queue", sub.queue, "id", d.MessageId, "err", cause)
		_ = d.Nack(false, false)
		return
	}
	n := headerInt(d.Headers, headerFailures) + 1
	p := amqp091.Publishing{
		Headers:       make(amqp091.Table, len(d.Headers)+2),
		ContentType:   d.ContentType,
		DeliveryMode:  amqp091.Persistent,
		CorrelationId: d.CorrelationId,
		ReplyTo:       d.ReplyTo,
		MessageId:     d.MessageId,
		Timestamp:     d.Timestamp,
		Type:          d.Type,
		AppId:         d.AppId,
		Body:          d.Body,
	}
	for k, v := range d.Headers {
		p.Headers[k] = v
	}
	p.Headers[headerFailures] = int32(n)
	exchange, key := "", sub.queue
	if n >= b.cfg.maxDeliveries {
		exchange = b.cfg.dlx
		p.Headers[headerError] = cause.Error()
		b.cfg.logger.Warn("amqp: delivery failed; dead-lettered", "queue", sub.queue, "id", d.MessageId, "deliveries", n, "err", cause)
	} else {
		// The remaining time, not the original TTL, is what is left.
		if dl, _ := broker.ParseDeadline(headerStringOf(d.Headers, broker.HeaderDeadline)); !dl.IsZero() {
			left := time.Until(dl)
			if left <= 0 {
				_ = d.Ack(false) // expired: nobody waits for it
				return
			}
			p.Expiration = strconv.FormatInt(int64(left/time.Millisecond)+1, 10)
		}
		b.cfg.logger.Warn("amqp: delivery failed; requeued", "queue", sub.queue, "id", d.MessageId, "deliveries", n, "err", cause)
	}
	dc, err := ch.PublishWithDeferredConfirm(exchange, key, false, false, p)
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
		// RabbitMQ keeps the original and redelivers it.
		b.cfg.logger.Warn("amqp: republish failed; requeued", "queue", sub.queue, "id", d.MessageId, "err", err)
		_ = d.Nack(false, true)
		return
	}
	_ = d.Ack(false)
}

func headerStringOf(t amqp091.Table, name string) string {
	s, _ := headerString(t[name])
	return s
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

// declareDeadLetter declares the dead-letter exchange and the queue
// "<queue>.dead-letter" that keeps the failed requests of queue.
func (b *Broker) declareDeadLetter(ch *amqp091.Channel, queue string) error {
	if err := ch.ExchangeDeclare(b.cfg.dlx, amqp091.ExchangeDirect, true, false, false, false, nil); err != nil {
		return fmt.Errorf("declare dead-letter exchange %s: %w", b.cfg.dlx, err)
	}
	dlq := queue + ".dead-letter"
	if _, err := ch.QueueDeclare(dlq, true, false, false, false, nil); err != nil {
		return fmt.Errorf("declare dead-letter queue %s: %w", dlq, err)
	}
	if err := ch.QueueBind(dlq, queue, b.cfg.dlx, false, nil); err != nil {
		return fmt.Errorf("bind dead-letter queue %s: %w", dlq, err)
	}
	return nil
}
