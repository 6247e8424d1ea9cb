package broker

import (
	"crypto/rand"
	"encoding/base64"
	"math"
	"strconv"
	"strings"
	"time"
)

// Well-known header names shared by every broker and by package rpc. Header
// names are case-insensitive; mqrpc writes them in lower case.
const (
	// HeaderDeadline carries Message.Deadline as Unix milliseconds
	// (decimal). Brokers move it between the header and the field; it
	// never appears in Message.Header on either side.
	HeaderDeadline = "mqrpc-deadline"
	// HeaderMethod names the method a request invokes.
	HeaderMethod = "mqrpc-method"
	// HeaderContentType names the codec of the body, such as
	// "application/json".
	HeaderContentType = "content-type"
	// HeaderStatus carries the numeric status code of a reply (0 = OK).
	HeaderStatus = "mqrpc-status"
	// HeaderStatusMessage carries the error message of a failed reply.
	HeaderStatusMessage = "mqrpc-message"
	// HeaderTraceParent carries the W3C trace context.
	HeaderTraceParent = "traceparent"
	// HeaderTraceState carries the W3C trace state.
	HeaderTraceState = "tracestate"
)

// Message is the unit a broker moves: a request, a reply or a one-way
// message.
type Message struct {
	// ID identifies the message uniquely; it is the deduplication key and
	// stays the same across retries of one call. Brokers fill it with
	// NewID when it is empty.
	ID string
	// Subject is where the message goes: a NATS subject, an AMQP queue
	// (routing key) or a RocketMQ topic. Brokers ignore it on replies.
	Subject string
	// Header is string metadata. Names are case-insensitive; use Get and
	// Set. Brokers deliver names in lower case.
	Header Header
	// Body is the payload, opaque to the broker.
	Body []byte
	// Deadline is when the caller gives up; zero means none. Brokers carry
	// it as HeaderDeadline and as a native time-to-live where they have
	// one, and never deliver a request whose deadline has passed.
	Deadline time.Time
}

// Header is message metadata with case-insensitive names, stored in lower
// case. The zero value (nil) is readable; Set allocates on first use only
// through (*Message).SetHeader or an explicit make.
type Header map[string]string

// Get returns the value of name, or "".
func (h Header) Get(name string) string {
	if v, ok := h[name]; ok {
		return v
	}
	return h[strings.ToLower(name)]
}

// Set sets name to value.
func (h Header) Set(name, value string) { h[strings.ToLower(name)] = value }

// Del removes name.
func (h Header) Del(name string) { delete(h, strings.ToLower(name)) }

// Clone returns a copy of h (nil for nil).
func (h Header) Clone() Header {
	if h == nil {
		return nil
	}
	c := make(Header, len(h))
	for k, v := range h {
		c[k] = v
	}
	return c
}

// SetHeader sets a header on m, allocating m.Header if needed.
func (m *Message) SetHeader(name, value string) {
	if m.Header == nil {
		m.Header = make(Header, 4)
	}
	m.Header.Set(name, value)
}

// Expired reports whether m has a deadline that is not after now.
func (m *Message) Expired(now time.Time) bool {
	return !m.Deadline.IsZero() && !now.Before(m.Deadline)
}

// ClampDeadline returns deadline, or now+max when deadline is later than
// that. Brokers clamp a deadline before they turn it into a native
// time-to-live: a time.Duration ends at about 292 years, so arithmetic on a
// deadline further ahead overflows (time.Until saturates, and adding to a
// saturated duration wraps around). The zero deadline (none) stays zero.
func ClampDeadline(deadline, now time.Time, max time.Duration) time.Time {
	if deadline.IsZero() {
		return deadline
	}
	if limit := now.Add(max); deadline.After(limit) {
		return limit
	}
	return deadline
}

// lastWireDeadline is the latest deadline HeaderDeadline can carry: the
// largest int64 of Unix milliseconds.
var lastWireDeadline = time.UnixMilli(math.MaxInt64)

// FormatDeadline renders t for HeaderDeadline: Unix milliseconds, rounded
// up so a deadline never moves earlier than the caller's. A deadline beyond
// int64 milliseconds (some 292 million years ahead) is written as the
// largest value, never as an overflowed one.
func FormatDeadline(t time.Time) string {
	if !t.Before(lastWireDeadline) {
		return strconv.FormatInt(math.MaxInt64, 10)
	}
	ms := t.UnixMilli()
	// Nanosecond, not UnixNano: UnixNano overflows after the year 2262.
	if t.Nanosecond()%int(time.Millisecond) != 0 {
		ms++
	}
	return strconv.FormatInt(ms, 10)
}

// ParseDeadline parses a HeaderDeadline value. The empty string gives the
// zero time and no error.
func ParseDeadline(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	ms, err := strconv.ParseInt(s, 10, 64)
	if err != nil || ms <= 0 {
		return time.Time{}, &HeaderError{Name: HeaderDeadline, Value: s}
	}
	return time.UnixMilli(ms), nil
}

// MergeDeadline folds one received HeaderDeadline value into d, the
// deadline gathered so far (zero for none). A broker whose wire headers can
// carry the name more than once, differing in case (NATS headers, AMQP
// tables), calls it for each value, so the result does not depend on map
// order: a malformed value gives an error and leaves d as it was, and
// otherwise the earliest deadline wins.
func MergeDeadline(d time.Time, value string) (time.Time, error) {
	v, err := ParseDeadline(value)
	if err != nil {
		return d, err
	}
	if !v.IsZero() && (d.IsZero() || v.Before(d)) {
		return v, nil
	}
	return d, nil
}

// HeaderError reports a malformed header on a received message.
type HeaderError struct {
	Name, Value string
}

func (e *HeaderError) Error() string {
	const max = 64
	v := e.Value
	if len(v) > max {
		v = v[:max] + "..."
	}
	return "broker: malformed header " + e.Name + ": " + strconv.Quote(v)
}

// NewID returns a new message ID: 128 bits from crypto/rand, in 22
// characters of unpadded base64url. IDs are unique across processes and
// cannot be guessed from other IDs, which matters because the ID is the
// deduplication key: a caller who could predict another's next ID could
// have its own request answered in its place. It costs one small
// allocation and about 100 ns more than a counter (BenchmarkNewID).
func NewID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand.Read's contract)
	return base64.RawURLEncoding.EncodeToString(b[:])
}
