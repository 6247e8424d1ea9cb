package cases

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
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

// RocketMQ returns the RocketMQ cases: raw rocketmq-client-go Request
// against a plain push consumer replying with a producer (the baseline),
// and mqrpc over broker/rocketmq (bytes in and out, as the baseline; and
// typed, through the codec). The servers consume with 64 goroutines,
// one message at a time, as broker/rocketmq does by default.
func RocketMQ(cfg Config) []harness.Case {
	return []harness.Case{
		{Group: "rocketmq", Name: "rocketmq-client-go Request", Role: harness.RoleRaw, Setup: cfg.rocketRaw},
		{Group: "rocketmq", Name: "mqrpc", Role: harness.RoleMQRPC, Setup: cfg.rocketMQRPC(true)},
		{Group: "rocketmq", Name: "mqrpc, typed + codec", Role: harness.RoleMQRPC, NoTarget: true, Setup: cfg.rocketMQRPC(false)},
	}
}

var rocketVersionRE = regexp.MustCompile(`rocketmq/(\d+\.\d+\.\d+)/lib|rocketmq-broker-(\d+\.\d+\.\d+)\.jar`)

// RocketMQVersion finds the version of the RocketMQ broker running on this
// machine from its Java command line (the class path of the jars that
// scripts/brokers fetched), or "" when it cannot tell.
func RocketMQVersion() string {
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil || !strings.Contains(string(b), "BrokerStartup") {
			continue
		}
		if m := rocketVersionRE.FindStringSubmatch(string(b)); m != nil {
			return m[1] + m[2]
		}
	}
	return ""
}

// quietLog drops rocketmq-client-go's log lines, which go to standard
// output by default.
type quietLog struct{}

func (quietLog) Debug(string, map[string]interface{})   {}
func (quietLog) Info(string, map[string]interface{})    {}
func (quietLog) Warning(string, map[string]interface{}) {}
func (quietLog) Error(string, map[string]interface{})   {}
func (quietLog) Fatal(string, map[string]interface{})   {}
func (quietLog) Level(string)                           {}
func (quietLog) OutputPath(string) error                { return nil }

// createTopic creates topic on the broker with the admin API, so that
// neither case pays for (or waits on) automatic topic creation.
func (c Config) createTopic(ctx context.Context, topic string) error {
	adm, err := admin.NewAdmin(admin.WithResolver(primitive.NewPassthroughResolver([]string{c.RocketMQNameServer})))
	if err != nil {
		return err
	}
	defer adm.Close()
	if err := adm.CreateTopic(ctx, admin.WithTopicCreate(topic), admin.WithBrokerAddrCreate(c.RocketMQBroker)); err != nil {
		return fmt.Errorf("create topic %s on %s: %w", topic, c.RocketMQBroker, err)
	}
	return nil
}

type rocketRawTarget struct {
	ns        []string
	topic     string
	requester rmq.Producer
	replier   rmq.Producer
	consumer  rmq.PushConsumer
	closeOnce sync.Once
}

func (c Config) rocketRaw(ctx context.Context) (harness.Target, error) {
	rlog.SetLogger(quietLog{})
	t := &rocketRawTarget{ns: []string{c.RocketMQNameServer}, topic: subject("mqbench")}
	if err := c.createTopic(ctx, t.topic); err != nil {
		return nil, err
	}
	if err := t.start(ctx); err != nil {
		_ = t.Close()
		return nil, err
	}
	return t, nil
}

func (t *rocketRawTarget) newProducer(name string) (rmq.Producer, error) {
	p, err := rmq.NewProducer(
		producer.WithNsResolver(primitive.NewPassthroughResolver(t.ns)),
		producer.WithGroupName(name),
		producer.WithInstanceName(name+"-"+broker.NewID()),
		producer.WithRetry(2),
		// rocketmq-client-go flags a reply body over this size compressed
		// but sends it raw; never compress (broker/rocketmq does the same).
		producer.WithCompressMsgBodyOverHowmuch(1<<30),
	)
	if err != nil {
		return nil, err
	}
	return p, p.Start()
}

func (t *rocketRawTarget) start(ctx context.Context) error {
	var err error
	if t.replier, err = t.newProducer("mqbench-raw-replier"); err != nil {
		return err
	}
	if t.requester, err = t.newProducer("mqbench-raw-requester"); err != nil {
		return err
	}
	t.consumer, err = rmq.NewPushConsumer(
		consumer.WithNsResolver(primitive.NewPassthroughResolver(t.ns)),
		consumer.WithGroupName(t.topic),
		consumer.WithInstance("mqbench-raw-"+broker.NewID()),
		consumer.WithConsumerModel(consumer.Clustering),
		consumer.WithConsumeFromWhere(consumer.ConsumeFromLastOffset),
		consumer.WithConsumeGoroutineNums(64),
		consumer.WithConsumeMessageBatchMaxSize(1),
	)
	if err != nil {
		return err
	}
	err = t.consumer.Subscribe(t.topic, consumer.MessageSelector{Type: consumer.TAG, Expression: "*"},
		func(ctx context.Context, msgs ...*primitive.MessageExt) (consumer.ConsumeResult, error) {
			for _, m := range msgs {
				// CreateReplyMessage drops the body (rocketmq-client-go
				// #890, #1046): set it afterwards.
				rep, err := consumer.CreateReplyMessage(m, nil)
				if err != nil {
					continue
				}
				rep.Body = m.Body
				_, _ = t.replier.SendSync(ctx, rep)
			}
			return consumer.ConsumeSuccess, nil
		})
	if err != nil {
		return err
	}
	if err := t.consumer.Start(); err != nil {
		return err
	}
	// A reply can reach the broker before the requester's first heartbeat
	// (rocketmq-client-go #1047) and is then lost: call until one works.
	return warmUp(ctx, t)
}

func (t *rocketRawTarget) Call(ctx context.Context, p []byte) error {
	ttl := 10 * time.Second
	if d, ok := ctx.Deadline(); ok {
		ttl = time.Until(d)
	}
	if ttl < time.Second {
		ttl = time.Second
	}
	rep, err := t.requester.Request(ctx, ttl, primitive.NewMessage(t.topic, p))
	if err != nil {
		return err
	}
	return checkEcho(p, rep.Body)
}

func (t *rocketRawTarget) Close() error {
	t.closeOnce.Do(func() {
		if t.consumer != nil {
			_ = t.consumer.Shutdown()
		}
		if t.requester != nil {
			_ = t.requester.Shutdown()
		}
		if t.replier != nil {
			_ = t.replier.Shutdown()
		}
	})
	return nil
}

// rocketMQRPC sets up mqrpc over RocketMQ, typed or with raw bytes.
func (c Config) rocketMQRPC(raw bool) func(context.Context) (harness.Target, error) {
	return func(ctx context.Context) (harness.Target, error) { return target(c.rocketMQRPCTarget(ctx, raw)) }
}

func (c Config) rocketMQRPCTarget(ctx context.Context, raw bool) (*mqrpcTarget, error) {
	service := subject("mqbench")
	if err := c.createTopic(ctx, service); err != nil {
		return nil, err
	}
	t, err := c.newTarget(raw, service, func(string) (broker.Broker, error) {
		return mqrocketmq.New(c.RocketMQNameServer)
	})
	if err != nil {
		return nil, err
	}
	// As for the raw case: call until one works, so that the measured
	// rounds start with the consumer's queues assigned and the requester
	// registered with the broker (a reply before that waits for the
	// server's retries, rocketmq-client-go #1047).
	if err := warmUp(ctx, t); err != nil {
		_ = t.Close()
		return nil, err
	}
	return t, nil
}

// warmUp calls t until a call succeeds, for up to 30 s.
func warmUp(ctx context.Context, t harness.Target) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		err := t.Call(cctx, []byte("warm-up"))
		cancel()
		if err == nil || time.Now().After(deadline) || ctx.Err() != nil {
			return err
		}
	}
}
