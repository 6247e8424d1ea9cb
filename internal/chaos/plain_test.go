//go:build chaos

package chaos_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	rmq "github.com/apache/rocketmq-client-go/v2"
	"github.com/apache/rocketmq-client-go/v2/primitive"
	"github.com/apache/rocketmq-client-go/v2/producer"
	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rabbitmq/amqp091-go"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/internal/chaos"
	"github.com/mqrpc/mqrpc/rpc"
)

// plainMsg is a request a foreign client sends with the broker's plain
// client library, following docs/PROTOCOL.md, with a raw mqrpc-deadline.
type plainMsg struct {
	id, method, deadline string
	body                 []byte
	oneWay               bool
	// natsTTL, if set, is sent as Nats-TTL (JetStream), as a foreign
	// client copying mqrpc's requests would.
	natsTTL string
}

// Outcomes of plainSend besides a reply's status code.
const (
	outcomeSent    = "sent"    // one-way, accepted by the broker
	outcomeRefused = "refused" // the broker refused the publish
)

// plainSend sends m to subject and returns the status code of the reply,
// noReply when none came before ctx ended, outcomeSent for an accepted
// one-way message, or outcomeRefused.
func plainSend(ctx context.Context, target chaos.Target, addr, subject string, m plainMsg) (string, error) {
	switch target.Name {
	case "nats-core", "nats-jetstream":
		return plainNATS(ctx, target, addr, subject, m)
	case "rabbitmq-fast", "rabbitmq-durable", "rabbitmq-quorum":
		return plainAMQP(ctx, target, addr, subject, m)
	case "rocketmq":
		return plainRocketMQ(ctx, addr, subject, m)
	}
	return "", fmt.Errorf("no plain client for %s", target.Name)
}

func plainNATS(ctx context.Context, target chaos.Target, addr, subject string, pm plainMsg) (string, error) {
	nc, err := natsgo.Connect(addr)
	if err != nil {
		return "", fmt.Errorf("nats connect: %w", err)
	}
	defer nc.Close()
	m := natsgo.NewMsg(subject)
	var sub *natsgo.Subscription
	if !pm.oneWay {
		inbox := nc.NewRespInbox()
		if sub, err = nc.SubscribeSync(inbox); err != nil {
			return "", fmt.Errorf("nats subscribe: %w", err)
		}
		if target.Durable {
			m.Header.Set("mqrpc-reply", inbox)
		} else {
			m.Reply = inbox
		}
	}
	if pm.deadline != "" {
		m.Header.Set(broker.HeaderDeadline, pm.deadline)
	}
	m.Header.Set(broker.HeaderMethod, pm.method)
	m.Header.Set(broker.HeaderContentType, jsonCT)
	m.Data = pm.body
	if target.Durable {
		// As docs/PROTOCOL.md describes a durable request: published to
		// the stream's subject, the ID as Nats-Msg-Id, and the stream's
		// acknowledgement is the broker accepting it.
		m.Subject = chaos.JetStreamSubject(subject)
		if pm.id != "" {
			m.Header.Set("Nats-Msg-Id", pm.id)
		}
		if pm.natsTTL != "" {
			m.Header.Set("Nats-TTL", pm.natsTTL)
		}
		js, err := jetstream.New(nc)
		if err != nil {
			return "", fmt.Errorf("jetstream: %w", err)
		}
		if _, err := js.PublishMsg(ctx, m); err != nil {
			return outcomeRefused + ": " + err.Error(), nil
		}
	} else if err := nc.PublishMsg(m); err != nil {
		return "", fmt.Errorf("nats publish: %w", err)
	}
	if pm.oneWay {
		return outcomeSent, nil
	}
	r, err := sub.NextMsgWithContext(ctx)
	if errors.Is(err, context.DeadlineExceeded) {
		return noReply, nil
	}
	if err != nil {
		return "", fmt.Errorf("nats reply: %w", err)
	}
	h := broker.Header{}
	for k, v := range r.Header {
		if len(v) > 0 {
			h[strings.ToLower(k)] = v[0]
		}
	}
	return rpc.CodeOf(rpc.ErrorFromReply(&broker.Message{Header: h, Body: r.Data})).String(), nil
}

func plainAMQP(ctx context.Context, target chaos.Target, addr, subject string, pm plainMsg) (string, error) {
	conn, err := amqp091.Dial(addr)
	if err != nil {
		return "", fmt.Errorf("amqp dial: %w", err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return "", fmt.Errorf("amqp channel: %w", err)
	}
	var replies <-chan amqp091.Delivery
	p := amqp091.Publishing{
		ContentType: jsonCT,
		MessageId:   pm.id,
		Headers:     amqp091.Table{broker.HeaderMethod: pm.method},
		Body:        pm.body,
	}
	if target.Durable {
		p.DeliveryMode = amqp091.Persistent
	}
	if pm.deadline != "" {
		p.Headers[broker.HeaderDeadline] = pm.deadline
	}
	if !pm.oneWay {
		if replies, err = ch.Consume("amq.rabbitmq.reply-to", "", true, false, false, false, nil); err != nil {
			return "", fmt.Errorf("amqp consume reply-to: %w", err)
		}
		p.ReplyTo, p.CorrelationId = "amq.rabbitmq.reply-to", broker.NewID()
	}
	if err := ch.Confirm(false); err != nil {
		return "", fmt.Errorf("amqp confirm mode: %w", err)
	}
	dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", subject, false, false, p)
	if err != nil {
		return "", fmt.Errorf("amqp publish: %w", err)
	}
	if ok, err := dc.WaitContext(ctx); err != nil || !ok {
		return outcomeRefused, nil
	}
	if pm.oneWay {
		return outcomeSent, nil
	}
	select {
	case d := <-replies:
		h := broker.Header{}
		for k, v := range d.Headers {
			if s, ok := v.(string); ok {
				h[strings.ToLower(k)] = s
			}
		}
		return rpc.CodeOf(rpc.ErrorFromReply(&broker.Message{Header: h, Body: d.Body})).String(), nil
	case <-ctx.Done():
		return noReply, nil
	}
}

func plainRocketMQ(ctx context.Context, addr, subject string, pm plainMsg) (string, error) {
	p, err := rmq.NewProducer(
		producer.WithNameServer([]string{addr}),
		producer.WithGroupName("chaos-plain"),
		producer.WithInstanceName("chaos-plain-"+broker.NewID()),
		producer.WithRetry(0),
	)
	if err != nil {
		return "", fmt.Errorf("rocketmq producer: %w", err)
	}
	if err := p.Start(); err != nil {
		return "", fmt.Errorf("rocketmq producer start: %w", err)
	}
	defer func() { _ = p.Shutdown() }()
	m := primitive.NewMessage(subject, pm.body)
	if pm.deadline != "" {
		m.WithProperty(broker.HeaderDeadline, pm.deadline)
	}
	if pm.id != "" {
		m.WithKeys([]string{pm.id})
	}
	m.WithProperty(broker.HeaderMethod, pm.method)
	m.WithProperty(broker.HeaderContentType, jsonCT)
	if pm.oneWay {
		if _, err := p.SendSync(ctx, m); err != nil {
			return outcomeRefused + ": " + err.Error(), nil
		}
		return outcomeSent, nil
	}
	wait := 10 * time.Second
	if d, ok := ctx.Deadline(); ok {
		wait = time.Until(d)
	}
	r, err := p.Request(ctx, wait, m)
	if err != nil {
		if ctx.Err() != nil || strings.Contains(strings.ToLower(err.Error()), "timeout") {
			return noReply, nil
		}
		return "", fmt.Errorf("rocketmq request: %w", err)
	}
	h := broker.Header{}
	for k, v := range r.GetProperties() {
		h[strings.ToLower(k)] = v
	}
	return rpc.CodeOf(rpc.ErrorFromReply(&broker.Message{Header: h, Body: r.Body})).String(), nil
}
