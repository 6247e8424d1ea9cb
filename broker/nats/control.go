package nats

import (
	"context"
	"fmt"
	"time"

	natsgo "github.com/nats-io/nats.go"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/kernel"
)

var _ broker.Broadcaster = (*Broker)(nil)

// ServeEach implements broker.Broadcaster with a plain core NATS
// subscription (no queue group), also in durable mode: every subscriber of
// subject gets each message, and replies go to the message's reply
// subject. This is how nats.go's micro services answer $SRV.PING, INFO and
// STATS, so such requests from any NATS client (natscli's `nats micro`)
// reach mqrpc's control plane too.
func (b *Broker) ServeEach(subject string, h broker.Handler, opts ...broker.ServeOption) (broker.Subscription, error) {
	if b.closed.Load() {
		return nil, fmt.Errorf("nats: serve each %s: %w", subject, broker.ErrClosed)
	}
	sub, err := b.serveCore(subject, "", h, broker.NewServeConfig(subject, opts...), false)
	if err != nil {
		return nil, fmt.Errorf("nats: serve each %s: %w", subject, err)
	}
	return sub, nil
}

// Gather implements broker.Broadcaster: req is published once on core
// NATS with a fresh inbox as its reply subject, and the replies on that
// inbox are gathered. The NATS server answers a publish nobody subscribes
// to with a no-responders status, which ends the wait at once with
// broker.ErrNoResponders.
func (b *Broker) Gather(ctx context.Context, req *broker.Message, max int, fn func(*broker.Message) bool) error {
	if b.closed.Load() {
		return fmt.Errorf("nats: gather %s: %w", req.Subject, broker.ErrClosed)
	}
	ctx, cancel, err := kernel.Prepare(ctx, req, "nats: gather")
	defer cancel()
	if err != nil {
		return err
	}
	if st := b.nc.Status(); st != natsgo.CONNECTED {
		if st == natsgo.CLOSED {
			return fmt.Errorf("nats: gather %s: %w", req.Subject, broker.ErrClosed)
		}
		return fmt.Errorf("nats: gather %s: %w (connection %s)", req.Subject, broker.ErrDisconnected, st)
	}
	inbox := b.nc.NewRespInbox()
	ch := make(chan *natsgo.Msg, 64)
	sub, err := b.nc.ChanSubscribe(inbox, ch)
	if err != nil {
		return fmt.Errorf("nats: gather %s: %w", req.Subject, mapPublishError(err))
	}
	defer sub.Unsubscribe() //nolint:errcheck // the inbox dies with the connection anyway
	msg := &natsgo.Msg{Subject: req.Subject, Reply: inbox, Data: req.Body, Header: toNATS(req, req.ID, req.Deadline)}
	if err := b.nc.PublishMsg(msg); err != nil {
		return fmt.Errorf("nats: gather %s: %w", req.Subject, mapPublishError(err))
	}
	first := true
	replies := kernel.NewReplies(max, fn)
	// Close does not end ctx: look at the connection now and then.
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			if b.closed.Load() {
				return fmt.Errorf("nats: gather %s: %w", req.Subject, broker.ErrClosed)
			}
		case m := <-ch:
			if isNoResponders(m) {
				if first {
					return fmt.Errorf("nats: gather %s: %w", req.Subject, broker.ErrNoResponders)
				}
				continue
			}
			first = false
			rep, err := fromNATS(m, "")
			if err != nil {
				continue // a reply we cannot read is no instance's answer
			}
			if replies.Take(rep) {
				return nil
			}
		case <-ctx.Done():
			if b.closed.Load() {
				return fmt.Errorf("nats: gather %s: %w", req.Subject, broker.ErrClosed)
			}
			return nil
		}
	}
}
