package nats_test

import (
	"context"
	"encoding/json"
	"strconv"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/broker"
	natsbroker "github.com/mqrpc/mqrpc/broker/nats"
	"github.com/mqrpc/mqrpc/internal/testenv"
	"github.com/mqrpc/mqrpc/rpc"
)

// The tests in this file call an mqrpc service from a plain nats.go client
// that follows docs/PROTOCOL.md ("NATS") and uses no mqrpc code: string
// literals only, as a client in another language would.

type addRequest struct{ A, B int }
type addReply struct{ Sum int }

func serveCalculator(t *testing.T, b *natsbroker.Broker, subject string) {
	t.Helper()
	srv := rpc.NewServer()
	require.NoError(t, rpc.Handle(srv, "Add", func(ctx context.Context, in *addRequest) (*addReply, error) {
		return &addReply{Sum: in.A + in.B}, nil
	}))
	sub, err := b.Serve(subject, srv)
	require.NoError(t, err)
	t.Cleanup(func() { _ = sub.Stop(context.Background()) })
}

func deadlineIn(d time.Duration) string {
	return strconv.FormatInt(time.Now().Add(d).UnixMilli(), 10)
}

func TestPlainNATSClientCallsService(t *testing.T) {
	url := testenv.NATSURL(t)
	b := newBroker(t, url)
	subject := uniqueSubject(t)
	serveCalculator(t, b, subject)

	nc, err := natsgo.Connect(url)
	require.NoError(t, err)
	defer nc.Close()

	call := func(method string, body []byte, deadline string) *natsgo.Msg {
		t.Helper()
		m := natsgo.NewMsg(subject)
		m.Header.Set("mqrpc-method", method)
		m.Header.Set("content-type", "application/json")
		m.Header.Set("mqrpc-deadline", deadline)
		m.Header.Set("Nats-Msg-Id", "plain-"+method)
		m.Data = body
		rep, err := nc.RequestMsg(m, 5*time.Second)
		require.NoError(t, err)
		return rep
	}

	rep := call("Add", []byte(`{"A":2,"B":40}`), deadlineIn(5*time.Second))
	assert.Contains(t, []string{"", "0"}, rep.Header.Get("mqrpc-status"), "status OK")
	assert.Empty(t, rep.Header.Get("content-type"), "the reply is in the request's codec and does not name it again")
	var out addReply
	require.NoError(t, json.Unmarshal(rep.Data, &out))
	assert.Equal(t, 42, out.Sum)

	rep = call("Divide", []byte(`{}`), deadlineIn(5*time.Second))
	assert.Equal(t, "12", rep.Header.Get("mqrpc-status"), "unknown method: Unimplemented")
	assert.NotEmpty(t, rep.Header.Get("mqrpc-message"))

	rep = call("Add", []byte(`{}`), "not-a-number")
	assert.Equal(t, "3", rep.Header.Get("mqrpc-status"), "malformed deadline: InvalidArgument")

	// No responders: the NATS server answers with status 503 at once.
	m := natsgo.NewMsg(uniqueSubject(t))
	m.Header.Set("mqrpc-method", "Add")
	_, err = nc.RequestMsg(m, 5*time.Second)
	assert.ErrorIs(t, err, natsgo.ErrNoResponders)
}

func TestPlainNATSClientCallsDurableService(t *testing.T) {
	url := testenv.NATSURL(t)
	js := testJetStream(t, url)
	b := newBroker(t, url, natsbroker.WithJetStream(js))
	subject := uniqueSubject(t)
	serveCalculator(t, b, subject)

	nc, err := natsgo.Connect(url)
	require.NoError(t, err)
	defer nc.Close()
	jsc, err := jetstream.New(nc)
	require.NoError(t, err)

	replyTo := nc.NewInbox()
	replies, err := nc.SubscribeSync(replyTo)
	require.NoError(t, err)

	m := natsgo.NewMsg(js.SubjectPrefix + "." + subject)
	m.Header.Set("mqrpc-method", "Add")
	m.Header.Set("content-type", "application/json")
	m.Header.Set("mqrpc-deadline", deadlineIn(10*time.Second))
	m.Header.Set("mqrpc-reply", replyTo)
	m.Header.Set("Nats-Msg-Id", "durable-plain-1")
	m.Data = []byte(`{"A":20,"B":22}`)
	ack, err := jsc.PublishMsg(ctxTimeout(t, 5*time.Second), m)
	require.NoError(t, err)
	assert.False(t, ack.Duplicate)

	// The same ID again is a duplicate: stored and served once.
	ack, err = jsc.PublishMsg(ctxTimeout(t, 5*time.Second), m)
	require.NoError(t, err)
	assert.True(t, ack.Duplicate)

	rep, err := replies.NextMsg(10 * time.Second)
	require.NoError(t, err)
	var out addReply
	require.NoError(t, json.Unmarshal(rep.Data, &out))
	assert.Equal(t, 42, out.Sum)
	_, err = replies.NextMsg(300 * time.Millisecond)
	assert.ErrorIs(t, err, natsgo.ErrTimeout, "one reply only")
}

// A plain client cancels a call as docs/PROTOCOL.md says: the message ID
// as the payload of a core NATS message to "_mqrpc.cancel.<subject>". The
// handler's ctx ends, and mqrpc's own cancel notice looks the same on the
// wire.
func TestPlainNATSClientCancels(t *testing.T) {
	url := testenv.NATSURL(t)
	b := newBroker(t, url)
	subject := uniqueSubject(t)
	started, ended := make(chan struct{}, 1), make(chan error, 1)
	srv := rpc.NewServer()
	require.NoError(t, rpc.Handle(srv, "Wait", func(ctx context.Context, _ *addRequest) (*addReply, error) {
		started <- struct{}{}
		select {
		case <-ctx.Done():
			ended <- ctx.Err()
		case <-time.After(10 * time.Second):
			ended <- nil
		}
		return &addReply{}, nil
	}))
	_, err := b.Serve(subject, srv)
	require.NoError(t, err)

	nc, err := natsgo.Connect(url)
	require.NoError(t, err)
	defer nc.Close()
	notices, err := nc.SubscribeSync("_mqrpc.cancel." + subject)
	require.NoError(t, err)
	require.NoError(t, nc.Flush())

	m := natsgo.NewMsg(subject)
	m.Header.Set("mqrpc-method", "Wait")
	m.Header.Set("content-type", "application/json")
	m.Header.Set("Nats-Msg-Id", "plain-cancel-1")
	m.Data = []byte(`{}`)
	m.Reply = nc.NewInbox()
	require.NoError(t, nc.PublishMsg(m))
	<-started
	require.NoError(t, nc.Publish("_mqrpc.cancel."+subject, []byte("plain-cancel-1")))
	select {
	case err := <-ended:
		assert.ErrorIs(t, err, context.Canceled)
	case <-time.After(5 * time.Second):
		t.Fatal("the cancel notice did not reach the handler")
	}

	// mqrpc's own notice: the same subject, the ID as the payload.
	_, err = notices.NextMsg(5 * time.Second)
	require.NoError(t, err, "the plain client's own notice")
	ctx, cancel := context.WithCancel(context.Background())
	go func() { <-started; cancel() }()
	_, err = newBroker(t, url).Request(ctx, &broker.Message{ID: "mqrpc-cancel-1", Subject: subject,
		Header: broker.Header{"mqrpc-method": "Wait", "content-type": "application/json"}, Body: []byte(`{}`)})
	assert.ErrorIs(t, err, context.Canceled)
	n, err := notices.NextMsg(5 * time.Second)
	require.NoError(t, err)
	assert.Equal(t, "mqrpc-cancel-1", string(n.Data))
	assert.Empty(t, n.Header)
}
