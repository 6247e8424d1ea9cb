package amqp

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/mqrpc/mqrpc/broker"
)

// Names used on the wire besides the shared broker headers.
const (
	// directReplyTo is RabbitMQ's pseudo-queue for direct reply-to.
	directReplyTo = "amq.rabbitmq.reply-to"
	// headerFailures counts failed deliveries of a request in durable mode.
	// Servers read it only from a delivery that came back through
	// retryExchange, never from a request as a client published it.
	headerFailures = "x-mqrpc-deliveries"
	// headerError carries the last error of a retried or dead-lettered
	// request.
	headerError = "x-mqrpc-error"
	// retryExchange is the internal exchange through which RabbitMQ
	// dead-letters a request from its retry queue back to its request
	// queue when the retry delay has passed. Clients cannot publish to an
	// internal exchange, so a delivery from it carries a failure count a
	// server wrote.
	retryExchange = "mqrpc.retry"
)

// maxExpiration is the longest AMQP expiration RabbitMQ accepts (3650
// days; it closes the channel of a publish with a longer one). A request
// whose deadline is further away is published without an expiration: it
// still carries its deadline, which servers check.
const maxExpiration = 3650 * 24 * time.Hour

// toPublishing maps m onto an AMQP request or one-way message, sent at now.
// The content-type header travels as the content_type property and the
// mqrpc-method header as the type property (AMQP's "message type name"),
// which plain AMQP clients read and which cost less on both ends and in
// RabbitMQ than header table fields; both come back as headers on receipt,
// so the round trip is exact.
//
// A persistent message (durable mode) carries its send time as the
// timestamp property, for whoever inspects a queue; a transient one, gone
// within milliseconds, does not pay for encoding it on both ends.
func toPublishing(m *broker.Message, deadline time.Time, now time.Time, persistent bool) amqp091.Publishing {
	p := mapMessage(m, deadline, now)
	p.DeliveryMode = amqp091.Transient
	if persistent {
		p.DeliveryMode = amqp091.Persistent
		p.Timestamp = now
	}
	return p
}

// toReply maps a reply onto an AMQP message. A reply carries neither a
// timestamp nor a delivery mode: nothing stores it (a direct reply-to
// reply never touches a queue), and each property costs an encoding on
// both ends of every call.
func toReply(m *broker.Message) amqp091.Publishing {
	return mapMessage(m, time.Time{}, time.Time{})
}

// mapMessage maps m's ID, body and headers, and the deadline (relative to
// now) onto an AMQP message.
func mapMessage(m *broker.Message, deadline time.Time, now time.Time) amqp091.Publishing {
	p := amqp091.Publishing{
		MessageId: m.ID,
		Body:      m.Body,
	}
	n := len(m.Header)
	if !deadline.IsZero() {
		n++
	}
	for k, v := range m.Header {
		k = strings.ToLower(k)
		switch {
		case k == broker.HeaderContentType && v != "":
			p.ContentType = v
			n--
		case k == broker.HeaderMethod && v != "":
			p.Type = v
			n--
		case k == broker.HeaderDeadline:
			// The field is authoritative; a stale header is not copied.
			n--
		default:
			// An empty content-type or method stays a header: an
			// empty property would not come back as a header.
			if p.Headers == nil {
				p.Headers = make(amqp091.Table, n)
			}
			p.Headers[k] = v
		}
	}
	if !deadline.IsZero() {
		if p.Headers == nil {
			p.Headers = make(amqp091.Table, 1)
		}
		p.Headers[broker.HeaderDeadline] = broker.FormatDeadline(deadline)
		// Rounded up so RabbitMQ never drops a request before its caller
		// gave up; servers compare against the exact header anyway.
		p.Expiration = expiration(deadline.Sub(now))
	}
	return p
}

// expiration is the AMQP expiration of a message with left to live:
// milliseconds, rounded up, at least 1, and "" (none) beyond maxExpiration.
func expiration(left time.Duration) string {
	if left > maxExpiration {
		return ""
	}
	ms := (left + time.Millisecond - 1) / time.Millisecond
	if ms < 1 {
		ms = 1
	}
	return strconv.FormatInt(int64(ms), 10)
}

// fromDelivery maps a delivery back onto a Message. Header names are lower
// cased; values that are not strings (from foreign clients) are formatted;
// nested tables and arrays (such as RabbitMQ's x-death) are left out. The
// content_type and type properties become the content-type and
// mqrpc-method headers; an mqrpc-method header (as foreign clients
// following older versions of docs/PROTOCOL.md send it) wins over type.
func fromDelivery(d *amqp091.Delivery) (*broker.Message, error) {
	m := new(broker.Message)
	return m, decodeDelivery(m, d)
}

// decodeDelivery is fromDelivery into m, whose Header, if not nil, is an
// empty map to fill instead of making one (internal/msgpool).
func decodeDelivery(m *broker.Message, d *amqp091.Delivery) error {
	m.ID, m.Subject, m.Body = d.MessageId, d.RoutingKey, d.Body
	if d.Body == nil {
		m.Body = []byte{}
	}
	n := len(d.Headers)
	if d.ContentType != "" {
		n++
	}
	if d.Type != "" {
		n++
	}
	if n > 0 && m.Header == nil {
		m.Header = make(broker.Header, n)
	}
	var err error
	for k, v := range d.Headers {
		k = strings.ToLower(k)
		s, ok := headerString(v)
		if !ok {
			continue
		}
		switch k {
		case broker.HeaderDeadline:
			// Names differing in case are distinct table fields and
			// come in map order.
			var perr error
			if m.Deadline, perr = broker.MergeDeadline(m.Deadline, s); perr != nil {
				err = perr
			}
		case headerFailures, headerError:
			// Internal bookkeeping of durable mode.
		default:
			m.Header[k] = s
		}
	}
	if d.ContentType != "" {
		m.Header[broker.HeaderContentType] = d.ContentType
	}
	if _, ok := m.Header[broker.HeaderMethod]; d.Type != "" && !ok {
		m.Header[broker.HeaderMethod] = d.Type
	}
	if len(m.Header) == 0 {
		m.Header = nil
	}
	return err
}

func headerString(v any) (string, bool) {
	switch v := v.(type) {
	case string:
		return v, true
	case []byte:
		return string(v), true
	case nil, amqp091.Table, []any:
		return "", false
	case time.Time:
		return v.UTC().Format(time.RFC3339), true
	default:
		return fmt.Sprint(v), true
	}
}

func headerInt(t amqp091.Table, name string) int {
	switch v := t[name].(type) {
	case int32:
		return int(v)
	case int64:
		return int(v)
	case int:
		return v
	case string:
		n, _ := strconv.Atoi(v)
		return n
	}
	return 0
}
