package memory

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/mqrpc/mqrpc/broker"
)

var _ broker.Broadcaster = (*Broker)(nil)

// eachTable holds the ServeEach subscriptions of a hub, by subject.
type eachTable struct {
	mu   sync.RWMutex
	subs map[string]map[*eachSub]struct{}
}

// eachSub is one ServeEach subscription. Its handlers run on goroutines of
// their own, at most Concurrency at once, and Stop waits for them.
type eachSub struct {
	b       *Broker
	subject string
	h       broker.Handler
	sem     chan struct{}
	ctx     context.Context // cancelled once stopped and drained, or on Close
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	once    sync.Once
}

// ServeEach implements broker.Broadcaster: every connection serving
// subject this way gets each message Gather publishes to it.
func (b *Broker) ServeEach(subject string, h broker.Handler, opts ...broker.ServeOption) (broker.Subscription, error) {
	if subject == "" {
		return nil, fmt.Errorf("memory: serve each: empty subject")
	}
	cfg := broker.NewServeConfig(subject, opts...)
	select {
	case <-b.done:
		return nil, fmt.Errorf("memory: serve each %s: %w", subject, broker.ErrClosed)
	default:
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &eachSub{b: b, subject: subject, h: h, sem: make(chan struct{}, cfg.Concurrency), ctx: ctx, cancel: cancel}
	t := &b.hub.each
	t.mu.Lock()
	if t.subs == nil {
		t.subs = make(map[string]map[*eachSub]struct{})
	}
	if t.subs[subject] == nil {
		t.subs[subject] = make(map[*eachSub]struct{})
	}
	t.subs[subject][s] = struct{}{}
	t.mu.Unlock()
	return s, nil
}

// Stop implements broker.Subscription.
func (s *eachSub) Stop(ctx context.Context) error {
	s.leave()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		s.cancel()
		return nil
	case <-ctx.Done():
		return fmt.Errorf("memory: stop %s: %w", s.subject, ctx.Err())
	}
}

func (s *eachSub) leave() {
	s.once.Do(func() {
		t := &s.b.hub.each
		t.mu.Lock()
		delete(t.subs[s.subject], s)
		if len(t.subs[s.subject]) == 0 {
			delete(t.subs, s.subject)
		}
		t.mu.Unlock()
	})
}

// live reports whether the subscription's connection is open; a closed
// connection's subscriptions leave on their first miss.
func (s *eachSub) live() bool {
	select {
	case <-s.b.done:
		s.leave()
		s.cancel()
		return false
	default:
		return true
	}
}

// Gather implements broker.Broadcaster. It returns broker.ErrNoResponders
// at once when no connection serves req.Subject with ServeEach.
func (b *Broker) Gather(ctx context.Context, req *broker.Message, max int, fn func(*broker.Message) bool) error {
	ctx, cancel := effectiveDeadline(ctx, req)
	defer cancel()
	select {
	case <-b.done:
		return fmt.Errorf("memory: gather %s: %w", req.Subject, broker.ErrClosed)
	default:
	}
	if req.ID == "" {
		req.ID = broker.NewID()
	}
	t := &b.hub.each
	t.mu.RLock()
	targets := make([]*eachSub, 0, len(t.subs[req.Subject]))
	for s := range t.subs[req.Subject] {
		targets = append(targets, s)
	}
	t.mu.RUnlock()
	replies := make(chan *broker.Message, len(targets))
	n := 0
	for _, s := range targets {
		if !s.live() {
			continue
		}
		n++
		s.wg.Add(1)
		go s.handle(req, replies)
	}
	if n == 0 {
		return fmt.Errorf("memory: gather %s: %w", req.Subject, broker.ErrNoResponders)
	}
	got := 0
	for got < n {
		select {
		case r := <-replies:
			got++
			if r == nil {
				continue // no reply from that one
			}
			if !fn(r) {
				return nil
			}
			if max--; max == 0 {
				return nil
			}
		case <-ctx.Done():
			return nil
		case <-b.done:
			return fmt.Errorf("memory: gather %s: %w", req.Subject, broker.ErrClosed)
		}
	}
	// Everyone answered: waiting longer would find nobody else (the
	// table was read once, as a network broker's routing is).
	return nil
}

func (s *eachSub) handle(req *broker.Message, replies chan<- *broker.Message) {
	defer s.wg.Done()
	select {
	case s.sem <- struct{}{}:
	case <-s.ctx.Done():
		replies <- nil
		return
	}
	defer func() { <-s.sem }()
	if req.Expired(time.Now()) {
		replies <- nil
		return
	}
	m := newInbound(req)
	ctx := s.ctx
	if !m.Deadline.IsZero() {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, m.Deadline)
		defer cancel()
	}
	reply, err := s.h.ServeMessage(ctx, m)
	if err != nil || reply == nil {
		replies <- nil
		return
	}
	out := *reply
	out.Header = reply.Header.Clone()
	replies <- &out
}
