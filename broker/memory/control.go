package memory

import (
	"context"
	"fmt"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/kernel"
)

var _ broker.Broadcaster = (*Broker)(nil)

// eachTable holds the ServeEach subscriptions of a hub, by subject: each
// one is a driver with a channel of its own.
type eachTable = kernel.EachTable[*driver]

// ServeEach implements broker.Broadcaster: every connection serving
// subject this way gets each message Gather publishes to it.
func (b *Broker) ServeEach(subject string, h broker.Handler, opts ...broker.ServeOption) (broker.Subscription, error) {
	if subject == "" || h == nil {
		return nil, fmt.Errorf("memory: serve each %q: empty subject or nil handler", subject)
	}
	cfg := broker.NewServeConfig(subject, opts...)
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil, fmt.Errorf("memory: serve each %s: %w", subject, broker.ErrClosed)
	}
	t := &b.hub.each
	d := &driver{b: b, subject: subject, ch: make(chan delivery, b.hub.cfg.buffer), quit: make(chan struct{})}
	d.leaveFn = func() { t.Remove(subject, d) }
	t.Add(subject, d)
	s := kernel.Serve[delivery](d, subject, h, cfg, kernel.Options{Name: "memory", Streamer: b})
	b.subs[s] = struct{}{}
	d.sub = s
	return s, nil
}

// Gather implements broker.Broadcaster. It returns broker.ErrNoResponders
// at once when no connection serves req.Subject with ServeEach.
func (b *Broker) Gather(ctx context.Context, req *broker.Message, max int, fn func(*broker.Message) bool) error {
	const op = "memory: gather"
	ctx, cancel, err := kernel.Prepare(ctx, req, op)
	defer cancel()
	if err != nil {
		return err
	}
	select {
	case <-b.done:
		return fmt.Errorf("%s %s: %w", op, req.Subject, broker.ErrClosed)
	default:
	}
	var targets []*driver
	b.hub.each.Range(req.Subject, func(d *driver) { targets = append(targets, d) })
	// Room for a reply and an end marker from every target, so no
	// server ever blocks on a Gather that returned.
	replies := make(chan result, 2*len(targets))
	gathered := kernel.NewReplies(max, fn)
	n := 0
	for _, d := range targets {
		select {
		case d.ch <- delivery{msg: req, reply: replies, each: true}:
			n++
		case <-d.quit: // stopped meanwhile
		case <-ctx.Done():
			return nil
		}
	}
	if n == 0 {
		return fmt.Errorf("%s %s: %w", op, req.Subject, broker.ErrNoResponders)
	}
	for ended := 0; ended < n; {
		select {
		case r := <-replies:
			if r.msg == nil {
				ended++
				continue
			}
			if gathered.Take(r.msg) {
				return nil
			}
		case <-ctx.Done():
			return nil
		case <-b.done:
			return fmt.Errorf("%s %s: %w", op, req.Subject, broker.ErrClosed)
		}
	}
	// Everyone answered: waiting longer would find nobody else (the
	// table was read once, as a network broker's routing is).
	return nil
}
