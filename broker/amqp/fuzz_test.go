package amqp

import (
	"context"
	"encoding/binary"
	"math"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/kernel"
	"github.com/mqrpc/mqrpc/internal/testenv"
)

// FuzzDelivery feeds the inbound path deliveries as amqp091-go hands them
// over: a headers table of any of the field types it decodes from the wire
// (any client may set them), the content_type, message_id,
// correlation_id, expiration and routing key properties, and a body. It
// checks fromDelivery, maps the result back with toPublishing, and runs the
// fast-mode server's decision (handle) with a recording acknowledger. No
// RabbitMQ is needed.
func FuzzDelivery(f *testing.F) {
	f.Add(encodeTable(), []byte(nil), "", "", "", "", "calc")
	f.Add(encodeTable(
		fuzzField{kind: kindString, name: "mqrpc-method", str: "Add"},
		fuzzField{kind: kindString, name: broker.HeaderDeadline, str: "4102444800000"},
	), []byte(`{"a":1}`), "application/json", "id-1", "c-1", "60000", "calc")
	f.Add(encodeTable(
		fuzzField{kind: kindInt64, name: "MQRPC-Deadline", num: 4102444800000},
		fuzzField{kind: kindBool, name: "X-Flag", num: 1},
		fuzzField{kind: kindTable, name: "x-death", str: "q"},
		fuzzField{kind: kindInt32, name: headerFailures, num: 3},
	), []byte{0, 1, 255}, "", "", "", "", "calc")
	f.Add(encodeTable(
		fuzzField{kind: kindString, name: broker.HeaderDeadline, str: "soon"},
		fuzzField{kind: kindBytes, name: "Content-Type", str: "text/plain"},
	), []byte("x"), "application/msgpack", "m", "", "abc", "q")
	f.Add(encodeTable(
		fuzzField{kind: kindFloat64, name: broker.HeaderDeadline, num: 1},
		fuzzField{kind: kindTime, name: "sent", num: 1700000000},
		fuzzField{kind: kindDecimal, name: "price", num: 1234},
		fuzzField{kind: kindNil, name: "none"},
	), []byte(""), "", "", "", "", "")

	f.Fuzz(func(t *testing.T, tbl, body []byte, contentType, messageID, correlationID, expiration, routingKey string) {
		headers := decodeTable(tbl)
		d := amqp091.Delivery{
			Headers:       headers,
			ContentType:   contentType,
			MessageId:     messageID,
			CorrelationId: correlationID,
			Expiration:    expiration,
			RoutingKey:    routingKey,
			Body:          body,
		}
		got, err := fromDelivery(&d)
		checkDelivery(t, &d, got, err)
		if err == nil {
			checkPublishing(t, got)
		}

		// The fast-mode server's decision on the same delivery. Without a
		// reply-to the handler's reply is not published, so no channel is
		// needed.
		ack := &recordingAck{}
		d.Acknowledger = ack
		d.ReplyTo = ""
		var served []string // the subjects of the requests served
		deliver := fuzzServe(t, broker.HandlerFunc(func(_ context.Context, req *broker.Message) (*broker.Message, error) {
			served = append(served, req.Subject) // not req: the broker reuses it
			return &broker.Message{Header: req.Header.Clone(), Body: req.Body}, nil
		}))
		deliver(&d)
		require.Len(t, ack.settled, 1, "settled %v", ack.settled)
		switch {
		case err != nil:
			assert.Equal(t, "nack", ack.settled[0], "a request with a malformed deadline is refused")
			assert.Empty(t, served)
		case nearNow(got.Deadline):
			// Racing the clock; either outcome is right.
		case got.Expired(time.Now()):
			assert.Equal(t, "ack", ack.settled[0], "an expired request is dropped")
			assert.Empty(t, served)
		default:
			assert.Equal(t, "ack", ack.settled[0])
			require.Len(t, served, 1)
			assert.Equal(t, "fuzz", served[0])
		}
	})
}

// checkDelivery asserts what fromDelivery promises: lower-case names, no
// deadline or bookkeeping headers, string values taken from the input, the
// content_type property as content-type, a Deadline only from a well-formed
// mqrpc-deadline, and an error only for a malformed one.
func checkDelivery(t *testing.T, d *amqp091.Delivery, got *broker.Message, err error) {
	t.Helper()
	// The string form of every scalar input value by lower-case name.
	values := map[string][]string{}
	for k, v := range d.Headers {
		if s, ok := headerString(v); ok {
			values[strings.ToLower(k)] = append(values[strings.ToLower(k)], s)
		}
	}
	// Names differing only in case are distinct table fields: any
	// malformed deadline is an error, else the earliest one counts.
	earliest, bad := testenv.WantDeadline(values[broker.HeaderDeadline])
	if bad {
		var herr *broker.HeaderError
		require.ErrorAs(t, err, &herr, "a malformed deadline is an error")
		require.Equal(t, broker.HeaderDeadline, herr.Name)
	} else {
		require.NoError(t, err)
		require.True(t, earliest.Equal(got.Deadline), "deadline %v, want %v", got.Deadline, earliest)
	}
	require.NotNil(t, got)
	assert.Equal(t, d.MessageId, got.ID)
	assert.Equal(t, d.RoutingKey, got.Subject)
	assert.Equal(t, string(d.Body), string(got.Body))
	assert.NotNil(t, got.Body, "an empty body is empty, not nil")
	for k, v := range got.Header {
		require.Equal(t, strings.ToLower(k), k, "header names are lower case")
		require.NotEqual(t, broker.HeaderDeadline, k)
		require.NotEqual(t, headerFailures, k)
		require.NotEqual(t, headerError, k)
		if k == broker.HeaderContentType && d.ContentType != "" {
			require.Equal(t, d.ContentType, v, "the property wins over a header")
			continue
		}
		require.Contains(t, values[k], v, "value of %q not from the input", k)
	}
	if d.ContentType != "" {
		assert.Equal(t, d.ContentType, got.Header.Get(broker.HeaderContentType))
	}
}

// checkPublishing maps m back with toPublishing and asserts the table is
// valid AMQP and comes back as the same message.
func checkPublishing(t *testing.T, m *broker.Message) {
	t.Helper()
	now := time.Now()
	p := toPublishing(m, m.Deadline, now, false)
	require.NoError(t, p.Headers.Validate())
	if !m.Deadline.IsZero() && m.Deadline.Sub(now) <= maxExpiration {
		require.NotEmpty(t, p.Expiration)
	}
	if p.Expiration != "" {
		ms, err := strconv.ParseInt(p.Expiration, 10, 64)
		require.NoError(t, err)
		require.LessOrEqual(t, ms, maxExpiration.Milliseconds(), "RabbitMQ refuses a longer expiration")
	}
	back, err := fromDelivery(&amqp091.Delivery{
		MessageId: p.MessageId, ContentType: p.ContentType, Type: p.Type, Headers: p.Headers,
		Expiration: p.Expiration, Body: p.Body, RoutingKey: m.Subject,
	})
	require.NoError(t, err)
	assert.Equal(t, m.ID, back.ID)
	assert.Equal(t, string(m.Body), string(back.Body))
	assert.True(t, testenv.SameDeadline(m.Deadline, back.Deadline), "deadline %v came back as %v", m.Deadline, back.Deadline)
	require.Len(t, back.Header, len(m.Header))
	for k, v := range m.Header {
		require.Equal(t, v, back.Header[k], k)
	}
}

// nearNow reports a deadline too close to the clock to tell whether the
// server saw it expired.
func nearNow(d time.Time) bool {
	if d.IsZero() {
		return false
	}
	diff := time.Until(d)
	return diff > -time.Minute && diff < time.Minute
}

// fuzzServe serves h on a fast-mode subscription of a broker without a
// connection and returns what runs the kernel's pipeline on one delivery.
func fuzzServe(t *testing.T, h broker.Handler) func(*amqp091.Delivery) {
	b := &Broker{cfg: newConfig(nil), ctx: context.Background()}
	d := &driver{b: b, subject: "fuzz", queue: "fuzz"}
	d.ctx, d.cancel = context.WithCancel(context.Background())
	d.cancel() // Next hands nothing out: the test delivers itself
	sub := kernel.Serve[*delivery](d, "fuzz", h, broker.NewServeConfig("fuzz"), kernel.Options{Name: "amqp"})
	t.Cleanup(sub.Wait)
	c := newConsumer(nil)
	return func(m *amqp091.Delivery) {
		x := d.take(c, m, false)
		require.NotNil(t, x)
		sub.Deliver(x)
	}
}

// recordingAck is an amqp091.Acknowledger that records how a delivery was
// settled.
type recordingAck struct {
	mu      sync.Mutex
	settled []string
}

func (a *recordingAck) Ack(uint64, bool) error { return a.settle("ack") }
func (a *recordingAck) Nack(_ uint64, _, requeue bool) error {
	if requeue {
		return a.settle("requeue")
	}
	return a.settle("nack")
}
func (a *recordingAck) Reject(_ uint64, requeue bool) error {
	if requeue {
		return a.settle("requeue")
	}
	return a.settle("nack")
}

func (a *recordingAck) settle(how string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.settled = append(a.settled, how)
	return nil
}

// The fuzz input's table encoding: entries of a kind byte, a name and a
// value. The kinds are the Go types amqp091-go decodes field values into.
const (
	kindString = iota
	kindBytes
	kindBool
	kindInt8
	kindUint8
	kindInt16
	kindUint16
	kindInt32
	kindUint32
	kindInt64
	kindFloat32
	kindFloat64
	kindDecimal
	kindTime
	kindNil
	kindTable
	kindArray
	numKinds
)

// wellKnown are names an entry can select with one byte, so the fuzzer
// reaches the headers the mapping treats specially.
var wellKnown = []string{
	broker.HeaderDeadline, "MQRPC-DEADLINE", broker.HeaderContentType, "Content-Type",
	headerFailures, headerError, broker.HeaderMethod, "x-death", "Mqrpc-Deadline",
}

type fuzzField struct {
	kind byte
	name string
	str  string
	num  float64
}

// encodeTable writes fields in the encoding decodeTable reads.
func encodeTable(fields ...fuzzField) []byte {
	var b []byte
	for _, f := range fields {
		b = append(b, f.kind, byte(len(f.name)))
		b = append(b, f.name...)
		switch f.kind {
		case kindString, kindBytes, kindTable, kindArray:
			b = append(b, byte(len(f.str)))
			b = append(b, f.str...)
		case kindFloat32, kindFloat64:
			b = binary.BigEndian.AppendUint64(b, math.Float64bits(f.num))
		case kindNil:
		default:
			b = binary.BigEndian.AppendUint64(b, uint64(int64(f.num)))
		}
	}
	return b
}

// decodeTable turns arbitrary bytes into a headers table; it never fails.
func decodeTable(b []byte) amqp091.Table {
	next := func(n int) []byte {
		n = min(n, len(b))
		v := b[:n]
		b = b[n:]
		return v
	}
	u64 := func() uint64 {
		var w [8]byte
		copy(w[:], next(8))
		return binary.BigEndian.Uint64(w[:])
	}
	var t amqp091.Table
	for len(b) >= 2 {
		kind, nl := b[0]%numKinds, b[1]
		b = b[2:]
		var name string
		if nl >= 0xF0 {
			name = wellKnown[int(nl-0xF0)%len(wellKnown)]
		} else {
			name = string(next(int(nl)))
		}
		var v any
		switch kind {
		case kindString:
			v = string(next(int(firstByte(next(1)))))
		case kindBytes:
			v = append([]byte{}, next(int(firstByte(next(1))))...)
		case kindBool:
			v = u64()&1 == 1
		case kindInt8:
			v = int8(u64())
		case kindUint8:
			v = uint8(u64())
		case kindInt16:
			v = int16(u64())
		case kindUint16:
			v = uint16(u64())
		case kindInt32:
			v = int32(u64())
		case kindUint32:
			v = uint32(u64())
		case kindInt64:
			v = int64(u64())
		case kindFloat32:
			v = float32(math.Float64frombits(u64()))
		case kindFloat64:
			v = math.Float64frombits(u64())
		case kindDecimal:
			w := u64()
			v = amqp091.Decimal{Scale: uint8(w >> 32), Value: int32(w)}
		case kindTime:
			v = time.Unix(int64(u64()), 0)
		case kindNil:
			v = nil
		case kindTable:
			v = amqp091.Table{"v": string(next(int(firstByte(next(1)))))}
		case kindArray:
			v = []any{string(next(int(firstByte(next(1))))), int32(7)}
		}
		if t == nil {
			t = amqp091.Table{}
		}
		t[name] = v
	}
	return t
}

func firstByte(b []byte) byte {
	if len(b) == 0 {
		return 0
	}
	return b[0]
}
