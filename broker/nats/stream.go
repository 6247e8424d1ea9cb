package nats

import (
	"context"
	"fmt"
	"strings"
	"sync"

	natsgo "github.com/nats-io/nats.go"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/kernel"
)

var _ broker.Streamer = (*Broker)(nil)

// inboxes are the stream inboxes of a connection: one wildcard
// subscription ("<inbox>.*", made on first use) routes each message by
// its last token, so an inbox costs no subscription of its own. nats.go
// hands a subscription's messages to its callback one at a time, in the
// order they arrived, which is each publisher's order.
type inboxes struct {
	mu     sync.Mutex
	prefix string // "<inbox>."
	sub    *natsgo.Subscription
	table  kernel.Inboxes
}

// OpenInbox implements broker.Streamer: the inbox's address is a subject
// under the connection's own inbox prefix.
func (b *Broker) OpenInbox(fn func(*broker.Message)) (broker.Inbox, error) {
	if fn == nil {
		return nil, fmt.Errorf("nats: open inbox: nil function")
	}
	if b.closed.Load() {
		return nil, fmt.Errorf("nats: open inbox: %w", broker.ErrClosed)
	}
	t := &b.inboxes
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.sub == nil {
		t.prefix = b.nc.NewInbox() + "."
		sub, err := b.nc.Subscribe(t.prefix+"*", t.route)
		if err != nil {
			return nil, fmt.Errorf("nats: open inbox: %w", mapPublishError(err))
		}
		// The engine's window bounds what is in flight; no limit here, so
		// nats.go never drops a stream's message as a slow consumer.
		_ = sub.SetPendingLimits(-1, -1)
		t.sub = sub
	}
	return t.table.Open(t.prefix, fn), nil
}

func (t *inboxes) route(m *natsgo.Msg) {
	token, ok := strings.CutPrefix(m.Subject, t.prefix)
	if !ok {
		return
	}
	t.table.Dispatch(token, func() *broker.Message {
		out := &broker.Message{Body: m.Data}
		if len(m.Header) > 0 {
			out.Header = make(broker.Header, len(m.Header))
			for k, vs := range m.Header {
				if len(vs) > 0 {
					out.Header[strings.ToLower(k)] = vs[0]
				}
			}
		}
		return out
	})
}

// Post implements broker.Streamer: a plain publish to addr, with the
// message's headers as NATS headers. Nothing is stored; a message to an
// inbox nobody subscribes to is dropped by the server.
func (b *Broker) Post(_ context.Context, addr string, msg *broker.Message) error {
	if b.closed.Load() {
		return fmt.Errorf("nats: post: %w", broker.ErrClosed)
	}
	m := natsgo.Msg{Subject: addr, Data: msg.Body}
	if len(msg.Header) > 0 {
		h := postHeaders.Get().(*postHeader)
		defer h.release()
		m.Header = h.fill(msg.Header)
	}
	if err := b.nc.PublishMsg(&m); err != nil {
		return fmt.Errorf("nats: post: %w", mapPublishError(err))
	}
	return nil
}

// postHeader is a NATS header for Post, reused: PublishMsg encodes the
// header before it returns, and a stream frame's few headers as a new
// map, its buckets and its values were three allocations per frame.
type postHeader struct {
	h    natsgo.Header
	vals []string // the values, one backing array
}

var postHeaders = sync.Pool{New: func() any { return &postHeader{h: make(natsgo.Header, 8)} }}

// fill sets h to the headers of hd, names in lower case.
func (p *postHeader) fill(hd broker.Header) natsgo.Header {
	if cap(p.vals) < len(hd) {
		p.vals = make([]string, 0, len(hd))
	}
	for k, v := range hd {
		p.vals = append(p.vals, v)
		n := len(p.vals)
		p.h[strings.ToLower(k)] = p.vals[n-1 : n : n]
	}
	return p.h
}

// release returns p to the pool, unless a message with many headers
// grew it.
func (p *postHeader) release() {
	if len(p.vals) > 16 {
		return
	}
	clear(p.h)
	clear(p.vals)
	p.vals = p.vals[:0]
	postHeaders.Put(p)
}

// PostCopiesBody implements stream.BodyCopier: nats.go copies a message to
// the connection's write buffer before PublishMsg returns, so the stream
// engine may reuse the buffers of its batch frames.
func (b *Broker) PostCopiesBody() bool { return true }
