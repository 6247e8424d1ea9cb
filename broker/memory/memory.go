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
	"github.com/mqrpc/mqrpc/broker/kernel"
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
	done     chan struct{}                               // closed by Close
	inflight map[chan result]struct{}                    // requests waiting for a reply
	subs     map[*kernel.Subscription[delivery]]struct{} // running subscriptions
	inboxes  map[*inbox]struct{}                         // open inboxes (stream.go)
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
	inboxes  inboxTable                   // stream inboxes (stream.go)
}

// group is a set of competing consumers: every subscription of one queue on
// one subject reads from the same channel.
type group struct {
	ch      chan delivery
	members map[*kernel.Subscription[delivery]]struct{}
}

// delivery travels by value, and a call is just its reply channel
// (buffered 1), so a request costs no allocation of its own here.
type delivery struct {
	msg   *broker.Message
	reply chan result // nil for one-way
	each  bool        // a Gather delivery: reply is its own, and gets an end marker
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
		subs:     make(map[*kernel.Subscription[delivery]]struct{}),
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
	const op = "memory: request"
	ctx, cancel, err := kernel.Prepare(ctx, req, op)
	defer cancel()
	if err != nil {
		return nil, err
	}
	c := make(chan result, 1)
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil, fmt.Errorf("%s %s: %w", op, req.Subject, broker.ErrClosed)
	}
	b.inflight[c] = struct{}{}
	b.mu.Unlock()
	defer func() {
		b.mu.Lock()
		delete(b.inflight, c)
		b.mu.Unlock()
	}()

	if err := b.publish(ctx, req, c); err != nil {
		return nil, fmt.Errorf("%s %s: %w", op, req.Subject, err)
	}
	select {
	case r := <-c:
		if r.err != nil {
			return nil, r.err
		}
		return r.msg, nil
	case <-ctx.Done():
		if kernel.Canceled(ctx) {
			b.hub.cancel(req.Subject, req.ID)
		}
		return nil, kernel.WaitError(ctx, op, req.Subject)
	case <-b.done:
		return nil, fmt.Errorf("%s %s: %w", op, req.Subject, broker.ErrClosed)
	}
}

// Send implements broker.Broker. It returns broker.ErrNoResponders when
// nobody serves the subject.
func (b *Broker) Send(ctx context.Context, msg *broker.Message) error {
	const op = "memory: send"
	if err := kernel.PrepareSend(ctx, msg, op); err != nil {
		return err
	}
	if err := b.publish(ctx, msg, nil); err != nil {
		return fmt.Errorf("%s %s: %w", op, msg.Subject, err)
	}
	return nil
}

func (b *Broker) publish(ctx context.Context, m *broker.Message, c chan result) error {
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

// decode copies m for a handler into in, with header names in lower case,
// as every network broker delivers them. The copy keeps a handler that
// changes its message or header from touching the caller's (whose header
// may be shared with other calls, see broker.Broker) or another
// delivery's.
func decode(m, in *broker.Message) {
	h := in.Header
	*in = *m
	if len(m.Header) > 0 && h == nil {
		h = make(broker.Header, len(m.Header))
	}
	for k, v := range m.Header {
		h[strings.ToLower(k)] = v
	}
	in.Header = h
}

// Serve implements broker.Broker. Each subscription serves up to
// Concurrency requests at once, competing with the other subscriptions of
// the same queue.
func (b *Broker) Serve(subject string, h broker.Handler, opts ...broker.ServeOption) (broker.Subscription, error) {
	if subject == "" || h == nil {
		return nil, fmt.Errorf("memory: serve %q: empty subject or nil handler", subject)
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
		g = &group{ch: make(chan delivery, hb.cfg.buffer), members: make(map[*kernel.Subscription[delivery]]struct{})}
		groups[cfg.Queue] = g
	}
	d := &driver{b: b, subject: subject, queue: cfg.Queue, ch: g.ch, quit: make(chan struct{})}
	s := kernel.Serve[delivery](d, subject, h, cfg, kernel.Options{Name: "memory", Streamer: b})
	g.members[s] = struct{}{}
	hb.mu.Unlock()
	d.leaveFn = func() { b.hub.leave(subject, cfg.Queue, g, s) }
	b.subs[s] = struct{}{}
	d.sub = s
	return s, nil
}

// driver is the wire of one subscription (Serve or ServeEach): a channel
// of deliveries.
type driver struct {
	b              *Broker
	subject, queue string
	ch             chan delivery
	sub            *kernel.Subscription[delivery]
	leaveFn        func()

	quit chan struct{} // closed by Drain or Abort: take no new messages
	once sync.Once
}

var _ kernel.Driver[delivery] = (*driver)(nil)

// Next implements kernel.Driver.
func (d *driver) Next(ctx context.Context) (delivery, bool) {
	// Check quit first so a stopped subscription takes nothing more even
	// when messages are waiting.
	select {
	case <-d.quit:
		return delivery{}, false
	default:
	}
	select {
	case <-d.quit:
	case <-d.b.done:
	case <-ctx.Done():
	case m := <-d.ch:
		return m, true
	}
	return delivery{}, false
}

// Decode implements kernel.Driver.
func (d *driver) Decode(m delivery, into *broker.Message) error {
	decode(m.msg, into)
	return nil
}

// Reply implements kernel.Driver.
func (d *driver) Reply(m delivery, rep *broker.Message) error {
	if m.reply == nil {
		return nil
	}
	if m.each {
		out := *rep
		out.Header = rep.Header.Clone()
		m.reply <- result{msg: &out}
		return nil
	}
	if d.b.hub.faulty.Load() && d.b.hub.dropReply() {
		return nil
	}
	select {
	case m.reply <- result{msg: rep}:
	default: // a duplicate delivery: the caller already has its reply
	}
	return nil
}

// Settle implements kernel.Driver: there is nothing to acknowledge in
// memory and nothing to redeliver to. A Gather delivery reports its end.
func (d *driver) Settle(m delivery, _ kernel.Outcome) {
	if m.each {
		m.reply <- result{}
	}
}

// Drain implements kernel.Driver: the subscription leaves its group; the
// messages waiting there go to the group's other subscriptions.
func (d *driver) Drain() { d.leave() }

// Abort implements kernel.Driver.
func (d *driver) Abort() { d.leave() }

func (d *driver) leave() {
	d.once.Do(func() {
		close(d.quit)
		d.b.mu.Lock()
		delete(d.b.subs, d.sub)
		d.b.mu.Unlock()
		d.leaveFn()
	})
}

// cancel is the cancel notice of a request: the subscriptions serving its
// subject cancel the ctx of its delivery, wherever it runs.
func (h *hub) cancel(subject, id string) {
	h.mu.RLock()
	var subs []*kernel.Subscription[delivery]
	for _, g := range h.subjects[subject] {
		for s := range g.members {
			subs = append(subs, s)
		}
	}
	h.mu.RUnlock()
	for _, s := range subs {
		s.Cancel(id)
	}
}

// leave takes subscription s out of group g of subject and queue.
func (h *hub) leave(subject, queue string, g *group, s *kernel.Subscription[delivery]) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(g.members, s)
	if len(g.members) == 0 {
		if groups := h.subjects[subject]; groups != nil && groups[queue] == g {
			delete(groups, queue)
			if len(groups) == 0 {
				delete(h.subjects, subject)
			}
		}
	}
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
	subs := make([]*kernel.Subscription[delivery], 0, len(b.subs))
	for s := range b.subs {
		subs = append(subs, s)
	}
	b.mu.Unlock()
	b.closeInboxes()
	// Cancel the handlers in flight and wait for them, so no goroutine
	// outlives Close (handlers are expected to honour ctx).
	for _, s := range subs {
		s.Abort()
	}
	for _, s := range subs {
		s.Wait()
	}
	return nil
}
