package kernel

import (
	"sync"

	"github.com/mqrpc/mqrpc/broker"
)

// Replies is the caller's end of a [broker.Broadcaster]'s Gather once the
// request is out: it hands each reply to Gather's fn and says when the
// wait is over, so that a broker's Gather is only about its wire (getting
// the request out, the replies in, and telling why the wait ended early).
// Use it from the one goroutine that receives the replies: fn is never
// called concurrently.
type Replies struct {
	fn    func(*broker.Message) bool
	max   int
	taken int
}

// NewReplies returns the Replies of a Gather called with max and fn.
func NewReplies(max int, fn func(*broker.Message) bool) Replies {
	return Replies{fn: fn, max: max}
}

// Take hands rep to fn (which owns it) and reports whether the Gather is
// over: fn returned false, or max replies have been taken (max > 0).
func (r *Replies) Take(rep *broker.Message) (over bool) {
	r.taken++
	return !r.fn(rep) || (r.max > 0 && r.taken >= r.max)
}

// Taken returns how many replies Take has handed to fn.
func (r *Replies) Taken() int { return r.taken }

// EachTable is the table of a connection's ServeEach subscriptions by
// subject, for a broker that hands each broadcast request to them itself
// (broker/memory, broker/rocketmq) instead of its server copying it to
// every subscriber. S is the broker's own subscription type. The zero
// value is ready to use; it is safe for concurrent use.
type EachTable[S comparable] struct {
	mu   sync.RWMutex
	subs map[string]map[S]struct{}
}

// Add enters s under subject.
func (t *EachTable[S]) Add(subject string, s S) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.subs == nil {
		t.subs = make(map[string]map[S]struct{})
	}
	if t.subs[subject] == nil {
		t.subs[subject] = make(map[S]struct{})
	}
	t.subs[subject][s] = struct{}{}
}

// Remove takes s out of subject's entries; once it returned, Range no
// longer calls fn with s. Removing what is not there does nothing.
func (t *EachTable[S]) Remove(subject string, s S) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.subs[subject], s)
	if len(t.subs[subject]) == 0 {
		delete(t.subs, subject)
	}
}

// Range calls fn with each subscription of subject, in no particular
// order, holding the table's read lock: fn must not block, nor call Add
// or Remove.
func (t *EachTable[S]) Range(subject string, fn func(S)) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	for s := range t.subs[subject] {
		fn(s)
	}
}

// All returns every subscription of every subject.
func (t *EachTable[S]) All() []S {
	t.mu.RLock()
	defer t.mu.RUnlock()
	var all []S
	for _, m := range t.subs {
		for s := range m {
			all = append(all, s)
		}
	}
	return all
}
