package cases

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	rmq "github.com/apache/rocketmq-client-go/v2"
	"github.com/apache/rocketmq-client-go/v2/admin"
	"github.com/apache/rocketmq-client-go/v2/consumer"
	"github.com/apache/rocketmq-client-go/v2/primitive"
	"github.com/apache/rocketmq-client-go/v2/producer"
	"github.com/apache/rocketmq-client-go/v2/rlog"

	"github.com/mqrpc/mqrpc/bench/harness"
	"github.com/mqrpc/mqrpc/broker"
	mqrocketmq "github.com/mqrpc/mqrpc/broker/rocketmq"
)

// RocketMQStreams returns the RocketMQ stream cases: raw
// rocketmq-client-go sending each message with SendSync, sharded by the
// reader, to an orderly, broadcasting push consumer reading one tag of a
// topic (the baseline), and the stream engine over broker/rocketmq's
// inboxes, which is what they do (on its topic MQRPC_STREAM).
func RocketMQStreams(cfg Config) []harness.Case {
	const n = rocketmqStreamMsgs
	return []harness.Case{
		{Group: "rocketmq-stream", Name: "rocketmq-client-go SendSync → orderly consumer", Role: harness.RoleRaw, Msgs: n, Setup: cfg.rocketRawStream},
		{Group: "rocketmq-stream", Name: "mqrpc stream", Role: harness.RoleMQRPC, Msgs: n,
			Setup: func(ctx context.Context) (harness.Target, error) {
				rlog.SetLogger(quietLog{})
				service := subject("mqbench_stream")
				if err := cfg.createTopic(ctx, service); err != nil {
					return nil, err
				}
				t, err := newEngineTarget(n, service, func(string) (broker.Broker, error) {
					return mqrocketmq.New(cfg.RocketMQNameServer)
				})
				if err != nil {
					return nil, err
				}
				// The first stream starts the client's stream consumer,
				// which takes seconds to be assigned its queues.
				if err := warmUp(ctx, t); err != nil {
					_ = t.Close()
					return nil, err
				}
				return t, nil
			}},
	}
}

// rocketStreamQueues is the number of queues of the raw case's topic: as
// many as RocketMQ gives the automatically created MQRPC_STREAM.
const rocketStreamQueues = 4

// propReader carries the reader a raw stream message is for.
const propReader = "mqbench-reader"

// rocketRawStream sends with one producer (a hash queue selector, the
// reader as sharding key, so a reader's messages keep one queue and their
// order) to a topic read by one orderly, broadcasting push consumer of
// the tag of this target, which hands each message to its reader by a
// property: the settings of broker/rocketmq's stream producer and
// consumer.
type rocketRawStream struct {
	ns      []string
	topic   string
	tag     string
	prod    rmq.Producer
	pc      rmq.PushConsumer
	msgs    int
	readers readers

	mu       sync.Mutex
	byReader map[string]*rawReader
}

func (c Config) rocketRawStream(ctx context.Context) (harness.Target, error) {
	rlog.SetLogger(quietLog{})
	t := &rocketRawStream{ns: []string{c.RocketMQNameServer}, topic: subject("mqbench_stream"),
		tag: "mqbench-" + broker.NewID(), msgs: rocketmqStreamMsgs, byReader: map[string]*rawReader{}}
	adm, err := admin.NewAdmin(admin.WithResolver(primitive.NewPassthroughResolver(t.ns)))
	if err != nil {
		return nil, err
	}
	err = adm.CreateTopic(ctx, admin.WithTopicCreate(t.topic), admin.WithBrokerAddrCreate(c.RocketMQBroker),
		admin.WithReadQueueNums(rocketStreamQueues), admin.WithWriteQueueNums(rocketStreamQueues))
	_ = adm.Close()
	if err != nil {
		return nil, fmt.Errorf("create topic %s on %s: %w", t.topic, c.RocketMQBroker, err)
	}
	if err := t.start(ctx); err != nil {
		_ = t.Close()
		return nil, err
	}
	return t, nil
}

func (t *rocketRawStream) start(ctx context.Context) error {
	p, err := rmq.NewProducer(
		producer.WithNsResolver(primitive.NewPassthroughResolver(t.ns)),
		producer.WithGroupName("mqbench-raw-stream"),
		producer.WithInstanceName("mqbench-raw-stream-"+broker.NewID()),
		producer.WithRetry(2),
		producer.WithQueueSelector(producer.NewHashQueueSelector()),
		producer.WithCompressMsgBodyOverHowmuch(1<<30),
	)
	if err != nil {
		return err
	}
	if err := p.Start(); err != nil {
		return err
	}
	t.prod = p
	t.pc, err = rmq.NewPushConsumer(
		consumer.WithNsResolver(primitive.NewPassthroughResolver(t.ns)),
		consumer.WithGroupName(strings.ReplaceAll(t.tag, "-", "_")),
		consumer.WithInstance("mqbench-raw-"+broker.NewID()),
		consumer.WithConsumerModel(consumer.BroadCasting),
		consumer.WithConsumerOrder(true),
		consumer.WithConsumeFromWhere(consumer.ConsumeFromTimestamp),
		consumer.WithConsumeTimestamp(time.Now().Add(-time.Second).UTC().Format("20060102150405")),
		consumer.WithConsumeMessageBatchMaxSize(16),
	)
	if err != nil {
		return err
	}
	err = t.pc.Subscribe(t.topic, consumer.MessageSelector{Type: consumer.TAG, Expression: t.tag},
		func(_ context.Context, msgs ...*primitive.MessageExt) (consumer.ConsumeResult, error) {
			for _, m := range msgs {
				t.mu.Lock()
				r := t.byReader[m.GetProperty(propReader)]
				t.mu.Unlock()
				if r != nil {
					r.add(len(m.Body))
				}
			}
			return consumer.ConsumeSuccess, nil
		})
	if err != nil {
		return err
	}
	if err := t.pc.Start(); err != nil {
		return err
	}
	return t.await(ctx)
}

// await returns once the consumer reads: it sends probes to a reader of
// one message until one arrives. A new consumer is assigned its queues a
// moment (seconds, at times) after it starts.
func (t *rocketRawStream) await(ctx context.Context) error {
	r := newRawReader("probe-"+broker.NewID(), 1)
	probe := []byte("probe")
	r.size.Store(int64(len(probe)))
	t.mu.Lock()
	t.byReader[r.subj] = r
	t.mu.Unlock()
	defer func() {
		t.mu.Lock()
		delete(t.byReader, r.subj)
		t.mu.Unlock()
	}()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if err := t.send(ctx, r, probe); err != nil {
			return err
		}
		wctx, cancel := context.WithTimeout(ctx, 250*time.Millisecond)
		err := r.wait(wctx)
		cancel()
		if err == nil || ctx.Err() != nil {
			return ctx.Err()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the consumer of %s read nothing within 30s", t.topic)
		}
	}
}

func (t *rocketRawStream) newReader() (*rawReader, error) {
	r := newRawReader(broker.NewID(), t.msgs)
	r.stop = func() {
		t.mu.Lock()
		delete(t.byReader, r.subj)
		t.mu.Unlock()
	}
	t.mu.Lock()
	t.byReader[r.subj] = r
	t.mu.Unlock()
	return r, nil
}

// send sends one message of body p to reader r.
func (t *rocketRawStream) send(ctx context.Context, r *rawReader, p []byte) error {
	m := primitive.NewMessage(t.topic, p)
	m.WithTag(t.tag)
	m.WithShardingKey(r.subj)
	m.WithProperty(propReader, r.subj)
	_, err := t.prod.SendSync(ctx, m)
	return err
}

func (t *rocketRawStream) Call(ctx context.Context, p []byte) error {
	r, err := t.readers.get(t.newReader)
	if err != nil {
		return err
	}
	r.size.Store(int64(len(p)))
	for i := 0; i < t.msgs && err == nil; i++ {
		err = t.send(ctx, r, p)
	}
	if err == nil {
		err = r.wait(ctx)
	}
	t.readers.put(r, err)
	return err
}

func (t *rocketRawStream) Close() error {
	if t.pc != nil {
		_ = t.pc.Shutdown()
	}
	if t.prod != nil {
		_ = t.prod.Shutdown()
	}
	return nil
}
