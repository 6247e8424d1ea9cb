package grpc_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/protoadapt"
	"google.golang.org/protobuf/types/known/durationpb"

	mqgrpc "github.com/mqrpc/mqrpc/adapters/grpc"
	"github.com/mqrpc/mqrpc/adapters/grpc/internal/testpb"
	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/memory"
	protocodec "github.com/mqrpc/mqrpc/codec/proto"
	"github.com/mqrpc/mqrpc/rpc"
)

func TestMain(m *testing.M) {
	encoding.RegisterCodecV2(jsonCodec{})
	goleak.VerifyTestMain(m)
}

// jsonCodec is a gRPC codec for content-subtype tests.
type jsonCodec struct{}

func (jsonCodec) Name() string { return "mqgrpc-test-json" }

func (jsonCodec) Marshal(v any) (mem.BufferSlice, error) {
	b, err := protojson.Marshal(v.(proto.Message))
	if err != nil {
		return nil, err
	}
	return mem.BufferSlice{mem.SliceBuffer(b)}, nil
}

func (jsonCodec) Unmarshal(data mem.BufferSlice, v any) error {
	return protojson.Unmarshal(data.Materialize(), v.(proto.Message))
}

// echoServer runs fn for Echo and streams 1..n for Count.
type echoServer struct {
	testpb.UnimplementedEchoServer
	fn func(ctx context.Context, in *testpb.EchoRequest) (*testpb.EchoReply, error)
}

func (s *echoServer) Echo(ctx context.Context, in *testpb.EchoRequest) (*testpb.EchoReply, error) {
	if s.fn != nil {
		return s.fn(ctx, in)
	}
	return &testpb.EchoReply{Message: in.GetMessage()}, nil
}

func (s *echoServer) Count(in *testpb.CountRequest, stream grpc.ServerStreamingServer[testpb.CountReply]) error {
	for i := int32(1); i <= in.GetN(); i++ {
		if err := stream.Send(&testpb.CountReply{I: i}); err != nil {
			return err
		}
	}
	return nil
}

type fixture struct {
	b      *memory.Broker
	srv    *mqgrpc.Server
	cc     *mqgrpc.ClientConn
	client testpb.EchoClient
}

// setup serves impl on a fresh memory broker and returns a client for it.
func setup(t *testing.T, impl testpb.EchoServer, srvOpts []mqgrpc.ServerOption, ccOpts ...mqgrpc.ClientOption) *fixture {
	t.Helper()
	b := memory.New()
	srv := mqgrpc.NewServer(srvOpts...)
	testpb.RegisterEchoServer(srv, impl)
	sub, err := srv.Serve(b)
	require.NoError(t, err)
	t.Cleanup(func() {
		assert.NoError(t, sub.Stop(context.Background()))
		assert.NoError(t, b.Close())
	})
	cc := mqgrpc.NewClientConn(b, ccOpts...)
	return &fixture{b: b, srv: srv, cc: cc, client: testpb.NewEchoClient(cc)}
}

func TestUnary(t *testing.T) {
	var method string
	f := setup(t, &echoServer{fn: func(ctx context.Context, in *testpb.EchoRequest) (*testpb.EchoReply, error) {
		method, _ = grpc.Method(ctx)
		return &testpb.EchoReply{Message: "echo: " + in.GetMessage()}, nil
	}}, nil)
	tests := []struct{ name, in string }{
		{"text", "hello"},
		{"empty", ""},
		{"large", strings.Repeat("x", 256<<10)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reply, err := f.client.Echo(context.Background(), &testpb.EchoRequest{Message: tt.in})
			require.NoError(t, err)
			assert.Equal(t, "echo: "+tt.in, reply.GetMessage())
			assert.Equal(t, "/mqrpc.grpctest.Echo/Echo", method)
		})
	}
}

func TestStatusCodes(t *testing.T) {
	f := setup(t, &echoServer{fn: func(_ context.Context, in *testpb.EchoRequest) (*testpb.EchoReply, error) {
		var c codes.Code
		_, err := fmt.Sscan(in.GetMessage(), &c)
		if err != nil {
			return nil, err
		}
		return &testpb.EchoReply{Message: "ok"}, status.Error(c, "failed with "+c.String())
	}}, nil)
	for c := codes.OK; c <= codes.Unauthenticated; c++ {
		t.Run(c.String(), func(t *testing.T) {
			reply, err := f.client.Echo(context.Background(), &testpb.EchoRequest{Message: fmt.Sprint(uint32(c))})
			if c == codes.OK {
				require.NoError(t, err)
				assert.Equal(t, "ok", reply.GetMessage())
				return
			}
			require.Error(t, err)
			st, ok := status.FromError(err)
			require.True(t, ok)
			assert.Equal(t, c, st.Code())
			assert.Equal(t, "failed with "+c.String(), st.Message())
			assert.Equal(t, rpc.Code(c), rpc.CodeOf(err))
			var e *rpc.Error
			require.ErrorAs(t, err, &e)
			assert.True(t, e.Wire())
			assert.Equal(t, "rpc error: code = "+c.String()+" desc = failed with "+c.String(), err.Error())
		})
	}
}

func TestServerErrorKinds(t *testing.T) {
	tests := []struct {
		name string
		err  error
		code codes.Code
		msg  string
	}{
		{"mqrpc error", rpc.Errorf(rpc.NotFound, "no such %s", "thing"), codes.NotFound, "no such thing"},
		{"wrapped status", fmt.Errorf("lookup: %w", status.Error(codes.PermissionDenied, "nope")), codes.PermissionDenied,
			"lookup: rpc error: code = PermissionDenied desc = nope"},
		{"plain error", errors.New("boom"), codes.Unknown, "boom"},
		{"deadline", fmt.Errorf("db: %w", context.DeadlineExceeded), codes.DeadlineExceeded, "db: context deadline exceeded"},
		{"canceled", context.Canceled, codes.Canceled, "context canceled"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := setup(t, &echoServer{fn: func(context.Context, *testpb.EchoRequest) (*testpb.EchoReply, error) {
				return nil, tt.err
			}}, nil)
			_, err := f.client.Echo(context.Background(), &testpb.EchoRequest{})
			st := status.Convert(err)
			assert.Equal(t, tt.code, st.Code())
			assert.Equal(t, tt.msg, st.Message())
		})
	}
}

func TestStatusDetails(t *testing.T) {
	details := []proto.Message{
		&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{
			{Field: "message", Description: "must not be empty"},
		}},
		&errdetails.RetryInfo{RetryDelay: durationpb.New(3 * time.Second)},
		&errdetails.ErrorInfo{Reason: "EMPTY", Domain: "mqrpc.io", Metadata: map[string]string{"k": "v"}},
	}
	f := setup(t, &echoServer{fn: func(context.Context, *testpb.EchoRequest) (*testpb.EchoReply, error) {
		st, err := status.New(codes.InvalidArgument, "bad request").WithDetails(protoadaptAll(details)...)
		if err != nil {
			return nil, err
		}
		return nil, st.Err()
	}}, nil)
	_, err := f.client.Echo(context.Background(), &testpb.EchoRequest{})
	st := status.Convert(err)
	assert.Equal(t, codes.InvalidArgument, st.Code())
	assert.Equal(t, "bad request", st.Message())
	got := st.Details()
	require.Len(t, got, len(details))
	for i, d := range got {
		m, ok := d.(proto.Message)
		require.True(t, ok, "detail %d is %T: %v", i, d, d)
		assert.True(t, proto.Equal(details[i], m), "detail %d: got %v, want %v", i, m, details[i])
	}
}

// Details map both ways between gRPC statuses and mqrpc errors: a gRPC
// service's status details reach an rpc.Client as rpc error details in
// protobuf, and an rpc service's error details reach a gRPC stub as
// status details.
func TestStatusDetailsInterop(t *testing.T) {
	bad := &errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: "message", Description: "empty"}}}
	t.Run("grpc service to rpc client", func(t *testing.T) {
		f := setup(t, &echoServer{fn: func(context.Context, *testpb.EchoRequest) (*testpb.EchoReply, error) {
			st, err := status.New(codes.InvalidArgument, "bad request").WithDetails(protoadapt.MessageV1Of(bad))
			if err != nil {
				return nil, err
			}
			return nil, st.Err()
		}}, nil)
		c := rpc.NewClient(f.b, rpc.WithCodec(protocodec.Codec{}))
		_, err := rpc.Invoke[testpb.EchoRequest, testpb.EchoReply](context.Background(), c, "mqrpc.grpctest.Echo", "Echo", &testpb.EchoRequest{})
		var e *rpc.Error
		require.ErrorAs(t, err, &e)
		assert.Equal(t, rpc.InvalidArgument, e.Code())
		require.Len(t, e.Details(), 1)
		d := e.Details()[0]
		assert.Equal(t, "type.googleapis.com/google.rpc.BadRequest", d.Type)
		var got errdetails.BadRequest
		require.NoError(t, d.Unmarshal(protocodec.Codec{}, &got))
		assert.True(t, proto.Equal(bad, &got), "%v", &got)
	})
	t.Run("rpc error from a grpc handler", func(t *testing.T) {
		f := setup(t, &echoServer{fn: func(context.Context, *testpb.EchoRequest) (*testpb.EchoReply, error) {
			d, err := rpc.NewErrorDetail("type.googleapis.com/google.rpc.BadRequest", protocodec.Codec{}, bad)
			if err != nil {
				return nil, err
			}
			return nil, rpc.Errorf(rpc.InvalidArgument, "bad request").WithDetails(d)
		}}, nil)
		_, err := f.client.Echo(context.Background(), &testpb.EchoRequest{})
		st := status.Convert(err)
		assert.Equal(t, codes.InvalidArgument, st.Code())
		require.Len(t, st.Details(), 1)
		got, ok := st.Details()[0].(*errdetails.BadRequest)
		require.True(t, ok, "%T: %v", st.Details()[0], st.Details()[0])
		assert.True(t, proto.Equal(bad, got), "%v", got)
	})
	t.Run("rpc service to grpc stub", func(t *testing.T) {
		b := memory.New()
		defer b.Close()
		srv := rpc.NewServer(rpc.WithCodecs(protocodec.Codec{}))
		require.NoError(t, rpc.Handle(srv, "Echo", func(context.Context, *testpb.EchoRequest) (*testpb.EchoReply, error) {
			d, err := rpc.NewErrorDetail("type.googleapis.com/google.rpc.BadRequest", protocodec.Codec{}, bad)
			if err != nil {
				return nil, err
			}
			return nil, rpc.Errorf(rpc.InvalidArgument, "bad request").WithDetails(d)
		}))
		sub, err := b.Serve("echo-subject", srv)
		require.NoError(t, err)
		defer sub.Stop(context.Background())
		client := testpb.NewEchoClient(mqgrpc.NewClientConn(b, mqgrpc.WithShortMethodNames(),
			mqgrpc.WithSubject(func(string) string { return "echo-subject" })))
		_, err = client.Echo(context.Background(), &testpb.EchoRequest{})
		st := status.Convert(err)
		assert.Equal(t, codes.InvalidArgument, st.Code())
		require.Len(t, st.Details(), 1)
		got, ok := st.Details()[0].(*errdetails.BadRequest)
		require.True(t, ok, "%T: %v", st.Details()[0], st.Details()[0])
		assert.True(t, proto.Equal(bad, got), "%v", got)
	})
}

func protoadaptAll(ms []proto.Message) []protoadapt.MessageV1 {
	out := make([]protoadapt.MessageV1, len(ms))
	for i, m := range ms {
		out[i] = protoadapt.MessageV1Of(m)
	}
	return out
}

func TestMetadata(t *testing.T) {
	type seen struct {
		md metadata.MD
	}
	var got seen
	f := setup(t, &echoServer{fn: func(ctx context.Context, in *testpb.EchoRequest) (*testpb.EchoReply, error) {
		got.md, _ = metadata.FromIncomingContext(ctx)
		if err := grpc.SetHeader(ctx, metadata.Pairs("h1", "one", "h-bin", "\x00\x01")); err != nil {
			return nil, err
		}
		if err := grpc.SendHeader(ctx, metadata.Pairs("h2", "two")); err != nil {
			return nil, err
		}
		if err := grpc.SetHeader(ctx, metadata.Pairs("late", "x")); err == nil {
			return nil, errors.New("SetHeader after SendHeader must fail")
		}
		if err := grpc.SetTrailer(ctx, metadata.Pairs("t1", "uno", "t-bin", "\xff")); err != nil {
			return nil, err
		}
		if in.GetMessage() == "fail" {
			return nil, status.Error(codes.Aborted, "failed after metadata")
		}
		return &testpb.EchoReply{Message: in.GetMessage()}, nil
	}}, nil)
	for _, msg := range []string{"ok", "fail"} {
		t.Run(msg, func(t *testing.T) {
			ctx := metadata.NewOutgoingContext(context.Background(), metadata.Pairs(
				"Authorization", "Bearer token",
				"multi", "a", "multi", "b",
				"id-bin", "\x00\xffbinary", "id-bin", "second",
				"grpc-reserved", "dropped",
				"mqrpc-status", "13",
			))
			ctx = metadata.AppendToOutgoingContext(ctx, "appended", "yes")
			var header, trailer metadata.MD
			_, err := f.client.Echo(ctx, &testpb.EchoRequest{Message: msg}, grpc.Header(&header), grpc.Trailer(&trailer))
			if msg == "fail" {
				assert.Equal(t, codes.Aborted, status.Code(err))
			} else {
				require.NoError(t, err)
			}
			assert.Equal(t, []string{"Bearer token"}, got.md.Get("authorization"))
			assert.Equal(t, []string{"a, b"}, got.md.Get("multi"))
			assert.Equal(t, []string{"\x00\xffbinary", "second"}, got.md.Get("id-bin"))
			assert.Equal(t, []string{"yes"}, got.md.Get("appended"))
			assert.Empty(t, got.md.Get("grpc-reserved"))
			assert.Empty(t, got.md.Get("mqrpc-status"))
			assert.Empty(t, got.md.Get("content-type"))
			assert.Empty(t, got.md.Get("mqrpc-method"))

			assert.Equal(t, metadata.MD{"h1": {"one"}, "h-bin": {"\x00\x01"}, "h2": {"two"}}, header)
			assert.Equal(t, metadata.MD{"t1": {"uno"}, "t-bin": {"\xff"}}, trailer)
		})
	}
}

func TestDeadline(t *testing.T) {
	t.Run("server sees the caller's deadline", func(t *testing.T) {
		var got time.Time
		var ok bool
		f := setup(t, &echoServer{fn: func(ctx context.Context, in *testpb.EchoRequest) (*testpb.EchoReply, error) {
			got, ok = ctx.Deadline()
			return &testpb.EchoReply{}, nil
		}}, nil)
		want := time.Now().Add(time.Hour)
		ctx, cancel := context.WithDeadline(context.Background(), want)
		defer cancel()
		_, err := f.client.Echo(ctx, &testpb.EchoRequest{})
		require.NoError(t, err)
		require.True(t, ok)
		assert.WithinDuration(t, want, got, time.Millisecond)
	})
	t.Run("default timeout", func(t *testing.T) {
		var got time.Time
		f := setup(t, &echoServer{fn: func(ctx context.Context, in *testpb.EchoRequest) (*testpb.EchoReply, error) {
			got, _ = ctx.Deadline()
			return &testpb.EchoReply{}, nil
		}}, nil, mqgrpc.WithTimeout(time.Hour))
		before := time.Now()
		_, err := f.client.Echo(context.Background(), &testpb.EchoRequest{})
		require.NoError(t, err)
		assert.False(t, got.Before(before.Add(time.Hour)), "deadline %v", got)
	})
	t.Run("expired gives DeadlineExceeded on both sides", func(t *testing.T) {
		serverErr := make(chan error, 1)
		f := setup(t, &echoServer{fn: func(ctx context.Context, in *testpb.EchoRequest) (*testpb.EchoReply, error) {
			<-ctx.Done()
			serverErr <- ctx.Err()
			return nil, ctx.Err()
		}}, nil)
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		_, err := f.client.Echo(ctx, &testpb.EchoRequest{})
		// Either the caller's timeout or the server's DeadlineExceeded
		// reply may come first; both give the same code.
		assert.Equal(t, codes.DeadlineExceeded, status.Code(err))
		assert.Equal(t, rpc.DeadlineExceeded, rpc.CodeOf(err))
		assert.ErrorIs(t, <-serverErr, context.DeadlineExceeded)
	})
	t.Run("request expired on arrival is not served", func(t *testing.T) {
		srv := mqgrpc.NewServer()
		served := false
		testpb.RegisterEchoServer(srv, &echoServer{fn: func(context.Context, *testpb.EchoRequest) (*testpb.EchoReply, error) {
			served = true
			return &testpb.EchoReply{}, nil
		}})
		reply, err := srv.ServeMessage(context.Background(), &broker.Message{
			Header:   broker.Header{broker.HeaderMethod: "/mqrpc.grpctest.Echo/Echo"},
			Deadline: time.Now().Add(-time.Second),
		})
		require.NoError(t, err)
		assert.Equal(t, rpc.DeadlineExceeded, rpc.CodeOf(rpc.ErrorFromReply(reply)))
		assert.False(t, served)
	})
}

func TestInterceptors(t *testing.T) {
	var mu sync.Mutex
	var trace []string
	record := func(s string) {
		mu.Lock()
		trace = append(trace, s)
		mu.Unlock()
	}
	serverInterceptor := func(name string) grpc.UnaryServerInterceptor {
		return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
			record("server " + name + " " + info.FullMethod)
			if req.(*testpb.EchoRequest).GetMessage() == "deny" {
				return nil, status.Error(codes.PermissionDenied, "denied by "+name)
			}
			resp, err := handler(ctx, req)
			if err == nil {
				resp.(*testpb.EchoReply).Message += " " + name
			}
			return resp, err
		}
	}
	clientInterceptor := func(name string) grpc.UnaryClientInterceptor {
		return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			record("client " + name + " " + method)
			ctx = metadata.AppendToOutgoingContext(ctx, "via-"+name, "1")
			return invoker(ctx, method, req, reply, cc, opts...)
		}
	}
	var md metadata.MD
	f := setup(t, &echoServer{fn: func(ctx context.Context, in *testpb.EchoRequest) (*testpb.EchoReply, error) {
		md, _ = metadata.FromIncomingContext(ctx)
		record("handler")
		return &testpb.EchoReply{Message: in.GetMessage()}, nil
	}},
		[]mqgrpc.ServerOption{mqgrpc.WithUnaryServerInterceptor(serverInterceptor("s1"), serverInterceptor("s2"))},
		mqgrpc.WithUnaryClientInterceptor(clientInterceptor("c1")), mqgrpc.WithUnaryClientInterceptor(clientInterceptor("c2")))

	t.Run("order", func(t *testing.T) {
		trace = nil
		reply, err := f.client.Echo(context.Background(), &testpb.EchoRequest{Message: "hi"})
		require.NoError(t, err)
		assert.Equal(t, "hi s2 s1", reply.GetMessage())
		const m = "/mqrpc.grpctest.Echo/Echo"
		assert.Equal(t, []string{"client c1 " + m, "client c2 " + m, "server s1 " + m, "server s2 " + m, "handler"}, trace)
		assert.Equal(t, []string{"1"}, md.Get("via-c1"))
		assert.Equal(t, []string{"1"}, md.Get("via-c2"))
	})
	t.Run("short circuit", func(t *testing.T) {
		trace = nil
		_, err := f.client.Echo(context.Background(), &testpb.EchoRequest{Message: "deny"})
		assert.Equal(t, codes.PermissionDenied, status.Code(err))
		assert.Equal(t, "denied by s1", status.Convert(err).Message())
		assert.NotContains(t, trace, "handler")
	})
}

func TestServerStreaming(t *testing.T) {
	f := setup(t, &echoServer{}, nil)
	t.Run("client", func(t *testing.T) {
		stream, err := f.client.Count(context.Background(), &testpb.CountRequest{N: 300})
		require.NoError(t, err)
		for i := int32(1); i <= 300; i++ {
			m, err := stream.Recv()
			require.NoError(t, err)
			require.Equal(t, i, m.GetI())
		}
		_, err = stream.Recv()
		assert.ErrorIs(t, err, io.EOF)
	})
	t.Run("unary call to a streaming method", func(t *testing.T) {
		c := rpc.NewClient(f.b, rpc.WithCodec(protocodec.Codec{}))
		err := c.Call(context.Background(), "mqrpc.grpctest.Echo", "Count", &testpb.CountRequest{N: 3}, &testpb.CountReply{})
		assert.Equal(t, rpc.FailedPrecondition, rpc.CodeOf(err))
		assert.Contains(t, err.Error(), "/mqrpc.grpctest.Echo/Count is a streaming method")
	})
}

func TestBadRequests(t *testing.T) {
	srv := mqgrpc.NewServer()
	testpb.RegisterEchoServer(srv, &echoServer{fn: func(_ context.Context, in *testpb.EchoRequest) (*testpb.EchoReply, error) {
		if in.GetMessage() == "panic" {
			panic("oops")
		}
		return &testpb.EchoReply{}, nil
	}})
	body, err := proto.Marshal(&testpb.EchoRequest{Message: "panic"})
	require.NoError(t, err)
	tests := []struct {
		name   string
		header broker.Header
		body   []byte
		code   rpc.Code
		msg    string
	}{
		{"no method", broker.Header{}, nil, rpc.InvalidArgument, "no mqrpc-method header"},
		{"unknown service", broker.Header{"mqrpc-method": "/no.Such/Echo"}, nil, rpc.Unimplemented, "unknown service no.Such"},
		{"unknown method", broker.Header{"mqrpc-method": "/mqrpc.grpctest.Echo/Nope"}, nil, rpc.Unimplemented, "unknown method Nope"},
		{"unknown bare method", broker.Header{"mqrpc-method": "Nope"}, nil, rpc.Unimplemented, "unknown method Nope"},
		{"malformed method", broker.Header{"mqrpc-method": "/Echo"}, nil, rpc.Unimplemented, "malformed method"},
		{"unknown content type", broker.Header{"mqrpc-method": "Echo", "content-type": "application/xml"}, nil,
			rpc.InvalidArgument, `unsupported content type "application/xml"`},
		{"unknown grpc codec", broker.Header{"mqrpc-method": "Echo", "content-type": "application/grpc+nope"}, nil,
			rpc.InvalidArgument, "unsupported content type"},
		{"garbage body", broker.Header{"mqrpc-method": "Echo"}, []byte{0xff, 0xff, 0xff}, rpc.InvalidArgument, "decode /mqrpc.grpctest.Echo/Echo request"},
		{"bad binary metadata", broker.Header{"mqrpc-method": "Echo", "x-bin": "!!!"}, nil, rpc.InvalidArgument, "malformed binary metadata x-bin"},
		{"panic", broker.Header{"mqrpc-method": "Echo"}, body, rpc.Internal, "panic in /mqrpc.grpctest.Echo/Echo: oops"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reply, err := srv.ServeMessage(context.Background(), &broker.Message{Header: tt.header, Body: tt.body})
			require.NoError(t, err)
			rerr := rpc.ErrorFromReply(reply)
			assert.Equal(t, tt.code, rpc.CodeOf(rerr))
			assert.ErrorContains(t, rerr, tt.msg)
		})
	}
}

func TestRegisterErrors(t *testing.T) {
	t.Run("duplicate", func(t *testing.T) {
		srv := mqgrpc.NewServer()
		require.NoError(t, srv.Register(&testpb.Echo_ServiceDesc, &echoServer{}))
		err := srv.Register(&testpb.Echo_ServiceDesc, &echoServer{})
		assert.ErrorIs(t, err, mqgrpc.ErrDuplicateService)
		testpb.RegisterEchoServer(srv, &echoServer{})
		b := memory.New()
		defer b.Close()
		_, err = srv.Serve(b)
		assert.ErrorIs(t, err, mqgrpc.ErrDuplicateService)
	})
	t.Run("wrong implementation", func(t *testing.T) {
		srv := mqgrpc.NewServer()
		err := srv.Register(&testpb.Echo_ServiceDesc, struct{}{})
		assert.ErrorIs(t, err, mqgrpc.ErrInvalidService)
		assert.ErrorIs(t, srv.Register(nil, nil), mqgrpc.ErrInvalidService)
	})
	t.Run("nothing to serve", func(t *testing.T) {
		b := memory.New()
		defer b.Close()
		_, err := mqgrpc.NewServer().Serve(b)
		assert.ErrorIs(t, err, mqgrpc.ErrNoServices)
	})
	t.Run("service info", func(t *testing.T) {
		srv := mqgrpc.NewServer()
		testpb.RegisterEchoServer(srv, &echoServer{})
		info := srv.GetServiceInfo()["mqrpc.grpctest.Echo"]
		assert.Equal(t, []grpc.MethodInfo{{Name: "Count", IsServerStream: true}, {Name: "Echo"}}, info.Methods)
	})
}

func TestNoResponders(t *testing.T) {
	b := memory.New()
	defer b.Close()
	client := testpb.NewEchoClient(mqgrpc.NewClientConn(b))
	_, err := client.Echo(context.Background(), &testpb.EchoRequest{})
	assert.Equal(t, codes.Unavailable, status.Code(err))
	assert.ErrorIs(t, err, broker.ErrNoResponders)
	var e *rpc.Error
	require.ErrorAs(t, err, &e)
	assert.False(t, e.Wire())
}

func TestContentSubtype(t *testing.T) {
	var ct string
	f := setup(t, &echoServer{}, []mqgrpc.ServerOption{mqgrpc.WithServerMiddleware(func(next broker.Handler) broker.Handler {
		return broker.HandlerFunc(func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
			ct = req.Header.Get(broker.HeaderContentType)
			return next.ServeMessage(ctx, req)
		})
	})})
	tests := []struct {
		name string
		opts []grpc.CallOption
		want string
	}{
		{"default", nil, "application/protobuf"},
		{"proto subtype", []grpc.CallOption{grpc.CallContentSubtype("proto")}, "application/protobuf"},
		{"registered subtype", []grpc.CallOption{grpc.CallContentSubtype("mqgrpc-test-json")}, "application/grpc+mqgrpc-test-json"},
		{"forced codec", []grpc.CallOption{grpc.ForceCodecV2(jsonCodec{})}, "application/grpc+mqgrpc-test-json"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reply, err := f.client.Echo(context.Background(), &testpb.EchoRequest{Message: "hi"}, tt.opts...)
			require.NoError(t, err)
			assert.Equal(t, "hi", reply.GetMessage())
			assert.Equal(t, tt.want, ct)
		})
	}
	t.Run("unregistered subtype", func(t *testing.T) {
		_, err := f.client.Echo(context.Background(), &testpb.EchoRequest{}, grpc.CallContentSubtype("nope"))
		assert.Equal(t, codes.Internal, status.Code(err))
	})
}

func TestInterop(t *testing.T) {
	t.Run("rpc client calls grpc service", func(t *testing.T) {
		f := setup(t, &echoServer{}, nil)
		c := rpc.NewClient(f.b, rpc.WithCodec(protocodec.Codec{}))
		for _, method := range []string{"Echo", "/mqrpc.grpctest.Echo/Echo"} {
			out, err := rpc.Invoke[testpb.EchoRequest, testpb.EchoReply](context.Background(), c, "mqrpc.grpctest.Echo", method, &testpb.EchoRequest{Message: method})
			require.NoError(t, err)
			assert.Equal(t, method, out.GetMessage())
		}
	})
	t.Run("grpc stub calls rpc service", func(t *testing.T) {
		b := memory.New()
		defer b.Close()
		srv := rpc.NewServer(rpc.WithCodecs(protocodec.Codec{}))
		require.NoError(t, rpc.Handle(srv, "Echo", func(ctx context.Context, in *testpb.EchoRequest) (*testpb.EchoReply, error) {
			rpc.SetReplyHeader(ctx, "x-served-by", "rpc")
			if in.GetMessage() == "missing" {
				return nil, rpc.Errorf(rpc.NotFound, "no %s", in.GetMessage())
			}
			return &testpb.EchoReply{Message: in.GetMessage() + " from " + rpc.RequestHeader(ctx).Get("x-caller")}, nil
		}))
		sub, err := b.Serve("echo-subject", srv)
		require.NoError(t, err)
		defer sub.Stop(context.Background())
		client := testpb.NewEchoClient(mqgrpc.NewClientConn(b, mqgrpc.WithShortMethodNames(),
			mqgrpc.WithSubject(func(string) string { return "echo-subject" })))
		ctx := metadata.AppendToOutgoingContext(context.Background(), "x-caller", "grpc")
		var header metadata.MD
		reply, err := client.Echo(ctx, &testpb.EchoRequest{Message: "hi"}, grpc.Header(&header))
		require.NoError(t, err)
		assert.Equal(t, "hi from grpc", reply.GetMessage())
		assert.Equal(t, []string{"rpc"}, header.Get("x-served-by"))
		_, err = client.Echo(ctx, &testpb.EchoRequest{Message: "missing"})
		assert.Equal(t, codes.NotFound, status.Code(err))
		assert.Equal(t, "no missing", status.Convert(err).Message())
	})
}

func TestSharedSubject(t *testing.T) {
	b := memory.New()
	defer b.Close()
	one := mqgrpc.WithSubject(func(string) string { return "all" })
	srv := mqgrpc.NewServer(one)
	testpb.RegisterEchoServer(srv, &echoServer{})
	// A second service with the same method names, on the same subject.
	desc := testpb.Echo_ServiceDesc
	desc.ServiceName = "mqrpc.grpctest.Echo2"
	srv.RegisterService(&desc, &echoServer{fn: func(_ context.Context, in *testpb.EchoRequest) (*testpb.EchoReply, error) {
		return &testpb.EchoReply{Message: "2:" + in.GetMessage()}, nil
	}})
	sub, err := srv.Serve(b)
	require.NoError(t, err)
	defer sub.Stop(context.Background())

	cc := mqgrpc.NewClientConn(b, one)
	var reply testpb.EchoReply
	require.NoError(t, cc.Invoke(context.Background(), "/mqrpc.grpctest.Echo2/Echo", &testpb.EchoRequest{Message: "x"}, &reply))
	assert.Equal(t, "2:x", reply.GetMessage())
	reply.Reset()
	require.NoError(t, cc.Invoke(context.Background(), "/mqrpc.grpctest.Echo/Echo", &testpb.EchoRequest{Message: "x"}, &reply))
	assert.Equal(t, "x", reply.GetMessage())

	short := mqgrpc.NewClientConn(b, one, mqgrpc.WithShortMethodNames())
	err = short.Invoke(context.Background(), "/mqrpc.grpctest.Echo/Echo", &testpb.EchoRequest{}, &reply)
	assert.Equal(t, codes.InvalidArgument, status.Code(err))
	assert.ErrorContains(t, err, "ambiguous")
}

func TestClientMiddlewareAndDefaultCallOptions(t *testing.T) {
	var subjects []string
	f := setup(t, &echoServer{}, nil,
		mqgrpc.WithClientMiddleware(func(next broker.Handler) broker.Handler {
			return broker.HandlerFunc(func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
				subjects = append(subjects, req.Subject+" "+req.Header.Get(broker.HeaderMethod)+" "+req.Header.Get(broker.HeaderContentType))
				return next.ServeMessage(ctx, req)
			})
		}),
		mqgrpc.WithDefaultCallOptions(grpc.CallContentSubtype("mqgrpc-test-json")))
	var header metadata.MD
	_, err := f.client.Echo(context.Background(), &testpb.EchoRequest{}, grpc.Header(&header))
	require.NoError(t, err)
	assert.Equal(t, []string{"mqrpc.grpctest.Echo /mqrpc.grpctest.Echo/Echo application/grpc+mqgrpc-test-json"}, subjects)
}

func TestMalformedMethod(t *testing.T) {
	b := memory.New()
	defer b.Close()
	cc := mqgrpc.NewClientConn(b)
	for _, m := range []string{"", "Echo", "/Echo", "/svc/", "//"} {
		err := cc.Invoke(context.Background(), m, &testpb.EchoRequest{}, &testpb.EchoReply{})
		assert.Equal(t, codes.Internal, status.Code(err), m)
	}
}

func TestIdempotency(t *testing.T) {
	b := memory.New()
	defer b.Close()
	var infos []rpc.CallInfo
	var ids []string
	cc := mqgrpc.NewClientConn(b, mqgrpc.WithClientMiddleware(func(broker.Handler) broker.Handler {
		return broker.HandlerFunc(func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
			info, _ := rpc.CallInfoFromContext(ctx)
			infos = append(infos, info)
			ids = append(ids, req.ID)
			return nil, rpc.Errorf(rpc.Unavailable, "not sent")
		})
	}))
	tests := []struct {
		name   string
		method string
		opts   []grpc.CallOption
		want   bool
		id     string
	}{
		{"declared no_side_effects in proto", "/mqrpc.grpctest.Echo/Echo", nil, true, ""},
		{"undeclared", "/helloworld.Greeter/SayHello", nil, false, ""},
		{"unknown to the registry", "/no.Such/Method", nil, false, ""},
		{"marked by call option", "/helloworld.Greeter/SayHello",
			[]grpc.CallOption{mqgrpc.CallOptions(rpc.Idempotent(), rpc.WithMessageID("id-1"))}, true, "id-1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			infos, ids = nil, nil
			err := cc.Invoke(context.Background(), tt.method, &testpb.EchoRequest{}, &testpb.EchoReply{}, tt.opts...)
			assert.Equal(t, codes.Unavailable, status.Code(err))
			require.Len(t, infos, 1)
			assert.Equal(t, tt.want, infos[0].Idempotent)
			assert.Equal(t, tt.method, infos[0].Method)
			if tt.id != "" {
				assert.Equal(t, tt.id, ids[0])
			}
		})
	}
}

func TestConcurrentCalls(t *testing.T) {
	f := setup(t, &echoServer{fn: func(ctx context.Context, in *testpb.EchoRequest) (*testpb.EchoReply, error) {
		md, _ := metadata.FromIncomingContext(ctx)
		if err := grpc.SetTrailer(ctx, metadata.Pairs("n", md.Get("n")[0])); err != nil {
			return nil, err
		}
		return &testpb.EchoReply{Message: in.GetMessage()}, nil
	}}, nil)
	const n = 500
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		go func() {
			want := fmt.Sprint(i)
			var trailer metadata.MD
			ctx := metadata.AppendToOutgoingContext(context.Background(), "n", want)
			reply, err := f.client.Echo(ctx, &testpb.EchoRequest{Message: want}, grpc.Trailer(&trailer))
			if err == nil && (reply.GetMessage() != want || strings.Join(trailer.Get("n"), ",") != want) {
				err = fmt.Errorf("call %s got reply %q, trailer %v", want, reply.GetMessage(), trailer)
			}
			errs <- err
		}()
	}
	for i := 0; i < n; i++ {
		require.NoError(t, <-errs)
	}
}
