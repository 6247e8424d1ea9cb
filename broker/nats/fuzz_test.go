package nats

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/textproto"
	"strings"
	"sync"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/kernel"
	"github.com/mqrpc/mqrpc/internal/testenv"
)

// The fuzz targets feed the inbound path bytes shaped as nats.go delivers
// them: a header block after the "NATS/1.0" status line (decoded by
// nats.go's own DecodeHeadersMsg, as its reader does), a body, a subject
// and a reply subject. They need no server: the publish calls of the
// refuse and reply paths go to a nil connection and fail.

// decodeWireHeader decodes "NATS/1.0"+block the way nats.go's reader does.
// ok is false when nats.go would not deliver the headers.
//
// nats.go v1.51.0 (the version in go.mod) panics in DecodeHeadersMsg on an inline
// status shorter than three characters ("NATS/1.0 1"), in its reader
// goroutine: one such message from any publisher takes down a subscriber's
// process. That is upstream code; nats.go v1.55.0 has the check (it returns
// ErrBadHeaderMsg). Such inputs are skipped here so the fuzzer explores
// mqrpc's own mapping; any other panic is reported.
func decodeWireHeader(block []byte) (h natsgo.Header, ok bool) {
	wire := append([]byte("NATS/1.0"), block...)
	defer func() {
		if p := recover(); p != nil {
			if !shortInlineStatus(wire) {
				panic(p)
			}
			h, ok = nil, false
		}
	}()
	h, err := natsgo.DecodeHeadersMsg(wire)
	if err != nil {
		// nats.go still delivers the message, without headers, and
		// reports ErrBadHeaderMsg to the async error handler.
		return nil, true
	}
	return h, true
}

// shortInlineStatus reports a status line "NATS/1.0 x" with a status of
// one or two characters.
func shortInlineStatus(wire []byte) bool {
	line, _, _ := bytes.Cut(wire, []byte("\n"))
	line = bytes.TrimSuffix(line, []byte("\r"))
	if len(line) <= len("NATS/1.0") {
		return false
	}
	st := strings.TrimSpace(string(line[len("NATS/1.0"):]))
	return len(st) < 3
}

// wireHeader encodes h as nats.go's PublishMsg does.
func wireHeader(h natsgo.Header) []byte {
	var b bytes.Buffer
	b.WriteString("NATS/1.0\r\n")
	_ = http.Header(h).Write(&b)
	b.WriteString("\r\n")
	return b.Bytes()
}

// wireValue is what a header value becomes on the wire: http.Header.Write
// turns CR and LF into spaces and trims surrounding white space.
func wireValue(v string) string {
	return textproto.TrimString(strings.NewReplacer("\r", " ", "\n", " ").Replace(v))
}

// checkInbound asserts what fromNATS promises about a message decoded from
// in: lower-case names, no transport or Nats-* headers, values and ID taken
// from the input, a Deadline only from a well-formed mqrpc-deadline, and an
// error only for a malformed one.
func checkInbound(t *testing.T, in natsgo.Header, data []byte, subject string, got *broker.Message, err error) {
	t.Helper()
	// Every first value in the input by lower-case name (names differing
	// only in case may each be the one taken).
	firsts := map[string][]string{}
	for k, vs := range in {
		if len(vs) > 0 {
			firsts[strings.ToLower(k)] = append(firsts[strings.ToLower(k)], vs[0])
		}
	}
	// Names differing only in case are distinct NATS headers: any
	// malformed deadline is an error, else the earliest one counts.
	earliest, bad := testenv.WantDeadline(firsts[broker.HeaderDeadline])
	if bad {
		var herr *broker.HeaderError
		require.ErrorAs(t, err, &herr, "a malformed deadline is an error")
		require.Equal(t, broker.HeaderDeadline, herr.Name)
	} else {
		require.NoError(t, err)
		require.True(t, earliest.Equal(got.Deadline), "deadline %v, want %v", got.Deadline, earliest)
	}
	require.NotNil(t, got, "fromNATS returns the message even with an error")
	assert.Equal(t, subject, got.Subject)
	assert.Equal(t, data, got.Body)
	for k, v := range got.Header {
		require.Equal(t, strings.ToLower(k), k, "header names are lower case")
		require.NotEqual(t, broker.HeaderDeadline, k)
		require.NotEqual(t, HeaderReply, k)
		require.False(t, len(k) > 5 && strings.HasPrefix(k, "nats-"), "Nats-* header %q leaked", k)
		require.Contains(t, firsts[k], v, "value of %q not from the input", k)
	}
	if got.ID != "" {
		require.Contains(t, firsts[strings.ToLower(HeaderMsgID)], got.ID)
	}
}

// checkOutbound maps m back with toNATS, in memory and over the wire
// encoding, and asserts it comes back the same.
func checkOutbound(t *testing.T, m *broker.Message) {
	t.Helper()
	h := toNATS(m, m.ID, m.Deadline)
	back, err := fromNATS(&natsgo.Msg{Header: h, Data: m.Body}, m.Subject)
	require.NoError(t, err)
	assert.Equal(t, m.ID, back.ID)
	assert.True(t, testenv.SameDeadline(m.Deadline, back.Deadline), "deadline %v came back as %v", m.Deadline, back.Deadline)
	require.Len(t, back.Header, len(m.Header))
	for k, v := range m.Header {
		require.Equal(t, v, back.Header[k], k)
	}

	// Over the wire: nats.go drops names that are not HTTP tokens and
	// normalizes white space in values; ID and deadline survive.
	dec, err := natsgo.DecodeHeadersMsg(wireHeader(h))
	if len(h) == 0 {
		return
	}
	require.NoError(t, err, "nats.go cannot read back the headers mqrpc wrote")
	wb, err := fromNATS(&natsgo.Msg{Header: dec, Data: m.Body}, m.Subject)
	require.NoError(t, err)
	assert.Equal(t, wireValue(m.ID), wb.ID)
	assert.True(t, testenv.SameDeadline(m.Deadline, wb.Deadline), "deadline %v came back as %v", m.Deadline, wb.Deadline)
	for k, v := range wb.Header {
		require.Equal(t, wireValue(m.Header[k]), v, k)
	}
}

// fuzzSeeds are the shared seeds of both targets; testdata/fuzz holds more.
func fuzzSeeds(f *testing.F) {
	f.Add([]byte("\r\n\r\n"), []byte(""), "calc", "")
	f.Add([]byte("\r\nMqrpc-Method: Add\r\nContent-Type: application/json\r\nNats-Msg-Id: 1-2\r\nmqrpc-deadline: 4102444800000\r\n\r\n"),
		[]byte(`{"a":1}`), "calc", "_INBOX.x.y")
	f.Add([]byte("\r\nmqrpc-deadline: 12x\r\n\r\n"), []byte("x"), "calc", "_INBOX.r")
	f.Add([]byte("\r\nmqrpc-deadline: 1\r\nmqrpc-reply: _INBOX.z\r\n\r\n"), []byte{0, 255}, "q.a", "r")
	f.Add([]byte(" 503\r\n\r\n"), []byte(nil), "s", "")
	f.Add([]byte("\r\nA: \r\nb:\tv \r\nNats-Expected-Stream: S\r\n\r\n"), []byte("b"), "s", "")
}

// FuzzFromNATS runs inbound NATS messages through fromNATS and the core
// server's refuse/drop/serve decision (handleCore).
func FuzzFromNATS(f *testing.F) {
	fuzzSeeds(f)
	f.Fuzz(func(t *testing.T, block, data []byte, subject, reply string) {
		in, ok := decodeWireHeader(block)
		if !ok {
			return
		}
		msg := &natsgo.Msg{Subject: subject, Reply: reply, Header: in, Data: data}
		got, err := fromNATS(msg, subject)
		checkInbound(t, in, data, subject, got, err)
		if err == nil {
			checkOutbound(t, got)
		}

		// The core server's decision on the same message.
		var served []*broker.Message
		serve := fuzzCore(broker.HandlerFunc(func(_ context.Context, req *broker.Message) (*broker.Message, error) {
			checkInbound(t, in, data, subject, req, nil)
			served = append(served, req)
			return &broker.Message{Header: req.Header.Clone(), Body: req.Body}, nil
		}))
		serve(msg)
		switch {
		case err != nil:
			assert.Empty(t, served, "a request with a malformed deadline was served")
		case nearNow(got.Deadline):
			// Racing the clock; either outcome is right.
		case got.Expired(time.Now()):
			assert.Empty(t, served, "an expired request was served")
		default:
			assert.Len(t, served, 1)
		}
	})
}

// FuzzDurableDelivery runs inbound JetStream deliveries through the
// durable server's decision (handleDurable) and asserts each delivery is
// settled exactly once, and the way its headers call for.
func FuzzDurableDelivery(f *testing.F) {
	fuzzSeeds(f)
	f.Fuzz(func(t *testing.T, block, data []byte, subject, reply string) {
		in, ok := decodeWireHeader(block)
		if !ok {
			return
		}
		delivered := uint64(1 + len(reply)%7) // MaxDeliver is 5
		if reply != "" {
			if in == nil {
				in = natsgo.Header{}
			}
			in[HeaderReply] = []string{reply}
		}
		want, werr := fromNATS(&natsgo.Msg{Header: in, Data: data}, subject)

		js := &fakeJS{}
		var served int
		cfg := JetStreamConfig{}.withDefaults()
		serve := fuzzDurable(broker.HandlerFunc(func(_ context.Context, req *broker.Message) (*broker.Message, error) {
			checkInbound(t, in, data, subject, req, nil)
			served++
			return &broker.Message{Body: req.Body}, nil
		}), js, cfg)
		m := &fakeJSMsg{
			subject:   cfg.SubjectPrefix + "." + subject,
			hdr:       in,
			data:      data,
			delivered: delivered,
		}
		serve(m)

		require.Len(t, m.settled, 1, "settled %v", m.settled)
		switch {
		case werr != nil:
			assert.Equal(t, "term:mqrpc: dead-lettered", m.settled[0])
			require.Len(t, js.published, 1)
			assert.Contains(t, js.published[0].Header.Get(HeaderDeadReason), "malformed header")
			assert.Zero(t, served)
		case nearNow(want.Deadline):
		case want.Expired(time.Now()):
			assert.Equal(t, "term", m.settled[0])
			assert.Zero(t, served)
		case delivered > uint64(cfg.MaxDeliver):
			assert.Equal(t, "term:mqrpc: dead-lettered", m.settled[0])
			assert.Zero(t, served)
		default:
			assert.Equal(t, 1, served)
			// Also when the reply cannot be sent (no connection): the
			// handler succeeded and must not run again.
			assert.Equal(t, "ack", m.settled[0])
		}
	})
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

// fuzzCore returns the kernel pipeline of a core server of a broker
// without a connection: a message runs through it on the caller's
// goroutine.
func fuzzCore(h broker.Handler) func(*natsgo.Msg) {
	d := fuzzCoreDriver{&coreDriver{b: fuzzBroker(nil), subject: "fuzz"}}
	return kernel.Serve[*natsgo.Msg](d, "fuzz", h, broker.NewServeConfig("fuzz"), kernel.Options{}).Deliver
}

// fuzzDurable is fuzzCore for a durable server over js.
func fuzzDurable(h broker.Handler, js jetstream.JetStream, cfg JetStreamConfig) func(jetstream.Msg) {
	b := fuzzBroker(&cfg)
	b.js = newJetStream(cfg, js, b.log)
	d := &jsDriver{b: b, js: b.js, log: b.log, subject: "fuzz"}
	d.ctx, d.stop = context.WithCancel(context.Background())
	s := kernel.Serve[*jsDelivery](fuzzJSDriver{d}, "fuzz", h, broker.NewServeConfig("fuzz"), kernel.Options{})
	return func(m jetstream.Msg) { s.Deliver(&jsDelivery{m: m}) }
}

func fuzzBroker(js *JetStreamConfig) *Broker {
	cfg := &config{logger: slog.New(slog.DiscardHandler), js: js}
	return &Broker{cfg: cfg, log: cfg.logger, subs: map[server]struct{}{}}
}

// The fuzz drivers receive nothing: the kernel's pool ends at once, and
// the test delivers by itself.
type (
	fuzzCoreDriver struct{ *coreDriver }
	fuzzJSDriver   struct{ *jsDriver }
)

func (fuzzCoreDriver) Next(context.Context) (*natsgo.Msg, bool) { return nil, false }
func (fuzzJSDriver) Next(context.Context) (*jsDelivery, bool)   { return nil, false }

// fakeJS records dead letters; every other method is unused.
type fakeJS struct {
	jetstream.JetStream
	published []*natsgo.Msg
}

func (j *fakeJS) PublishMsg(_ context.Context, m *natsgo.Msg, _ ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	j.published = append(j.published, m)
	return &jetstream.PubAck{}, nil
}

// fakeJSMsg is a JetStream delivery that records how it was settled.
type fakeJSMsg struct {
	jetstream.Msg
	subject   string
	hdr       natsgo.Header
	data      []byte
	delivered uint64

	mu      sync.Mutex
	settled []string
}

func (m *fakeJSMsg) Subject() string                  { return m.subject }
func (m *fakeJSMsg) Headers() natsgo.Header           { return m.hdr }
func (m *fakeJSMsg) Data() []byte                     { return m.data }
func (m *fakeJSMsg) Reply() string                    { return "" }
func (m *fakeJSMsg) InProgress() error                { return nil }
func (m *fakeJSMsg) Ack() error                       { return m.settle("ack") }
func (m *fakeJSMsg) Nak() error                       { return m.settle("nak") }
func (m *fakeJSMsg) NakWithDelay(time.Duration) error { return m.settle("nak") }
func (m *fakeJSMsg) Term() error                      { return m.settle("term") }
func (m *fakeJSMsg) TermWithReason(r string) error    { return m.settle("term:" + r) }
func (m *fakeJSMsg) DoubleAck(context.Context) error {
	return m.settle("ack")
}
func (m *fakeJSMsg) Metadata() (*jetstream.MsgMetadata, error) {
	if m.delivered == 0 {
		return nil, errors.New("no metadata")
	}
	return &jetstream.MsgMetadata{NumDelivered: m.delivered}, nil
}

func (m *fakeJSMsg) settle(how string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.settled = append(m.settled, how)
	return nil
}

// TestUpstreamShortInlineStatus pins the nats.go defect decodeWireHeader
// works around: a header block "NATS/1.0 1" from any publisher panics the
// subscriber's reader goroutine, which takes down the whole process. It
// skips, naming the fix, while the nats.go in go.mod has the defect.
func TestUpstreamShortInlineStatus(t *testing.T) {
	var panicked any
	func() {
		defer func() { panicked = recover() }()
		_, err := natsgo.DecodeHeadersMsg([]byte("NATS/1.0 1\r\n\r\n"))
		assert.Error(t, err)
	}()
	if panicked != nil {
		t.Skipf("nats.go panics on a short inline status (%v): one message from any publisher crashes "+
			"every mqrpc process subscribed to its subject; nats.go v1.55.0 returns ErrBadHeaderMsg instead", panicked)
	}
}
