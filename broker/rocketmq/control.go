package rocketmq

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	rmq "github.com/apache/rocketmq-client-go/v2"
	"github.com/apache/rocketmq-client-go/v2/consumer"
	"github.com/apache/rocketmq-client-go/v2/primitive"

	"github.com/mqrpc/mqrpc/broker"
)

// Topics of the broadcast messages (ServeEach and Gather, the control
// plane's PING, INFO and STATS).
const (
	// ControlTopic carries broadcast requests. Every Broker serving any
	// subject with ServeEach reads all of it with one consumer in
	// broadcasting mode (group ControlGroup) and hands each request to
	// the subscriptions of its subject, property mqrpc-control-subject.
	ControlTopic = "MQRPC_CONTROL"
	// ControlReplyTopic carries the replies: tagged with the gathering
	// client's instance name, which that client alone subscribes to, and
	// carrying the request's ID in property mqrpc-control-correlation.
	ControlReplyTopic = "MQRPC_CONTROL_REPLY"
	// ControlGroup is the consumer group of the ControlTopic readers.
	ControlGroup = "mqrpc_control"
)

const (
	propControlSubject     = "mqrpc-control-subject"
	propControlReplyTo     = "mqrpc-control-reply-to"
	propControlCorrelation = "mqrpc-control-correlation"
)

var _ broker.Broadcaster = (*Broker)(nil)

// controlPlane is a Broker's broadcast state: the ControlTopic consumer
// and its subscriptions, and the ControlReplyTopic consumer and the
// gathers waiting on it. Both consumers start on first use.
type controlPlane struct {
	mu      sync.Mutex
	serve   rmq.PushConsumer
	subs    map[string]map[*eachSub]struct{}
	reply   rmq.PushConsumer
	waiting map[string]chan *broker.Message // by request ID
	closed  bool
}

// close shuts the consumers down; Broker.Close calls it.
func (c *controlPlane) close() {
	c.mu.Lock()
	c.closed = true
	pcs := []rmq.PushConsumer{c.serve, c.reply}
	c.serve, c.reply = nil, nil
	c.mu.Unlock()
	for _, pc := range pcs {
		if pc != nil {
			_ = pc.Shutdown()
		}
	}
}

// startControlConsumer starts a broadcasting consumer of topic, creating
// the topic first when it does not exist (autoCreateTopicEnable).
func (b *Broker) startControlConsumer(group, topic, tags string, from consumer.ConsumeFromWhere,
	fn func(context.Context, ...*primitive.MessageExt) (consumer.ConsumeResult, error)) (rmq.PushConsumer, error) {
	if b.hooks.lookup != nil && b.hooks.lookup(topic) != nil {
		if err := b.createTopic(topic); err != nil {
			return nil, fmt.Errorf("create topic %s: %w", topic, err)
		}
		b.waitTopic(topic)
	}
	deadline := time.Now().Add(topicCreateWait)
	for {
		copts := []consumer.Option{
			consumer.WithNsResolver(primitive.NewPassthroughResolver(b.servers)),
			consumer.WithGroupName(group),
			consumer.WithInstance("mqrpc-" + broker.NewID()),
			consumer.WithConsumerModel(consumer.BroadCasting),
			consumer.WithConsumeFromWhere(from),
			// A second back: a reply stored while the consumer was
			// being assigned its queues is still read.
			consumer.WithConsumeTimestamp(time.Now().Add(-time.Second).UTC().Format("20060102150405")),
			consumer.WithConsumeMessageBatchMaxSize(1),
			consumer.WithConsumeGoroutineNums(4),
		}
		if !b.cfg.credentials.IsEmpty() {
			copts = append(copts, consumer.WithCredentials(b.cfg.credentials))
		}
		pc, err := rmq.NewPushConsumer(copts...)
		if err != nil {
			return nil, fmt.Errorf("new consumer: %w", err)
		}
		if err := pc.Subscribe(topic, consumer.MessageSelector{Type: consumer.TAG, Expression: tags}, fn); err != nil {
			return nil, fmt.Errorf("subscribe %s: %w", topic, err)
		}
		err = pc.Start()
		if err == nil {
			return pc, nil
		}
		if !strings.Contains(err.Error(), "route info not found") || time.Now().After(deadline) {
			return nil, fmt.Errorf("start consumer of %s: %w", topic, err)
		}
		select {
		case <-time.After(100 * time.Millisecond):
		case <-b.ctx.Done():
			return nil, broker.ErrClosed
		}
	}
}

// ServeEach implements broker.Broadcaster. Each Broker reads ControlTopic
// whole (broadcasting mode, from the end: nothing is kept for an instance
// that is down) and calls the handlers of the request's subject; a reply
// goes to ControlReplyTopic, tagged for the gathering client.
func (b *Broker) ServeEach(subject string, h broker.Handler, opts ...broker.ServeOption) (broker.Subscription, error) {
	if b.isClosed() {
		return nil, fmt.Errorf("rocketmq: serve each %s: %w", subject, broker.ErrClosed)
	}
	cfg := broker.NewServeConfig(subject, opts...)
	s := &eachSub{b: b, subject: subject, h: h, sem: make(chan struct{}, cfg.Concurrency)}
	c := &b.ctl
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, fmt.Errorf("rocketmq: serve each %s: %w", subject, broker.ErrClosed)
	}
	if c.serve == nil {
		pc, err := b.startControlConsumer(ControlGroup, ControlTopic, "*", consumer.ConsumeFromLastOffset, b.consumeControl)
		if err != nil {
			return nil, fmt.Errorf("rocketmq: serve each %s: %w", subject, err)
		}
		c.serve = pc
	}
	if c.subs == nil {
		c.subs = make(map[string]map[*eachSub]struct{})
	}
	if c.subs[subject] == nil {
		c.subs[subject] = make(map[*eachSub]struct{})
	}
	c.subs[subject][s] = struct{}{}
	return s, nil
}

type eachSub struct {
	b       *Broker
	subject string
	h       broker.Handler
	sem     chan struct{}
	wg      sync.WaitGroup
	once    sync.Once
}

// consumeControl takes one broadcast request and starts the handlers of
// its subject; their replies are sent as they finish.
func (b *Broker) consumeControl(_ context.Context, msgs ...*primitive.MessageExt) (consumer.ConsumeResult, error) {
	for _, m := range msgs {
		props := m.GetProperties()
		subject, replyTo := props[propControlSubject], props[propControlReplyTo]
		if subject == "" || replyTo == "" {
			continue
		}
		b.ctl.mu.Lock()
		var subs []*eachSub
		for s := range b.ctl.subs[subject] {
			s.wg.Add(1)
			subs = append(subs, s)
		}
		b.ctl.mu.Unlock()
		for _, s := range subs {
			go s.handle(m, props, replyTo)
		}
	}
	return consumer.ConsumeSuccess, nil
}

func (s *eachSub) handle(m *primitive.MessageExt, props map[string]string, replyTo string) {
	defer s.wg.Done()
	s.sem <- struct{}{}
	defer func() { <-s.sem }()
	req, err := fromProperties(s.subject, props, m.Body)
	if err != nil || req.Expired(time.Now()) {
		return
	}
	ctx := s.b.ctx
	if !req.Deadline.IsZero() {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, req.Deadline)
		defer cancel()
	}
	rep, err := s.h.ServeMessage(ctx, req)
	if err != nil || rep == nil {
		return
	}
	msg, size, err := rocketMessage(ControlReplyTopic, rep, time.Time{}, clientSendProps+1)
	if err == nil {
		err = s.b.checkSize(ControlReplyTopic, size)
	}
	if err != nil {
		s.b.log.Warn("rocketmq: control reply", "subject", s.subject, "error", err)
		return
	}
	msg.WithProperty(propControlCorrelation, props[propKeys])
	msg.WithTag(replyTo)
	sctx, cancel := context.WithTimeout(s.b.ctx, 5*time.Second)
	defer cancel()
	if _, err := s.b.producer.SendSync(sctx, msg); err != nil {
		s.b.log.Warn("rocketmq: control reply", "subject", s.subject, "error", err)
	}
}

// Stop implements broker.Subscription.
func (s *eachSub) Stop(ctx context.Context) error {
	s.once.Do(func() {
		c := &s.b.ctl
		c.mu.Lock()
		delete(c.subs[s.subject], s)
		if len(c.subs[s.subject]) == 0 {
			delete(c.subs, s.subject)
		}
		c.mu.Unlock()
	})
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("rocketmq: stop %s: %w", s.subject, ctx.Err())
	}
}

// consumeReply hands a reply to the Gather waiting for it.
func (b *Broker) consumeReply(_ context.Context, msgs ...*primitive.MessageExt) (consumer.ConsumeResult, error) {
	for _, m := range msgs {
		props := m.GetProperties()
		b.ctl.mu.Lock()
		ch := b.ctl.waiting[props[propControlCorrelation]]
		b.ctl.mu.Unlock()
		if ch == nil {
			continue // a gather that ended, or another client's
		}
		rep, err := fromProperties("", props, m.Body)
		if err != nil {
			continue
		}
		select {
		case ch <- rep:
		default: // the gather is not keeping up or has ended
		}
	}
	return consumer.ConsumeSuccess, nil
}

// Gather implements broker.Broadcaster. The request goes to ControlTopic
// with the subject and this client's instance name in properties; the
// replies come on ControlReplyTopic, read by a consumer of this Broker's
// own (started on the first Gather, which so takes a moment longer).
// RocketMQ cannot tell that nobody serves a subject: Gather waits for ctx.
func (b *Broker) Gather(ctx context.Context, req *broker.Message, max int, fn func(*broker.Message) bool) error {
	if b.isClosed() {
		return fmt.Errorf("rocketmq: gather %s: %w", req.Subject, broker.ErrClosed)
	}
	deadline := deadlineOf(ctx, req)
	if !deadline.IsZero() {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, deadline)
		defer cancel()
	}
	if req.ID == "" {
		req.ID = broker.NewID()
	}
	c := &b.ctl
	ch := make(chan *broker.Message, 64)
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return fmt.Errorf("rocketmq: gather %s: %w", req.Subject, broker.ErrClosed)
	}
	if c.reply == nil {
		group := "mqrpc_control_reply_" + strings.NewReplacer(".", "_", "-", "_").Replace(b.instance)
		pc, err := b.startControlConsumer(group, ControlReplyTopic, b.instance, consumer.ConsumeFromTimestamp, b.consumeReply)
		if err != nil {
			c.mu.Unlock()
			return fmt.Errorf("rocketmq: gather %s: %w", req.Subject, err)
		}
		c.reply = pc
	}
	if c.waiting == nil {
		c.waiting = make(map[string]chan *broker.Message)
	}
	c.waiting[req.ID] = ch
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.waiting, req.ID)
		c.mu.Unlock()
	}()
	msg, size, err := rocketMessage(ControlTopic, req, deadline, clientSendProps+2)
	if err == nil {
		err = b.checkSize(ControlTopic, size)
	}
	if err != nil {
		return fmt.Errorf("rocketmq: gather %s: %w", req.Subject, err)
	}
	msg.WithProperty(propControlSubject, req.Subject)
	msg.WithProperty(propControlReplyTo, b.instance)
	if _, err := b.producer.SendSync(ctx, msg); err != nil {
		err = b.sendError(ctx, ControlTopic, err)
		if errors.Is(err, broker.ErrTimeout) {
			return nil // the wait ended before the request was even stored
		}
		return fmt.Errorf("rocketmq: gather %s: %w", req.Subject, err)
	}
	got := 0
	for {
		select {
		case rep := <-ch:
			got++
			if !fn(rep) {
				return nil
			}
			if max > 0 && got >= max {
				return nil
			}
		case <-ctx.Done():
			return nil
		case <-b.ctx.Done():
			return fmt.Errorf("rocketmq: gather %s: %w", req.Subject, broker.ErrClosed)
		}
	}
}
