package rocketmq

import (
	"context"
	"testing"
	"time"

	"github.com/apache/rocketmq-client-go/v2/consumer"
	"github.com/apache/rocketmq-client-go/v2/primitive"

	"github.com/mqrpc/mqrpc/broker"
)

// The benchmarks in this file measure what mqrpc itself adds to a call, on
// either side, with a producer that answers at once: no broker, no client
// goroutines, so the numbers are steady enough to compare changes on a
// busy machine (BenchmarkRequest in bench_test.go measures the whole
// round trip against the raw client):
//
//	go test -run '^$' -bench 'Overhead' -benchmem ./broker/rocketmq/

// instantProducer completes every send at once. A request's reply carries
// the properties a real reply arrives with.
type instantProducer struct{ replyBody []byte }

func (instantProducer) Start() error    { return nil }
func (instantProducer) Shutdown() error { return nil }

func (instantProducer) SendSync(_ context.Context, msgs ...*primitive.Message) (*primitive.SendResult, error) {
	_ = msgs[0].MarshallProperties() // as the client does
	return &primitive.SendResult{Status: primitive.SendOK}, nil
}

func (p instantProducer) RequestAsync(ctx context.Context, _ time.Duration, cb func(context.Context, *primitive.Message, error), msg *primitive.Message) error {
	// What the client adds before it sends.
	msg.WithProperty(propCorrelationID, "0a7e2c51-8a1c-4b43-9d44-0c3b1f2d8e90")
	msg.WithProperty(propReplyTo, "192.0.2.2@mqrpc-1")
	msg.WithProperty("UNIQ_KEY", "7F000001000100000000000000000001")
	_ = msg.MarshallProperties()
	r := &primitive.Message{Topic: "DefaultCluster_REPLY_TOPIC", Body: p.replyBody}
	r.WithProperties(map[string]string{
		broker.HeaderContentType: "application/msgpack",
		propKeys:                 "reply-1",
		propMsgType:              msgTypeReply,
		propCorrelationID:        "0a7e2c51-8a1c-4b43-9d44-0c3b1f2d8e90",
		propReplyTo:              "192.0.2.2@mqrpc-1",
		propTTL:                  "10",
		propCluster:              "DefaultCluster",
		"UNIQ_KEY":               "7F000001000100000000000000000002",
	})
	cb(ctx, r, nil)
	cb(ctx, r, nil) // the client's second firing (see Broker.Request)
	return nil
}

// BenchmarkOverheadRequest is the client side: Broker.Request from the
// caller's message to the caller's reply.
func BenchmarkOverheadRequest(b *testing.B) {
	br, err := newBroker("127.0.0.1:9876")
	if err != nil {
		b.Fatal(err)
	}
	br.producer = instantProducer{replyBody: make([]byte, 4096)}
	defer br.Close()
	body := make([]byte, 4096)
	b.ReportAllocs()
	for b.Loop() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := br.Request(ctx, &broker.Message{
			ID: broker.NewID(), Subject: "svc", Body: body,
			Header: broker.Header{broker.HeaderMethod: "Echo", broker.HeaderContentType: "application/msgpack"},
		})
		cancel()
		if err != nil {
			b.Fatal(err)
		}
	}
}

// deepEcho echoes after using about 6 KiB of stack over a dozen frames, as
// a handler that decodes and encodes does.
//
//go:noinline
func deepEcho(depth int, m *broker.Message) *broker.Message {
	var frame [512]byte
	if depth == 0 {
		return &broker.Message{Header: broker.Header{broker.HeaderContentType: m.Header.Get(broker.HeaderContentType)}, Body: m.Body}
	}
	frame[depth] = byte(depth)
	r := deepEcho(depth-1, m)
	r.Body = r.Body[:len(r.Body)-int(frame[depth])+depth]
	return r
}

// BenchmarkOverheadServe is the server side: the consumer callback from a
// delivered request to the reply's send, on a goroutine of its own as the
// client runs it, with a handler that needs some stack.
func BenchmarkOverheadServe(b *testing.B) {
	br, err := newBroker("127.0.0.1:9876")
	if err != nil {
		b.Fatal(err)
	}
	br.producer = instantProducer{}
	defer br.Close()
	s := newSubscription(br, "svc", "svc", "svc", broker.HandlerFunc(func(_ context.Context, m *broker.Message) (*broker.Message, error) {
		return deepEcho(12, m), nil
	}), broker.NewServeConfig("svc"))
	defer s.abandon()
	body := make([]byte, 4096)
	// The properties of a request as the consumer delivers it.
	props := map[string]string{
		broker.HeaderMethod:      "Echo",
		broker.HeaderContentType: "application/msgpack",
		broker.HeaderDeadline:    broker.FormatDeadline(time.Now().Add(time.Hour)),
		propKeys:                 "request-1",
		propTags:                 "Echo",
		propTTL:                  "10",
		propCorrelationID:        "0a7e2c51-8a1c-4b43-9d44-0c3b1f2d8e90",
		propReplyTo:              "192.0.2.2@mqrpc-1",
		propCluster:              "DefaultCluster",
		"UNIQ_KEY":               "7F000001000100000000000000000001",
		"MIN_OFFSET":             "0",
		"MAX_OFFSET":             "100",
		"CONSUME_START_TIME":     "1700000000000",
	}
	done := make(chan consumer.ConsumeResult)
	b.ReportAllocs()
	for b.Loop() {
		// Building the delivery is part of the measure (3 allocations,
		// 1 KiB): stopping the timer for it costs more than it does.
		m := &primitive.MessageExt{Message: primitive.Message{Topic: "svc", Body: body}}
		p := make(map[string]string, len(props))
		for k, v := range props {
			p[k] = v
		}
		m.WithProperties(p)
		go func() {
			res, _ := s.consume(context.Background(), m)
			done <- res
		}()
		if res := <-done; res != consumer.ConsumeSuccess {
			b.Fatal(res)
		}
	}
}
