// Package tcpbroker is a broker of its own on plain TCP, written against
// broker/kernel alone: a hub (Listen) routes gob frames between the
// connections (Dial) that serve and call; the kernel does the rest.
package tcpbroker

import (
	"context"
	"encoding/gob"
	"fmt"
	"net"
	"strings"
	"sync"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/kernel"
)

// Broker is a connection to a hub.
type Broker struct {
	c       net.Conn
	p       *peer
	mu      sync.Mutex
	next    uint64
	pending map[uint64]chan frame // by Corr
	subs    map[uint64]*driver    // by Sub
	done    chan struct{}         // closed when the connection is gone
}

// Dial connects to the hub at addr.
func Dial(addr string) (*Broker, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	b := &Broker{c: c, p: &peer{enc: gob.NewEncoder(c)}, pending: map[uint64]chan frame{},
		subs: map[uint64]*driver{}, done: make(chan struct{})}
	go b.read(gob.NewDecoder(c))
	return b, nil
}

func (b *Broker) read(dec *gob.Decoder) {
	defer close(b.done)
	for {
		var f frame
		if dec.Decode(&f) != nil {
			return
		}
		b.mu.Lock()
		d, ch := b.subs[f.Sub], b.pending[f.Corr]
		b.mu.Unlock()
		switch {
		case (f.Kind == rep || f.Kind == noResp) && ch != nil:
			ch <- f
		case f.Kind == cancel && d != nil:
			d.sub.Cancel(f.Msg.ID)
		case f.Kind == req && d != nil:
			select {
			case d.ch <- f:
			case <-d.quit:
			}
		}
	}
}

// Request implements broker.Broker.
func (b *Broker) Request(ctx context.Context, m *broker.Message) (*broker.Message, error) {
	ctx, done, err := kernel.Prepare(ctx, m, "tcp: request")
	defer done()
	if err != nil {
		return nil, err
	}
	ch := make(chan frame, 1)
	b.mu.Lock()
	b.next++
	corr := b.next
	b.pending[corr] = ch
	b.mu.Unlock()
	defer func() { b.mu.Lock(); delete(b.pending, corr); b.mu.Unlock() }()
	if err := b.p.send(&frame{Kind: req, Corr: corr, Msg: *m}); err != nil {
		return nil, b.closed(err)
	}
	select {
	case f := <-ch:
		if f.Kind == noResp {
			return nil, fmt.Errorf("tcp: request %s: %w", m.Subject, broker.ErrNoResponders)
		}
		return &f.Msg, nil
	case <-ctx.Done():
		if kernel.Canceled(ctx) {
			_ = b.p.send(&frame{Kind: cancel, Msg: broker.Message{ID: m.ID, Subject: m.Subject}})
		}
		return nil, kernel.WaitError(ctx, "tcp: request", m.Subject)
	case <-b.done:
		return nil, broker.ErrClosed
	}
}

func (b *Broker) closed(err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("tcp: %w (%w)", broker.ErrClosed, err)
}

// Send implements broker.Broker.
func (b *Broker) Send(ctx context.Context, m *broker.Message) error {
	if err := kernel.PrepareSend(ctx, m, "tcp: send"); err != nil {
		return err
	}
	return b.closed(b.p.send(&frame{Kind: req, Msg: *m}))
}

// Serve implements broker.Broker.
func (b *Broker) Serve(subject string, h broker.Handler, opts ...broker.ServeOption) (broker.Subscription, error) {
	cfg := broker.NewServeConfig(subject, opts...)
	d := &driver{b: b, ch: make(chan frame), quit: make(chan struct{})}
	b.mu.Lock()
	b.next++
	d.id = b.next
	b.subs[d.id] = d
	d.sub = kernel.Serve[frame](d, subject, h, cfg, kernel.Options{Name: "tcp"})
	b.mu.Unlock()
	if err := b.p.send(&frame{Kind: sub, Sub: d.id, Subject: subject, Queue: cfg.Queue}); err != nil {
		d.sub.Abort()
		return nil, b.closed(err)
	}
	// Serve returns once the hub knows the server: a ping through it.
	_, _ = b.Request(context.Background(), &broker.Message{Subject: "\x00ping"})
	return d.sub, nil
}

// Close implements broker.Broker: the callers of the calls in flight get
// the handlers' Unavailable replies before the connection goes.
func (b *Broker) Close() error {
	b.mu.Lock()
	subs := b.subs
	b.subs = map[uint64]*driver{}
	b.mu.Unlock()
	for _, d := range subs {
		d.sub.Abort()
	}
	_ = b.c.Close() // idempotent: a second Close finds nothing left
	for _, d := range subs {
		d.sub.Wait()
	}
	<-b.done
	return nil
}

// driver is the wire of one subscription, for the kernel.
type driver struct {
	b    *Broker
	id   uint64
	sub  *kernel.Subscription[frame]
	ch   chan frame
	quit chan struct{}
	once sync.Once
}

func (d *driver) Next(ctx context.Context) (frame, bool) {
	select {
	case f := <-d.ch:
		return f, true
	case <-d.quit:
	case <-ctx.Done():
	}
	return frame{}, false
}

func (d *driver) Decode(f frame, m *broker.Message) error {
	*m, m.Header = f.Msg, broker.Header{}
	for k, v := range f.Msg.Header {
		m.Header[strings.ToLower(k)] = v
	}
	return nil
}

func (d *driver) Reply(f frame, r *broker.Message) error {
	if f.Corr == 0 {
		return nil
	}
	return d.b.p.send(&frame{Kind: rep, Corr: f.Corr, Msg: *r})
}

func (d *driver) Settle(frame, kernel.Outcome) {}
func (d *driver) Drain()                       { d.Abort() }
func (d *driver) Abort() {
	d.once.Do(func() {
		close(d.quit)
		_ = d.b.p.send(&frame{Kind: unsub, Sub: d.id})
	})
}
