// Package msgpool reuses the request messages brokers hand to handlers.
// broker.Handler says a handler does not keep its message after it
// returned, so a broker may give the message, header map and all, to the
// next request.
package msgpool

import (
	"sync"

	"github.com/mqrpc/mqrpc/broker"
)

var pool = sync.Pool{New: func() any { return new(broker.Message) }}

// Get returns a zero message, except that its Header may be an empty map
// (from an earlier request) to fill instead of making one.
func Get() *broker.Message { return pool.Get().(*broker.Message) }

// Put clears m and keeps it for a later Get. A header map of an unusual
// size is left to the garbage collector rather than kept around.
func Put(m *broker.Message) {
	h := m.Header
	if len(h) > maxKeptHeader {
		h = nil
	}
	clear(h)
	*m = broker.Message{Header: h}
	pool.Put(m)
}

// maxKeptHeader is the largest header map Put keeps.
const maxKeptHeader = 16
