package nats

import (
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"
	"sync"

	natsgo "github.com/nats-io/nats.go"
)

// replyMux routes replies to waiting calls over one wildcard inbox
// subscription per connection ("<inbox>.*"), so a call costs no
// subscription of its own. nats.go's built-in request mux does the same but
// leaves calls waiting when the connection drops; ours fails them at once
// with a retryable error.
type replyMux struct {
	nc     *natsgo.Conn
	prefix string // "<inbox>." ; a call's reply subject is prefix+token

	mu      sync.Mutex
	sub     *natsgo.Subscription // made on first use
	pending map[string]*call
	next    uint64
	calls   sync.Pool // of *call, to spare two allocations per call
}

type call struct {
	token string
	reply string
	ch    chan result // buffered 1: the router never blocks
}

type result struct {
	msg *natsgo.Msg
	err error
}

// init binds m to its connection. m.pending is made before the connection
// exists, because the connection's callbacks may fail calls at any time.
func (m *replyMux) init(nc *natsgo.Conn) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.nc = nc
	m.prefix = nc.NewInbox() + "."
}

// register makes a pending call. With byID the reply token is derived from
// subject and id when id is usable in a subject, so a retry of a durable
// request with the same ID waits on the same reply subject as the stored
// original (which the stream deduplicated and will answer there), and a
// call with that ID to another subject never receives the original's reply.
func (m *replyMux) register(id, subject string, byID bool) (*call, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.sub == nil {
		sub, err := m.nc.Subscribe(m.prefix+"*", m.route)
		if err != nil {
			return nil, fmt.Errorf("reply subscription: %w", mapPublishError(err))
		}
		// Replies are bounded by the calls waiting for them; never drop
		// one as a slow consumer.
		_ = sub.SetPendingLimits(-1, -1)
		m.sub = sub
	}
	var reply string
	if byID && subjectToken(id) {
		h := fnv.New64a()
		_, _ = h.Write([]byte(subject))
		var buf [160]byte
		b := append(buf[:0], m.prefix...)
		b = append(b, 'i')
		b = strconv.AppendUint(b, h.Sum64(), 36)
		b = append(b, '_')
		reply = string(append(b, id...))
		if _, busy := m.pending[reply[len(m.prefix):]]; busy {
			reply = ""
		}
	}
	if reply == "" {
		m.next++
		var buf [96]byte
		b := append(buf[:0], m.prefix...)
		b = append(b, 'c')
		reply = string(strconv.AppendUint(b, m.next, 36))
	}
	c, _ := m.calls.Get().(*call)
	if c == nil {
		c = &call{ch: make(chan result, 1)}
	}
	c.reply, c.token = reply, reply[len(m.prefix):]
	m.pending[c.token] = c
	return c, nil
}

// cancel forgets c; a reply arriving later is dropped.
func (m *replyMux) cancel(c *call) {
	m.mu.Lock()
	mine := m.pending[c.token] == c
	if mine {
		delete(m.pending, c.token)
	}
	m.mu.Unlock()
	if mine {
		// Nobody else can send to c now: reuse it.
		m.release(c)
	}
	// Otherwise a result is on its way to c.ch; let c go to the garbage
	// collector rather than hand a stale result to a later call.
}

// done recycles c after its result was received.
func (m *replyMux) done(c *call) { m.release(c) }

func (m *replyMux) release(c *call) {
	c.token, c.reply = "", ""
	m.calls.Put(c)
}

// route is the inbox subscription's callback.
func (m *replyMux) route(msg *natsgo.Msg) {
	token, ok := strings.CutPrefix(msg.Subject, m.prefix)
	if !ok {
		return
	}
	m.mu.Lock()
	c := m.pending[token]
	delete(m.pending, token)
	m.mu.Unlock()
	if c != nil {
		c.ch <- result{msg: msg}
	}
}

// failAll fails every pending call with err and returns how many there
// were.
func (m *replyMux) failAll(err error) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := len(m.pending)
	for t, c := range m.pending {
		c.ch <- result{err: err}
		delete(m.pending, t)
	}
	return n
}

// subjectToken reports whether s can be one token of a NATS subject.
func subjectToken(s string) bool {
	if s == "" || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '.' || c == '*' || c == '>' || c <= ' ' || c >= 0x7f:
			return false
		}
	}
	return true
}
