// Package memory is an in-process broker with no dependencies and no global
// state. It is the zero-setup broker for tests and examples, and it can
// inject faults (delay, drop, duplicate, disconnect) so the layers above can
// be tested against them.
//
// A request is not encoded: each handler gets a copy of the message's
// fields and header, reused once the handler returned, with the body
// shared (read-only, as broker.Handler says); the reply goes back to the
// caller by pointer.
package memory

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/internal/deliveryctx"
	"github.com/mqrpc/mqrpc/internal/msgpool"
)

// Broker is a connection to an in-process broker. New creates a broker and
// a first connection; Connect opens more connections to the same broker,
// as separate processes would each have their own. Closing a connection
// stops its subscriptions and fails its calls, like a crashed process,
// while the other connections go on. A Broker is safe for concurrent use.
type Broker struct {
	hub *hub

	mu       sync.Mutex
	closed   bool
	done     chan struct{}              // closed by Close
	inflight map[chan result]struct{}   // requests waiting for a reply
	subs     map[*subscription]struct{} // running subscriptions
}

// hub is the broker itself: the routing table and the faults, shared by
// every connection.
type hub struct {
	cfg config

	mu       sync.RWMutex
	subjects map[string]map[string]*group // subject -> queue -> group
	faults   Faults                       // guarded by mu
	faulty   atomic.Bool                  // faults != Faults{}: the fault-free path takes no lock
	rng      *rand.Rand                   // guarded by mu (write lock)
	each     eachTable                    // broadcast subscriptions (control.go)
}

// group is a set of competing consumers: every subscription of one queue on
// one subject reads from the same channel.
type group struct {
	ch   chan delivery
	subs int
}

// delivery travels by value, and a call is just its reply channel
// (buffered 1), so a request costs no allocation of its own here.
type delivery struct {
	msg   *broker.Message
	reply chan result // nil for one-way
}

type result struct {
	msg *broker.Message
	err error
}

type config struct {
	buffer int
	seed   uint64
}

// Option configures a Broker.
type Option func(*config)

// WithBuffer sets how many messages per queue wait for a free server before
// Request and Send block (backpressure). Default 1024.
func WithBuffer(n int) Option { return func(c *config) { c.buffer = n } }

// WithSeed seeds the random source used for probabilistic faults, so a
// faulty run can be repeated. Default: a fixed seed of 1.
func WithSeed(seed uint64) Option { return func(c *config) { c.seed = seed } }

// New returns a new in-process broker.
func New(opts ...Option) *Broker {
	cfg := config{buffer: 1024, seed: 1}
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.buffer < 0 {
		cfg.buffer = 0
	}
	h := &hub{
		cfg:      cfg,
		subjects: make(map[string]map[string]*group),
		rng:      rand.New(rand.NewPCG(cfg.seed, cfg.seed^0x9e3779b97f4a7c15)),
	}
	return h.connect()
}

// Connect opens another connection to the same in-process broker.
func (b *Broker) Connect() *Broker { return b.hub.connect() }

func (h *hub) connect() *Broker {
	return &Broker{
		hub:      h,
		done:     make(chan struct{}),
		inflight: make(map[chan result]struct{}),
		subs:     make(map[*subscription]struct{}),
	}
}

var _ broker.Broker = (*Broker)(nil)

// Faults describes faults the broker injects. Counters (DropRequests,
// DropReplies, Duplicates) are consumed one per message and make a test
// deterministic; rates are probabilities in [0, 1] drawn from the seeded
// random source.
type Faults struct {
	// Delay is added before each delivery to a server.
	Delay time.Duration
	// DropRequests drops the next n requests (and one-way messages) before
	// they reach a server.
	DropRequests int
	// DropReplies drops the next n replies after the handler ran, so the
	// caller sees a timeout although the work was done.
	DropReplies int
	// Duplicates delivers the next n requests twice; the caller receives
	// the first reply.
	Duplicates int
	// DropRequestRate, DropReplyRate and DuplicateRate are the
	// probabilistic versions of the counters above.
	DropRequestRate, DropReplyRate, DuplicateRate float64
}

// SetFaults replaces the faults the broker injects, for every connection.
// The zero Faults turns injection off.
func (b *Broker) SetFaults(f Faults) {
	b.hub.mu.Lock()
	b.hub.faults = f
	b.hub.faulty.Store(f != (Faults{}))
	b.hub.mu.Unlock()
}

// Disconnect simulates a lost connection: every request in flight on this
// connection fails at once with broker.ErrDisconnected. Like a broker client that reconnects,
// the broker keeps working for calls made afterwards.
func (b *Broker) Disconnect() {
	b.mu.Lock()
	for c := range b.inflight {
		select {
		case c <- result{err: fmt.Errorf("memory: connection lost: %w", broker.ErrDisconnected)}:
		default:
		}
		delete(b.inflight, c)
	}
	b.mu.Unlock()
}

// decide draws the faults for one message under the write lock.
func (h *hub) decide() (dropReq, dup bool, delay time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	f := &h.faults
	if f.DropRequests > 0 {
		f.DropRequests--
		dropReq = true
	} else if f.DropRequestRate > 0 && h.rng.Float64() < f.DropRequestRate {
		dropReq = true
	}
	if f.Duplicates > 0 {
		f.Duplicates--
		dup = true
	} else if f.DuplicateRate > 0 && h.rng.Float64() < f.DuplicateRate {
		dup = true
	}
	return dropReq, dup, f.Delay
}

func (h *hub) dropReply() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	f := &h.faults
	if f.DropReplies > 0 {
		f.DropReplies--
		return true
	}
	return f.DropReplyRate > 0 && h.rng.Float64() < f.DropReplyRate
}

// Request implements broker.Broker.
func (b *Broker) Request(ctx context.Context, req *broker.Message) (*broker.Message, error) {
	ctx, cancel := effectiveDeadline(ctx, req)
	defer cancel()
	if req.Expired(time.Now()) {
		return nil, fmt.Errorf("memory: request %s: deadline passed before sending: %w: %w",
			req.Subject, broker.ErrTimeout, context.DeadlineExceeded)
	}
	c := make(chan result, 1)
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil, fmt.Errorf("memory: request %s: %w", req.Subject, broker.ErrClosed)
	}
	b.inflight[c] = struct{}{}
	b.mu.Unlock()
	defer func() {
		b.mu.Lock()
		delete(b.inflight, c)
		b.mu.Unlock()
	}()

	if err := b.publish(ctx, req, c); err != nil {
		return nil, fmt.Errorf("memory: request %s: %w", req.Subject, err)
	}
	select {
	case r := <-c:
		if r.err != nil {
			return nil, r.err
		}
		return r.msg, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("memory: request %s: %w: %w", req.Subject, broker.ErrTimeout, ctx.Err())
	case <-b.done:
		return nil, fmt.Errorf("memory: request %s: %w", req.Subject, broker.ErrClosed)
	}
}

// Send implements broker.Broker. It returns broker.ErrNoResponders when
// nobody serves the subject.
func (b *Broker) Send(ctx context.Context, msg *broker.Message) error {
	if err := b.publish(ctx, msg, nil); err != nil {
		return fmt.Errorf("memory: send %s: %w", msg.Subject, err)
	}
	return nil
}

// effectiveDeadline makes the earlier of the ctx deadline and the message
// deadline govern both the wait and the message. When they are equal (the
// usual case: rpc.Client copies the ctx deadline into the message) the ctx
// is used as it is, without a timer of its own.
func effectiveDeadline(ctx context.Context, m *broker.Message) (context.Context, context.CancelFunc) {
	if d, ok := ctx.Deadline(); ok && (m.Deadline.IsZero() || !m.Deadline.Before(d)) {
		m.Deadline = d
		return ctx, func() {}
	}
	if !m.Deadline.IsZero() {
		return context.WithDeadline(ctx, m.Deadline)
	}
	return ctx, func() {}
}

func (b *Broker) publish(ctx context.Context, m *broker.Message, c chan result) error {
	if m.ID == "" {
		m.ID = broker.NewID()
	}
	select {
	case <-b.done:
		return broker.ErrClosed
	default:
	}
	h := b.hub
	h.mu.RLock()
	groups := h.subjects[m.Subject]
	var one [1]*group
	targets := one[:0]
	for _, g := range groups {
		targets = append(targets, g)
	}
	h.mu.RUnlock()
	if len(targets) == 0 {
		return broker.ErrNoResponders
	}
	n := 1
	if h.faulty.Load() {
		drop, dup, delay := h.decide()
		if drop {
			return nil // lost on the way: the caller will time out
		}
		if dup {
			n = 2
		}
		if delay > 0 {
			t := time.NewTimer(delay)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return fmt.Errorf("%w: %w", broker.ErrTimeout, ctx.Err())
			}
		}
	}
	for _, g := range targets {
		for i := 0; i < n; i++ {
			select {
			case g.ch <- delivery{msg: m, reply: c}:
			case <-ctx.Done():
				return fmt.Errorf("%w: %w", broker.ErrTimeout, ctx.Err())
			case <-b.done:
				return broker.ErrClosed
			}
		}
	}
	return nil
}

// newInbound copies m for a handler, with header names in lower case, as
// every network broker delivers them. The copy keeps a handler that
// changes its message or header from touching the caller's (whose header
// may be shared with other calls, see broker.Broker) or another
// delivery's; release it with msgpool.Put once the handler returned.
func newInbound(m *broker.Message) *broker.Message {
	in := msgpool.Get()
	h := in.Header
	*in = *m
	if len(m.Header) > 0 && h == nil {
		h = make(broker.Header, len(m.Header))
	}
	for k, v := range m.Header {
		h[strings.ToLower(k)] = v
	}
	in.Header = h
	return in
}

// Serve implements broker.Broker. Each subscription runs Concurrency
// goroutines that compete with the other subscriptions of the same queue.
func (b *Broker) Serve(subject string, h broker.Handler, opts ...broker.ServeOption) (broker.Subscription, error) {
	if subject == "" {
		return nil, fmt.Errorf("memory: serve: empty subject")
	}
	cfg := broker.NewServeConfig(subject, opts...)
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil, fmt.Errorf("memory: serve %s: %w", subject, broker.ErrClosed)
	}
	hb := b.hub
	hb.mu.Lock()
	groups := hb.subjects[subject]
	if groups == nil {
		groups = make(map[string]*group)
		hb.subjects[subject] = groups
	}
	g := groups[cfg.Queue]
	if g == nil {
		g = &group{ch: make(chan delivery, hb.cfg.buffer)}
		groups[cfg.Queue] = g
	}
	g.subs++
	hb.mu.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	s := &subscription{
		b: b, subject: subject, queue: cfg.Queue, g: g, h: h,
		quit: make(chan struct{}), ctx: ctx, cancel: cancel,
	}
	b.subs[s] = struct{}{}
	s.wg.Add(cfg.Concurrency)
	for i := 0; i < cfg.Concurrency; i++ {
		go s.work()
	}
	return s, nil
}

type subscription struct {
	b              *Broker
	subject, queue string
	g              *group
	h              broker.Handler

	quit     chan struct{} // closed by Stop: take no new messages
	stopOnce sync.Once
	ctx      context.Context // parent of every delivery; cancelled by Close
	cancel   context.CancelFunc
	wg       sync.WaitGroup
}

func (s *subscription) work() {
	defer s.wg.Done()
	for {
		// Check quit first so a stopped subscription takes nothing more
		// even when messages are waiting.
		select {
		case <-s.quit:
			return
		default:
		}
		select {
		case <-s.quit:
			return
		case <-s.b.done:
			return
		case d := <-s.g.ch:
			s.handle(d)
		}
	}
}

func (s *subscription) handle(d delivery) {
	if d.msg.Expired(time.Now()) {
		return // the caller has given up: never serve it
	}
	m := newInbound(d.msg)
	defer msgpool.Put(m)
	ctx := s.ctx
	if !m.Deadline.IsZero() {
		dc := deliveryctx.New(ctx, m.Deadline)
		defer dc.Release()
		ctx = dc
	}
	reply, err := s.h.ServeMessage(ctx, m)
	if d.reply == nil || err != nil || reply == nil {
		// One-way, a failed delivery (nothing to redeliver to in
		// memory), or no answer: the caller gets no reply.
		return
	}
	if s.b.hub.faulty.Load() && s.b.hub.dropReply() {
		return
	}
	select {
	case d.reply <- result{msg: reply}:
	default: // a duplicate delivery: the caller already has its reply
	}
}

// Stop implements broker.Subscription: no new messages are taken, and the
// handlers in flight finish before Stop returns (or ctx ends).
func (s *subscription) Stop(ctx context.Context) error {
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

// leave takes the subscription out of its group, once: it takes no new
// messages afterwards.
func (s *subscription) leave() {
	s.stopOnce.Do(func() {
		close(s.quit)
		s.b.mu.Lock()
		delete(s.b.subs, s)
		s.b.mu.Unlock()
		h := s.b.hub
		h.mu.Lock()
		s.g.subs--
		if s.g.subs == 0 {
			if groups := h.subjects[s.subject]; groups != nil && groups[s.queue] == s.g {
				delete(groups, s.queue)
				if len(groups) == 0 {
					delete(h.subjects, s.subject)
				}
			}
		}
		h.mu.Unlock()
	})
}

// Close implements broker.Broker: this connection's subscriptions stop
// without draining, and its calls in flight fail with broker.ErrClosed.
// Other connections to the same broker are not affected.
func (b *Broker) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	close(b.done)
	subs := make([]*subscription, 0, len(b.subs))
	for s := range b.subs {
		subs = append(subs, s)
	}
	b.mu.Unlock()
	// Cancel the handlers in flight and wait for them, so no goroutine
	// outlives Close (handlers are expected to honour ctx).
	for _, s := range subs {
		s.leave()
		s.cancel()
	}
	for _, s := range subs {
		s.wg.Wait()
	}
	return nil
}
