package stream

import (
	"encoding/binary"
	"errors"
	"strings"

	"github.com/mqrpc/mqrpc/broker"
)

// The body of a batch frame is its messages one after the other, each
//
//	uvarint  number of headers
//	         per header: uvarint length, name (lower case), uvarint length, value
//	uvarint  length of the body, body
//
// (uvarint: unsigned LEB128, as in Protocol Buffers). The frame's
// HeaderSeq numbers the first message; the others follow it.

func uvarintLen(n int) int {
	l := 1
	for n >= 0x80 {
		n >>= 7
		l++
	}
	return l
}

// batchSize is the size of m in a batch frame.
func batchSize(m *broker.Message) int {
	n := uvarintLen(len(m.Header)) + uvarintLen(len(m.Body)) + len(m.Body)
	for k, v := range m.Header {
		n += uvarintLen(len(k)) + len(k) + uvarintLen(len(v)) + len(v)
	}
	return n
}

func appendString(b []byte, s string) []byte {
	return append(binary.AppendUvarint(b, uint64(len(s))), s...)
}

// appendBatch appends m to the body of a batch frame.
func appendBatch(b []byte, m *broker.Message) []byte {
	b = binary.AppendUvarint(b, uint64(len(m.Header)))
	for k, v := range m.Header {
		b = appendString(b, strings.ToLower(k))
		b = appendString(b, v)
	}
	b = binary.AppendUvarint(b, uint64(len(m.Body)))
	return append(b, m.Body...)
}

var errBatch = errors.New("malformed batch frame")

// batchReader reads the body of a batch frame.
type batchReader struct {
	b   []byte
	err error
}

func (r *batchReader) uvarint() int {
	v, n := binary.Uvarint(r.b)
	if n <= 0 || v > uint64(len(r.b)) { // no count exceeds what follows
		r.err = errBatch
		r.b = nil
		return 0
	}
	r.b = r.b[n:]
	return int(v)
}

func (r *batchReader) bytes() []byte {
	n := r.uvarint()
	if r.err != nil {
		return nil
	}
	if n > len(r.b) {
		r.err = errBatch
		r.b = nil
		return nil
	}
	v := r.b[:n:n] // its own capacity: an append copies, never overwrites the next message
	r.b = r.b[n:]
	return v
}

// skip passes over a length-prefixed string.
func (r *batchReader) skip() {
	if n := r.uvarint(); r.err == nil {
		if n > len(r.b) {
			r.err = errBatch
			r.b = nil
			return
		}
		r.b = r.b[n:]
	}
}

// countBatch checks the layout of a batch frame's body and returns how
// many messages it holds: at least one, or an error.
func countBatch(body []byte) (int, error) {
	r := batchReader{b: body}
	n := 0
	for len(r.b) > 0 && r.err == nil {
		nh := r.uvarint()
		for i := 0; i < nh && r.err == nil; i++ {
			r.skip()
			r.skip()
		}
		r.skip()
		n++
	}
	if r.err != nil {
		return 0, r.err
	}
	if n == 0 {
		return 0, errors.New("empty batch frame")
	}
	return n, nil
}

// decodeBatch appends the messages of a batch frame's body to dst: at
// least one, or an error and dst as it was. The messages are one
// allocation (their bodies share body's memory), so a frame costs the
// same few allocations whatever the number of messages it carries.
func decodeBatch(dst []*broker.Message, body []byte) ([]*broker.Message, error) {
	n, err := countBatch(body)
	if err != nil {
		return dst, err
	}
	slab := make([]broker.Message, n)
	r := batchReader{b: body}
	for i := range slab {
		m := &slab[i]
		if nh := r.uvarint(); nh > 0 {
			m.Header = make(broker.Header, nh)
			for j := 0; j < nh; j++ {
				k := strings.ToLower(string(r.bytes())) // as every broker delivers header names
				m.Header[k] = string(r.bytes())
			}
		}
		if b := r.bytes(); len(b) > 0 {
			m.Body = b
		}
		dst = append(dst, m)
	}
	return dst, nil
}
