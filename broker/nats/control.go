package nats

import (
	"context"
	"fmt"
	"sync"
	"time"

	natsgo "github.com/nats-io/nats.go"

	"github.com/mqrpc/mqrpc/broker"
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
	cfg := broker.NewServeConfig(subject, opts...)
	ctx, cancel := context.WithCancel(context.Background())
	s := &eachSub{b: b, subject: subject, h: h, sem: make(chan struct{}, cfg.Concurrency), ctx: ctx, cancel: cancel}
	sub, err := b.nc.Subscribe(subject, s.receive)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("nats: serve each %s: %w", subject, mapPublishError(err))
	}
	s.sub = sub
	return s, nil
}

type eachSub struct {
	b       *Broker
	subject string
	h       broker.Handler
	sub     *natsgo.Subscription
	sem     chan struct{}
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	mu      sync.Mutex // orders wg.Add in receive against Stop's wg.Wait
	stopped bool
}

// receive runs on the subscription's goroutine; each message is handled on
// a goroutine of its own, at most Concurrency at once.
func (s *eachSub) receive(m *natsgo.Msg) {
	if m.Reply == "" {
		return // nobody to answer
	}
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		return
	}
	s.wg.Add(1)
	s.mu.Unlock()
	select {
	case s.sem <- struct{}{}:
	case <-s.ctx.Done():
		s.wg.Done()
		return
	}
	go func() {
		defer s.wg.Done()
		defer func() { <-s.sem }()
		s.handle(m)
	}()
}

func (s *eachSub) handle(m *natsgo.Msg) {
	req, err := fromNATS(m, m.Subject)
	if err != nil || req.Expired(time.Now()) {
		return
	}
	ctx := s.ctx
	if !req.Deadline.IsZero() {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, req.Deadline)
		defer cancel()
	}
	rep, err := s.h.ServeMessage(ctx, req)
	if err != nil || rep == nil {
		return
	}
	out := &natsgo.Msg{Subject: m.Reply, Data: rep.Body, Header: toNATS(rep, rep.ID, rep.Deadline)}
	if err := s.b.nc.PublishMsg(out); err != nil {
		s.b.log.Warn("nats: control reply", "subject", s.subject, "error", err)
	}
}

// Stop implements broker.Subscription.
func (s *eachSub) Stop(ctx context.Context) error {
	s.mu.Lock()
	first := !s.stopped
	s.stopped = true
	s.mu.Unlock()
	if first {
		// Unsubscribe fails only on a closed connection, which
		// ended the subscription already.
		_ = s.sub.Unsubscribe()
	}
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		s.cancel()
		return nil
	case <-ctx.Done():
		return fmt.Errorf("nats: stop %s: %w", s.subject, ctx.Err())
	}
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
	deadline := req.Deadline
	if d, ok := ctx.Deadline(); ok && (deadline.IsZero() || d.Before(deadline)) {
		deadline = d
	}
	if !deadline.IsZero() {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, deadline)
		defer cancel()
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
	id := req.ID
	if id == "" {
		id = broker.NewID()
	}
	msg := &natsgo.Msg{Subject: req.Subject, Reply: inbox, Data: req.Body, Header: toNATS(req, id, deadline)}
	if err := b.nc.PublishMsg(msg); err != nil {
		return fmt.Errorf("nats: gather %s: %w", req.Subject, mapPublishError(err))
	}
	first := true
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
			if !fn(rep) {
				return nil
			}
			if max--; max == 0 {
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
