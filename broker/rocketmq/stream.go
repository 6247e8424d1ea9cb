package rocketmq

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	rmq "github.com/apache/rocketmq-client-go/v2"
	"github.com/apache/rocketmq-client-go/v2/consumer"
	"github.com/apache/rocketmq-client-go/v2/primitive"
	"github.com/apache/rocketmq-client-go/v2/producer"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/kernel"
)

// StreamTopic carries the frames of streams (broker.Streamer). Each Broker
// reads its own tag of it (its instance name) with a broadcasting, orderly
// consumer of its own (group "mqrpc_stream_<instance>", started on the
// first inbox) and posts with a producer that keeps all messages to one
// inbox on one queue, so they arrive in the order posted.
const StreamTopic = "MQRPC_STREAM"

// propInbox carries the token of the inbox a posted message is for.
const propInbox = "mqrpc-inbox"

var _ broker.Streamer = (*Broker)(nil)

// streams are the stream inboxes of a Broker.
type streams struct {
	mu     sync.Mutex
	pc     rmq.PushConsumer
	prod   rmq.Producer
	table  kernel.Inboxes
	closed bool
	// starting is closed when the OpenInbox starting the consumer is
	// done; nil when none is.
	starting chan struct{}
}

// OpenInbox implements broker.Streamer: the inbox's address is
// "<instance>/<token>". The first inbox of a Broker starts its consumer,
// which takes a moment.
func (b *Broker) OpenInbox(fn func(*broker.Message)) (broker.Inbox, error) {
	if fn == nil {
		return nil, fmt.Errorf("rocketmq: open inbox: nil function")
	}
	if b.isClosed() {
		return nil, fmt.Errorf("rocketmq: open inbox: %w", broker.ErrClosed)
	}
	t := &b.streams
	t.mu.Lock()
	defer t.mu.Unlock()
	for t.starting != nil { // another OpenInbox starts the consumer: wait for it
		ch := t.starting
		t.mu.Unlock()
		select {
		case <-ch:
		case <-b.ctx.Done():
		}
		t.mu.Lock()
	}
	if t.closed || b.isClosed() {
		return nil, fmt.Errorf("rocketmq: open inbox: %w", broker.ErrClosed)
	}
	if t.pc == nil {
		t.starting = make(chan struct{})
		err := b.startStreams() // releases t.mu while it waits for the consumer
		close(t.starting)
		t.starting = nil
		if err != nil {
			return nil, fmt.Errorf("rocketmq: open inbox: %w", err)
		}
	}
	return t.table.Open(b.instance+"/", fn), nil
}

// startStreams starts the stream producer and consumer; b.streams.mu is
// held.
func (b *Broker) startStreams() error {
	t := &b.streams
	if err := b.startProducer(); err != nil {
		return err
	}
	group := "mqrpc_stream_" + strings.NewReplacer(".", "_", "-", "_").Replace(b.instance)
	deadline := time.Now().Add(topicCreateWait)
	for {
		copts := []consumer.Option{
			consumer.WithNsResolver(primitive.NewPassthroughResolver(b.servers)),
			consumer.WithGroupName(group),
			consumer.WithInstance("mqrpc-" + broker.NewID()),
			consumer.WithConsumerModel(consumer.BroadCasting),
			consumer.WithConsumerOrder(true),
			consumer.WithConsumeFromWhere(consumer.ConsumeFromTimestamp),
			// A second back: a frame stored while the consumer was being
			// assigned its queues is still read.
			consumer.WithConsumeTimestamp(time.Now().Add(-time.Second).UTC().Format("20060102150405")),
			consumer.WithConsumeMessageBatchMaxSize(16),
		}
		if !b.cfg.credentials.IsEmpty() {
			copts = append(copts, consumer.WithCredentials(b.cfg.credentials))
		}
		pc, err := rmq.NewPushConsumer(copts...)
		if err != nil {
			return fmt.Errorf("new consumer: %w", err)
		}
		if err := pc.Subscribe(StreamTopic, consumer.MessageSelector{Type: consumer.TAG, Expression: b.instance}, b.consumeStream); err != nil {
			return fmt.Errorf("subscribe %s: %w", StreamTopic, err)
		}
		err = pc.Start()
		if err == nil {
			t.pc = pc
			return b.awaitStreams()
		}
		_ = pc.Shutdown()
		if !strings.Contains(err.Error(), "route info not found") || time.Now().After(deadline) {
			return fmt.Errorf("start consumer of %s: %w", StreamTopic, err)
		}
		// The topic does not exist yet: a first post creates it
		// (autoCreateTopicEnable).
		msg := primitive.NewMessage(StreamTopic, emptyBody)
		msg.WithTag("mqrpc-init")
		_, _ = t.prod.SendSync(b.ctx, msg)
		select {
		case <-time.After(100 * time.Millisecond):
		case <-b.ctx.Done():
			return broker.ErrClosed
		}
	}
}

// awaitStreams returns once the stream consumer reads its queues: it
// posts probes to an inbox of its own until one arrives. A new consumer is
// assigned its queues a moment after it starts (seconds, at times), and a
// stream whose first frames waited for that would look dead to its peer.
// b.streams.mu is held.
func (b *Broker) awaitStreams() error {
	t := &b.streams
	got := make(chan struct{})
	var once sync.Once
	probe := t.table.Open(b.instance+"/", func(*broker.Message) { once.Do(func() { close(got) }) })
	defer probe.Close()
	t.mu.Unlock() // not held for seconds: Post and close take it
	defer t.mu.Lock()
	addr := probe.Addr()
	deadline := time.After(topicCreateWait)
	for {
		_ = b.post(t.prod, addr, &broker.Message{})
		select {
		case <-got:
			return nil
		case <-time.After(250 * time.Millisecond):
		case <-deadline:
			return fmt.Errorf("the consumer of %s read nothing within %v", StreamTopic, topicCreateWait)
		case <-b.ctx.Done():
			return broker.ErrClosed
		}
	}
}

// startProducer starts the producer of posts; b.streams.mu is held.
func (b *Broker) startProducer() error {
	t := &b.streams
	if t.prod != nil {
		return nil
	}
	popts := []producer.Option{
		producer.WithNsResolver(primitive.NewPassthroughResolver(b.servers)),
		producer.WithGroupName(b.cfg.group),
		producer.WithInstanceName(b.instance + "-stream"),
		producer.WithRetry(2),
		// The inbox address as sharding key: one inbox, one queue, so
		// its frames keep their order.
		producer.WithQueueSelector(producer.NewHashQueueSelector()),
		producer.WithCompressMsgBodyOverHowmuch(1 << 30),
	}
	if !b.cfg.credentials.IsEmpty() {
		popts = append(popts, producer.WithCredentials(b.cfg.credentials))
	}
	p, err := rmq.NewProducer(popts...)
	if err != nil {
		return fmt.Errorf("new producer: %w", err)
	}
	if err := p.Start(); err != nil {
		return fmt.Errorf("start producer: %w", err)
	}
	t.prod = p
	return nil
}

func (b *Broker) consumeStream(_ context.Context, msgs ...*primitive.MessageExt) (consumer.ConsumeResult, error) {
	t := &b.streams
	for _, m := range msgs {
		props := m.GetProperties()
		t.table.Dispatch(props[propInbox], func() *broker.Message {
			out := &broker.Message{ID: props[propKeys], Header: make(broker.Header, 8)}
			if props[propEmptyBody] == "" {
				out.Body = m.Body
			}
			for k, v := range props {
				if headerName(k) && k != propInbox {
					out.Header[k] = v
				}
			}
			return out
		})
	}
	return consumer.ConsumeSuccess, nil
}

// Post implements broker.Streamer: a message to StreamTopic tagged with
// the inbox's instance, its token in property mqrpc-inbox, sent on the
// queue the address hashes to. RocketMQ stores it like any message, but
// nothing replays it: a consumer that was not there does not read it.
func (b *Broker) Post(_ context.Context, addr string, msg *broker.Message) error {
	if _, _, ok := strings.Cut(addr, "/"); !ok {
		return fmt.Errorf("rocketmq: post: malformed inbox address %q", addr)
	}
	t := &b.streams
	t.mu.Lock()
	if t.closed || b.isClosed() {
		t.mu.Unlock()
		return fmt.Errorf("rocketmq: post: %w", broker.ErrClosed)
	}
	if err := b.startProducer(); err != nil {
		t.mu.Unlock()
		return fmt.Errorf("rocketmq: post: %w", err)
	}
	prod := t.prod
	t.mu.Unlock()
	return b.post(prod, addr, msg)
}

func (b *Broker) post(prod rmq.Producer, addr string, msg *broker.Message) error {
	instance, token, _ := strings.Cut(addr, "/")
	ctx := b.ctx
	props := make(map[string]string, len(msg.Header)+3)
	for k, v := range msg.Header {
		props[strings.ToLower(k)] = v
	}
	props[propInbox] = token
	rm := &primitive.Message{Topic: StreamTopic, Body: wireBody(msg.Body, props)}
	rm.WithProperties(props)
	rm.WithTag(instance)
	rm.WithShardingKey(addr)
	if _, err := prod.SendSync(ctx, rm); err != nil {
		return fmt.Errorf("rocketmq: post: %w", b.sendError(ctx, StreamTopic, err))
	}
	return nil
}

// close shuts the stream consumer and producer down; Broker.Close calls
// it.
func (t *streams) close() {
	t.mu.Lock()
	t.closed = true
	pc, prod := t.pc, t.prod
	t.pc, t.prod = nil, nil
	t.mu.Unlock()
	if pc != nil {
		_ = pc.Shutdown()
	}
	if prod != nil {
		_ = prod.Shutdown()
	}
}
