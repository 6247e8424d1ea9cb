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

// setupTimeout bounds the JetStream API calls made by Serve and by the
// first durable publish.
const setupTimeout = 10 * time.Second

// pullExpiry is how long one pull request of a server waits for messages.
const pullExpiry = 10 * time.Second

// jetStream is what a Broker in durable mode keeps besides its
// connection: the JetStream client, the streams (made once, on first
// use) and the bucket of delivery records (opened on first need).
type jetStream struct {
	cfg JetStreamConfig
	js  jetstream.JetStream
	log *slog.Logger

	streamMu    sync.Mutex
	streamSetup chan struct{} // held by the caller setting the streams up
	streamReady bool
	msgTTL      bool // the request stream allows per-message TTLs

	kvMu sync.Mutex
	kv   jetstream.KeyValue
}

func newJetStream(cfg JetStreamConfig, js jetstream.JetStream, log *slog.Logger) *jetStream {
	return &jetStream{cfg: cfg, js: js, log: log, streamSetup: make(chan struct{}, 1)}
}

// ensureStreams creates the request and dead-letter streams when missing.
// Existing streams are used as they are: clients with slightly different
// settings must not keep rewriting a shared stream.
func (b *jetStream) ensureStreams(ctx context.Context) error {
	b.streamMu.Lock()
	ready := b.streamReady
	b.streamMu.Unlock()
	if ready {
		return nil
	}
	js := &b.cfg
	// One caller sets the streams up at a time; the others wait for it no
	// longer than their own ctx allows (while a cluster elects a stream
	// leader, a set-up can take as long as its caller's deadline).
	select {
	case b.streamSetup <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("stream %s: %w", js.Stream, ctx.Err())
	}
	defer func() { <-b.streamSetup }()
	b.streamMu.Lock()
	ready = b.streamReady
	b.streamMu.Unlock()
	if ready {
		return nil
	}
	storage := jetstream.FileStorage
	if js.MemoryStorage {
		storage = jetstream.MemoryStorage
	}
	streams := []jetstream.StreamConfig{{
		Name:        js.Stream,
		Description: "mqrpc durable requests",
		Subjects:    []string{js.SubjectPrefix + ".>"},
		Retention:   jetstream.WorkQueuePolicy,
		Storage:     storage,
		MaxAge:      js.MaxAge,
		Duplicates:  js.DuplicateWindow,
		Replicas:    js.Replicas,
	}, {
		Name:        js.DeadLetterStream,
		Description: "mqrpc dead-lettered requests",
		Subjects:    []string{js.DeadLetterPrefix + ".>"},
		Retention:   jetstream.LimitsPolicy,
		Storage:     storage,
		Duplicates:  js.DuplicateWindow,
		Replicas:    js.Replicas,
	}}
	// Servers from 2.11 on (JetStream API level 1) drop a stored message
	// when its own TTL ends: the request's deadline becomes one.
	if info, err := b.js.AccountInfo(ctx); err == nil && info.API.Level >= 1 {
		streams[0].AllowMsgTTL = true
	}
	msgTTL := false
	for i, sc := range streams {
		st, err := b.js.Stream(ctx, sc.Name)
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			st, err = b.js.CreateStream(ctx, sc)
			if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
				st, err = b.js.Stream(ctx, sc.Name)
			}
		}
		if err != nil {
			return fmt.Errorf("stream %s: %w", sc.Name, err)
		}
		if i == 0 {
			msgTTL = st.CachedInfo().Config.AllowMsgTTL
		}
	}
	b.streamMu.Lock()
	b.msgTTL, b.streamReady = msgTTL, true
	b.streamMu.Unlock()
	return nil
}

// maxMsgTTL bounds the Nats-TTL mqrpc sets: a deadline further ahead is
// clamped to it. The server adds the TTL, in nanoseconds, to the message's
// timestamp, so a TTL of centuries would overflow there as well as here.
const maxMsgTTL = 100 * 365 * 24 * time.Hour

// ttlHeader sets the JetStream per-message TTL of a stored request to its
// deadline (whole seconds, rounded up, at least 1s, at most maxMsgTTL) when
// the stream allows it.
func (b *jetStream) ttlHeader(m *natsgo.Msg, deadline time.Time) {
	if !b.msgTTL || deadline.IsZero() {
		return
	}
	now := time.Now()
	left := broker.ClampDeadline(deadline, now, maxMsgTTL).Sub(now)
	secs := int64((left + time.Second - 1) / time.Second)
	m.Header[jetstream.MsgTTLHeader] = []string{strconv.FormatInt(max(secs, 1), 10)}
}

// durableMsgID is the Nats-Msg-Id of a durable message: duplicate
// detection spans every subject of the stream, so the message ID is scoped
// by the subject ("<subject>:<id>") and IDs of different services never
// clash, while a retry to the same service is still dropped.
func durableMsgID(subject, id string) string { return subject + ":" + id }

// messageID returns the Message.ID of a stored message to subject from its
// Nats-Msg-Id: without the "<subject>:" scope, or as it is when a foreign
// client sent a bare ID.
func messageID(subject, msgID string) string {
	if len(msgID) > len(subject) && msgID[len(subject)] == ':' && msgID[:len(subject)] == subject {
		return msgID[len(subject)+1:]
	}
	return msgID
}

// publish stores m in the request stream and returns once the
// stream acknowledged it. A duplicate (same Nats-Msg-Id within the
// duplicate window) is not an error: the stored original stands for it.
func (b *jetStream) publish(ctx context.Context, m *natsgo.Msg, deadline time.Time) error {
	sctx, cancel := context.WithTimeout(ctx, setupTimeout)
	defer cancel()
	if err := b.ensureStreams(sctx); err != nil {
		return mapJSError(err)
	}
	b.ttlHeader(m, deadline)
	if _, err := b.js.PublishMsg(ctx, m); err != nil {
		if errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, natsgo.ErrNoResponders) {
			// The stream is gone (deleted, or a memory stream lost in a
			// server restart): make it again on the next call.
			b.streamMu.Lock()
			b.streamReady = false
			b.streamMu.Unlock()
		}
		return mapJSError(err)
	}
	return nil
}

// JetStream API error codes the library has no names for.
const (
	jsErrMessageTooLarge jetstream.ErrorCode = 10054 // message size exceeds maximum allowed
	jsErrHeaderTooLarge  jetstream.ErrorCode = 10097 // header size exceeds maximum allowed
)

func mapJSError(err error) error {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		switch apiErr.ErrorCode {
		case jsErrMessageTooLarge, jsErrHeaderTooLarge:
			return fmt.Errorf("%w: %w", broker.ErrMessageTooLarge, err)
		}
	}
	switch {
	case errors.Is(err, jetstream.ErrNoStreamResponse), errors.Is(err, natsgo.ErrNoResponders):
		return fmt.Errorf("%w: no stream stores this subject: %w", broker.ErrNoResponders, err)
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return fmt.Errorf("%w: %w", broker.ErrTimeout, err)
	case errors.Is(err, natsgo.ErrTimeout):
		return fmt.Errorf("%w: %w: %w", broker.ErrTimeout, context.DeadlineExceeded, err)
	}
	return mapPublishError(err)
}

// consumerName turns a queue group name into a valid durable consumer
// name.
func consumerName(queue string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r == '.' || r == '*' || r == '>' || r == '/' || r == '\\' || r <= ' ' || r == 0x7f:
			return '_'
		}
		return r
	}, queue)
}

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
		// Short pulls with heartbeats: a pull lost in a server restart
		// is noticed and renewed within seconds, not half a minute.
		jetstream.PullExpiry(pullExpiry),
		jetstream.PullHeartbeat(pullExpiry/5),
		jetstream.ConsumeErrHandler(d.onConsumeError))
	if err != nil {
		d.stop()
		return nil, fmt.Errorf("consume %s: %w", cfg.Queue, err)
	}
	d.closed = d.cc.Closed()
	d.sub = kernel.Serve[*jsDelivery](d, subject, h, cfg, kernel.Options{Name: "nats", Log: b.log})
	if d.cancels, err = b.listenCancels(subject, d.sub.Cancel); err != nil {
		d.abort()
		return nil, err
	}
	if err := b.started(d); err != nil {
		d.abort()
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
		switch {
		case err != nil:
			_ = x.m.Nak() // never started: another server takes it
			x.done()
			return false
		case last && !alone:
			_ = x.m.NakWithDelay(redeliveryDelay(md.NumDelivered)) // never started
			x.done()
			return false
		}
		x.leave = leave
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

func (d *jsDriver) done() {
	if d.cancels != nil {
		_ = d.cancels.Unsubscribe()
	}
	d.b.removeSub(d)
}

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
		if _, err := js.js.Consumer(ctx, stream, d.consumer.Durable); err == nil {
			return
		}
		js.streamMu.Lock()
		js.streamReady = false
		js.streamMu.Unlock()
		if err := js.ensureStreams(ctx); err != nil {
			d.log.Warn("nats: repair stream", "subject", d.subject, "error", err)
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
func (s *jsDriver) deadLetter(m jetstream.Msg, subject string, deliveries uint64, reason string) bool {
	js := &s.js.cfg
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
	if _, err := s.js.js.PublishMsg(ctx, dl); err != nil {
		s.log.Error("nats: dead-letter failed", "subject", subject, "error", err)
		return false
	}
	s.log.Warn("nats: dead-lettered request", "subject", subject, "deliveries", deliveries, "reason", reason)
	_ = m.TermWithReason("mqrpc: dead-lettered")
	return true
}

// Delivery counting. JetStream's NumDelivered counts every delivery to a
// server, also those a server had only prefetched when a crash of another
// request took its process down; counting it would dead-letter the healthy
// requests of the same pull batch with the one that crashes. So a request
// is charged only for the deliveries whose handler started:
//
//   - A first delivery writes nothing (the fast path pays nothing). It is
//     counted as started, since nothing says whether it did.
//   - A redelivery reads its record from the delivery bucket and writes
//     "<n> running" before its handler starts. A redelivery without such a
//     record did not start, whatever NumDelivered says.
//   - A handler error writes "<n> failed: <error>", so the next delivery
//     knows the last start ended in the handler, not in a crash.
//
// A redelivery whose last start has no known outcome (no record after a
// first delivery, or "running") may have crashed its process: it is a
// suspect and runs in suspectLane, alone among suspects, so a crash there is
// charged to it and to no other suspect. When the bucket cannot be used the
// broker falls back to NumDelivered.

// deliveryRecordTTL is how long the delivery bucket keeps a record after its
// last change: records are not deleted when their request is done, they
// expire.
const deliveryRecordTTL = 24 * time.Hour

// attempt is what a server knows about the earlier handler starts of the
// request it was just delivered.
type attempt struct {
	key     string             // of the record; "" without metadata
	kv      jetstream.KeyValue // nil: no record read (a first delivery, or the bucket failed)
	rev     uint64             // revision of the record; 0 when there is none
	started uint64             // handler starts counted before this delivery
	suspect bool               // the last start may have crashed its process
	reason  string             // the last handler error, when it ended in one
	counted bool               // started is JetStream's count: records are not used
}

// recordKey names the record of a stored request: its stream sequence and
// store time, which stay unique even when a lost memory stream is made
// again and its sequences start over.
func recordKey(md *jetstream.MsgMetadata) string {
	return strconv.FormatUint(md.Sequence.Stream, 10) + "." + strconv.FormatInt(md.Timestamp.UnixNano(), 10)
}

// loadAttempt reads what is known about the earlier deliveries of the
// request md describes.
func (s *jsDriver) loadAttempt(ctx context.Context, md *jetstream.MsgMetadata) attempt {
	if md.Sequence.Stream == 0 {
		return attempt{started: md.NumDelivered - 1, counted: true}
	}
	if md.NumDelivered <= 1 {
		return attempt{} // its key is made only if it fails
	}
	key := recordKey(md)
	ctx, cancel := context.WithTimeout(ctx, setupTimeout)
	defer cancel()
	kv, err := s.js.deliveries(ctx)
	if err == nil {
		var e jetstream.KeyValueEntry
		e, err = kv.Get(ctx, key)
		switch {
		case err == nil:
			a := attempt{key: key, kv: kv, rev: e.Revision(), started: 1, suspect: true}
			if n, failed, reason, ok := parseRecord(e.Value()); ok {
				a.started, a.suspect, a.reason = n, !failed, reason
			}
			return a
		case errors.Is(err, jetstream.ErrKeyNotFound):
			// Nothing recorded since the first delivery: count that one
			// as started, and suspect it.
			return attempt{key: key, kv: kv, started: 1, suspect: true}
		}
		s.js.resetDeliveries(err)
	}
	s.log.Warn("nats: delivery records unavailable, counting every delivery", "subject", s.subject, "error", err)
	return attempt{started: md.NumDelivered - 1, counted: true}
}

// recordStart writes that a's handler starts now. It reports false when
// another server wrote the record meanwhile (it holds the same request
// after an ack timeout): then this delivery must not run. When the record
// cannot be written, a falls back to JetStream's count.
func (s *jsDriver) recordStart(ctx context.Context, a *attempt, md *jetstream.MsgMetadata) bool {
	if a.kv == nil {
		return true
	}
	ctx, cancel := context.WithTimeout(ctx, setupTimeout)
	defer cancel()
	rev, err := s.putRecord(ctx, a, strconv.FormatUint(a.started+1, 10)+" running")
	switch {
	case err == nil:
		a.rev = rev
		return true
	case errors.Is(err, jetstream.ErrKeyExists), errors.Is(err, jetstream.ErrKeyRevisionMismatch):
		return false
	}
	s.js.resetDeliveries(err)
	s.log.Warn("nats: delivery record not written, counting every delivery", "subject", s.subject, "error", err)
	a.kv, a.counted = nil, true
	a.started = max(a.started, md.NumDelivered-1)
	return true
}

// recordFailure writes that the handler start number started ended in an
// error. A record that cannot be written is left as it was: the next
// delivery then suspects this one, which still counts it.
func (s *jsDriver) recordFailure(a *attempt, md *jetstream.MsgMetadata, started uint64, reason string) {
	if a.counted {
		return
	}
	ctx, cancel := context.WithTimeout(s.ctx, setupTimeout)
	defer cancel()
	if a.kv == nil {
		kv, err := s.js.deliveries(ctx)
		if err != nil {
			s.log.Warn("nats: delivery records unavailable", "subject", s.subject, "error", err)
			return
		}
		a.kv, a.key = kv, recordKey(md)
	}
	const maxReason = 1024
	if len(reason) > maxReason {
		reason = reason[:maxReason]
	}
	if _, err := s.putRecord(ctx, a, strconv.FormatUint(started, 10)+" failed: "+reason); err != nil {
		s.js.resetDeliveries(err)
		s.log.Warn("nats: delivery record not written", "subject", s.subject, "error", err)
	}
}

func (s *jsDriver) putRecord(ctx context.Context, a *attempt, value string) (uint64, error) {
	if a.rev == 0 {
		return a.kv.Create(ctx, a.key, []byte(value))
	}
	return a.kv.Update(ctx, a.key, []byte(value), a.rev)
}

// parseRecord reads "<n> running" or "<n> failed: <reason>".
func parseRecord(v []byte) (started uint64, failed bool, reason string, ok bool) {
	num, rest, _ := strings.Cut(string(v), " ")
	n, err := strconv.ParseUint(num, 10, 64)
	if err != nil || n == 0 {
		return 0, false, "", false
	}
	switch {
	case rest == "running":
		return n, false, "", true
	case strings.HasPrefix(rest, "failed: "):
		return n, true, rest[len("failed: "):], true
	}
	return 0, false, "", false
}

// deliveries returns the bucket of delivery records, made on first use.
func (b *jetStream) deliveries(ctx context.Context) (jetstream.KeyValue, error) {
	b.kvMu.Lock()
	defer b.kvMu.Unlock()
	if b.kv != nil {
		return b.kv, nil
	}
	js := &b.cfg
	kv, err := b.js.KeyValue(ctx, js.DeliveryBucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		storage := jetstream.FileStorage
		if js.MemoryStorage {
			storage = jetstream.MemoryStorage
		}
		kv, err = b.js.CreateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket:      js.DeliveryBucket,
			Description: "mqrpc handler starts of redelivered requests of stream " + js.Stream,
			History:     1,
			TTL:         deliveryRecordTTL,
			Storage:     storage,
			Replicas:    js.Replicas,
		})
		if errors.Is(err, jetstream.ErrBucketExists) {
			kv, err = b.js.KeyValue(ctx, js.DeliveryBucket)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("delivery bucket %s: %w", js.DeliveryBucket, err)
	}
	b.kv = kv
	return kv, nil
}

// resetDeliveries forgets the bucket after an error that says it may be
// gone (a memory bucket lost in a server restart), so it is made again.
func (b *jetStream) resetDeliveries(err error) {
	if errors.Is(err, jetstream.ErrBucketNotFound) || errors.Is(err, jetstream.ErrStreamNotFound) ||
		errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, natsgo.ErrNoResponders) {
		b.kvMu.Lock()
		b.kv = nil
		b.kvMu.Unlock()
	}
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
