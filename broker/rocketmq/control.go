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
	"github.com/mqrpc/mqrpc/broker/kernel"
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
	// propCancel marks a cancel notice on ControlTopic: the ID of the
	// request whose caller cancelled, served on mqrpc-control-subject.
	propCancel             = "mqrpc-cancel"
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
	subs    kernel.EachTable[*eachSub] // ServeEach adds under mu, once not closed
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
	for _, s := range c.subs.All() { // closed: no more are added
		s.k.Abort()
	}
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
	if subject == "" || h == nil {
		return nil, fmt.Errorf("rocketmq: serve each %q: empty subject or nil handler", subject)
	}
	cfg := broker.NewServeConfig(subject, opts...)
	if err := b.ctl.startServe(b); err != nil {
		return nil, fmt.Errorf("rocketmq: serve each %s: %w", subject, err)
	}
	c := &b.ctl
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, fmt.Errorf("rocketmq: serve each %s: %w", subject, broker.ErrClosed)
	}
	s := &eachSub{b: b, subject: subject, ch: make(chan *primitive.MessageExt, eachBuffer), quit: make(chan struct{})}
	s.k = kernel.Serve[*primitive.MessageExt](s, subject, h, cfg, kernel.Options{Name: "rocketmq", Log: b.log})
	c.subs.Add(subject, s)
	return s.k, nil
}

// startServe starts the ControlTopic consumer (ServeEach's requests and
// Serve's cancel notices) unless it runs.
func (c *controlPlane) startServe(b *Broker) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return broker.ErrClosed
	}
	if c.serve == nil {
		pc, err := b.startControlConsumer(ControlGroup, ControlTopic, "*", consumer.ConsumeFromLastOffset, b.consumeControl)
		if err != nil {
			return err
		}
		c.serve = pc
	}
	return nil
}

// cancelNotice tells the servers of subject that the caller of request id
// cancelled: a message on ControlTopic, which every server reads
// (consumeControl), sent in the background.
func (b *Broker) cancelNotice(subject, id string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return
	}
	b.notices.Add(1)
	go func() {
		defer b.notices.Done()
		msg := &primitive.Message{Topic: ControlTopic, Body: emptyBody}
		msg.WithProperties(map[string]string{propCancel: id, propControlSubject: subject, propEmptyBody: "1"})
		ctx, cancel := context.WithTimeout(b.ctx, 5*time.Second)
		defer cancel()
		if err := b.sendSync(ctx, msg); err != nil {
			b.log.Debug("rocketmq: cancel notice not sent", "subject", subject, "id", id, "err", err)
		}
	}()
}

// cancelServed hands a cancel notice to this Broker's subscriptions of subject.
func (b *Broker) cancelServed(subject, id string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for s := range b.subs {
		if s.subject == subject {
			s.k.Cancel(id)
		}
	}
}

// eachSub is one ServeEach, run by the kernel: its driver reads the
// broadcast requests consumeControl hands it.
type eachSub struct {
	b       *Broker
	subject string
	k       *kernel.Subscription[*primitive.MessageExt]
	ch      chan *primitive.MessageExt
	quit    chan struct{} // closed by Drain or Abort
	once    sync.Once
}

// eachBuffer is how many broadcast requests wait for a ServeEach's
// handlers before more are dropped (a Gather hears fewer answers): the
// control topic's consumer, which carries cancel notices too, never waits.
const eachBuffer = 256

var _ kernel.Driver[*primitive.MessageExt] = (*eachSub)(nil)

// Next implements kernel.Driver.
func (s *eachSub) Next(ctx context.Context) (*primitive.MessageExt, bool) {
	select {
	case m := <-s.ch:
		return m, true
	case <-s.quit:
	case <-ctx.Done():
	}
	return nil, false
}

// Decode implements kernel.Driver.
func (s *eachSub) Decode(m *primitive.MessageExt, into *broker.Message) error {
	return decode(into, s.subject, m.GetProperties(), m.Body)
}

// Reply implements kernel.Driver: to ControlReplyTopic, tagged for the
// gathering client.
func (s *eachSub) Reply(m *primitive.MessageExt, rep *broker.Message) error {
	msg, size, err := rocketMessage(ControlReplyTopic, rep, time.Time{}, clientSendProps+1)
	if err == nil {
		err = s.b.checkSize(ControlReplyTopic, size)
	}
	if err != nil {
		return err
	}
	msg.WithProperty(propControlCorrelation, m.GetProperty(propKeys))
	msg.WithTag(m.GetProperty(propControlReplyTo))
	ctx, cancel := context.WithTimeout(s.b.ctx, 5*time.Second)
	defer cancel()
	err = s.b.sendSync(ctx, msg)
	return err
}

// Settle implements kernel.Driver: a broadcast is not acknowledged.
func (s *eachSub) Settle(*primitive.MessageExt, kernel.Outcome) {}

// Drain implements kernel.Driver: the subscription takes no more
// broadcasts; those waiting for it are dropped.
func (s *eachSub) Drain() {
	s.once.Do(func() {
		close(s.quit)
		s.b.ctl.subs.Remove(s.subject, s)
	})
}

// Abort implements kernel.Driver.
func (s *eachSub) Abort() { s.Drain() }

// consumeControl takes one broadcast request and starts the handlers of
// its subject; their replies are sent as they finish.
func (b *Broker) consumeControl(_ context.Context, msgs ...*primitive.MessageExt) (consumer.ConsumeResult, error) {
	for _, m := range msgs {
		props := m.GetProperties()
		subject, replyTo := props[propControlSubject], props[propControlReplyTo]
		if id := props[propCancel]; id != "" && subject != "" {
			b.cancelServed(subject, id)
			continue
		}
		if subject == "" || replyTo == "" {
			continue
		}
		b.ctl.subs.Range(subject, func(s *eachSub) {
			select {
			case s.ch <- m:
			default:
				b.log.Warn("rocketmq: broadcast request dropped: its handlers are busy", "subject", subject)
			}
		})
	}
	return consumer.ConsumeSuccess, nil
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
	ctx, cancel, err := kernel.Prepare(ctx, req, "rocketmq: gather")
	defer cancel()
	if err != nil {
		return err
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
	msg, size, err := rocketMessage(ControlTopic, req, req.Deadline, clientSendProps+2)
	if err == nil {
		err = b.checkSize(ControlTopic, size)
	}
	if err != nil {
		return fmt.Errorf("rocketmq: gather %s: %w", req.Subject, err)
	}
	msg.WithProperty(propControlSubject, req.Subject)
	msg.WithProperty(propControlReplyTo, b.instance)
	if err := b.sendSync(ctx, msg); err != nil {
		err = b.sendError(ctx, ControlTopic, err)
		if errors.Is(err, broker.ErrTimeout) {
			return nil // the wait ended before the request was even stored
		}
		return fmt.Errorf("rocketmq: gather %s: %w", req.Subject, err)
	}
	replies := kernel.NewReplies(max, fn)
	for {
		select {
		case rep := <-ch:
			if replies.Take(rep) {
				return nil
			}
		case <-ctx.Done():
			return nil
		case <-b.ctx.Done():
			return fmt.Errorf("rocketmq: gather %s: %w", req.Subject, broker.ErrClosed)
		}
	}
}
