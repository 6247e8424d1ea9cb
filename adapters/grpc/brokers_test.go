package grpc_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	mqgrpc "github.com/mqrpc/mqrpc/adapters/grpc"
	"github.com/mqrpc/mqrpc/adapters/grpc/internal/testpb"
	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/amqp"
	natsbroker "github.com/mqrpc/mqrpc/broker/nats"
	"github.com/mqrpc/mqrpc/internal/testenv"
)

// TestOverNATS runs gRPC calls over a real NATS server (scripts/brokers up
// nats; MQRPC_NATS_URL).
func TestOverNATS(t *testing.T) {
	url := testenv.NATSURL(t)
	b, err := natsbroker.New(url)
	require.NoError(t, err)
	defer b.Close()
	testOverBroker(t, b)
}

// TestOverRabbitMQ runs gRPC calls over a real RabbitMQ server
// (scripts/brokers up rabbitmq; MQRPC_AMQP_URL).
func TestOverRabbitMQ(t *testing.T) {
	url := testenv.AMQPURL(t)
	b, err := amqp.New(url)
	require.NoError(t, err)
	defer b.Close()
	testOverBroker(t, b)
}

func testOverBroker(t *testing.T, b broker.Broker) {
	// A subject of this run's own, so runs sharing a server never meet.
	prefix := "mqgrpctest." + broker.NewID() + "."
	subject := mqgrpc.WithSubject(func(service string) string { return prefix + service })

	srv := mqgrpc.NewServer(subject)
	testpb.RegisterEchoServer(srv, &echoServer{fn: func(ctx context.Context, in *testpb.EchoRequest) (*testpb.EchoReply, error) {
		md, _ := metadata.FromIncomingContext(ctx)
		if err := grpc.SetHeader(ctx, metadata.Pairs("x-user", md.Get("x-user")[0])); err != nil {
			return nil, err
		}
		if err := grpc.SetTrailer(ctx, metadata.Pairs("x-trace-bin", "\x00\x01\x02")); err != nil {
			return nil, err
		}
		switch in.GetMessage() {
		case "fail":
			st, err := status.New(codes.FailedPrecondition, "not ready").
				WithDetails(&errdetails.PreconditionFailure{Violations: []*errdetails.PreconditionFailure_Violation{
					{Type: "STATE", Subject: "echo", Description: "not ready"},
				}})
			if err != nil {
				return nil, err
			}
			return nil, st.Err()
		case "deadline":
			dl, ok := ctx.Deadline()
			if !ok {
				return nil, status.Error(codes.Internal, "no deadline")
			}
			return &testpb.EchoReply{Message: dl.Format(time.RFC3339Nano)}, nil
		case "block":
			<-ctx.Done()
			return nil, ctx.Err()
		}
		return &testpb.EchoReply{Message: in.GetMessage()}, nil
	}})
	sub, err := srv.Serve(b)
	require.NoError(t, err)
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		assert.NoError(t, sub.Stop(ctx))
	}()
	client := testpb.NewEchoClient(mqgrpc.NewClientConn(b, subject))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, "x-user", "alice")

	t.Run("unary with metadata", func(t *testing.T) {
		var header, trailer metadata.MD
		reply, err := client.Echo(ctx, &testpb.EchoRequest{Message: "hello"}, grpc.Header(&header), grpc.Trailer(&trailer))
		require.NoError(t, err)
		assert.Equal(t, "hello", reply.GetMessage())
		assert.Equal(t, []string{"alice"}, header.Get("x-user"))
		assert.Equal(t, []string{"\x00\x01\x02"}, trailer.Get("x-trace-bin"))
	})
	t.Run("status and details", func(t *testing.T) {
		var trailer metadata.MD
		_, err := client.Echo(ctx, &testpb.EchoRequest{Message: "fail"}, grpc.Trailer(&trailer))
		st := status.Convert(err)
		assert.Equal(t, codes.FailedPrecondition, st.Code())
		assert.Equal(t, "not ready", st.Message())
		require.Len(t, st.Details(), 1)
		pf, ok := st.Details()[0].(*errdetails.PreconditionFailure)
		require.True(t, ok, "%T", st.Details()[0])
		assert.True(t, proto.Equal(&errdetails.PreconditionFailure_Violation{Type: "STATE", Subject: "echo", Description: "not ready"},
			pf.GetViolations()[0]))
		assert.Equal(t, []string{"\x00\x01\x02"}, trailer.Get("x-trace-bin"))
	})
	t.Run("deadline reaches the server", func(t *testing.T) {
		// Not derived from ctx, whose earlier deadline would win.
		want := time.Now().Add(time.Hour)
		dctx, cancel := context.WithDeadline(metadata.NewOutgoingContext(context.Background(), metadata.Pairs("x-user", "bob")), want)
		defer cancel()
		reply, err := client.Echo(dctx, &testpb.EchoRequest{Message: "deadline"})
		require.NoError(t, err)
		got, err := time.Parse(time.RFC3339Nano, reply.GetMessage())
		require.NoError(t, err)
		assert.WithinDuration(t, want, got, time.Millisecond) // the header has millisecond precision
	})
	t.Run("deadline exceeded", func(t *testing.T) {
		dctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		defer cancel()
		_, err := client.Echo(dctx, &testpb.EchoRequest{Message: "block"})
		assert.Equal(t, codes.DeadlineExceeded, status.Code(err))
	})
	t.Run("no responders", func(t *testing.T) {
		other := testpb.NewEchoClient(mqgrpc.NewClientConn(b,
			mqgrpc.WithSubject(func(string) string { return prefix + "nobody" })))
		_, err := other.Echo(ctx, &testpb.EchoRequest{})
		assert.Equal(t, codes.Unavailable, status.Code(err))
		assert.ErrorIs(t, err, broker.ErrNoResponders)
	})
}
