package kernel

import "github.com/mqrpc/mqrpc/broker"

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
