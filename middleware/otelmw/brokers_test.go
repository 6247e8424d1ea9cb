package otelmw_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/dial"
	"github.com/mqrpc/mqrpc/internal/testenv"
	"github.com/mqrpc/mqrpc/middleware/otelmw"
	"github.com/mqrpc/mqrpc/rpc"
)

// TestTraceOverRealBrokers checks that the trace context crosses every real
// broker in its headers: the server span is the client span's child, in
// two separate connections as two processes would have. (RocketMQ, a
// module of its own, carries the traceparent header like any other:
// brokertest's header cases show it.)
func TestTraceOverRealBrokers(t *testing.T) {
	brokers := map[string]func(testing.TB) string{
		"nats":     testenv.NATSURL,
		"rabbitmq": testenv.AMQPURL,
	}
	for name, url := range brokers {
		t.Run(name, func(t *testing.T) {
			u := url(t)
			spans := tracetest.NewSpanRecorder()
			tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
			defer tp.Shutdown(context.Background())
			clientInst, err := otelmw.New(otelmw.WithTracerProvider(tp), otelmw.WithMessagingSystem(name))
			require.NoError(t, err)
			serverInst, err := otelmw.New(otelmw.WithTracerProvider(tp), otelmw.WithMessagingSystem(name))
			require.NoError(t, err)

			srvBroker, err := dial.Open(u)
			require.NoError(t, err)
			defer srvBroker.Close()
			cliBroker, err := dial.Open(u)
			require.NoError(t, err)
			defer cliBroker.Close()

			subject := "oteltest_" + strings.ReplaceAll(broker.NewID(), "-", "_")
			srv := rpc.NewServer(rpc.WithServerMiddleware(serverInst.Server()))
			require.NoError(t, rpc.Handle(srv, "Add", func(_ context.Context, in *req) (*res, error) {
				return &res{Sum: in.A + in.B}, nil
			}))
			sub, err := srvBroker.Serve(subject, srv)
			require.NoError(t, err)
			defer sub.Stop(context.Background())

			c := rpc.NewClient(cliBroker, rpc.WithClientMiddleware(clientInst.Client()))
			ctx, parent := tp.Tracer("test").Start(context.Background(), "caller")
			// A consumer group may take a moment to be routed to.
			var out res
			deadline := time.Now().Add(60 * time.Second)
			for {
				cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				err = c.Call(cctx, subject, "Add", &req{A: 20, B: 22}, &out)
				cancel()
				if err == nil || time.Now().After(deadline) {
					break
				}
				time.Sleep(500 * time.Millisecond)
			}
			parent.End()
			require.NoError(t, err)
			assert.Equal(t, 42, out.Sum)

			var client, server sdktrace.ReadOnlySpan
			for _, s := range spans.Ended() {
				switch s.Name() {
				case "send " + subject:
					client = s // the last attempt's span
				case "process " + subject:
					server = s
				}
			}
			require.NotNil(t, client, "client span")
			require.NotNil(t, server, "server span")
			assert.Equal(t, parent.SpanContext().TraceID(), server.SpanContext().TraceID(), "one trace across %s", name)
			assert.Equal(t, client.SpanContext().SpanID(), server.Parent().SpanID(), "server span is the client span's child")
			assert.True(t, server.Parent().IsRemote())
		})
	}
}
