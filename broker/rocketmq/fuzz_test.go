package rocketmq

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/apache/rocketmq-client-go/v2/primitive"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/internal/testenv"
)

// FuzzFromProperties feeds the inbound path messages as rocketmq-client-go
// hands them over: properties in RocketMQ's wire encoding (name 0x01 value
// 0x02 ..., decoded by the client's own UnmarshalProperties), a body and a
// topic, optionally marked as a request (RIP-16 properties). It checks
// fromProperties, maps the result back (rocketMessage and replyMessage),
// and runs the server's decision (subscription.handle) with a fake
// producer. No RocketMQ is needed.
func FuzzFromProperties(f *testing.F) {
	p := func(kv ...string) []byte {
		var b []byte
		for i := 0; i+1 < len(kv); i += 2 {
			b = append(b, kv[i]+"\x01"+kv[i+1]+"\x02"...)
		}
		return b
	}
	f.Add(p(), []byte(nil), "calc", false)
	f.Add(p(propKeys, "id-1", "mqrpc-method", "Add", "content-type", "application/json",
		broker.HeaderDeadline, "4102444800000", propTTL, "30", "UNIQ_KEY", "u"), []byte(`{"a":1}`), "calc", true)
	f.Add(p(broker.HeaderDeadline, "later", "x", ""), []byte("x"), "calc", true)
	f.Add(p(broker.HeaderDeadline, "1", propEmptyBody, "1"), []byte{0}, "calc", true)
	f.Add(p("__STARTDELIVERTIME", "1", "Mixed-Case", "v", "k", "a\x01b"), []byte{1, 2}, "q", false)

	b, err := newBroker("127.0.0.1:9876")
	require.NoError(f, err)
	f.Cleanup(func() { clientLogSink.detach(b) })

	f.Fuzz(func(t *testing.T, props, body []byte, topic string, request bool) {
		m := &primitive.MessageExt{Message: primitive.Message{Topic: topic, Body: body}, MsgId: "fuzz"}
		m.UnmarshalProperties(props)
		if request {
			for _, k := range []string{propReplyTo, propCorrelationID, propCluster} {
				if m.GetProperty(k) == "" {
					m.WithProperty(k, "fuzz-"+strings.ToLower(k))
				}
			}
		}
		in := m.GetProperties()
		got, err := fromProperties(topic, in, body)
		checkProperties(t, in, body, topic, got, err)
		if err == nil {
			checkOutbound(t, m, got)
		}

		// The server's decision on the same message.
		prod := &recordingProducer{}
		b.producer = prod
		h := &echoRejecter{}
		s := newSubscription(b, topic, topic, topic, h, broker.NewServeConfig(topic))
		defer s.abandon()
		level := s.deliver(primitive.MessageQueue{}, m)
		served := h.served
		// Serve's topic probe carries the property with a value; a message
		// with the name alone is an ordinary one.
		initMsg := in[propInit] != ""
		if err != nil && !initMsg && !isRequest(m) {
			assert.Equal(t, levelDeadLetter, level, "a malformed one-way message is dead-lettered")
		} else {
			assert.Equal(t, levelDone, level)
		}
		switch {
		case initMsg:
			assert.Empty(t, served)
			assert.Empty(t, prod.sent)
		case err != nil:
			assert.Empty(t, served, "a request with a malformed deadline was served")
			if isRequest(m) && in[propCluster] != "" {
				require.Len(t, prod.sent, 1, "a malformed request is answered")
				assert.Equal(t, "3", prod.sent[0].GetProperty(broker.HeaderStatus))
			}
		case nearNow(got.Deadline):
			// Racing the clock; either outcome is right.
		case got.Expired(time.Now()):
			assert.Empty(t, served, "an expired request was served")
			assert.Empty(t, prod.sent)
		default:
			require.Len(t, served, 1)
			if isRequest(m) && in[propCluster] != "" {
				assert.Len(t, prod.sent, 1, "a request is answered")
			} else {
				assert.Empty(t, prod.sent)
			}
		}
	})
}

// checkProperties asserts what fromProperties promises: header names from
// mqrpc's lower-case properties only (never RocketMQ's upper-case or "__"
// ones, or mqrpc's markers), values and ID taken from the input, the body
// unless marked empty, a Deadline only from a well-formed mqrpc-deadline
// and an error only for a malformed one.
func checkProperties(t *testing.T, in map[string]string, body []byte, topic string, got *broker.Message, err error) {
	t.Helper()
	if err != nil {
		var herr *broker.HeaderError
		require.ErrorAs(t, err, &herr)
		require.Equal(t, broker.HeaderDeadline, herr.Name)
		_, perr := broker.ParseDeadline(in[broker.HeaderDeadline])
		require.Error(t, perr, "an error without a malformed deadline in the input")
	}
	require.NotNil(t, got)
	assert.Equal(t, topic, got.Subject)
	assert.Equal(t, in[propKeys], got.ID)
	if in[propEmptyBody] != "" || len(body) == 0 {
		assert.Empty(t, got.Body)
	} else {
		assert.Equal(t, body, got.Body)
	}
	for k, v := range got.Header {
		// Lower case as far as ASCII goes: headerName passes a name with
		// non-ASCII upper-case letters ("Ä"), which only a foreign client
		// can send (mqrpc lower-cases what it writes).
		require.False(t, hasASCIIUpper(k), "header name %q is not lower case", k)
		require.False(t, strings.HasPrefix(k, "__"), k)
		require.NotContains(t, []string{broker.HeaderDeadline, propInit, propEmptyBody}, k)
		iv, ok := in[k]
		require.True(t, ok, "header %q not in the input", k)
		require.Equal(t, iv, v, k)
	}
	if !got.Deadline.IsZero() {
		d, perr := broker.ParseDeadline(in[broker.HeaderDeadline])
		require.NoError(t, perr)
		require.True(t, d.Equal(got.Deadline))
	}
}

func hasASCIIUpper(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 'A' && s[i] <= 'Z' {
			return true
		}
	}
	return false
}

// checkOutbound maps got back as a request (rocketMessage) and, when req
// carries a cluster, as a reply (replyMessage), through RocketMQ's property
// encoding, and asserts it comes back the same.
func checkOutbound(t *testing.T, req *primitive.MessageExt, got *broker.Message) {
	t.Helper()
	rm, _, err := rocketMessage(got.Subject, got, got.Deadline, 0)
	require.NoError(t, err, "a received message cannot be sent on")
	back := &primitive.Message{}
	back.UnmarshalProperties([]byte(rm.MarshallProperties()))
	again, err := fromProperties(got.Subject, back.GetProperties(), rm.Body)
	require.NoError(t, err)
	assert.Equal(t, got.ID, again.ID)
	assert.Equal(t, string(got.Body), string(again.Body))
	assert.True(t, testenv.SameDeadline(got.Deadline, again.Deadline), "deadline %v came back as %v", got.Deadline, again.Deadline)
	// toProperties lower-cases names with strings.ToLower, while
	// fromProperties passes a foreign client's names with non-ASCII
	// upper-case letters or invalid UTF-8 (which ToLower turns into
	// U+FFFD) as they are: such names come back changed, and several may
	// merge into one.
	want := map[string][]string{}
	for k, v := range got.Header {
		want[strings.ToLower(k)] = append(want[strings.ToLower(k)], v)
	}
	require.Len(t, again.Header, len(want))
	for k, vs := range want {
		require.Contains(t, vs, again.Header[k], k)
	}

	if req.GetProperty(propCluster) == "" {
		return
	}
	reply := &broker.Message{ID: "r", Header: got.Header, Body: got.Body}
	rm, _, err = replyMessage(req, reply)
	require.NoError(t, err)
	assert.Equal(t, msgTypeReply, rm.GetProperty(propMsgType))
	assert.Equal(t, req.GetProperty(propCorrelationID), rm.GetProperty(propCorrelationID))
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

// recordingProducer records what the server sends (its replies).
// echoRejecter echoes, records what it served, and answers a rejection
// as rpc.Server does, with a status (3: InvalidArgument for a malformed
// request).
type echoRejecter struct{ served []*broker.Message }

func (h *echoRejecter) ServeMessage(_ context.Context, req *broker.Message) (*broker.Message, error) {
	h.served = append(h.served, req)
	return &broker.Message{Header: req.Header.Clone(), Body: req.Body}, nil
}

func (h *echoRejecter) Reject(_ *broker.Message, r *broker.Rejection) *broker.Message {
	code := "2"
	if r.Reason == broker.Malformed {
		code = "3"
	}
	return &broker.Message{Header: broker.Header{broker.HeaderStatus: code, broker.HeaderStatusMessage: r.Err.Error()}}
}

type recordingProducer struct {
	mu   sync.Mutex
	sent []*primitive.Message
}

func (p *recordingProducer) Start() error    { return nil }
func (p *recordingProducer) Shutdown() error { return nil }
func (p *recordingProducer) SendSync(_ context.Context, msgs ...*primitive.Message) (*primitive.SendResult, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.sent = append(p.sent, msgs...)
	return &primitive.SendResult{Status: primitive.SendOK}, nil
}
func (p *recordingProducer) RequestAsync(context.Context, time.Duration, func(context.Context, *primitive.Message, error), *primitive.Message) error {
	return nil
}
