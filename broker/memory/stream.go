package memory

import (
	"context"
	"fmt"
	"strings"
	"sync"

	"github.com/mqrpc/mqrpc/broker"
)

var _ broker.Streamer = (*Broker)(nil)

// inboxTable holds the open inboxes of a hub by address.
type inboxTable struct {
	mu sync.RWMutex
	m  map[string]*inbox
}

// inbox is a queue and the goroutine that hands its messages to fn in
// order. Post never blocks: the stream engine bounds what is in flight
// with its credit.
type inbox struct {
	addr string
	b    *Broker
	fn   func(*broker.Message)

	mu     sync.Mutex
	queue  []*broker.Message
	ready  chan struct{} // 1-buffered: the queue has messages
	closed chan struct{}
	once   sync.Once
}

// OpenInbox implements broker.Streamer.
func (b *Broker) OpenInbox(fn func(*broker.Message)) (broker.Inbox, error) {
	if fn == nil {
		return nil, fmt.Errorf("memory: open inbox: nil function")
	}
	in := &inbox{addr: "_INBOX." + broker.NewID(), b: b, fn: fn,
		ready: make(chan struct{}, 1), closed: make(chan struct{})}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil, fmt.Errorf("memory: open inbox: %w", broker.ErrClosed)
	}
	if b.inboxes == nil {
		b.inboxes = make(map[*inbox]struct{})
	}
	b.inboxes[in] = struct{}{}
	b.mu.Unlock()
	t := &b.hub.inboxes
	t.mu.Lock()
	if t.m == nil {
		t.m = make(map[string]*inbox)
	}
	t.m[in.addr] = in
	t.mu.Unlock()
	go in.run()
	return in, nil
}

// Post implements broker.Streamer. A message to an inbox that is not open
// is dropped, as on a network broker.
func (b *Broker) Post(_ context.Context, addr string, msg *broker.Message) error {
	select {
	case <-b.done:
		return fmt.Errorf("memory: post: %w", broker.ErrClosed)
	default:
	}
	t := &b.hub.inboxes
	t.mu.RLock()
	in := t.m[addr]
	t.mu.RUnlock()
	if in == nil {
		return nil
	}
	// A copy with lower-case header names, as delivered by a network
	// broker; the body is shared, read-only.
	m := &broker.Message{ID: msg.ID, Header: make(broker.Header, len(msg.Header)), Body: msg.Body}
	for k, v := range msg.Header {
		m.Header[strings.ToLower(k)] = v
	}
	in.mu.Lock()
	in.queue = append(in.queue, m)
	in.mu.Unlock()
	select {
	case in.ready <- struct{}{}:
	default:
	}
	return nil
}

func (in *inbox) Addr() string { return in.addr }

func (in *inbox) Close() error {
	in.once.Do(func() {
		t := &in.b.hub.inboxes
		t.mu.Lock()
		delete(t.m, in.addr)
		t.mu.Unlock()
		in.b.mu.Lock()
		delete(in.b.inboxes, in)
		in.b.mu.Unlock()
		close(in.closed)
	})
	return nil
}

func (in *inbox) run() {
	for {
		select {
		case <-in.closed:
			return
		case <-in.ready:
		}
		for {
			in.mu.Lock()
			if len(in.queue) == 0 {
				in.mu.Unlock()
				break
			}
			m := in.queue[0]
			in.queue[0] = nil
			in.queue = in.queue[1:]
			in.mu.Unlock()
			select {
			case <-in.closed:
				return
			default:
			}
			in.fn(m)
		}
	}
}

// closeInboxes closes the connection's inboxes (Close).
func (b *Broker) closeInboxes() {
	b.mu.Lock()
	ins := make([]*inbox, 0, len(b.inboxes))
	for in := range b.inboxes {
		ins = append(ins, in)
	}
	b.mu.Unlock()
	for _, in := range ins {
		_ = in.Close()
	}
}
