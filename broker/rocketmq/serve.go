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
	"github.com/mqrpc/mqrpc/broker/kernel"
)

// topicCreateWait bounds how long Serve waits for a topic it asked the
// broker to create to appear in the name server.
const topicCreateWait = 15 * time.Second

// Serve implements broker.Broker: a push consumer in clustering mode whose
// group is the serve queue name (default: the subject), so servers with the
// same queue share the topic's queues. A subject or queue name RocketMQ
// refuses ("helloworld.Greeter": '.' is not allowed) is mapped with
// kernel.MapName, the same way by every client and server.
//
// If the topic does not exist yet, Serve publishes one marker message (the
// mqrpc-topic-init property, skipped by servers) so that a broker with
// autoCreateTopicEnable creates it; otherwise create topics beforehand
// (mqadmin updateTopic). A new group starts with the messages stored from
// NewGroupWindow before its first Serve, so requests sent shortly before
// the first server started, or while its consumer was still being assigned
// queues, are served (and those whose deadline passed are dropped).
//
// Callers' cancel notices come through ControlTopic (see ServeEach), whose
// broadcast consumer the first Serve of a Broker starts.
func (b *Broker) Serve(subject string, h broker.Handler, opts ...broker.ServeOption) (broker.Subscription, error) {
	topic, err := topicOf(subject)
	if err != nil {
		return nil, err
	}
	cfg := broker.NewServeConfig(subject, opts...)
	if cfg.Queue == "" {
		return nil, fmt.Errorf("rocketmq: serve %s: empty queue name", subject)
	}
	group := kernel.MapName(cfg.Queue, nameRule(255))
	if h == nil {
		return nil, fmt.Errorf("rocketmq: serve %s: nil handler", subject)
	}
	if b.isClosed() {
		return nil, fmt.Errorf("rocketmq: serve %s: %w", subject, broker.ErrClosed)
	}
	if err := b.ctl.startServe(b); err != nil {
		// Serving works without it; only the cancel notices do not arrive.
		b.log.Warn("rocketmq: no cancel notices: control topic consumer", "subject", subject, "err", err)
	}
	s := newSubscription(b, subject, topic, group, h, cfg)
	if dir := b.cfg.journalDir; dir != "" {
		j, err := openJournal(filepath.Join(dir, group), "mqrpc-"+broker.NewID())
		if err != nil {
			s.abandon()
			return nil, fmt.Errorf("rocketmq: serve %s: %w", subject, err)
		}
		s.journal = j
	}
	if b.hooks.lookup != nil && b.hooks.lookup(topic) != nil {
		// Create the topic first: a consumer that fails for want of it
		// leaves its goroutines and connection behind (see Close).
		if err := b.createTopic(topic); err != nil {
			s.abandon()
			return nil, fmt.Errorf("rocketmq: serve %s: create topic: %w", subject, err)
		}
		b.waitTopic(topic)
	}
	pc, err := b.startConsumer(s, cfg.Concurrency)
	if err != nil && strings.Contains(err.Error(), "route info not found") {
		err = b.createTopic(topic)
		if err == nil {
			pc, err = b.waitConsumer(s, cfg.Concurrency)
		}
	}
	if err != nil {
		s.abandon()
		return nil, fmt.Errorf("rocketmq: serve %s as group %s: %w", subject, group, err)
	}
	s.pc = pc
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		s.abandon()
		return nil, fmt.Errorf("rocketmq: serve %s: %w", subject, broker.ErrClosed)
	}
	b.subs[s] = struct{}{}
	s.watchRoutes() // before Close can finish s
	b.mu.Unlock()
	return s, nil
}

// NewGroupWindow is how far back a new consumer group starts: with the
// messages the broker stored from this long before Serve was called. Groups
// with committed offsets resume from them. It is RocketMQ's own default for
// starting from a time.
const NewGroupWindow = 30 * time.Minute

// startConsumer creates, subscribes and starts one push consumer for s.
func (b *Broker) startConsumer(s *subscription, concurrency int) (rmq.PushConsumer, error) {
	copts := []consumer.Option{
		consumer.WithNsResolver(primitive.NewPassthroughResolver(b.servers)),
		consumer.WithGroupName(s.group),
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
		// The kernel runs at most concurrency handlers; the client's
		// goroutines (as many per topic, the service's and its retry
		// topic) wait for them.
		consumer.WithConsumeGoroutineNums(concurrency),
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
	if err := pc.Subscribe(s.topic, consumer.MessageSelector{Type: consumer.TAG, Expression: "*"}, s.consume); err != nil {
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
func (b *Broker) waitConsumer(s *subscription, concurrency int) (rmq.PushConsumer, error) {
	deadline := time.Now().Add(topicCreateWait)
	for {
		pc, err := b.startConsumer(s, concurrency)
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
	if err := b.sendSync(ctx, msg); err != nil {
		return b.sendError(ctx, subject, err)
	}
	return nil
}

// subscription is one Serve call and the kernel.Driver of its deliveries:
// the consumer's callback runs each delivery through the kernel's pipeline
// on its own goroutine (kernel.Subscription.Deliver) and returns the delay
// level the kernel's outcome maps to. The client already runs a goroutine
// per delivery, up to the serve concurrency per topic; a hand-over to the
// kernel's pool would only add a hop (it cost a third of the throughput at
// 16 callers: the pool grows only once a handler has run a tick, and every
// delivery waits for its reply's send).
type subscription struct {
	b       *Broker
	subject string // as served; topic is its RocketMQ name
	topic   string
	group   string
	log     *slog.Logger
	pc      rmq.PushConsumer
	k       *kernel.Subscription[*delivery]

	// retryTopic is the group's retry topic; journal counts crashed
	// deliveries (nil: off); hooks reach into the consumer's client.
	retryTopic string
	journal    *journal
	hooks      clientHooks
	persist    offsetPersister // nil if the consumer cannot
	routeOnce  sync.Once
	// watchQuit ends watchRoutes, which closes watchDone (nil if it did
	// not start).
	watchQuit chan struct{}
	watchDone chan struct{}
	// isolate runs a message suspected of crashing a server alone.
	isolate soloGate

	// mu guards quitting and the Add of inflight, the deliveries the
	// callbacks run; quit is closed with quitting set (Drain or Abort).
	mu       sync.Mutex
	quitting bool
	inflight sync.WaitGroup
	quit     chan struct{}

	finishOnce sync.Once
	finished   chan struct{} // closed once the consumer is shut down
	finishErr  error
}

// delivery is one message on its way through the kernel: what the
// consumer's callback knows of it, what Decode found, and the delay level
// Settle chose.
type delivery struct {
	m        *primitive.MessageExt
	prior    int // earlier deliveries, as the broker counts them
	deadline time.Time
	bad      bool // a malformed deadline
	level    int
}

var (
	_ broker.Subscription      = (*subscription)(nil)
	_ kernel.Driver[*delivery] = (*subscription)(nil)
)

// newSubscription starts serving h through the kernel; the consumer comes
// next (Serve).
func newSubscription(b *Broker, subject, topic, group string, h broker.Handler, cfg broker.ServeConfig) *subscription {
	s := &subscription{
		b: b, subject: subject, topic: topic, group: group,
		log:        b.log.With("topic", topic, "group", group),
		retryTopic: retryTopicPrefix + group,
		quit:       make(chan struct{}),
		finished:   make(chan struct{}),
		isolate:    newSoloGate(),
	}
	s.k = kernel.Serve[*delivery](s, subject, h, cfg, kernel.Options{Name: "rocketmq", Log: s.log, Streamer: b})
	return s
}

// abandon ends a subscription whose Serve failed.
func (s *subscription) abandon() {
	s.k.Abort()
	s.k.Wait()
	s.closeJournal()
}

// Stop implements broker.Subscription: the kernel stops handing out
// messages and waits for the handlers in flight and their replies (or,
// once ctx ends, aborts them: see kernel.Subscription.Stop), then the
// consumer shuts down, which commits the consumed offsets and hands the
// queues to the group's other servers. Messages the consumer had already
// fetched but not handed over go back to the broker, which redelivers them
// to the group later (through the retry topic, after 1 s).
func (s *subscription) Stop(ctx context.Context) error {
	if err := s.k.Stop(ctx); err != nil {
		s.finish() // once the handlers return
		return err
	}
	select {
	case <-s.finish():
		return s.finishErr
	case <-ctx.Done():
		return fmt.Errorf("rocketmq: stop %s: %w", s.subject, ctx.Err())
	}
}

// finish shuts the consumer down once every handler returned, once; the
// returned channel is closed when it is done.
func (s *subscription) finish() <-chan struct{} {
	s.finishOnce.Do(func() {
		go func() {
			s.k.Wait()
			if s.watchDone != nil {
				close(s.watchQuit)
				<-s.watchDone
			}
			if s.pc != nil {
				if err := s.pc.Shutdown(); err != nil {
					s.finishErr = fmt.Errorf("rocketmq: shut down consumer %s: %w", s.group, err)
				}
			}
			s.closeJournal()
			s.b.mu.Lock()
			delete(s.b.subs, s)
			s.b.mu.Unlock()
			close(s.finished)
		}()
	})
	return s.finished
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

// levelStopping: the subscription no longer hands messages over.
const levelStopping = -2

// consume is the push consumer's callback (batch size 1). A delivery that
// is not settled here goes back to the broker with the delay level chosen
// for it (level -1: the dead-letter topic).
func (s *subscription) consume(ctx context.Context, msgs ...*primitive.MessageExt) (consumer.ConsumeResult, error) {
	reserveStack(0)
	cc, _ := primitive.GetConcurrentlyCtx(ctx)
	for _, m := range msgs {
		var queue primitive.MessageQueue
		if cc != nil {
			queue = cc.MQ
		}
		level := s.deliver(queue, m)
		if level == levelStopping {
			// Leave the message to the group's other servers. The
			// client sends it back to the broker for later redelivery.
			if cc != nil {
				cc.DelayLevelWhenNextConsume = backoffLevel(1)
			}
			return consumer.ConsumeRetryLater, nil
		}
		if level != levelDone {
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

// reserveStack makes the calling goroutine's stack large enough for a
// typical handler while the stack is still shallow.
//
// rocketmq-client-go runs every delivery, handler included (run), on a
// goroutine of its own, which starts with a small stack (2 KiB, or the
// runtime's running average). A handler that decodes, dispatches and
// encodes outgrows it, and the runtime then grows the stack two or three
// times over, the last time deep inside the handler, each time copying it
// and adjusting every frame: 8 µs per request at 64 concurrent requests and
// 12-18 µs at one (an rpc server with msgpack, 4 KiB bodies), on the path of
// every reply. A frame here, a few frames below the goroutine's start,
// grows the stack once while it is shallow. It was 4 KiB (to 8 KiB) while
// the handler ran right here; below the kernel's pipeline (Deliver, its
// recover) that handler outgrows 8 KiB again: BenchmarkOverheadServe spent
// a third of its CPU in newstack/copystack and took 15-24 µs against
// 8-11 µs with 8 KiB (to a 16 KiB stack), which the goroutine, gone after
// one delivery, does not keep long enough for the garbage collector to
// shrink it.
//
//go:noinline
func reserveStack(i int) byte {
	var frame [8 << 10]byte
	return frame[i]
}

// deliver handles one delivery and returns the delay level it settles
// with (or levelStopping). The kernel runs it (run); around it, deliver
// keeps the journal of crashed deliveries and runs a suspect alone.
//
// How many deliveries a message had is what the broker says, never what
// the message says: RocketMQ's reconsume count of a message read from the
// group's retry topic (where only the broker writes, counting the
// send-backs), zero for one read from the service topic (whatever its
// sender stored there), plus the crashed deliveries the journal knows of.
func (s *subscription) deliver(queue primitive.MessageQueue, m *primitive.MessageExt) (level int) {
	if m.GetProperty(propInit) != "" {
		return levelDone
	}
	d := &delivery{m: m}
	if queue.Topic == s.retryTopic {
		d.prior = int(max(m.ReconsumeTimes, 0))
	}
	if s.journal == nil || queue.Topic == "" {
		return s.run(d)
	}
	qk := queue.Topic + "/" + queue.BrokerName + "/" + strconv.Itoa(queue.QueueId)
	key := qk + "/" + strconv.FormatInt(m.QueueOffset, 10)
	s.journal.seen(qk, m.QueueOffset)
	defer s.journal.finish(key)
	if n := s.journal.crashes(key); n > 0 {
		// This stored message was in flight when a server crashed: send
		// it back (or dead-letter it) rather than run it again, so the
		// queue moves past it, and run it alone next time.
		level = s.failed(d.prior + n)
		s.journal.suspectID(m.MsgId, level != levelDeadLetter)
		s.log.Warn("rocketmq: message was in flight when a server crashed; sending it back", "msgId", m.MsgId, "deliveries", d.prior+n, "deadLetter", level == levelDeadLetter)
		return level
	}
	if s.journal.suspected(m.MsgId) {
		begin := time.Now()
		leave, alone := s.isolate.solo(s.k.Context())
		defer leave()
		if !alone {
			s.log.Warn("rocketmq: suspect could not run alone; running it beside others", "msgId", m.MsgId, "waited", time.Since(begin).Round(time.Millisecond))
		}
		// Commit the offsets of the messages settled so far first: if
		// this one crashes the server again, they (and the copy of this
		// one already sent back) must not come back.
		if s.persist != nil {
			_ = s.persist.PersistConsumerOffset()
		}
		defer func() {
			if level == levelDone || level == levelDeadLetter {
				s.journal.suspectID(m.MsgId, false) // settled for good
			}
		}()
	} else {
		defer s.isolate.shared(s.k.Context())()
	}
	s.journal.start(key)
	return s.run(d)
}

// run runs d through the kernel's pipeline here, unless the subscription
// is stopping.
func (s *subscription) run(d *delivery) int {
	s.mu.Lock()
	if s.quitting {
		s.mu.Unlock()
		return levelStopping
	}
	s.inflight.Add(1)
	s.mu.Unlock()
	defer s.inflight.Done()
	s.k.Deliver(d)
	return d.level
}

// Next implements kernel.Driver. The deliveries come through run, not
// Next: it reports the end once the subscription is stopping and the
// deliveries in flight have been settled, so that the kernel's Stop and
// Wait wait for them.
func (s *subscription) Next(context.Context) (*delivery, bool) {
	<-s.quit
	s.inflight.Wait()
	return nil, false
}

// Decode implements kernel.Driver. The marker message that creates a
// topic never gets here (deliver).
func (s *subscription) Decode(d *delivery, m *broker.Message) error {
	err := decode(m, s.subject, d.m.GetProperties(), d.m.Body)
	d.deadline, d.bad = m.Deadline, err != nil
	return err
}

// Reply implements kernel.Driver: a reply to a request, nothing for a
// one-way message. It is retried while the broker cannot route it yet
// (see Broker.reply), up to the request's deadline.
func (s *subscription) Reply(d *delivery, rep *broker.Message) error {
	if !isRequest(d.m) {
		return nil
	}
	return s.b.reply(d.m, d.deadline, rep)
}

// Settle implements kernel.Driver: the outcome becomes the delivery's delay
// level (settle), which the consumer's callback returns to the client.
func (s *subscription) Settle(d *delivery, o kernel.Outcome) {
	d.level = s.settle(d, o)
}

func (s *subscription) settle(d *delivery, o kernel.Outcome) int {
	switch o {
	case kernel.Done:
		return levelDone
	case kernel.Dropped:
		switch {
		case d.bad && !isRequest(d.m):
			// Redelivery would not fix it, and no caller hears.
			return levelDeadLetter
		case d.bad:
			return levelDone // answered with the rejection
		case d.prior > 0:
			// It failed before and ran out of time waiting for its
			// redelivery: dead-letter it, not drop it.
			s.log.Warn("rocketmq: failed request expired; dead-lettering it", "msgId", d.m.MsgId, "deliveries", d.prior)
			return levelDeadLetter
		}
		return levelDone
	}
	level := s.failed(d.prior + 1)
	if s.k.Context().Err() == nil && !d.deadline.IsZero() && !time.Now().Before(d.deadline) {
		level = levelDeadLetter // nobody waits for a redelivery
	}
	s.log.Warn("rocketmq: delivery failed", "msgId", d.m.MsgId, "deliveries", d.prior+1, "deadLetter", level == levelDeadLetter)
	return level
}

// Drain implements kernel.Driver: the callbacks hand nothing more over
// and send what they hold back to the broker.
func (s *subscription) Drain() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.quitting {
		s.quitting = true
		close(s.quit)
	}
}

// Abort implements kernel.Driver.
func (s *subscription) Abort() { s.Drain() }

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
	msg := &primitive.Message{Topic: s.topic, Body: m.Body}
	msg.WithProperties(props)
	msg.WithDelayTimeLevel(level)
	ctx, cancel := context.WithTimeout(s.b.ctx, 5*time.Second)
	defer cancel()
	if err := s.b.sendSync(ctx, msg); err != nil {
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
			case <-s.k.Context().Done():
				return
			}
			s.hooks.refresh()
		}()
	})
}

// serveRefreshEvery is how often a server asks the name server for its
// topics' routes and rebalances: rocketmq-client-go does so every 30 s
// and 20 s, so a master that came back (or a new one) would wait that
// long for its queues to be served. Brokers avoid such a master for
// avoidFor (see faultSelector), which must exceed this with a margin.
const serveRefreshEvery = 3 * time.Second

// watchRoutes refreshes the consumer's routes and rebalances it every
// serveRefreshEvery until finish.
func (s *subscription) watchRoutes() {
	if s.hooks.refresh == nil {
		return
	}
	s.watchQuit, s.watchDone = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(s.watchDone)
		t := time.NewTicker(serveRefreshEvery)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				s.hooks.refresh()
			case <-s.watchQuit:
				return
			}
		}
	}()
}

// reply sends the reply to req.
//
// The broker pushes a reply over the requester's own connection, which it
// finds by the client ID from the requester's heartbeat. A requester whose
// heartbeat has not reached the broker yet (a new client, or a new
// connection after a broker restart) cannot receive it, and the broker
// answers "push reply message ... fail" (rocketmq-client-go #1047). Such a
// reply is retried with backoff until the request's deadline (at most
// replyRetryMax without one) or until the Broker closes.
func (b *Broker) reply(req *primitive.MessageExt, deadline time.Time, reply *broker.Message) error {
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
	// The first send needs no deadline of its own (the client bounds a
	// send), nor a ctx and timer for one on the path of every reply.
	err = b.sendSync(b.ctx, msg)
	if err == nil || !replyUnroutable(err) {
		// A push the broker attempted ("push reply message to <client>
		// fail") may well have arrived: the requester may have closed
		// before acknowledging it. Only an unknown requester is retried.
		return err
	}
	if deadline.IsZero() {
		deadline = time.Now().Add(replyRetryMax)
	}
	sendCtx, cancel := context.WithDeadline(b.ctx, deadline)
	defer cancel()
	backoff := 20 * time.Millisecond
	for {
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
		err = b.sendSync(sendCtx, msg)
		if err == nil || !replyUnroutable(err) {
			return err
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
