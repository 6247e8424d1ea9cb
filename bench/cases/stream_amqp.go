package cases

import (
	"context"
	"errors"
	"fmt"
	"sync"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/mqrpc/mqrpc/bench/harness"
	"github.com/mqrpc/mqrpc/broker"
	mqamqp "github.com/mqrpc/mqrpc/broker/amqp"
)

// AMQPStreams returns the RabbitMQ stream cases: raw amqp091-go
// publishing through the default exchange to an exclusive, auto-ack
// queue of the reader's (the baseline), and the stream engine over
// broker/amqp's inboxes, which is what they do.
func AMQPStreams(cfg Config) []harness.Case {
	const n = amqpStreamMsgs
	return []harness.Case{
		{Group: "amqp-stream", Name: "amqp091-go Publish → queue", Role: harness.RoleRaw, Msgs: n, Setup: cfg.amqpRawStream},
		{Group: "amqp-stream", Name: "mqrpc stream", Role: harness.RoleMQRPC, Msgs: n,
			Setup: func(context.Context) (harness.Target, error) {
				return newEngineTarget(n, subject("mqbench_stream"), func(name string) (broker.Broker, error) {
					return mqamqp.New(cfg.AMQPURL, mqamqp.WithConnectionName(name))
				})
			}},
	}
}

// amqpRawStream publishes on one connection, through one channel, to
// queues consumed on another connection: each reader declares an
// exclusive, auto-deleted, server-named queue and consumes it with
// automatic acknowledgement, and the publisher sends to it through the
// default exchange, neither mandatory nor confirmed, as broker/amqp's
// inboxes and Post do.
type amqpRawStream struct {
	pubConn, subConn *amqp091.Connection
	pubCh, subCh     *amqp091.Channel
	pubMu            sync.Mutex
	msgs             int
	readers          readers
	wg               sync.WaitGroup
}

func (c Config) amqpRawStream(context.Context) (harness.Target, error) {
	t := &amqpRawStream{msgs: amqpStreamMsgs}
	if err := t.start(c.AMQPURL); err != nil {
		_ = t.Close()
		return nil, err
	}
	return t, nil
}

func (t *amqpRawStream) start(url string) error {
	var err error
	if t.pubConn, err = amqp091.DialConfig(url, amqp091.Config{Properties: amqp091.Table{"connection_name": "mqbench-server"}}); err != nil {
		return fmt.Errorf("dial %s: %w", url, err)
	}
	if t.pubCh, err = t.pubConn.Channel(); err != nil {
		return err
	}
	if t.subConn, err = amqp091.DialConfig(url, amqp091.Config{Properties: amqp091.Table{"connection_name": "mqbench-client"}}); err != nil {
		return fmt.Errorf("dial %s: %w", url, err)
	}
	t.subCh, err = t.subConn.Channel()
	return err
}

func (t *amqpRawStream) newReader() (*rawReader, error) {
	q, err := t.subCh.QueueDeclare("", false, true, true, false, nil)
	if err != nil {
		return nil, err
	}
	tag := "mqbench-" + broker.NewID()
	deliveries, err := t.subCh.Consume(q.Name, tag, true, true, false, false, nil)
	if err != nil {
		return nil, err
	}
	r := newRawReader(q.Name, t.msgs)
	r.stop = func() { _ = t.subCh.Cancel(tag, false) }
	t.wg.Add(1)
	go func() {
		defer t.wg.Done()
		for d := range deliveries {
			r.add(len(d.Body))
		}
	}()
	return r, nil
}

func (t *amqpRawStream) Call(ctx context.Context, p []byte) error {
	r, err := t.readers.get(t.newReader)
	if err != nil {
		return err
	}
	r.size.Store(int64(len(p)))
	for i := 0; i < t.msgs && err == nil; i++ {
		t.pubMu.Lock()
		err = t.pubCh.PublishWithContext(ctx, "", r.subj, false, false, amqp091.Publishing{Body: p})
		t.pubMu.Unlock()
	}
	if err == nil {
		err = r.wait(ctx)
	}
	t.readers.put(r, err)
	return err
}

func (t *amqpRawStream) Close() error {
	var errs []error
	for _, c := range []*amqp091.Connection{t.pubConn, t.subConn} {
		if c != nil {
			errs = append(errs, c.Close())
		}
	}
	t.wg.Wait()
	return errors.Join(errs...)
}
