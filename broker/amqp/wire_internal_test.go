package amqp

import (
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/broker"
)

// These tests need no RabbitMQ: they pin the mapping of docs/PROTOCOL.md.

func TestMappingRoundTrip(t *testing.T) {
	now := time.UnixMilli(1_700_000_000_000)
	deadline := now.Add(1500*time.Millisecond + 300*time.Microsecond)
	tests := []struct {
		name string
		msg  broker.Message
	}{
		{"Empty", broker.Message{ID: "a"}},
		{"ContentType", broker.Message{ID: "b", Header: broker.Header{"content-type": "application/json", "mqrpc-method": "Add"}}},
		{"EmptyContentType", broker.Message{ID: "c", Header: broker.Header{"content-type": ""}}},
		{"EmptyMethod", broker.Message{ID: "e", Header: broker.Header{"mqrpc-method": "", "x": "y"}}},
		{"Deadline", broker.Message{ID: "d", Header: broker.Header{"x": "y"}, Body: []byte{0, 1, 2}, Deadline: deadline}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := toPublishing(&tt.msg, tt.msg.Deadline, now, false)
			d := amqp091.Delivery{
				MessageId: p.MessageId, ContentType: p.ContentType, Type: p.Type, Headers: p.Headers,
				Body: p.Body, Expiration: p.Expiration, DeliveryMode: p.DeliveryMode,
			}
			got, err := fromDelivery(&d)
			require.NoError(t, err)
			assert.Equal(t, tt.msg.ID, got.ID)
			assert.Equal(t, len(tt.msg.Header), len(got.Header))
			for k, v := range tt.msg.Header {
				assert.Equal(t, v, got.Header.Get(k), k)
			}
			assert.Equal(t, string(tt.msg.Body), string(got.Body))
			if tt.msg.Deadline.IsZero() {
				assert.True(t, got.Deadline.IsZero())
				assert.Empty(t, p.Expiration)
			} else {
				// Rounded up to the millisecond, never earlier.
				assert.False(t, got.Deadline.Before(tt.msg.Deadline))
				assert.Less(t, got.Deadline.Sub(tt.msg.Deadline), time.Millisecond)
				assert.Equal(t, "1501", p.Expiration)
			}
		})
	}
}

// TestMappingProperties pins which headers travel as AMQP properties
// rather than header table fields.
func TestMappingProperties(t *testing.T) {
	m := broker.Message{ID: "a", Header: broker.Header{"Content-Type": "application/json", "mqrpc-method": "Add", "x-k": "v"}}
	p := toPublishing(&m, time.Time{}, time.Now(), false)
	assert.Equal(t, "application/json", p.ContentType)
	assert.Equal(t, "Add", p.Type)
	assert.Equal(t, amqp091.Table{"x-k": "v"}, p.Headers, "only the other headers go in the table")

	// A foreign client may name the method in the header table, as
	// earlier versions of the protocol had it; the header wins over type.
	for _, tt := range []struct {
		name string
		d    amqp091.Delivery
		want string
	}{
		{"Type", amqp091.Delivery{Type: "Add"}, "Add"},
		{"Header", amqp091.Delivery{Headers: amqp091.Table{"mqrpc-method": "Sub"}}, "Sub"},
		{"Both", amqp091.Delivery{Type: "Add", Headers: amqp091.Table{"Mqrpc-Method": "Sub"}}, "Sub"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := fromDelivery(&tt.d)
			require.NoError(t, err)
			assert.Equal(t, broker.Header{"mqrpc-method": tt.want}, got.Header)
		})
	}
}

func TestMappingForeignHeaders(t *testing.T) {
	d := amqp091.Delivery{Headers: amqp091.Table{
		"X-Upper":            "v",
		"x-int":              int32(7),
		"x-bool":             true,
		"x-bytes":            []byte("raw"),
		"x-death":            []any{amqp091.Table{"count": int64(1)}},
		"x-mqrpc-deliveries": int32(2),
		"mqrpc-deadline":     "not-a-number",
	}}
	m, err := fromDelivery(&d)
	var herr *broker.HeaderError
	require.ErrorAs(t, err, &herr, "a malformed deadline is reported")
	assert.Equal(t, broker.Header{"x-upper": "v", "x-int": "7", "x-bool": "true", "x-bytes": "raw"}, m.Header)
}

// TestExpiration: the AMQP expiration is the time left in milliseconds,
// rounded up, never 0, and absent beyond the ten years RabbitMQ accepts
// (it closes the channel of a publish with more), however far the deadline.
func TestExpiration(t *testing.T) {
	assert.Equal(t, "1", expiration(-time.Hour))
	assert.Equal(t, "1", expiration(time.Nanosecond))
	assert.Equal(t, "2", expiration(1500*time.Microsecond))
	assert.Equal(t, "315360000000", expiration(maxExpiration))
	assert.Equal(t, "", expiration(maxExpiration+time.Millisecond))
	now := time.Now()
	for _, dl := range []time.Time{now.Add(20 * 365 * 24 * time.Hour), time.UnixMilli(1<<63 - 1), time.Unix(1<<62, 0)} {
		p := toPublishing(&broker.Message{Subject: "s"}, dl, now, true)
		assert.Empty(t, p.Expiration, "deadline %v", dl)
		assert.NotEmpty(t, p.Headers[broker.HeaderDeadline])
	}
}

// TestRetryDelay: the retry delays double from the minimum to the maximum.
func TestRetryDelay(t *testing.T) {
	c := newConfig([]Option{WithRetryBackoff(100*time.Millisecond, time.Second)})
	var got []time.Duration
	for n := 1; n <= 6; n++ {
		got = append(got, c.retryDelay(n))
	}
	ms := time.Millisecond
	assert.Equal(t, []time.Duration{100 * ms, 200 * ms, 400 * ms, 800 * ms, time.Second, time.Second}, got)
	assert.Equal(t, "q.retry-100ms", retryQueue("q", 100*ms))
}

func TestBackoff(t *testing.T) {
	for n := 0; n < 20; n++ {
		d := backoff(100*time.Millisecond, 5*time.Second, n)
		assert.GreaterOrEqual(t, d, 50*time.Millisecond)
		assert.LessOrEqual(t, d, 5*time.Second)
	}
	assert.LessOrEqual(t, backoff(100*time.Millisecond, 5*time.Second, 0), 100*time.Millisecond)
}

func TestNewBadURL(t *testing.T) {
	_, err := New("amqp://127.0.0.1:1/", WithDialTimeout(time.Second))
	require.Error(t, err, "nothing listens on port 1")
	_, err = New("ftp://x/")
	require.Error(t, err)
}
