package amqp

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/kernel"
)

// Serve implements broker.Broker. It declares the request queue, sets the
// prefetch to the concurrency (or WithPrefetch) and consumes with manual
// acknowledgement: a request is acknowledged after its handler returned and
// its reply was published. A request whose deadline has passed is dropped
// without reaching h. A handler that returns an error or panics fails the
// delivery: fast mode drops it, durable mode retries it and finally
// dead-letters it (WithDeadLetter). The queue and consumer are re-created
// after a reconnection. A caller's cancel notice (see Request) cancels the
// ctx of its request's handler. Replies go out on the Broker's reply
// connection, which the first Serve opens.
//
// Stop cancels the consumer, waits for the handlers in flight to finish and
// acknowledge, then closes the channel, which hands prefetched requests
// that were not started back to RabbitMQ for other servers; past its ctx,
// the callers in flight get the handler's reply to an Unavailable
// rejection at once. In fast mode the auto-delete queue disappears with
// its last server, and requests still in it with it.
//
// On the default exchange the queue is named after the subject and
// broker.WithQueue has no effect: all servers of a subject compete on that
// queue. With WithExchange the queue is named ServeConfig.Queue and bound to
// the exchange with the subject as routing key, so servers with different
// queue names each get a copy of every request.
func (b *Broker) Serve(subject string, h broker.Handler, opts ...broker.ServeOption) (broker.Subscription, error) {
	cfg := broker.NewServeConfig(subject, opts...)
	if subject == "" || h == nil {
		return nil, fmt.Errorf("amqp: serve %q: empty subject or nil handler", subject)
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
	b.rep.start()
	d := &driver{b: b, subject: subject, queue: cfg.Queue, prefetch: prefetch, durable: b.cfg.durable}
	d.setup = d.setupServe
	return b.serve(d, h, cfg, "serve")
}

// serve starts d, whose setup is set, as a kernel subscription.
func (b *Broker) serve(d *driver, h broker.Handler, cfg broker.ServeConfig, op string) (broker.Subscription, error) {
	d.ctx, d.cancel = context.WithCancel(b.ctx)
	ctx, cancel := context.WithTimeout(b.ctx, b.cfg.dialTimeout)
	defer cancel()
	s, err := b.session(ctx)
	if err != nil {
		d.cancel()
		return nil, fmt.Errorf("amqp: %s %s: %w", op, d.subject, err)
	}
	c, err := d.setup(s)
	if err != nil {
		d.cancel()
		return nil, fmt.Errorf("amqp: %s %s: %w", op, d.subject, err)
	}
	d.cur.Store(c)
	sub := kernel.Serve[*delivery](d, d.subject, h, cfg, kernel.Options{Name: "amqp", Log: b.cfg.logger, Streamer: b})
	d.sub.Store(sub)
	d.mu.Lock()
	if d.ctx.Err() == nil {
		d.watchCancels(c)
	}
	d.mu.Unlock()
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		sub.Abort()
		sub.Wait()
		d.wg.Wait()
		return nil, fmt.Errorf("amqp: %s %s: %w", op, d.subject, broker.ErrClosed)
	}
	b.subs[d] = struct{}{}
	b.mu.Unlock()
	return sub, nil
}

// delivery is one AMQP delivery as the kernel serves it, with the
// consumer it came from. Deliveries are pooled: the kernel settles each
// once, last.
type delivery struct {
	amqp091.Delivery
	c       *consumer
	suspect bool   // from the suspect queue: runs alone
	failed  int    // durable: failed deliveries before this one
	release func() // durable: leaves Broker.lane
}

var deliveryPool = sync.Pool{New: func() any { return new(delivery) }}

// channel is the channel d came on, which its settlement and a reply to
// its own node use.
func (x *delivery) channel() *amqp091.Channel {
	if x.suspect {
		return x.c.sch
	}
	return x.c.ch
}

// driver is the wire of one subscription (Serve or ServeEach), a
// kernel.Driver: it receives from its current consumer and re-creates the
// consumer after a loss, until the subscription stops.
type driver struct {
	b              *Broker
	subject, queue string
	prefetch       int
	durable        bool // durable mode's failure counts, retries and suspects
	autoAck        bool // ServeEach: nothing to settle
	setup          func(*session) (*consumer, error)
	sub            atomic.Pointer[kernel.Subscription[*delivery]]

	// ctx ends with Drain, Abort or Close: no new deliveries, no resuming.
	ctx    context.Context
	cancel context.CancelFunc
	stop   sync.Once
	wg     sync.WaitGroup // lanes and channel closers; no Add once ctx ended

	cur      atomic.Pointer[consumer]
	resuming sync.Mutex // held by the one who replaces a lost consumer
	mu       sync.Mutex // orders halt and a resume's end
}

var (
	_ kernel.Driver[*delivery]       = (*driver)(nil)
	_ kernel.CauseSettler[*delivery] = (*driver)(nil)
	_ kernel.Flusher                 = (*driver)(nil)
)

// Next implements kernel.Driver. In durable mode it also takes suspects,
// each once no other handler of the broker runs, and moves a redelivered
// request to the suspect queue instead of handing it out (admit).
func (d *driver) Next(ctx context.Context) (*delivery, bool) {
	for {
		c := d.current()
		if c == nil {
			return nil, false
		}
		var m amqp091.Delivery
		var ok, suspect bool
		select {
		case m, ok = <-c.deliveries:
		case m, ok = <-c.suspects: // nil but in durable mode
			suspect = true
		case <-c.lost:
			continue
		case <-d.ctx.Done():
			return nil, false
		case <-ctx.Done():
			return nil, false
		}
		if !ok {
			c.lose()
			continue
		}
		if x := d.take(c, &m, suspect); x != nil {
			return x, true
		}
	}
}

// take makes m a delivery to hand out, or settles it here: nil when the
// consumer is ending (m was not started: closing the channel requeues it)
// or when admit moved it.
func (d *driver) take(c *consumer, m *amqp091.Delivery, suspect bool) *delivery {
	if !c.hold() {
		return nil
	}
	x := deliveryPool.Get().(*delivery)
	*x = delivery{Delivery: *m, c: c, suspect: suspect}
	if !d.durable {
		return x
	}
	if suspect {
		// Alone in the broker, and after every acknowledgement sent so
		// far was processed. A wait that ran out runs it all the same.
		x.release, _, _ = d.b.lane.Enter(context.Background(), isolationWait)
		c.barrier(d.prefetch)
	} else {
		// A suspect waits until this delivery is settled.
		x.release = d.b.lane.Shared(context.Background(), isolationWait)
	}
	if !d.admit(x) {
		d.done(x)
		return nil
	}
	return x
}

// current returns the live consumer, resuming after a loss (one caller
// resumes, the others wait for it), or nil once the subscription stopped.
func (d *driver) current() *consumer {
	if c := d.cur.Load(); c != nil && !c.isLost() {
		return c
	}
	d.resuming.Lock()
	defer d.resuming.Unlock()
	c := d.cur.Load()
	if c != nil && !c.isLost() {
		return c // resumed meanwhile
	}
	if d.ctx.Err() != nil {
		return nil
	}
	if c != nil {
		// Closed once its handlers have settled on it.
		d.end(c)
	}
	if c = d.resume(); c == nil {
		return nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.ctx.Err() != nil {
		// Stopped meanwhile: Drain or Abort did not see c, which nothing
		// was taken from.
		c.close()
		return nil
	}
	d.cur.Store(c)
	d.watchCancels(c)
	return c
}

// resume sets a consumer up again after a loss, with backoff, until it
// succeeds or the subscription stops.
func (d *driver) resume() *consumer {
	b := d.b
	b.cfg.logger.Warn("amqp: consumer lost; resuming", "queue", d.queue)
	for attempt := 0; ; attempt++ {
		if !sleepCtx(d.ctx, backoff(b.cfg.minBackoff, b.cfg.maxBackoff, attempt)) {
			return nil
		}
		s, err := b.session(d.ctx)
		if err != nil {
			return nil
		}
		c, err := d.setup(s)
		if err == nil {
			b.cfg.logger.Info("amqp: consumer resumed", "queue", d.queue)
			return c
		}
		b.cfg.logger.Warn("amqp: resume consumer failed", "queue", d.queue, "attempt", attempt+1, "err", err)
	}
}

// watchCancels starts the goroutine that reads c's cancel notices; d.mu
// is held and the subscription runs.
func (d *driver) watchCancels(c *consumer) {
	if c.cancels == nil {
		return
	}
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		for m := range c.cancels {
			if sub := d.sub.Load(); sub != nil {
				sub.Cancel(m.MessageId)
			}
		}
	}()
}

// Decode implements kernel.Driver.
func (d *driver) Decode(x *delivery, m *broker.Message) error {
	err := decodeDelivery(m, &x.Delivery)
	m.Subject = d.subject
	return err
}

// Reply implements kernel.Driver: the reply goes to the request's reply_to
// on the channel the request came on when reply_to is a direct reply-to
// address of that channel's node, and otherwise on the Broker's reply
// connection (reply.go): a reply RabbitMQ fails on closes the connection
// it is published on, and only one to another node can fail.
func (d *driver) Reply(x *delivery, rep *broker.Message) error {
	if x.ReplyTo == "" {
		return nil
	}
	if len(rep.Body) > d.b.cfg.maxSize {
		return fmt.Errorf("reply: %w: %d bytes, limit %d", broker.ErrMessageTooLarge, len(rep.Body), d.b.cfg.maxSize)
	}
	// A reply has a message_id only when the handler gave it an ID, as on
	// the other brokers: nothing deduplicates replies.
	p := toReply(rep)
	// Plain clients (the RabbitMQ tutorial's) set only correlation_id;
	// some set only message_id.
	p.CorrelationId = x.CorrelationId
	if p.CorrelationId == "" {
		p.CorrelationId = x.MessageId
	}
	hash, direct, ok := replyNode(x.ReplyTo)
	if !ok {
		return fmt.Errorf("%w: reply_to %q is not a direct reply-to address RabbitMQ can decode", errReplyDropped, x.ReplyTo)
	}
	if direct && x.c.sess != nil && x.c.sess.sameNode(hash) {
		// The caller is on this connection's node: RabbitMQ cannot
		// fail on it, and the reply and the acknowledgement go out in
		// one write.
		return x.channel().Publish("", x.ReplyTo, false, false, p)
	}
	return d.b.rep.publish(x.ReplyTo, hash, direct, p)
}

// Settle implements kernel.Driver; the kernel calls SettleCause instead.
func (d *driver) Settle(x *delivery, o kernel.Outcome) { d.SettleCause(x, o, nil) }

// SettleCause implements kernel.CauseSettler: acknowledge a served or
// expired request; a failed one is dropped (fast mode) or retried and
// finally dead-lettered with its cause (durable mode); a malformed one
// and, in durable mode, an expired one that failed before, are
// dead-lettered at once (or dropped in fast mode).
func (d *driver) SettleCause(x *delivery, o kernel.Outcome, cause error) {
	switch {
	case d.autoAck:
	case o == kernel.Done:
		d.ack(x)
	case o == kernel.Failed:
		d.retry(x, x.failed+1, cause)
	case cause != nil: // malformed: never gets better
		d.reject(x, x.failed+1, cause)
	case x.failed > 0:
		// Expired after failing before: kept for inspection rather than
		// dropped silently.
		d.reject(x, x.failed, fmt.Errorf("deadline passed after %d failed deliveries", x.failed))
	default:
		d.ack(x) // expired: dropped
	}
	d.done(x)
}

func (d *driver) ack(x *delivery) {
	if err := x.Ack(false); err != nil {
		d.b.cfg.logger.Warn("amqp: ack failed", "queue", d.queue, "id", x.MessageId, "err", err)
	}
}

// done ends x, settled: it leaves the lane, the consumer may close.
func (d *driver) done(x *delivery) {
	if x.release != nil {
		x.release()
	}
	c := x.c
	*x = delivery{}
	deliveryPool.Put(x)
	c.unhold()
}

// Drain implements kernel.Driver: the consumers are cancelled and the
// channel closes once the handlers in flight settled, which requeues the
// requests prefetched but not started.
func (d *driver) Drain() { d.halt() }

// Abort implements kernel.Driver: as Drain; the kernel has answered the
// callers in flight, whose deliveries are settled when their handlers
// return.
func (d *driver) Abort() { d.halt() }

func (d *driver) halt() {
	d.stop.Do(func() {
		d.mu.Lock()
		d.cancel() // under mu: no goroutine of d starts after
		c := d.cur.Load()
		if c != nil {
			c.markEnding()
			d.wg.Add(1)
		}
		d.mu.Unlock()
		d.b.mu.Lock()
		delete(d.b.subs, d)
		d.b.mu.Unlock()
		if c != nil {
			// The network part on its own goroutine: Stop returns by its
			// ctx even on a silent connection.
			go func() {
				defer d.wg.Done()
				c.cancel() // no more deliveries while the handlers finish
				d.end(c)
			}()
		}
	})
}

// Flush implements kernel.Flusher: Stop returns once the channels closed,
// so the requests prefetched but not started are back in the queue, the
// goroutines of the subscription ended, and RabbitMQ confirmed the replies
// published so far (unless the reply connection is down).
func (d *driver) Flush(ctx context.Context) error {
	done := make(chan struct{})
	go func() {
		d.wg.Wait()
		if c := d.cur.Load(); c != nil {
			<-c.closed
		}
		d.b.rep.settle(ctx)
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// end ends consumer c: its channels close once no delivery taken from
// them is unsettled.
func (d *driver) end(c *consumer) {
	c.markEnding()
	c.mu.Lock()
	idle := c.busy == 0
	c.mu.Unlock()
	if idle {
		c.close()
	}
}

// consumer is one set-up of a subscription on its own channel: the request
// consumer and the cancel-notice consumer, and in durable mode a consumer
// of the suspect queue on a second channel.
type consumer struct {
	sess       *session // nil but for Serve
	ch         *amqp091.Channel
	tag        string
	deliveries <-chan amqp091.Delivery
	cch        *amqp091.Channel        // cancel notices: nil for ServeEach
	cancels    <-chan amqp091.Delivery // nil without them

	sch      *amqp091.Channel // nil but in durable mode
	stag     string
	suspects <-chan amqp091.Delivery
	// syncMu serializes synchronous methods on ch and sch (amqp091-go
	// does not pair concurrent ones with their replies).
	syncMu sync.Mutex

	lost     chan struct{} // closed when a delivery channel closed
	lostOnce sync.Once

	mu     sync.Mutex
	busy   int  // deliveries taken and not settled
	ending bool // take no more; close when busy drops to 0

	closeOnce sync.Once
	closed    chan struct{}
}

func newConsumer(ch *amqp091.Channel) *consumer {
	return &consumer{ch: ch, lost: make(chan struct{}), closed: make(chan struct{})}
}

func (c *consumer) lose() { c.lostOnce.Do(func() { close(c.lost) }) }

func (c *consumer) isLost() bool {
	select {
	case <-c.lost:
		return true
	default:
		return false
	}
}

// hold counts a delivery in, unless c is ending.
func (c *consumer) hold() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ending {
		return false
	}
	c.busy++
	return true
}

// unhold counts a settled delivery out and closes an ending consumer's
// channels after its last one.
func (c *consumer) unhold() {
	c.mu.Lock()
	c.busy--
	last := c.ending && c.busy == 0
	c.mu.Unlock()
	if last {
		c.close()
	}
}

// markEnding marks c ending and reports whether it was not already.
func (c *consumer) markEnding() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	was := c.ending
	c.ending = true
	return !was
}

// barrier returns once RabbitMQ has processed everything sent on c's
// channels before (the acknowledgements above all): a synchronous method
// on a channel is answered after the methods before it. A suspect runs
// only after it, so a crash it causes cannot undo an acknowledgement that
// was still on its way (RabbitMQ would redeliver that request again).
func (c *consumer) barrier(prefetch int) {
	c.syncMu.Lock()
	defer c.syncMu.Unlock()
	_ = c.ch.Qos(prefetch, 0, false)
	_ = c.sch.Qos(1, 0, false)
}

// cancel cancels c's request and suspect consumers; cancel notices still
// come until the channel closes.
func (c *consumer) cancel() {
	c.syncMu.Lock()
	defer c.syncMu.Unlock()
	if c.tag != "" {
		_ = c.ch.Cancel(c.tag, false)
	}
	if c.sch != nil {
		_ = c.sch.Cancel(c.stag, false)
	}
}

// close closes c's channels, once.
func (c *consumer) close() {
	c.closeOnce.Do(func() {
		for _, ch := range []*amqp091.Channel{c.ch, c.sch, c.cch} {
			if ch != nil {
				_ = ch.Close()
			}
		}
		close(c.closed)
	})
}

// setupServe opens a channel on s, declares the request queue (and in
// durable mode its dead-letter, retry and suspect queues) and consumes it,
// and the cancel notices of the subject.
func (d *driver) setupServe(s *session) (*consumer, error) {
	b := d.b
	ch, err := s.conn.Channel()
	if err != nil {
		return nil, fmt.Errorf("%w: open channel: %w", broker.ErrDisconnected, err)
	}
	c := newConsumer(ch)
	c.sess = s
	c.tag = "mqrpc-" + broker.NewID()
	err = func() error {
		if b.cfg.durable {
			// Confirms make republishing a failed request (retry or dead
			// letter) safe before the original is acknowledged.
			if err := ch.Confirm(false); err != nil {
				return fmt.Errorf("confirm mode: %w", err)
			}
		}
		if err := b.declareQueue(ch, d.queue); err != nil {
			return err
		}
		if b.cfg.exchange != "" {
			if err := b.declareExchange(ch); err != nil {
				return err
			}
			if err := ch.QueueBind(d.queue, d.subject, b.cfg.exchange, false, nil); err != nil {
				return fmt.Errorf("bind queue %s to exchange %s: %w", d.queue, b.cfg.exchange, err)
			}
		}
		if b.cfg.durable {
			if err := b.declareDeadLetter(s.conn, ch, d.queue); err != nil {
				return err
			}
			if err := b.declareRetry(ch, d.queue); err != nil {
				return err
			}
		}
		if err := ch.Qos(d.prefetch, 0, false); err != nil {
			return fmt.Errorf("qos %d: %w", d.prefetch, err)
		}
		if c.deliveries, err = ch.Consume(d.queue, c.tag, false, false, false, false, nil); err != nil {
			return fmt.Errorf("consume %s: %w", d.queue, err)
		}
		if b.cfg.durable {
			if err := d.consumeSuspects(s, c); err != nil {
				return err
			}
		}
		d.consumeCancels(s, c)
		return nil
	}()
	if err != nil {
		c.close()
		return nil, err
	}
	return c, nil
}

// consumeSuspects opens c's second channel, in confirm mode, and consumes
// the suspect queue on it one request at a time (prefetch 1): a suspect
// runs alone in the broker (take), so if it crashes the process again,
// it is the one request of the queue it lost while running.
func (d *driver) consumeSuspects(s *session, c *consumer) error {
	ch, err := s.conn.Channel()
	if err != nil {
		return fmt.Errorf("%w: open channel: %w", broker.ErrDisconnected, err)
	}
	c.sch = ch
	q := suspectQueue(d.queue)
	c.stag = "mqrpc-" + broker.NewID()
	if err := ch.Confirm(false); err != nil {
		return fmt.Errorf("confirm mode: %w", err)
	}
	if err := ch.Qos(1, 0, false); err != nil {
		return fmt.Errorf("qos 1: %w", err)
	}
	if c.suspects, err = ch.Consume(q, c.stag, false, false, false, false, nil); err != nil {
		return fmt.Errorf("consume %s: %w", q, err)
	}
	return nil
}

// errLost is the failure of a delivery RabbitMQ redelivered: the server
// that held it died, lost its channel or stopped before acknowledging it.
var errLost = errors.New("delivery lost with its server (crashed, disconnected or stopped)")
