package rocketmq

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	rmq "github.com/apache/rocketmq-client-go/v2"
	"github.com/apache/rocketmq-client-go/v2/consumer"
	"github.com/apache/rocketmq-client-go/v2/primitive"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/kernel/deliveryctx"
)

// topicCreateWait bounds how long Serve waits for a topic it asked the
// broker to create to appear in the name server.
const topicCreateWait = 15 * time.Second

// Serve implements broker.Broker: a push consumer in clustering mode whose
// group is the serve queue name (default: the subject), so servers with the
// same queue share the topic's queues.
//
// If the topic does not exist yet, Serve publishes one marker message (the
// mqrpc-topic-init property, skipped by servers) so that a broker with
// autoCreateTopicEnable creates it; otherwise create topics beforehand
// (mqadmin updateTopic). A new group starts with the messages stored from
// NewGroupWindow before its first Serve, so requests sent shortly before
// the first server started, or while its consumer was still being assigned
// queues, are served (and those whose deadline passed are dropped).
func (b *Broker) Serve(subject string, h broker.Handler, opts ...broker.ServeOption) (broker.Subscription, error) {
	if err := validName(subject, maxNameLen); err != nil {
		return nil, fmt.Errorf("rocketmq: topic %q: %w", subject, err)
	}
	cfg := broker.NewServeConfig(subject, opts...)
	if err := validName(cfg.Queue, 255); err != nil {
		return nil, fmt.Errorf("rocketmq: consumer group %q: %w", cfg.Queue, err)
	}
	if b.isClosed() {
		return nil, fmt.Errorf("rocketmq: serve %s: %w", subject, broker.ErrClosed)
	}
	ctx, cancel := context.WithCancel(b.ctx)
	s := &subscription{
		b:       b,
		subject: subject,
		group:   cfg.Queue,
		h:       h,
		log:     b.log.With("topic", subject, "group", cfg.Queue),
		ctx:     ctx,
		cancel:  cancel,
		stopped: make(chan struct{}),

		retryTopic: retryTopicPrefix + cfg.Queue,
	}
	if dir := b.cfg.journalDir; dir != "" {
		j, err := openJournal(filepath.Join(dir, cfg.Queue), "mqrpc-"+broker.NewID())
		if err != nil {
			cancel()
			return nil, fmt.Errorf("rocketmq: serve %s: %w", subject, err)
		}
		s.journal = j
	}
	if b.hooks.lookup != nil && b.hooks.lookup(subject) != nil {
		// Create the topic first: a consumer that fails for want of it
		// leaves its goroutines and connection behind (see Close).
		if err := b.createTopic(subject); err != nil {
			cancel()
			s.closeJournal()
			return nil, fmt.Errorf("rocketmq: serve %s: create topic: %w", subject, err)
		}
		b.waitTopic(subject)
	}
	pc, err := b.startConsumer(s, cfg)
	if err != nil && strings.Contains(err.Error(), "route info not found") {
		err = b.createTopic(subject)
		if err == nil {
			pc, err = b.waitConsumer(s, cfg)
		}
	}
	if err != nil {
		cancel()
		s.closeJournal()
		return nil, fmt.Errorf("rocketmq: serve %s as group %s: %w", subject, cfg.Queue, err)
	}
	s.pc = pc
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		_ = pc.Shutdown()
		cancel()
		s.closeJournal()
		return nil, fmt.Errorf("rocketmq: serve %s: %w", subject, broker.ErrClosed)
	}
	b.subs[s] = struct{}{}
	b.mu.Unlock()
	return s, nil
}

// NewGroupWindow is how far back a new consumer group starts: with the
// messages the broker stored from this long before Serve was called. Groups
// with committed offsets resume from them. It is RocketMQ's own default for
// starting from a time.
const NewGroupWindow = 30 * time.Minute

// startConsumer creates, subscribes and starts one push consumer for s.
func (b *Broker) startConsumer(s *subscription, cfg broker.ServeConfig) (rmq.PushConsumer, error) {
	copts := []consumer.Option{
		consumer.WithNsResolver(primitive.NewPassthroughResolver(b.servers)),
		consumer.WithGroupName(cfg.Queue),
		// Its own client per Serve: the client refuses a second consumer of
		// the same group, and Stop must not close another Serve's
		// connections.
		consumer.WithInstance("mqrpc-" + broker.NewID()),
		consumer.WithConsumerModel(consumer.Clustering),
		// Not ConsumeFromLastOffset: for a queue the group has no offset
		// of, the client asks the broker for the group's offset and then
		// for the queue's end in two calls, and a request stored between
		// them is skipped for good. A search by time has no such gap.
		consumer.WithConsumeFromWhere(consumer.ConsumeFromTimestamp),
		consumer.WithConsumeTimestamp(time.Now().Add(-NewGroupWindow).UTC().Format("20060102150405")),
		consumer.WithConsumeGoroutineNums(cfg.Concurrency),
		consumer.WithConsumeMessageBatchMaxSize(1),
		// mqrpc dead-letters a message itself (delay level -1) after
		// maxDeliveries; the broker's own limit is only a backstop for
		// messages handed back without a handler (while stopping).
		consumer.WithMaxReconsumeTimes(int32(b.cfg.maxDeliveries + 16)),
	}
	if !b.cfg.credentials.IsEmpty() {
		copts = append(copts, consumer.WithCredentials(b.cfg.credentials))
	}
	pc, err := rmq.NewPushConsumer(copts...)
	if err != nil {
		return nil, fmt.Errorf("new consumer: %w", err)
	}
	if err := pc.Subscribe(s.subject, consumer.MessageSelector{Type: consumer.TAG, Expression: "*"}, s.consume); err != nil {
		return nil, fmt.Errorf("subscribe: %w", err)
	}
	// Set before Start, which starts the deliveries that read them.
	s.hooks = hooksOf(pc)
	s.persist, _ = pc.(offsetPersister)
	if err := pc.Start(); err != nil {
		// Start shuts the consumer down itself when it fails.
		return nil, fmt.Errorf("start consumer: %w", err)
	}
	return pc, nil
}

// waitConsumer retries startConsumer while the topic's route is not in the
// name server yet (the broker registers a new topic asynchronously).
func (b *Broker) waitConsumer(s *subscription, cfg broker.ServeConfig) (rmq.PushConsumer, error) {
	deadline := time.Now().Add(topicCreateWait)
	for {
		pc, err := b.startConsumer(s, cfg)
		if err == nil || !strings.Contains(err.Error(), "route info not found") || time.Now().After(deadline) {
			return pc, err
		}
		select {
		case <-time.After(100 * time.Millisecond):
		case <-b.ctx.Done():
			return nil, broker.ErrClosed
		}
	}
}

// waitTopic waits (up to topicCreateWait) until the name server knows
// subject.
func (b *Broker) waitTopic(subject string) {
	deadline := time.Now().Add(topicCreateWait)
	for b.hooks.lookup(subject) != nil && time.Now().Before(deadline) {
		select {
		case <-time.After(50 * time.Millisecond):
		case <-b.ctx.Done():
			return
		}
	}
}

// createTopic makes the broker create subject by sending one marker
// message to it (autoCreateTopicEnable). rocketmq-client-go's admin API
// could create it directly but needs the broker's address, which the client
// does not expose.
func (b *Broker) createTopic(subject string) error {
	ctx, cancel := context.WithTimeout(b.ctx, 5*time.Second)
	defer cancel()
	msg := &primitive.Message{Topic: subject, Body: emptyBody}
	msg.WithProperties(map[string]string{propInit: "1", propEmptyBody: "1", propKeys: broker.NewID()})
	if _, err := b.producer.SendSync(ctx, msg); err != nil {
		return b.sendError(ctx, subject, err)
	}
	return nil
}

// subscription is one Serve call.
type subscription struct {
	b       *Broker
	subject string
	group   string
	h       broker.Handler
	log     *slog.Logger
	pc      rmq.PushConsumer

	// retryTopic is the group's retry topic; journal counts crashed
	// deliveries (nil: off); hooks reach into the consumer's client.
	retryTopic string
	journal    *journal
	hooks      clientHooks
	persist    offsetPersister // nil if the consumer cannot
	routeOnce  sync.Once
	// isolate runs a message suspected of crashing a server alone.
	isolate soloGate

	// ctx is the parent of every handler context: cancelled by Close, not
	// by Stop (Stop drains).
	ctx    context.Context
	cancel context.CancelFunc

	mu       sync.Mutex
	stopping bool
	inflight sync.WaitGroup
	stopped  chan struct{}
	stopErr  error
}

var _ broker.Subscription = (*subscription)(nil)

// Stop implements broker.Subscription: it stops handling new messages,
// waits for the handlers in flight and their replies, then shuts the
// consumer down, which commits the consumed offsets and hands the queues to
// the group's other servers. Messages the consumer had already fetched but
// not handed to a handler go back to the broker, which redelivers them to
// the group later (through the retry topic, after 1 s).
func (s *subscription) Stop(ctx context.Context) error {
	return s.stop(ctx, true)
}

func (s *subscription) stop(ctx context.Context, drain bool) error {
	s.mu.Lock()
	first := !s.stopping
	s.stopping = true
	s.mu.Unlock()
	if first {
		go s.shutdown(drain)
	}
	select {
	case <-s.stopped:
		return s.stopErr
	case <-ctx.Done():
		return fmt.Errorf("rocketmq: stop %s: %w", s.subject, ctx.Err())
	}
}

func (s *subscription) shutdown(drain bool) {
	if !drain {
		s.cancel()
	}
	// PushConsumer.Suspend would stop pulling, but it writes an unguarded
	// flag the pull loop reads (a data race in rocketmq-client-go v2.1.2);
	// consume hands late messages back instead (ConsumeRetryLater).
	s.inflight.Wait()
	var err error
	if s.pc != nil {
		if e := s.pc.Shutdown(); e != nil {
			err = fmt.Errorf("rocketmq: shut down consumer %s: %w", s.group, e)
		}
	}
	s.cancel()
	s.closeJournal()
	s.b.mu.Lock()
	delete(s.b.subs, s)
	s.b.mu.Unlock()
	s.stopErr = err
	close(s.stopped)
}

// offsetPersister is the push consumer's method that sends the consumed
// offsets to the broker now rather than at its next 5 s tick.
type offsetPersister interface{ PersistConsumerOffset() error }

// closeJournal releases the journal's file.
func (s *subscription) closeJournal() {
	if s.journal != nil {
		if err := s.journal.close(); err != nil {
			s.log.Warn("rocketmq: delivery journal", "err", err)
		}
	}
}

// begin registers one delivery in flight; false once stopping.
func (s *subscription) begin() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopping {
		return false
	}
	s.inflight.Add(1)
	return true
}

// consume is the push consumer's callback (batch size 1). A delivery that
// is not settled here goes back to the broker with the delay level chosen
// for it (level -1: the dead-letter topic).
func (s *subscription) consume(ctx context.Context, msgs ...*primitive.MessageExt) (consumer.ConsumeResult, error) {
	reserveStack(0)
	cc, _ := primitive.GetConcurrentlyCtx(ctx)
	for _, m := range msgs {
		if !s.begin() {
			// Stopping: leave the message to the group's other servers. The
			// client sends it back to the broker for later redelivery.
			if cc != nil {
				cc.DelayLevelWhenNextConsume = backoffLevel(1)
			}
			return consumer.ConsumeRetryLater, nil
		}
		var queue primitive.MessageQueue
		if cc != nil {
			queue = cc.MQ
		}
		if level := s.deliver(queue, m); level != levelDone {
			if level > 0 && queue.Topic != s.retryTopic && m.ReconsumeTimes > 0 && s.resend(m, level) {
				continue
			}
			if cc != nil {
				cc.DelayLevelWhenNextConsume = level
			}
			s.retryRouteSoon()
			return consumer.ConsumeRetryLater, nil
		}
	}
	return consumer.ConsumeSuccess, nil
}

// resend redelivers a failed message read from the service topic whose
// stored reconsume count its sender set (only the broker sets it on the
// retry topic): sent back, the copy would carry that count (plus one) and
// the broker would dead-letter it at once once it passed its limit. The
// server publishes a clean copy to the topic instead, delayed by level,
// which counts from one; the message gets at most one delivery more.
func (s *subscription) resend(m *primitive.MessageExt, level int) bool {
	props := make(map[string]string, len(m.GetProperties())+1)
	for k, v := range m.GetProperties() {
		if _, internal := resendDrop[k]; !internal {
			props[k] = v
		}
	}
	msg := &primitive.Message{Topic: s.subject, Body: m.Body}
	msg.WithProperties(props)
	msg.WithDelayTimeLevel(level)
	ctx, cancel := context.WithTimeout(s.ctx, 5*time.Second)
	defer cancel()
	if _, err := s.b.producer.SendSync(ctx, msg); err != nil {
		s.log.Warn("rocketmq: resending a message with a reconsume count set by its sender failed", "msgId", m.MsgId, "err", err)
		return false
	}
	s.log.Warn("rocketmq: message carried a reconsume count set by its sender; resent a clean copy", "msgId", m.MsgId, "reconsumeTimes", m.ReconsumeTimes)
	return true
}

// resendDrop are the properties the broker or the consumer add to a stored
// or delivered message, left out of a resent copy.
var resendDrop = map[string]struct{}{
	"MIN_OFFSET": {}, "MAX_OFFSET": {}, "CONSUME_START_TIME": {}, propCluster: {}, "RETRY_TOPIC": {},
	"ORIGIN_MESSAGE_ID": {}, "REAL_TOPIC": {}, "REAL_QID": {}, "DELAY": {}, "RECONSUME_TIME": {},
	"MAX_RECONSUME_TIMES": {}, "TRAN_MSG": {}, "__STARTDELIVERTIME": {}, "TIMER_DELIVER_MS": {},
	"TIMER_DELAY_SEC": {}, "TIMER_DELAY_MS": {},
}

// Delay levels a delivery settles with (RocketMQ's default messageDelayLevel
// "1s 5s 10s 30s 1m ..."): levelDone acknowledges, levelDeadLetter sends
// the message to %DLQ%<group>, a positive level redelivers it through the
// group's retry topic after that level's delay.
const (
	levelDone       = 0
	levelDeadLetter = -1
)

// backoffLevel is the delay level of the redelivery after n failed
// deliveries: 1 s, 5 s, then 10 s.
func backoffLevel(n int) int {
	return min(max(n, 1), 3)
}

// failed is the delay level after a failed delivery, the n-th: a
// redelivery with backoff, or the dead-letter topic at the limit.
func (s *subscription) failed(n int) int {
	if n >= s.b.cfg.maxDeliveries {
		return levelDeadLetter
	}
	return backoffLevel(n)
}

// retryTopicPrefix names a consumer group's retry topic, where RocketMQ
// stores the messages its consumers send back.
const retryTopicPrefix = "%RETRY%"

// retryRouteSoon makes the consumer learn its group's retry topic now,
// once: the broker creates the topic with the group's first heartbeat,
// after the consumer asked for its routes, and the client would otherwise
// find it only with its next route poll, up to 30 s later, delaying the
// first redeliveries by as much.
func (s *subscription) retryRouteSoon() {
	s.routeOnce.Do(func() {
		if s.hooks.refresh == nil {
			return
		}
		go func() {
			select {
			case <-time.After(500 * time.Millisecond): // the send-back is stored
			case <-s.ctx.Done():
				return
			}
			s.hooks.refresh()
		}()
	})
}

// reserveStack makes the calling goroutine's stack large enough for a
// typical handler while the stack is still shallow.
//
// rocketmq-client-go runs every delivery on a goroutine of its own, which
// starts with a small stack (2 KiB, or the runtime's running average). A
// handler that decodes, dispatches and encodes outgrows it, and the runtime
// then grows the stack two or three times over, the last time deep inside
// the handler, each time copying it and adjusting every frame: 8 µs per
// request at 64 concurrent requests and 12-18 µs at one (an rpc server with
// msgpack, 4 KiB bodies), on the path of every reply. A 4 KiB frame here,
// a few frames below the goroutine's start, grows the stack once to 8 KiB,
// which that handler fits in: 3-5 µs and 0-5 µs. Reserving more costs more
// than it saves: the garbage collector shrinks (copies) a stack that is less
// than a quarter used, as a 16 KiB one is while the reply is being sent.
//
//go:noinline
func reserveStack(i int) byte {
	var frame [4 << 10]byte
	return frame[i]
}

// deliver handles one delivery and returns the delay level it settles
// with. It releases the in-flight count and turns a panicking handler into
// a failed delivery: the client's own recovery would leave the message
// unacknowledged and Stop waiting forever.
//
// How many deliveries a message had is what the broker says, never what
// the message says: RocketMQ's reconsume count of a message read from the
// group's retry topic (where only the broker writes, counting the
// send-backs), zero for one read from the service topic (whatever its
// sender stored there), plus the crashed deliveries the journal knows of.
func (s *subscription) deliver(queue primitive.MessageQueue, m *primitive.MessageExt) (level int) {
	defer s.inflight.Done()
	prior := 0
	if queue.Topic == s.retryTopic {
		prior = int(max(m.ReconsumeTimes, 0))
	}
	if s.journal != nil && queue.Topic != "" {
		qk := queue.Topic + "/" + queue.BrokerName + "/" + strconv.Itoa(queue.QueueId)
		key := qk + "/" + strconv.FormatInt(m.QueueOffset, 10)
		s.journal.seen(qk, m.QueueOffset)
		defer s.journal.finish(key)
		if n := s.journal.crashes(key); n > 0 {
			// This stored message was in flight when a server crashed:
			// send it back (or dead-letter it) rather than run it again,
			// so the queue moves past it, and run it alone next time.
			level = s.failed(prior + n)
			s.journal.suspectID(m.MsgId, level != levelDeadLetter)
			s.log.Warn("rocketmq: message was in flight when a server crashed; sending it back", "msgId", m.MsgId, "deliveries", prior+n, "deadLetter", level == levelDeadLetter)
			return level
		}
		if s.journal.suspected(m.MsgId) {
			leave, alone := s.isolate.solo(s.ctx)
			defer leave()
			if !alone {
				s.log.Warn("rocketmq: suspect could not run alone; running it beside others", "msgId", m.MsgId, "waited", 2*soloWait)
			}
			// Commit the offsets of the messages settled so far first:
			// if this one crashes the server again, they (and the copy
			// of this one already sent back) must not come back.
			if s.persist != nil {
				_ = s.persist.PersistConsumerOffset()
			}
			defer func() {
				if level <= levelDone {
					s.journal.suspectID(m.MsgId, false)
				}
			}()
		} else {
			defer s.isolate.shared(s.ctx)()
		}
		s.journal.start(key)
	}
	defer func() {
		if v := recover(); v != nil {
			level = s.failed(prior + 1)
			s.log.Error("rocketmq: handler panicked", "msgId", m.MsgId, "panic", v, "deadLetter", level == levelDeadLetter)
		}
	}()
	return s.handle(m, prior)
}

// handle runs one delivery; prior is the number of earlier deliveries.
func (s *subscription) handle(m *primitive.MessageExt, prior int) int {
	props := m.GetProperties()
	if _, ok := props[propInit]; ok {
		return levelDone
	}
	req, err := fromProperties(s.subject, props, m.Body)
	if err != nil {
		// A malformed deadline cannot be honoured and redelivery would not
		// fix it: answer InvalidArgument (gRPC code 3), as every mqrpc
		// broker does, or dead-letter a one-way message.
		s.log.Warn("rocketmq: malformed message", "msgId", m.MsgId, "err", err)
		if !isRequest(m) {
			return levelDeadLetter
		}
		ctx, cancel := context.WithTimeout(s.ctx, 5*time.Second)
		defer cancel()
		reply := &broker.Message{Header: broker.Header{broker.HeaderStatus: "3", broker.HeaderStatusMessage: err.Error()}}
		if err := s.b.reply(ctx, m, reply); err != nil {
			s.log.Warn("rocketmq: reply not delivered", "msgId", m.MsgId, "err", err)
		}
		return levelDone
	}
	if req.Expired(time.Now()) {
		if prior > 0 {
			// It failed before and ran out of time waiting for its
			// redelivery: dead-letter it, not drop it.
			s.log.Warn("rocketmq: failed request expired; dead-lettering it", "id", req.ID, "deliveries", prior)
			return levelDeadLetter
		}
		s.log.Debug("rocketmq: dropping expired request", "id", req.ID, "deadline", req.Deadline)
		return levelDone
	}
	ctx := s.ctx
	if !req.Deadline.IsZero() {
		dc := deliveryctx.New(ctx, req.Deadline)
		defer dc.Release()
		ctx = dc
	}
	reply, err := s.h.ServeMessage(ctx, req)
	if err != nil {
		level := s.failed(prior + 1)
		if s.ctx.Err() == nil && req.Expired(time.Now()) {
			// Nobody waits for a redelivery.
			level = levelDeadLetter
		}
		s.log.Warn("rocketmq: handler failed", "id", req.ID, "err", err, "deliveries", prior+1, "deadLetter", level == levelDeadLetter)
		return level
	}
	if reply == nil || !isRequest(m) {
		return levelDone
	}
	if err := s.b.reply(ctx, m, reply); err != nil {
		s.log.Warn("rocketmq: reply not delivered", "id", req.ID, "err", err)
	}
	return levelDone
}

// reply sends the reply to req.
//
// The broker pushes a reply over the requester's own connection, which it
// finds by the client ID from the requester's heartbeat. A requester whose
// heartbeat has not reached the broker yet (a new client, or a new
// connection after a broker restart) cannot receive it, and the broker
// answers "push reply message ... fail" (rocketmq-client-go #1047). Such a
// reply is retried with backoff until the request's deadline (at most
// replyRetryMax without one).
func (b *Broker) reply(ctx context.Context, req *primitive.MessageExt, reply *broker.Message) error {
	if reply.ID == "" {
		reply.ID = broker.NewID()
	}
	msg, size, err := replyMessage(req, reply)
	if err != nil {
		return err
	}
	if err := b.checkSize(req.Topic, size); err != nil {
		return err
	}
	sendCtx := ctx
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		sendCtx, cancel = context.WithTimeout(ctx, replyRetryMax)
		defer cancel()
	}
	backoff := 20 * time.Millisecond
	for {
		_, err = b.producer.SendSync(sendCtx, msg)
		if err == nil || !replyUnroutable(err) {
			// A push the broker attempted ("push reply message to <client>
			// fail") may well have arrived: the requester may have closed
			// before acknowledging it. Only an unknown requester is retried.
			return err
		}
		t := time.NewTimer(backoff)
		select {
		case <-t.C:
		case <-sendCtx.Done():
			t.Stop()
			return fmt.Errorf("%w (gave up: %w)", err, sendCtx.Err())
		}
		if backoff < time.Second {
			backoff *= 2
		}
	}
}

// replyUnroutable reports whether the broker refused a reply because it
// does not know the requester's connection (yet): "push reply message
// fail, channel of <client> not found".
func replyUnroutable(err error) bool {
	s := err.Error()
	return strings.Contains(s, "push reply message") && strings.Contains(s, "not found")
}

// replyRetryMax bounds reply retries for requests without a deadline.
const replyRetryMax = 30 * time.Second
