package rocketmq_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	rmq "github.com/apache/rocketmq-client-go/v2"
	"github.com/apache/rocketmq-client-go/v2/consumer"
	"github.com/apache/rocketmq-client-go/v2/primitive"
	"github.com/apache/rocketmq-client-go/v2/producer"
	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/rocketmq"
)

// BenchmarkRequest compares one request-reply round trip through mqrpc with
// the same through plain rocketmq-client-go (producer.Request and a push
// consumer that replies), against the same broker in the same run, at 1
// and 64 concurrent callers. Report the ratio mqrpc/raw of ns/op:
//
//	go test -run '^$' -bench BenchmarkRequest -benchtime 2000x ./broker/rocketmq/
func BenchmarkRequest(b *testing.B) {
	addr := realBroker(b)
	body := []byte(strings.Repeat("x", 64))

	// mqrpc: a server Broker and a client Broker.
	mqTopic := "mqrpcbench_" + broker.NewID()
	srv, err := rocketmq.New(addr)
	require.NoError(b, err)
	defer srv.Close()
	sub, err := srv.Serve(mqTopic, broker.HandlerFunc(echoHandler))
	require.NoError(b, err)
	defer sub.Stop(context.Background())
	cli, err := rocketmq.New(addr)
	require.NoError(b, err)
	defer cli.Close()

	// raw: the same shape with the library alone.
	rawTopic := "rawbench_" + broker.NewID()
	raw := newRawRPC(b, addr, rawTopic)
	defer raw.close()

	time.Sleep(settle)
	mqCall := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := cli.Request(ctx, &broker.Message{Subject: mqTopic, Body: body})
		return err
	}
	rawCall := func() error {
		_, err := raw.requester.Request(context.Background(), 10*time.Second, primitive.NewMessage(rawTopic, body))
		return err
	}
	warm(b, mqCall)
	warm(b, rawCall)

	for _, c := range []int{1, 64} {
		b.Run(fmt.Sprintf("c=%d/mqrpc", c), func(b *testing.B) { runConcurrent(b, c, mqCall) })
		b.Run(fmt.Sprintf("c=%d/raw", c), func(b *testing.B) { runConcurrent(b, c, rawCall) })
		// The machine is shared and noisy: the ratio is measured in
		// alternating rounds of both, so a slow spell hits both sides.
		b.Run(fmt.Sprintf("c=%d/ratio", c), func(b *testing.B) {
			const rounds = 10
			per := max(b.N/rounds, c)
			var mq, raw, mqCPU, rawCPU time.Duration
			side := func(call func() error, wall, cpu *time.Duration) {
				c0 := cpuTime()
				*wall += timeCalls(b, c, per, call)
				*cpu += cpuTime() - c0
			}
			for r := 0; r < rounds; r++ {
				// Alternate which side goes first, so neither always
				// follows the other's garbage or warm caches.
				if r%2 == 0 {
					side(mqCall, &mq, &mqCPU)
					side(rawCall, &raw, &rawCPU)
				} else {
					side(rawCall, &raw, &rawCPU)
					side(mqCall, &mq, &mqCPU)
				}
			}
			n := float64(rounds * per)
			b.ReportMetric(float64(mq.Nanoseconds())/n, "mqrpc-ns/call")
			b.ReportMetric(float64(raw.Nanoseconds())/n, "raw-ns/call")
			b.ReportMetric(float64(mq)/float64(raw), "mqrpc/raw")
			// Go CPU (client and server, both in this process; the broker's
			// JVM is the same for both): steadier than wall time on a
			// shared machine.
			b.ReportMetric(float64(mqCPU.Nanoseconds())/n, "mqrpc-cpu-ns/call")
			b.ReportMetric(float64(rawCPU.Nanoseconds())/n, "raw-cpu-ns/call")
			b.ReportMetric(float64(mqCPU)/float64(rawCPU), "cpu-mqrpc/raw")
		})
	}
}

// cpuTime is the user plus system CPU time this process used so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// timeCalls makes n calls over c goroutines and returns the elapsed time.
func timeCalls(b *testing.B, c, n int, call func() error) time.Duration {
	var next atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for i := 0; i < c; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(n) {
				if err := call(); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	return time.Since(start)
}

// warm makes the first calls succeed before timing: routes, connections
// and the requester's registration with the broker (see heartbeatFunc).
func warm(b *testing.B, call func() error) {
	deadline := time.Now().Add(40 * time.Second)
	for ok := 0; ok < 20; {
		if err := call(); err != nil {
			require.True(b, time.Now().Before(deadline), "warm-up: %v", err)
			continue
		}
		ok++
	}
}

func runConcurrent(b *testing.B, c int, call func() error) {
	var next atomic.Int64
	var wg sync.WaitGroup
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < c; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(b.N) {
				if err := call(); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

// rawRPC is request-reply written directly on rocketmq-client-go, as its
// examples do, with the reply built by hand (CreateReplyMessage drops the
// body, #890).
type rawRPC struct {
	requester rmq.Producer
	replier   rmq.Producer
	consumer  rmq.PushConsumer
}

func newRawRPC(b testing.TB, addr, topic string) *rawRPC {
	ns := primitive.NewPassthroughResolver([]string{addr})
	r := &rawRPC{}
	var err error
	r.requester, err = rmq.NewProducer(producer.WithNsResolver(ns), producer.WithInstanceName("rawreq-"+broker.NewID()), producer.WithGroupName("rawbench"))
	require.NoError(b, err)
	require.NoError(b, r.requester.Start())
	r.replier, err = rmq.NewProducer(producer.WithNsResolver(ns), producer.WithInstanceName("rawrep-"+broker.NewID()), producer.WithGroupName("rawbench"),
		producer.WithCompressMsgBodyOverHowmuch(1<<30))
	require.NoError(b, err)
	require.NoError(b, r.replier.Start())
	// Create the topic (autoCreateTopicEnable) so the consumer finds it.
	_, err = r.replier.SendSync(context.Background(), primitive.NewMessage(topic, []byte("init")))
	require.NoError(b, err)
	reply := func(ctx context.Context, msgs ...*primitive.MessageExt) (consumer.ConsumeResult, error) {
		for _, m := range msgs {
			if m.GetProperty(primitive.PropertyCorrelationID) == "" {
				continue
			}
			rm := primitive.NewMessage(m.GetProperty(primitive.PropertyCluster)+"_REPLY_TOPIC", m.Body)
			rm.WithProperty(primitive.PropertyMsgType, "reply")
			rm.WithProperty(primitive.PropertyCorrelationID, m.GetProperty(primitive.PropertyCorrelationID))
			rm.WithProperty(primitive.PropertyMessageReplyToClient, m.GetProperty(primitive.PropertyMessageReplyToClient))
			rm.WithProperty(primitive.PropertyMessageTTL, m.GetProperty(primitive.PropertyMessageTTL))
			_, _ = r.replier.SendSync(ctx, rm)
		}
		return consumer.ConsumeSuccess, nil
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		r.consumer, err = rmq.NewPushConsumer(consumer.WithNsResolver(ns), consumer.WithGroupName("rawbench_"+strings.ReplaceAll(broker.NewID(), "-", "_")),
			consumer.WithInstance("rawcon-"+broker.NewID()), consumer.WithConsumeGoroutineNums(broker.DefaultConcurrency), consumer.WithConsumeMessageBatchMaxSize(1))
		require.NoError(b, err)
		require.NoError(b, r.consumer.Subscribe(topic, consumer.MessageSelector{Type: consumer.TAG, Expression: "*"}, reply))
		if err = r.consumer.Start(); err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	require.NoError(b, err)
	// The raw requester needs the same heartbeat nudge as mqrpc's (#1047),
	// once it knows the broker.
	_, _ = r.requester.SendSync(context.Background(), primitive.NewMessage(topic, []byte("route")))
	if hb := rocketmq.HeartbeatFunc(r.requester); hb != nil {
		hb()
	}
	return r
}

func (r *rawRPC) close() {
	_ = r.consumer.Shutdown()
	_ = r.requester.Shutdown()
	_ = r.replier.Shutdown()
}
