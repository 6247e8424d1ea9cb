package chaos

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	rmq "github.com/apache/rocketmq-client-go/v2"
	"github.com/apache/rocketmq-client-go/v2/consumer"
	"github.com/apache/rocketmq-client-go/v2/primitive"
	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rabbitmq/amqp091-go"

	"github.com/mqrpc/mqrpc/broker/nats"
)

// DeadLetter is a request found where a durable target keeps the requests
// it gave up on.
type DeadLetter struct {
	// ID is the message ID the dead letter carries on the wire
	// (Nats-Msg-Id, message_id), for the report; scenarios recognise
	// their requests by Body, which every broker keeps as it was.
	ID   string
	Body []byte
	// Deliveries is the delivery count the dead letter states
	// (mqrpc-deliveries, x-mqrpc-deliveries), 0 when it states none.
	Deliveries int
	// Reason is the failure it states (mqrpc-dead-reason, x-mqrpc-error).
	Reason string
}

// DeadLetterReader reads the dead letters of one subject with the broker's
// plain client, as an operator would.
type DeadLetterReader struct {
	mu    sync.Mutex
	seen  []DeadLetter
	poll  func() ([]DeadLetter, error)
	close func()
}

// ErrNoDeadLetters is returned by Target.DeadLetters for a target that
// keeps no dead letters a plain client can read.
var ErrNoDeadLetters = errors.New("chaos: target has no readable dead letters")

// DeadLetters returns a reader of subject's dead letters on the broker at
// addr.
func (t Target) DeadLetters(addr, subject string) (*DeadLetterReader, error) {
	switch t.Name {
	case "nats-jetstream":
		return natsDeadLetters(addr, subject)
	case "rabbitmq-durable", "rabbitmq-quorum":
		return amqpDeadLetters(addr, subject)
	case "rocketmq":
		return rocketDeadLetters(addr, subject)
	}
	return nil, fmt.Errorf("%w: %s", ErrNoDeadLetters, t.Name)
}

// Poll reads what arrived since the last Poll and returns every dead letter
// read so far.
func (r *DeadLetterReader) Poll() ([]DeadLetter, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	got, err := r.poll()
	r.seen = append(r.seen, got...)
	return append([]DeadLetter(nil), r.seen...), err
}

// Close releases the reader's connection.
func (r *DeadLetterReader) Close() { r.close() }

// natsDeadLetters reads "<DeadLetterPrefix>.<subject>" from the dead-letter
// stream with an ordered consumer (reading does not remove them).
func natsDeadLetters(addr, subject string) (*DeadLetterReader, error) {
	nc, err := natsgo.Connect(addr, natsgo.Name("chaos-dead-letters"))
	if err != nil {
		return nil, fmt.Errorf("chaos: dead letters: %w", err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("chaos: dead letters: %w", err)
	}
	var cons jetstream.Consumer
	poll := func() ([]DeadLetter, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if cons == nil {
			c, err := js.OrderedConsumer(ctx, jsDeadStream, jetstream.OrderedConsumerConfig{
				FilterSubjects: []string{jsDeadPrefix + "." + subject},
			})
			if err != nil {
				return nil, fmt.Errorf("chaos: dead letters of %s: %w", subject, err)
			}
			cons = c
		}
		var out []DeadLetter
		for {
			batch, err := cons.Fetch(100, jetstream.FetchMaxWait(300*time.Millisecond))
			if err != nil {
				cons = nil
				return out, fmt.Errorf("chaos: dead letters of %s: %w", subject, err)
			}
			n := 0
			for m := range batch.Messages() {
				n++
				h := m.Headers()
				d, _ := strconv.Atoi(h.Get(nats.HeaderDeliveries))
				out = append(out, DeadLetter{ID: h.Get(nats.HeaderMsgID), Body: m.Data(), Deliveries: d, Reason: h.Get(nats.HeaderDeadReason)})
			}
			if batch.Error() != nil && !errors.Is(batch.Error(), context.DeadlineExceeded) && !errors.Is(batch.Error(), natsgo.ErrTimeout) {
				cons = nil
				return out, fmt.Errorf("chaos: dead letters of %s: %w", subject, batch.Error())
			}
			if n < 100 {
				return out, nil
			}
		}
	}
	return &DeadLetterReader{poll: poll, close: nc.Close}, nil
}

// amqpDeadLetters takes the messages of "<subject>.dead-letter" (basic.get
// with automatic acknowledgement: the reader keeps them).
func amqpDeadLetters(addr, subject string) (*DeadLetterReader, error) {
	conn, err := amqp091.Dial(addr)
	if err != nil {
		return nil, fmt.Errorf("chaos: dead letters: %w", err)
	}
	var ch *amqp091.Channel
	poll := func() ([]DeadLetter, error) {
		var out []DeadLetter
		if ch == nil || ch.IsClosed() {
			c, err := conn.Channel()
			if err != nil {
				return nil, fmt.Errorf("chaos: dead letters: %w", err)
			}
			ch = c
		}
		for {
			d, ok, err := ch.Get(subject+".dead-letter", true)
			if err != nil {
				// The queue does not exist yet: the channel is closed,
				// a new one is opened next time.
				return out, fmt.Errorf("chaos: dead letters of %s: %w", subject, err)
			}
			if !ok {
				return out, nil
			}
			var n int
			switch v := d.Headers["x-mqrpc-deliveries"].(type) {
			case int32:
				n = int(v)
			case int64:
				n = int(v)
			}
			reason, _ := d.Headers["x-mqrpc-error"].(string)
			out = append(out, DeadLetter{ID: d.MessageId, Body: d.Body, Deliveries: n, Reason: reason})
		}
	}
	return &DeadLetterReader{poll: poll, close: func() { _ = conn.Close() }}, nil
}

// rocketDeadLetters consumes RocketMQ's dead-letter topic of the serving
// group ("%DLQ%<group>"; the group is the subject), from its first message,
// with a push consumer of its own group. The topic exists only once the
// broker dead-lettered something, so the consumer is started on the first
// poll that finds it (tried at most every two seconds).
func rocketDeadLetters(addr, subject string) (*DeadLetterReader, error) {
	var (
		mu      sync.Mutex
		got     []DeadLetter
		pc      rmq.PushConsumer
		lastTry time.Time
	)
	topic := "%DLQ%" + subject
	poll := func() ([]DeadLetter, error) {
		if pc == nil && time.Since(lastTry) > 2*time.Second {
			lastTry = time.Now()
			c, err := rmq.NewPushConsumer(
				consumer.WithNsResolver(primitive.NewPassthroughResolver([]string{addr})),
				consumer.WithGroupName("chaos-dlq-"+strings.ReplaceAll(subject, "%", "")),
				consumer.WithInstance("chaos-dlq-"+strconv.FormatInt(time.Now().UnixNano(), 36)),
				consumer.WithConsumeFromWhere(consumer.ConsumeFromFirstOffset),
			)
			if err != nil {
				return nil, fmt.Errorf("chaos: dead letters: %w", err)
			}
			err = c.Subscribe(topic, consumer.MessageSelector{}, func(_ context.Context, msgs ...*primitive.MessageExt) (consumer.ConsumeResult, error) {
				mu.Lock()
				defer mu.Unlock()
				for _, m := range msgs {
					n, _ := strconv.Atoi(m.GetProperty("mqrpc-deliveries"))
					if n == 0 {
						n = int(m.ReconsumeTimes)
					}
					got = append(got, DeadLetter{ID: m.GetKeys(), Body: m.Body, Deliveries: n, Reason: m.GetProperty("mqrpc-dead-reason")})
				}
				return consumer.ConsumeSuccess, nil
			})
			if err == nil {
				err = c.Start()
			}
			if err != nil {
				_ = c.Shutdown()
				return nil, fmt.Errorf("chaos: dead letters of %s: %w", subject, err)
			}
			pc = c
		}
		mu.Lock()
		defer mu.Unlock()
		out := got
		got = nil
		return out, nil
	}
	return &DeadLetterReader{poll: poll, close: func() {
		if pc != nil {
			_ = pc.Shutdown()
		}
	}}, nil
}

// JetStream names of the durable NATS target (Target.Open).
const (
	jsStream     = "CHAOS"
	jsSubject    = "chaos.q"
	jsDeadPrefix = "chaos.dead"
	jsDeadStream = "CHAOS_DEAD"
)

// JetStreamDeliveries returns how many deliveries JetStream made to the
// consumer of subject so far (first deliveries and redeliveries): the
// broker's own count, which a redelivery loop that never reaches a handler
// still drives up.
func JetStreamDeliveries(addr, subject string) (uint64, error) {
	nc, err := natsgo.Connect(addr, natsgo.Name("chaos-consumer-info"))
	if err != nil {
		return 0, fmt.Errorf("chaos: consumer info: %w", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return 0, fmt.Errorf("chaos: consumer info: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := js.Consumer(ctx, jsStream, subject)
	if err != nil {
		return 0, fmt.Errorf("chaos: consumer %s: %w", subject, err)
	}
	info, err := c.Info(ctx)
	if err != nil {
		return 0, fmt.Errorf("chaos: consumer %s: %w", subject, err)
	}
	return info.Delivered.Consumer, nil
}

// JetStreamSubject is the stream subject a request to subject is stored
// under, for plain clients.
func JetStreamSubject(subject string) string { return jsSubject + "." + subject }
