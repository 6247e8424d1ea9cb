package amqp

import (
	"context"
	"fmt"
	"strings"
	"sync"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/kernel"
)

var _ broker.Streamer = (*Broker)(nil)

// headerInbox carries the token of the inbox a posted message is for: the
// inboxes of a connection share one queue.
const headerInbox = "mqrpc-inbox"

// streams are the stream inboxes of a connection: one exclusive,
// server-named queue per session (declared on first use, gone with the
// connection), consumed by one goroutine that routes each message to its
// inbox by the mqrpc-inbox header, and one channel to post on. RabbitMQ
// keeps a channel's messages to one queue in order.
type streams struct {
	mu    sync.Mutex
	sess  *session // the session the queue lives on; a new one needs a new queue
	queue string
	ch    *amqp091.Channel // consumes the queue
	pub   *amqp091.Channel // posts (guarded by pubMu)
	pubMu sync.Mutex
	table *kernel.Inboxes // the inboxes on queue; a new queue, a new table
}

// OpenInbox implements broker.Streamer: the inbox's address is the
// connection's stream queue and a token, "<queue>/<token>".
func (b *Broker) OpenInbox(fn func(*broker.Message)) (broker.Inbox, error) {
	if fn == nil {
		return nil, fmt.Errorf("amqp: open inbox: nil function")
	}
	ctx, cancel := context.WithTimeout(b.ctx, b.cfg.dialTimeout)
	defer cancel()
	s, err := b.session(ctx)
	if err != nil {
		return nil, fmt.Errorf("amqp: open inbox: %w", err)
	}
	t := &b.streams
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.sess != s {
		if err := b.streamQueue(s); err != nil {
			return nil, fmt.Errorf("amqp: open inbox: %w", err)
		}
	}
	return t.table.Open(t.queue+"/", fn), nil
}

// streamQueue declares the stream queue of session s and starts consuming
// it; b.streams.mu is held.
func (b *Broker) streamQueue(s *session) error {
	t := &b.streams
	ch, err := s.conn.Channel()
	if err != nil {
		return err
	}
	q, err := ch.QueueDeclare("", false, true, true, false, nil)
	if err == nil {
		var pub *amqp091.Channel
		if pub, err = s.conn.Channel(); err == nil {
			var deliveries <-chan amqp091.Delivery
			if deliveries, err = ch.Consume(q.Name, "", true, true, false, false, nil); err != nil {
				_ = pub.Close()
			} else {
				if t.ch != nil {
					_ = t.ch.Close()
					_ = t.pub.Close()
				}
				t.sess, t.queue, t.ch, t.pub = s, q.Name, ch, pub
				t.table = new(kernel.Inboxes)
				table := t.table
				b.wg.Add(1)
				go func() {
					defer b.wg.Done()
					for d := range deliveries {
						route(table, &d)
					}
				}()
				return nil
			}
		}
	}
	_ = ch.Close()
	return err
}

func route(table *kernel.Inboxes, d *amqp091.Delivery) {
	token, _ := d.Headers[headerInbox].(string)
	table.Dispatch(token, func() *broker.Message {
		m := &broker.Message{ID: d.MessageId, Body: d.Body, Header: make(broker.Header, len(d.Headers))}
		for k, v := range d.Headers {
			if s, ok := v.(string); ok && k != headerInbox {
				m.Header[strings.ToLower(k)] = s
			}
		}
		return m
	})
}

// Post implements broker.Streamer: a publish through the default exchange
// to the inbox's queue, without confirm or mandatory flag: nothing is
// stored, and a message to a queue that is gone is dropped.
func (b *Broker) Post(ctx context.Context, addr string, msg *broker.Message) error {
	queue, token, ok := strings.Cut(addr, "/")
	if !ok {
		return fmt.Errorf("amqp: post: malformed inbox address %q", addr)
	}
	t := &b.streams
	t.mu.Lock()
	pub := t.pub
	if pub == nil || pub.IsClosed() {
		t.mu.Unlock()
		// No inbox opened on this connection yet (or it was lost): open
		// the queue and its channels, then post.
		in, err := b.OpenInbox(func(*broker.Message) {})
		if err != nil {
			return fmt.Errorf("amqp: post: %w", err)
		}
		_ = in.Close()
		t.mu.Lock()
		pub = t.pub
	}
	t.mu.Unlock()
	h := make(amqp091.Table, len(msg.Header)+1)
	for k, v := range msg.Header {
		h[strings.ToLower(k)] = v
	}
	h[headerInbox] = token
	t.pubMu.Lock()
	err := pub.PublishWithContext(ctx, "", queue, false, false, amqp091.Publishing{MessageId: msg.ID, Headers: h, Body: msg.Body})
	t.pubMu.Unlock()
	if err != nil {
		return fmt.Errorf("amqp: post: %w", b.closedOr(err))
	}
	return nil
}
