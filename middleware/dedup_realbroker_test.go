package middleware_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/broker"
	amqpbroker "github.com/mqrpc/mqrpc/broker/amqp"
	natsbroker "github.com/mqrpc/mqrpc/broker/nats"
	"github.com/mqrpc/mqrpc/internal/testenv"
	"github.com/mqrpc/mqrpc/middleware"
	"github.com/mqrpc/mqrpc/rpc"
)

// TestExactlyOnceRealBroker runs over real brokers (skipped locally when
// one is not running, failed under CI): the first reply of a call that is
// not idempotent is lost, the client retries with the same Message.ID, and
// the server's Dedup answers the retry from its store, so the handler runs
// exactly once.
func TestExactlyOnceRealBroker(t *testing.T) {
	brokers := []struct {
		name    string
		connect func(t *testing.T) broker.Broker
	}{
		{name: "nats", connect: func(t *testing.T) broker.Broker {
			url := testenv.NATSURL(t)
			b, err := natsbroker.New(url)
			require.NoError(t, err)
			return b
		}},
		{name: "amqp", connect: func(t *testing.T) broker.Broker {
			url := testenv.AMQPURL(t)
			b, err := amqpbroker.New(url)
			require.NoError(t, err)
			return b
		}},
	}
	for _, bt := range brokers {
		t.Run(bt.name, func(t *testing.T) {
			// Separate connections for server and client, as separate
			// processes would have.
			sb, cb := bt.connect(t), bt.connect(t)
			defer cb.Close()
			defer sb.Close()
			subject := "mqrpctest.exactlyonce." + broker.NewID()

			// The lost reply: the handler runs and Dedup stores its
			// reply, then the first reply is swallowed on its way out
			// (a one-way answer: nothing is sent).
			var swallowed atomic.Int32
			loseFirstReply := func(next broker.Handler) broker.Handler {
				return broker.HandlerFunc(func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
					reply, err := next.ServeMessage(ctx, req)
					if swallowed.CompareAndSwap(0, 1) {
						return nil, nil
					}
					return reply, err
				})
			}
			var runs atomic.Int32
			srv := rpc.NewServer(rpc.WithServerMiddleware(loseFirstReply, middleware.Dedup()))
			require.NoError(t, rpc.Handle(srv, "Pay", func(_ context.Context, in *govReq) (*govRes, error) {
				runs.Add(1)
				return &govRes{Sum: in.A}, nil
			}))
			sub, err := sb.Serve(subject, srv)
			require.NoError(t, err)
			defer func() { _ = sub.Stop(context.Background()) }()

			var retries atomic.Int32
			client := rpc.NewClient(cb, rpc.WithClientMiddleware(middleware.Retry(
				middleware.WithMaxAttempts(5),
				middleware.WithPerAttemptTimeout(2*time.Second),
				middleware.WithBackoff(10*time.Millisecond, 0, 0),
				middleware.WithIdempotent(middleware.AlwaysIdempotent), // the server deduplicates
				middleware.WithRetryBudget(middleware.UnlimitedRetryBudget()),
				middleware.OnRetry(func(context.Context, rpc.CallInfo, int, error, time.Duration) { retries.Add(1) }),
			)))
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			var header broker.Header
			got, err := rpc.Invoke[govReq, govRes](ctx, client, subject, "Pay", &govReq{A: 100}, rpc.WithReplyHeader(&header))
			require.NoError(t, err)
			assert.Equal(t, 100, got.Sum)
			assert.Equal(t, int32(1), swallowed.Load())
			assert.Positive(t, retries.Load(), "the lost reply forced a retry")
			assert.Equal(t, int32(1), runs.Load(), "the handler ran exactly once")
			assert.Equal(t, "true", header.Get(middleware.HeaderReplayed), "the retry was answered from the store")
		})
	}
}
