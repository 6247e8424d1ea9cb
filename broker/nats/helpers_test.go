package nats_test

import (
	"context"
	"strings"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/broker"
	natsbroker "github.com/mqrpc/mqrpc/broker/nats"
	"github.com/mqrpc/mqrpc/broker/nats/embedded"
	"github.com/mqrpc/mqrpc/rpc"
)

// newBroker connects a broker that the test closes.
func newBroker(t testing.TB, url string, opts ...natsbroker.Option) *natsbroker.Broker {
	t.Helper()
	b, err := natsbroker.New(url, opts...)
	require.NoError(t, err)
	t.Cleanup(func() { _ = b.Close() })
	return b
}

// uniqueSubject returns a subject no other test run uses, so engineers
// sharing one nats-server never see each other's messages.
func uniqueSubject(t testing.TB) string {
	name := strings.NewReplacer("/", "_", " ", "_", ".", "_", "*", "_", ">", "_").Replace(t.Name())
	return "mqrpctest." + name + "." + broker.NewID()
}

// testJetStream returns a durable-mode config with streams and subjects of
// its own (removed when the test ends), so runs never share a work queue.
func testJetStream(t testing.TB, url string, mod ...func(*natsbroker.JetStreamConfig)) natsbroker.JetStreamConfig {
	t.Helper()
	id := strings.ReplaceAll(broker.NewID(), "-", "_")
	cfg := natsbroker.JetStreamConfig{
		Stream:           "MQRPCTEST_" + id,
		SubjectPrefix:    "mqrpctest_" + id + ".q",
		DeadLetterPrefix: "mqrpctest_" + id + ".dead",
		AckWait:          5 * time.Second,
		MemoryStorage:    true,
	}
	for _, m := range mod {
		m(&cfg)
	}
	t.Cleanup(func() {
		nc, err := natsgo.Connect(url)
		if err != nil {
			return
		}
		defer nc.Close()
		js, err := jetstream.New(nc)
		if err != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = js.DeleteStream(ctx, cfg.Stream)
		_ = js.DeleteStream(ctx, cfg.Stream+"_DEAD")
		_ = js.DeleteKeyValue(ctx, cfg.Stream+"_DELIVERIES")
	})
	return cfg
}

// startEmbedded starts a private in-process server the test may restart
// without disturbing anybody else's.
func startEmbedded(t testing.TB, opts ...embedded.Option) *embedded.Server {
	t.Helper()
	srv, err := embedded.Start(opts...)
	require.NoError(t, err)
	t.Cleanup(srv.Close)
	return srv
}

func echoHandler(_ context.Context, req *broker.Message) (*broker.Message, error) {
	return &broker.Message{Header: req.Header.Clone(), Body: req.Body}, nil
}

func ctxTimeout(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// rpcRejecting is a handler whose requests the broker rejects (a malformed
// deadline, a reply too large) are answered with rpc.Server's status
// reply, as a service served with rpc answers them: the transport writes
// no status of its own.
type rpcRejecting func(context.Context, *broker.Message) (*broker.Message, error)

func (h rpcRejecting) ServeMessage(ctx context.Context, req *broker.Message) (*broker.Message, error) {
	return h(ctx, req)
}

func (rpcRejecting) Reject(req *broker.Message, r *broker.Rejection) *broker.Message {
	return rpc.NewServer().Reject(req, r)
}
