package kernel

import (
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/mqrpc/mqrpc/broker"
)

// Inboxes is the table of a connection's stream inboxes, for a broker
// author implementing [broker.Streamer] by multiplexing every inbox of a
// connection over one subscription (a wildcard subject, one queue): the
// broker receives, reads the token its wire carries (the last part of the
// address) and calls [Inboxes.Dispatch]; an inbox costs no subscription of
// its own. The zero value is ready to use; it is safe for concurrent use.
//
// Inboxes keeps the broker.Inbox contract: a message for an inbox that is
// closed, or never was, is dropped; an inbox's function runs one call at a
// time, in the order Dispatch was called; Close is idempotent and may be
// called from the inbox's function, and once Close returned the function is
// not called again except by a Dispatch that was already handing it a
// message. The order of messages is the broker's to keep: Dispatch them in
// the order they arrived.
type Inboxes struct {
	mu   sync.Mutex
	m    map[string]*tableInbox
	next uint64
}

// Open registers fn under a new token and returns its inbox, whose address
// is prefix followed by the token. Tokens are short, made of [0-9a-z], and
// never reused by the same Inboxes.
func (t *Inboxes) Open(prefix string, fn func(*broker.Message)) broker.Inbox {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m == nil {
		t.m = make(map[string]*tableInbox)
	}
	t.next++
	token := strconv.FormatUint(t.next, 36)
	in := &tableInbox{t: t, token: token, addr: prefix + token, fn: fn}
	t.m[token] = in
	return in
}

// Dispatch hands the message that msg builds to the inbox of token, and
// reports whether that inbox is open. msg is called only for an open
// inbox, so a broker spends nothing on a message that is dropped.
func (t *Inboxes) Dispatch(token string, msg func() *broker.Message) bool {
	t.mu.Lock()
	in := t.m[token]
	t.mu.Unlock()
	if in == nil {
		return false // a closed inbox
	}
	m := msg()
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.closed.Load() {
		return false
	}
	in.fn(m)
	return true
}

// Len is the number of open inboxes.
func (t *Inboxes) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.m)
}

// tableInbox is an inbox of an Inboxes.
type tableInbox struct {
	t      *Inboxes
	token  string
	addr   string
	fn     func(*broker.Message)
	mu     sync.Mutex // held while fn runs: one call at a time
	closed atomic.Bool
}

func (in *tableInbox) Addr() string { return in.addr }

// Close takes in out of the table. It does not wait for a call of fn in
// progress (it may be that call), so it takes only the table's lock.
func (in *tableInbox) Close() error {
	in.t.mu.Lock()
	if in.t.m[in.token] == in {
		delete(in.t.m, in.token)
	}
	in.t.mu.Unlock()
	in.closed.Store(true)
	return nil
}
