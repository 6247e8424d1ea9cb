package cases

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/mqrpc/mqrpc/bench/harness"
	"github.com/mqrpc/mqrpc/broker"
	mqamqp "github.com/mqrpc/mqrpc/broker/amqp"
)

// AMQP returns the RabbitMQ cases: raw amqp091-go with direct reply-to
// against a plain consumer (the baseline) and mqrpc over broker/amqp (bytes
// in and out, as the baseline; and typed, through the codec).
func AMQP(cfg Config) []harness.Case {
	return []harness.Case{
		{Group: "amqp", Name: "amqp091-go direct reply-to", Role: harness.RoleRaw, Setup: cfg.amqpRaw},
		{Group: "amqp", Name: "mqrpc", Role: harness.RoleMQRPC, Setup: cfg.amqpMQRPC(true)},
		{Group: "amqp", Name: "mqrpc, typed + codec", Role: harness.RoleMQRPC, NoTarget: true, Setup: cfg.amqpMQRPC(false)},
	}
}

// RabbitMQVersion connects to url and returns the server's product and
// version as it announces them.
func RabbitMQVersion(url string) (string, error) {
	conn, err := amqp091.Dial(url)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	v, _ := conn.Properties["version"].(string)
	p, _ := conn.Properties["product"].(string)
	if p == "" {
		p = "RabbitMQ"
	}
	return p + " " + v, nil
}

// directReplyTo is RabbitMQ's pseudo-queue for direct reply-to.
const directReplyTo = "amq.rabbitmq.reply-to"

// amqpRawTarget is what a competent plain amqp091-go user writes for
// concurrent calls: one connection and channel, one consumer on the
// direct reply-to pseudo-queue, replies matched by correlation id. The
// server consumes the queue with prefetch 64, publishes the reply and
// acknowledges after it, as mqrpc does.
type amqpRawTarget struct {
	cliConn, srvConn *amqp091.Connection
	cliCh, srvCh     *amqp091.Channel
	queue            string

	mu      sync.Mutex
	pending map[string]chan []byte
	next    atomic.Uint64
	done    sync.WaitGroup
}

func (c Config) amqpRaw(context.Context) (harness.Target, error) {
	t := &amqpRawTarget{queue: subject("mqbench"), pending: map[string]chan []byte{}}
	if err := t.start(c.AMQPURL); err != nil {
		_ = t.Close()
		return nil, err
	}
	return t, nil
}

func (t *amqpRawTarget) start(url string) error {
	var err error
	if t.srvConn, err = amqp091.Dial(url); err != nil {
		return fmt.Errorf("dial %s: %w", url, err)
	}
	if t.srvCh, err = t.srvConn.Channel(); err != nil {
		return err
	}
	if _, err = t.srvCh.QueueDeclare(t.queue, false, true, false, false, nil); err != nil {
		return err
	}
	if err = t.srvCh.Qos(64, 0, false); err != nil {
		return err
	}
	reqs, err := t.srvCh.Consume(t.queue, "", false, false, false, false, nil)
	if err != nil {
		return err
	}
	t.done.Add(1)
	go func() {
		defer t.done.Done()
		for d := range reqs {
			_ = t.srvCh.Publish("", d.ReplyTo, false, false, amqp091.Publishing{
				CorrelationId: d.CorrelationId, Body: d.Body,
			})
			_ = d.Ack(false)
		}
	}()

	if t.cliConn, err = amqp091.Dial(url); err != nil {
		return fmt.Errorf("dial %s: %w", url, err)
	}
	if t.cliCh, err = t.cliConn.Channel(); err != nil {
		return err
	}
	reps, err := t.cliCh.Consume(directReplyTo, "", true, false, false, false, nil)
	if err != nil {
		return err
	}
	t.done.Add(1)
	go func() {
		defer t.done.Done()
		for d := range reps {
			t.mu.Lock()
			ch := t.pending[d.CorrelationId]
			delete(t.pending, d.CorrelationId)
			t.mu.Unlock()
			if ch != nil {
				ch <- d.Body
			}
		}
	}()
	return nil
}

func (t *amqpRawTarget) Call(ctx context.Context, p []byte) error {
	corr := strconv.FormatUint(t.next.Add(1), 36)
	ch := make(chan []byte, 1)
	t.mu.Lock()
	t.pending[corr] = ch
	t.mu.Unlock()
	err := t.cliCh.PublishWithContext(ctx, "", t.queue, false, false, amqp091.Publishing{
		CorrelationId: corr, ReplyTo: directReplyTo, Body: p,
	})
	if err == nil {
		select {
		case rep := <-ch:
			return checkEcho(p, rep)
		case <-ctx.Done():
			err = ctx.Err()
		}
	}
	t.mu.Lock()
	delete(t.pending, corr)
	t.mu.Unlock()
	return err
}

func (t *amqpRawTarget) Close() error {
	var errs []error
	for _, c := range []*amqp091.Connection{t.cliConn, t.srvConn} {
		if c != nil {
			errs = append(errs, c.Close())
		}
	}
	t.done.Wait()
	return errors.Join(errs...)
}

// amqpMQRPC sets up mqrpc over RabbitMQ, typed or with raw bytes.
func (c Config) amqpMQRPC(raw bool) func(context.Context) (harness.Target, error) {
	return func(context.Context) (harness.Target, error) { return target(c.amqpMQRPCTarget(raw)) }
}

func (c Config) amqpMQRPCTarget(raw bool) (*mqrpcTarget, error) {
	return c.newTarget(raw, subject("mqbench"), func(name string) (broker.Broker, error) {
		return mqamqp.New(c.AMQPURL, mqamqp.WithConnectionName(name))
	})
}
