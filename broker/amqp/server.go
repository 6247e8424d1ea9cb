package amqp

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
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

// consumer is one consumer of a subscription on its own channel, and in
// durable mode a second one, of the suspect queue, on another channel.
type consumer struct {
	ch         *amqp091.Channel
	tag        string
	deliveries <-chan amqp091.Delivery

	sch      *amqp091.Channel // nil in fast mode
	stag     string
	suspects <-chan amqp091.Delivery
	// syncMu serializes synchronous methods on ch and sch (amqp091-go
	// does not pair concurrent ones with their replies).
	syncMu *sync.Mutex
}

// barrier returns once RabbitMQ has processed everything sent on c's
// channels before (the acknowledgements above all): a synchronous method
// on a channel is answered after the methods before it. A suspect runs
// only after it, so a crash it causes cannot undo an acknowledgement that
// was still on its way (RabbitMQ would redeliver that request again).
func (c consumer) barrier(prefetch int) {
	c.syncMu.Lock()
	defer c.syncMu.Unlock()
	_ = c.ch.Qos(prefetch, 0, false)
	_ = c.sch.Qos(1, 0, false)
}

// cancel cancels c's consumers.
func (c consumer) cancel() {
	c.syncMu.Lock()
	defer c.syncMu.Unlock()
	_ = c.ch.Cancel(c.tag, false)
	if c.sch != nil {
		_ = c.sch.Cancel(c.stag, false)
	}
}

// close closes the consumer's channels.
func (c consumer) close() {
	_ = c.ch.Close()
	if c.sch != nil {
		_ = c.sch.Close()
	}
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
			if err := b.declareRetry(ch, sub.queue); err != nil {
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
	c := consumer{ch: ch, tag: tag, deliveries: deliveries, syncMu: new(sync.Mutex)}
	if b.cfg.durable {
		if err := sub.consumeSuspects(s, &c); err != nil {
			_ = ch.Close()
			return consumer{}, err
		}
	}
	return c, nil
}

// consumeSuspects opens c's second channel, in confirm mode, and consumes
// the suspect queue on it one request at a time (prefetch 1): a suspect
// runs alone in the broker (handle), so if it crashes the process again,
// it is the one request of the queue it lost while running.
func (sub *subscription) consumeSuspects(s *session, c *consumer) error {
	ch, err := s.conn.Channel()
	if err != nil {
		return fmt.Errorf("%w: open channel: %w", broker.ErrDisconnected, err)
	}
	q := suspectQueue(sub.queue)
	tag := "mqrpc-" + broker.NewID()
	deliveries, err := func() (<-chan amqp091.Delivery, error) {
		if err := ch.Confirm(false); err != nil {
			return nil, fmt.Errorf("confirm mode: %w", err)
		}
		if err := ch.Qos(1, 0, false); err != nil {
			return nil, fmt.Errorf("qos 1: %w", err)
		}
		d, err := ch.Consume(q, tag, false, false, false, false, nil)
		if err != nil {
			return nil, fmt.Errorf("consume %s: %w", q, err)
		}
		return d, nil
	}()
	if err != nil {
		_ = ch.Close()
		return err
	}
	c.sch, c.stag, c.suspects = ch, tag, deliveries
	return nil
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
		wait, stopped := sub.consume(c)
		if stopped {
			// Drain: no new deliveries, and the handlers acknowledge on
			// the channel, so it closes after them; closing it returns
			// deliveries prefetched but not started to the queue.
			c.cancel()
			wait()
			c.close()
			sub.handlers.Done()
			return
		}
		// The channel or connection is gone (or the queue was deleted):
		// its handlers finish on their own, and it is closed after them.
		b.wg.Add(1)
		go func(c consumer) {
			defer b.wg.Done()
			wait()
			c.close()
			sub.handlers.Done()
		}(c)
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

// consume serves c's deliveries on a dispatch pool until a delivery
// channel closes (stopped false) or Stop or Close (stopped true). The pool's
// goroutines receive deliveries and handle them themselves, so under load a
// delivery costs no goroutine start and no hand-off; the pool bounds the
// handlers running at once to the concurrency. Suspects are served one at a
// time by a goroutine of their own. wait returns once the handlers of c are
// done: the channels they acknowledge on may close then.
func (sub *subscription) consume(c consumer) (wait func(), stopped bool) {
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
	pool := dispatch.Start(sub.concurrency, recv, func(d amqp091.Delivery) { sub.handle(c.ch, &d, false) })
	var suspects sync.WaitGroup
	if c.suspects != nil {
		suspects.Add(1)
		go func() {
			defer suspects.Done()
			for {
				select {
				case d, ok := <-c.suspects:
					if !ok {
						lostOnce.Do(func() { close(lost) })
						return
					}
					select {
					case <-stop:
						return // not started: closing the channel requeues it
					default:
					}
					// Alone in the broker, and after every
					// acknowledgement sent so far was processed.
					release := sub.b.isolate.alone(isolationWait)
					c.barrier(sub.prefetch)
					sub.handle(c.sch, &d, true)
					release()
				case <-stop:
					return
				case <-lost:
					return
				}
			}
		}()
	}
	wait = func() {
		pool.Wait()
		suspects.Wait()
	}
	select {
	case <-lost:
		return wait, false
	case <-stop:
		return wait, true
	}
}

// handle serves one delivery, of the request queue or (suspect true) of
// the suspect queue, and acknowledges it after the reply was published.
//
// In durable mode a delivery counts its failed deliveries so far (trusted
// only from a copy a server republished, see failures). A redelivered one
// (RabbitMQ's redelivered flag: a server held it and died, lost its
// channel or stopped) is not served again at once: that earlier delivery
// counts as failed, and the request moves to the suspect queue, whose
// requests each run alone in the broker (no other handler runs meanwhile).
// So a request that crashes its server is dead-lettered after
// maxDeliveries deliveries and never blocks the requests behind it, and
// the requests a crash took with it are counted once, then run alone and
// are done.
func (sub *subscription) handle(ch *amqp091.Channel, d *amqp091.Delivery, suspect bool) {
	b := sub.b
	durable := b.cfg.durable
	failed := 0
	if durable {
		failed = sub.failures(d, suspect)
		if !suspect {
			// A suspect waits until this delivery is settled.
			b.isolate.enter(isolationWait)
			defer b.isolate.leave()
		}
	}
	// Handlers do not keep a request after they return (broker.Handler),
	// so the message and its header map are reused from request to
	// request.
	m := msgpool.Get()
	defer msgpool.Put(m)
	if err := decodeDelivery(m, d); err != nil {
		// A malformed request never gets better: no retry.
		sub.reject(ch, d, failed+1, err)
		return
	}
	m.Subject = sub.subject
	now := time.Now()
	if durable && d.Redelivered {
		failed++
	}
	if m.Expired(now) {
		if failed > 0 {
			// It failed before: keep it for inspection rather than
			// drop it silently.
			sub.reject(ch, d, failed, fmt.Errorf("deadline passed after %d failed deliveries", failed))
			return
		}
		b.cfg.logger.Debug("amqp: dropped expired request", "queue", sub.queue, "id", m.ID)
		_ = d.Ack(false)
		return
	}
	if durable && d.Redelivered {
		if failed >= b.cfg.maxDeliveries {
			sub.reject(ch, d, failed, errLost)
			return
		}
		b.cfg.logger.Warn("amqp: delivery lost; moved to the suspect queue", "queue", sub.queue, "id", d.MessageId,
			"deliveries", failed)
		sub.republish(ch, d, "", suspectQueue(sub.queue), republishing(d, failed, errLost))
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
		sub.retry(ch, d, failed+1, err)
		return
	}
	if reply != nil && d.ReplyTo != "" {
		if len(reply.Body) > b.cfg.maxSize {
			sub.retry(ch, d, failed+1, fmt.Errorf("reply: %w: %d bytes, limit %d", broker.ErrMessageTooLarge, len(reply.Body), b.cfg.maxSize))
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
			// redelivers it (flagged redelivered: counted).
			_ = d.Nack(false, durable)
			return
		}
	}
	if err := d.Ack(false); err != nil {
		b.cfg.logger.Warn("amqp: ack failed", "queue", sub.queue, "id", m.ID, "err", err)
	}
}

// isolationWait bounds how long a suspect waits for the handlers running
// in its broker to finish before it runs anyway, and how long a handler
// waits for a suspect running alone (see isolation).
const isolationWait = 5 * time.Second

// errLost is the failure of a delivery RabbitMQ redelivered: the server
// that held it died, lost its channel or stopped before acknowledging it.
var errLost = errors.New("delivery lost with its server (crashed, disconnected or stopped)")

// failures returns how many deliveries of d failed before this one, as
// counted by servers. The count travels in x-mqrpc-deliveries, and is read
// only from the suspect queue (which servers alone publish to) and from a
// delivery that came through retryExchange: an internal exchange, which
// clients cannot publish to. So a client cannot make a server dead-letter
// its request early (and a copy taken from a dead-letter queue and
// published again starts afresh). RabbitMQ's own counts are not used: on
// 3.10 a client may set x-death and x-delivery-count, and they come
// through (RabbitMQ even adds to a client's x-death count).
func (sub *subscription) failures(d *amqp091.Delivery, suspect bool) int {
	if !suspect && d.Exchange != retryExchange {
		return 0
	}
	return min(max(headerInt(d.Headers, headerFailures), 0), sub.b.cfg.maxDeliveries)
}

func serveSafely(ctx context.Context, h broker.Handler, m *broker.Message) (reply *broker.Message, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("handler panicked: %v", r)
		}
	}()
	return h.ServeMessage(ctx, m)
}

// retry handles a failed delivery; failed counts the failed deliveries of
// the request, this one included. Fast mode drops it (or RabbitMQ
// dead-letters it if the queue arguments name a dead-letter exchange).
// Durable mode publishes a copy with the count to the retry queue of its
// delay, from which RabbitMQ dead-letters it back to the request queue
// through retryExchange once the delay passed; after maxDeliveries failures
// the copy goes to the dead-letter exchange instead. The original is
// acknowledged only once RabbitMQ confirmed the copy.
func (sub *subscription) retry(ch *amqp091.Channel, d *amqp091.Delivery, failed int, cause error) {
	b := sub.b
	if !b.cfg.durable {
		b.cfg.logger.Warn("amqp: delivery failed; dropped", "queue", sub.queue, "id", d.MessageId, "err", cause)
		_ = d.Nack(false, false)
		return
	}
	if failed >= b.cfg.maxDeliveries {
		sub.reject(ch, d, failed, cause)
		return
	}
	delay := b.cfg.retryDelay(failed)
	p := republishing(d, failed, cause)
	// Jittered down to half, so requests that failed together (those a
	// crash took with it) come back apart. The retry queue's own TTL is
	// the full delay; RabbitMQ expires messages at the queue's head, so
	// none waits much longer than that.
	p.Expiration = expiration(delay/2 + rand.N(delay/2+1))
	b.cfg.logger.Warn("amqp: delivery failed; retrying", "queue", sub.queue, "id", d.MessageId,
		"deliveries", failed, "delay", delay, "err", cause)
	sub.republish(ch, d, "", retryQueue(sub.queue, delay), p)
}

// reject dead-letters d at once (durable mode) or drops it (fast mode),
// for a request that will not succeed however often it is delivered:
// failed times, or malformed.
func (sub *subscription) reject(ch *amqp091.Channel, d *amqp091.Delivery, failed int, cause error) {
	b := sub.b
	if !b.cfg.durable {
		b.cfg.logger.Warn("amqp: delivery failed; dropped", "queue", sub.queue, "id", d.MessageId, "err", cause)
		_ = d.Nack(false, false)
		return
	}
	b.cfg.logger.Warn("amqp: delivery failed; dead-lettered", "queue", sub.queue, "id", d.MessageId,
		"deliveries", failed, "err", cause)
	sub.republish(ch, d, b.cfg.dlx, sub.queue, republishing(d, failed, cause))
}

// republishing is a persistent copy of d with its failure count and last
// error, and without an expiration (the deadline header stays).
func republishing(d *amqp091.Delivery, failed int, cause error) amqp091.Publishing {
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
	p.Headers[headerFailures] = int32(failed)
	p.Headers[headerError] = cause.Error()
	return p
}

// republish publishes p on ch, waits for RabbitMQ's confirm and then
// acknowledges d; if the copy is not confirmed, d goes back to the queue.
func (sub *subscription) republish(ch *amqp091.Channel, d *amqp091.Delivery, exchange, key string, p amqp091.Publishing) {
	b := sub.b
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
		// RabbitMQ keeps the original and redelivers it (flagged
		// redelivered, so counted).
		b.cfg.logger.Warn("amqp: republish failed; requeued", "queue", sub.queue, "id", d.MessageId, "err", err)
		_ = d.Nack(false, true)
		return
	}
	_ = d.Ack(false)
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
