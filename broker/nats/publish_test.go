package nats_test

import (
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/broker"
	natsbroker "github.com/mqrpc/mqrpc/broker/nats"
	"github.com/mqrpc/mqrpc/internal/testenv"
)

// TestPublishAttempts: a durable publish the stream does not acknowledge
// (its leader died, or the acknowledgement was lost) is published again
// after JetStreamConfig.PublishAttempt with the same Nats-Msg-Id, so it is
// stored as soon as the stream answers again instead of failing at the
// caller's deadline. The "stream" here is a plain subscriber that ignores
// the first attempt and acknowledges the second.
func TestPublishAttempts(t *testing.T) {
	url := testenv.NATSURL(t)
	const attempt = 300 * time.Millisecond
	cfg := testJetStream(t, url, func(c *natsbroker.JetStreamConfig) { c.PublishAttempt = attempt })

	nc, err := natsgo.Connect(url)
	require.NoError(t, err)
	defer nc.Close()
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	ctx := ctxTimeout(t, 10*time.Second)
	// The broker uses existing streams as they are: these capture other
	// subjects, so the subscriber below answers for the request stream.
	for _, name := range []string{cfg.Stream, cfg.Stream + "_DEAD"} {
		_, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: name, Subjects: []string{"decoy_" + name}, Storage: jetstream.MemoryStorage})
		require.NoError(t, err)
	}
	var (
		mu      sync.Mutex
		ids     []string
		seen    []time.Time
		refused int
	)
	sub, err := nc.Subscribe(cfg.SubjectPrefix+".>", func(m *natsgo.Msg) {
		mu.Lock()
		defer mu.Unlock()
		if m.Subject == cfg.SubjectPrefix+".refused" {
			refused++
			_ = m.Respond([]byte(`{"error":{"code":400,"err_code":10054,"description":"message size exceeds maximum allowed"}}`))
			return
		}
		ids, seen = append(ids, m.Header.Get(natsbroker.HeaderMsgID)), append(seen, time.Now())
		if len(ids) > 1 {
			_ = m.Respond([]byte(`{"stream":"` + cfg.Stream + `","seq":1}`))
		}
	})
	require.NoError(t, err)
	defer func() { _ = sub.Unsubscribe() }()
	require.NoError(t, nc.Flush())

	b := newBroker(t, url, natsbroker.WithJetStream(cfg))
	begin := time.Now()
	require.NoError(t, b.Send(ctx, &broker.Message{ID: "m1", Subject: "jobs", Body: []byte("x")}))
	took := time.Since(begin)
	mu.Lock()
	defer mu.Unlock()
	require.Len(t, ids, 2, "attempts that reached the stream")
	assert.Equal(t, ids[0], ids[1], "every attempt carries the same Nats-Msg-Id")
	assert.GreaterOrEqual(t, seen[1].Sub(seen[0]), attempt-50*time.Millisecond, "the second attempt came before the first's wait ended")
	assert.Less(t, took, 5*time.Second, "the send waited past its second attempt")
	mu.Unlock()

	// A refusal is an answer: not tried again.
	begin = time.Now()
	err = b.Send(ctx, &broker.Message{ID: "m2", Subject: "refused", Body: []byte("x")})
	require.ErrorIs(t, err, broker.ErrMessageTooLarge)
	assert.Less(t, time.Since(begin), attempt, "a refused publish was tried again")
	mu.Lock()
	assert.Equal(t, 1, refused, "attempts of a refused publish")
	t.Logf("stored %v after the send began (attempts %v apart)", took.Round(time.Millisecond), seen[1].Sub(seen[0]).Round(time.Millisecond))
}

// TestPublishAttemptEndsOnDisconnect: an attempt whose connection drops
// (its acknowledgement will not come) ends at once and the message goes
// out again on the new connection, instead of waiting out the attempt.
func TestPublishAttemptEndsOnDisconnect(t *testing.T) {
	url := testenv.NATSURL(t)
	cfg := testJetStream(t, url, func(c *natsbroker.JetStreamConfig) { c.PublishAttempt = 15 * time.Second })
	nc, err := natsgo.Connect(url)
	require.NoError(t, err)
	defer nc.Close()
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	ctx := ctxTimeout(t, 30*time.Second)
	for _, name := range []string{cfg.Stream, cfg.Stream + "_DEAD"} {
		_, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: name, Subjects: []string{"decoy_" + name}, Storage: jetstream.MemoryStorage})
		require.NoError(t, err)
	}
	// The broker connects through a proxy whose connections the test
	// cuts: the socket dies under nats.go, as when a node is killed.
	proxy := newCutProxy(t, strings.TrimPrefix(url, "nats://"))
	b := newBroker(t, "nats://"+proxy.addr(), natsbroker.WithJetStream(cfg), natsbroker.WithReconnectWait(50*time.Millisecond))
	var (
		mu  sync.Mutex
		ids []string
	)
	sub, err := nc.Subscribe(cfg.SubjectPrefix+".>", func(m *natsgo.Msg) {
		mu.Lock()
		defer mu.Unlock()
		ids = append(ids, m.Header.Get(natsbroker.HeaderMsgID))
		if len(ids) == 1 {
			// The first attempt's connection drops before its ack.
			go proxy.cut()
			return
		}
		_ = m.Respond([]byte(`{"stream":"` + cfg.Stream + `","seq":1}`))
	})
	require.NoError(t, err)
	defer func() { _ = sub.Unsubscribe() }()
	require.NoError(t, nc.Flush())

	begin := time.Now()
	require.NoError(t, b.Send(ctx, &broker.Message{ID: "m1", Subject: "jobs", Body: []byte("x")}))
	took := time.Since(begin)
	mu.Lock()
	defer mu.Unlock()
	require.Len(t, ids, 2, "attempts that reached the stream")
	assert.Equal(t, ids[0], ids[1], "every attempt carries the same Nats-Msg-Id")
	assert.Less(t, took, 5*time.Second, "the attempt on the dropped connection waited (PublishAttempt is 15s)")
	t.Logf("stored %v after the send began, across a reconnect", took.Round(time.Millisecond))
}

// cutProxy forwards loopback TCP connections to target; cut closes the
// current ones (new ones are forwarded again).
type cutProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	conns  []net.Conn
}

func newCutProxy(t *testing.T, target string) *cutProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	p := &cutProxy{ln: ln, target: target}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				_ = c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, s)
			p.mu.Unlock()
			go func() { _, _ = io.Copy(s, c); _ = s.Close() }()
			go func() { _, _ = io.Copy(c, s); _ = c.Close() }()
		}
	}()
	t.Cleanup(func() { _ = ln.Close(); p.cut() })
	return p
}

func (p *cutProxy) addr() string { return p.ln.Addr().String() }

func (p *cutProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		_ = c.Close()
	}
	p.conns = nil
}
