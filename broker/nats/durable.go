package nats

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/kernel"
)

// jsDriver is the kernel.Driver of a durable server: a JetStream consumer
// whose Consume callback hands each delivery to the kernel's pool, one at
// a time, so the callback waits (and the consumer pulls no more than the
// serve concurrency) while every handler is busy. Beyond the Driver it
// admits a delivery only after counting its handler starts (and running a
// suspect in the suspect lane), keeps the handler's error as the reason of
// a dead letter (kernel.CauseSettler), and hands back the deliveries an
// abort abandoned.
type jsDriver struct {
	b       *Broker
	js      *jetStream
	log     *slog.Logger
	subject string
	sub     *kernel.Subscription[*jsDelivery]

	consumer jetstream.ConsumerConfig
	cc       jetstream.ConsumeContext
	closed   <-chan struct{} // cc.Closed(): drained, stopped or connection closed
	cancels  *natsgo.Subscription

	ctx       context.Context // of the consumer repairs and records; ends with the server
	stop      context.CancelFunc
	ch        chan *jsDelivery
	quit      chan struct{} // closed by Abort
	quitOnce  sync.Once
	repairing atomic.Bool
	mu        sync.Mutex // orders repairs.Add against the Wait after stop
	repairs   sync.WaitGroup
}

// jsDelivery is one delivery of a stored request, with what the server
// learns about it on its way through the kernel.
type jsDelivery struct {
	m       jetstream.Msg
	md      *jetstream.MsgMetadata
	subject string // the service subject
	reply   string // mqrpc-reply
	a       attempt
	keep    func() // stops the in-progress acknowledgements
	leave   func() // leaves the suspect lane
}

var (
	_ kernel.Driver[*jsDelivery]       = (*jsDriver)(nil)
	_ kernel.Admitter[*jsDelivery]     = (*jsDriver)(nil)
	_ kernel.CauseSettler[*jsDelivery] = (*jsDriver)(nil)
	_ kernel.Abandoner[*jsDelivery]    = (*jsDriver)(nil)
	_ kernel.Flusher                   = (*jsDriver)(nil)
)

func (b *Broker) serveDurable(subject string, h broker.Handler, cfg broker.ServeConfig) (broker.Subscription, error) {
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	js := b.js
	if err := js.ensureStreams(ctx); err != nil {
		return nil, err
	}
	d := &jsDriver{b: b, js: js, log: b.log, subject: subject, ch: make(chan *jsDelivery), quit: make(chan struct{})}
	d.ctx, d.stop = context.WithCancel(context.Background())
	d.consumer = jetstream.ConsumerConfig{
		Durable:       consumerName(cfg.Queue),
		Description:   "mqrpc servers of " + subject,
		FilterSubject: js.cfg.SubjectPrefix + "." + subject,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       js.cfg.AckWait,
		// The broker counts deliveries itself and dead-letters; a server
		// limit would strand the message in the work queue instead.
		MaxDeliver:        -1,
		InactiveThreshold: js.cfg.InactiveThreshold,
	}
	cons, err := js.js.CreateOrUpdateConsumer(ctx, js.cfg.Stream, d.consumer)
	if err != nil {
		d.stop()
		return nil, fmt.Errorf("consumer %s: %w", cfg.Queue, err)
	}
	d.cc, err = cons.Consume(d.receive,
		jetstream.PullMaxMessages(cfg.Concurrency),
		// Short pulls with frequent heartbeats: a pull lost in a server
		// restart, or with a consumer leader that died, is noticed (two
		// heartbeats missed) and renewed within a second, not half a
		// minute.
		jetstream.PullExpiry(pullExpiry),
		jetstream.PullHeartbeat(pullHeartbeat),
		jetstream.ConsumeErrHandler(d.onConsumeError))
	if err != nil {
		d.stop()
		return nil, fmt.Errorf("consume %s: %w", cfg.Queue, err)
	}
	d.closed = d.cc.Closed()
	d.sub = kernel.Serve[*jsDelivery](d, subject, h, cfg, kernel.Options{Name: "nats", Log: b.log, Streamer: b})
	if err := b.launch(d, subject, d.sub.Cancel, &d.cancels); err != nil {
		return nil, err
	}
	return d.sub, nil
}

// receive is the Consume callback: it waits until a handler goroutine
// takes m, which pushes back on the consumer. Once the server stopped, m
// goes straight back for another server.
func (d *jsDriver) receive(m jetstream.Msg) {
	select {
	case d.ch <- &jsDelivery{m: m}:
	case <-d.quit:
		_ = m.Nak()
	}
}

// Next implements kernel.Driver.
func (d *jsDriver) Next(ctx context.Context) (*jsDelivery, bool) {
	select {
	case x := <-d.ch:
		return x, true
	case <-d.closed: // no callback runs once it is closed
	case <-d.quit:
	case <-ctx.Done():
	}
	return nil, false
}

// Decode implements kernel.Driver. The delivery is this server's from now
// on (in-progress acknowledgements), also while it waits for the suspect
// lane or the delivery records.
func (d *jsDriver) Decode(x *jsDelivery, into *broker.Message) error {
	m := x.m
	var err error
	if x.md, err = m.Metadata(); err != nil {
		x.md = &jetstream.MsgMetadata{NumDelivered: 1}
	}
	x.keep = keepInProgress(m, d.js.cfg.AckWait/2)
	x.subject = strings.TrimPrefix(m.Subject(), d.js.cfg.SubjectPrefix+".")
	hdr := m.Headers()
	x.reply = hdr.Get(HeaderReply)
	err = decodeInto(into, &natsgo.Msg{Header: hdr, Data: m.Data()}, x.subject)
	into.ID = messageID(x.subject, into.ID)
	return err
}

// Admit implements kernel.Admitter: it counts the earlier handler starts
// of x (see the delivery records below), dead-letters a request started
// MaxDeliver times, runs a suspect in the suspect lane and records that
// the handler starts.
func (d *jsDriver) Admit(ctx context.Context, x *jsDelivery, req *broker.Message) bool {
	js, md := &d.js.cfg, x.md
	a := d.loadAttempt(ctx, md)
	if a.started >= uint64(js.MaxDeliver) {
		reason := a.reason
		if reason == "" {
			reason = fmt.Sprintf("delivered %d times without an acknowledgement (servers died or timed out)", a.started)
		}
		if !d.deadLetter(x.m, x.subject, a.started, reason) {
			_ = x.m.NakWithDelay(redeliveryDelay(md.NumDelivered))
		}
		x.done()
		return false
	}
	if a.suspect {
		// A suspect runs outside the lane after laneWait, beside others
		// whose crash it would be charged with too; so its last start
		// runs in the lane only, and a crash there is its own.
		last := a.started+1 >= uint64(js.MaxDeliver)
		wait := laneWait
		if last {
			wait = lastChanceWait
		}
		leave, alone, err := suspectLane.Enter(ctx, wait)
		if err != nil {
			_ = x.m.Nak() // never started: another server takes it
			x.done()
			return false
		}
		x.leave = leave
		if last && !alone {
			_ = x.m.NakWithDelay(redeliveryDelay(md.NumDelivered)) // never started
			x.done()
			return false
		}
	}
	if md.NumDelivered > 1 && !d.recordStart(ctx, &a, md) {
		_ = x.m.NakWithDelay(redeliveryDelay(md.NumDelivered))
		x.done()
		return false
	}
	x.a = a
	return true
}

// suspectLane runs the suspect redeliveries (see Admit) one at a time. It
// spans the whole process, not one Broker or subscription, because a
// crash does.
var suspectLane = kernel.NewLane()

// laneWait bounds how long a suspect waits for the lane (a suspect whose
// handler waits for another suspect of the same process must not
// deadlock). After it, the suspect runs outside the lane.
const laneWait = 5 * time.Second

// lastChanceWait bounds how long a suspect on its last start (one more
// crash would dead-letter it) waits for the lane. It never runs outside the
// lane: after the wait it is handed back unstarted, so a crash of another
// request can never be the one that dead-letters it.
const lastChanceWait = time.Minute

// Reply implements kernel.Driver: the reply goes to mqrpc-reply on core
// NATS. A reply that cannot be published is logged by the kernel and the
// request acknowledged all the same: the handler succeeded, and running it
// again would not make the reply subject any better.
func (d *jsDriver) Reply(x *jsDelivery, rep *broker.Message) error {
	return d.b.reply(x.reply, rep)
}

// Settle implements kernel.Driver; the kernel calls SettleCause.
func (d *jsDriver) Settle(x *jsDelivery, o kernel.Outcome) { d.SettleCause(x, o, nil) }

// SettleCause implements kernel.CauseSettler: a served request is
// acknowledged; a failed one dead-lettered after its last start, or else
// handed back with a backoff and the handler's error recorded; a malformed
// one dead-lettered; an expired one dropped.
func (d *jsDriver) SettleCause(x *jsDelivery, o kernel.Outcome, cause error) {
	x.done()
	switch {
	case o == kernel.Done:
		// The reply was published on this same connection before the
		// ack, so the server has the reply before it forgets the
		// request.
		if err := x.m.Ack(); err != nil {
			d.log.Warn("nats: ack failed", "subject", x.subject, "error", err)
		}
	case o == kernel.Failed:
		if cause == nil {
			cause = errors.New("delivery failed")
		}
		started := x.a.started + 1
		if started >= uint64(d.js.cfg.MaxDeliver) && d.deadLetter(x.m, x.subject, started, cause.Error()) {
			return
		}
		// Redelivered later; a dead letter that could not be stored
		// keeps the handler's error as its reason for the next try.
		d.recordFailure(&x.a, x.md, started, cause.Error())
		_ = x.m.NakWithDelay(redeliveryDelay(max(started, x.md.NumDelivered)))
	case cause != nil: // Dropped: malformed
		if !d.deadLetter(x.m, x.subject, 0, cause.Error()) {
			_ = x.m.NakWithDelay(redeliveryDelay(x.md.NumDelivered))
		}
	default: // Dropped: expired
		d.log.Debug("nats: dropped expired request", "subject", x.subject)
		_ = x.m.Term()
	}
}

// Abandon implements kernel.Abandoner: the server stopped with x in
// flight and its caller heard Unavailable; another server takes it now
// (a retry with the same ID waits for that server's reply).
func (d *jsDriver) Abandon(x *jsDelivery) {
	x.done()
	_ = x.m.Nak()
}

// done stops what runs beside a delivery: the in-progress
// acknowledgements and its place in the suspect lane.
func (x *jsDelivery) done() {
	if x.keep != nil {
		x.keep()
	}
	if x.leave != nil {
		x.leave()
		x.leave = nil
	}
}

// Drain implements kernel.Driver: the consumer pulls no more; the
// deliveries it pulled already are handed out.
func (d *jsDriver) Drain() { d.cc.Drain() }

// Abort implements kernel.Driver.
func (d *jsDriver) Abort() {
	d.quitOnce.Do(func() { close(d.quit) })
	d.cc.Stop()
	d.done()
	d.stop()
}

// Flush implements kernel.Flusher: replies and acknowledgements reach the
// server before Stop returns.
func (d *jsDriver) Flush(ctx context.Context) error {
	d.done()
	d.wait()
	return d.b.flush(ctx)
}

func (d *jsDriver) done() { d.b.forget(d, d.cancels) }

func (d *jsDriver) abort() { d.sub.Abort() }

func (d *jsDriver) wait() {
	d.sub.Wait()
	d.mu.Lock()
	d.stop()
	d.mu.Unlock()
	d.repairs.Wait()
}

// reconnected repairs the consumer: the server may have come back without
// its memory streams and their consumers.
func (d *jsDriver) reconnected() { d.repairConsumer() }

// onConsumeError repairs the consumer when it has gone (deleted, or lost
// with a memory stream in a server restart). The pull loop keeps asking for
// messages by the consumer's name, so it resumes once the consumer exists
// again.
func (d *jsDriver) onConsumeError(_ jetstream.ConsumeContext, err error) {
	d.log.Debug("nats: consume", "subject", d.subject, "error", err)
	if errors.Is(err, jetstream.ErrConsumerDeleted) || errors.Is(err, jetstream.ErrConsumerNotFound) ||
		errors.Is(err, jetstream.ErrNoHeartbeat) || errors.Is(err, natsgo.ErrNoResponders) {
		d.repairConsumer()
	}
}

func (d *jsDriver) repairConsumer() {
	if !d.repairing.CompareAndSwap(false, true) {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.ctx.Err() != nil {
		d.repairing.Store(false)
		return
	}
	d.repairs.Add(1)
	go func() {
		defer d.repairs.Done()
		defer d.repairing.Store(false)
		ctx, cancel := context.WithTimeout(d.ctx, setupTimeout)
		defer cancel()
		js, stream := d.js, d.js.cfg.Stream
		_, err := js.js.Consumer(ctx, stream, d.consumer.Durable)
		switch {
		case err == nil:
			return
		case errors.Is(err, jetstream.ErrConsumerNotFound):
		case isStreamNotFound(err):
			js.streamMu.Lock()
			js.streamReady = false
			js.streamMu.Unlock()
			if err := js.ensureStreams(ctx); err != nil {
				d.log.Warn("nats: repair stream", "subject", d.subject, "error", err)
				return
			}
		default:
			// No answer, or no leader to give one (a cluster electing
			// its leaders): nothing says the consumer is gone, and the
			// next missed heartbeat asks again. Making the streams
			// again here would hold this broker's publishes until the
			// meta leader is back.
			d.log.Debug("nats: consumer info", "subject", d.subject, "error", err)
			return
		}
		if _, err := js.js.CreateOrUpdateConsumer(ctx, stream, d.consumer); err != nil {
			d.log.Warn("nats: repair consumer", "subject", d.subject, "error", err)
			return
		}
		d.log.Info("nats: consumer recreated", "subject", d.subject, "consumer", d.consumer.Durable)
	}()
}

// redeliveryDelay backs off redeliveries of failed requests a little:
// 100ms, 200ms, 400ms ... up to 5s.
func redeliveryDelay(delivered uint64) time.Duration {
	d := 100 * time.Millisecond
	for i := uint64(1); i < delivered && d < 5*time.Second; i++ {
		d *= 2
	}
	return min(d, 5*time.Second)
}

// deadLetter stores the request in the dead-letter stream with the reason
// and removes it from the work queue. It reports false when storing
// failed: the caller then hands the request back with a delay that grows
// with every delivery (NakWithDelay), so it is never lost and never spins.
func (d *jsDriver) deadLetter(m jetstream.Msg, subject string, deliveries uint64, reason string) bool {
	js := &d.js.cfg
	src := m.Headers()
	hdr := make(natsgo.Header, len(src)+2)
	for k, v := range src {
		// The copy is a new message to another stream: JetStream's
		// own headers of the request (Nats-TTL, which the dead-letter
		// stream would refuse, Nats-Expected-*, rollups, schedules ...)
		// do not apply to it, and the dead-letter headers are ours
		// alone. Only the message ID stays, so a dead letter stored
		// twice (its +TERM lost) is kept once.
		if len(k) > 5 && strings.EqualFold(k[:5], "nats-") && !strings.EqualFold(k, HeaderMsgID) ||
			strings.EqualFold(k, HeaderDeadReason) || strings.EqualFold(k, HeaderDeliveries) {
			continue
		}
		hdr[k] = v
	}
	hdr[HeaderDeadReason] = []string{reason}
	hdr[HeaderDeliveries] = []string{strconv.FormatUint(max(deliveries, 1), 10)}
	dl := &natsgo.Msg{Subject: js.DeadLetterPrefix + "." + subject, Header: hdr, Data: m.Data()}
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	if _, err := d.js.js.PublishMsg(ctx, dl); err != nil {
		d.log.Error("nats: dead-letter failed", "subject", subject, "error", err)
		return false
	}
	d.log.Warn("nats: dead-lettered request", "subject", subject, "deliveries", deliveries, "reason", reason)
	_ = m.TermWithReason("mqrpc: dead-lettered")
	return true
}

// keepInProgress tells the stream every interval that m is still being
// worked on, so a slow handler does not get its request redelivered to a
// second server. The returned func stops it.
func keepInProgress(m jetstream.Msg, interval time.Duration) func() {
	var (
		mu   sync.Mutex
		done bool
		t    *time.Timer
	)
	mu.Lock()
	defer mu.Unlock()
	t = time.AfterFunc(interval, func() {
		mu.Lock()
		defer mu.Unlock()
		if done {
			return
		}
		_ = m.InProgress()
		t.Reset(interval)
	})
	return func() {
		mu.Lock()
		done = true
		t.Stop()
		mu.Unlock()
	}
}
