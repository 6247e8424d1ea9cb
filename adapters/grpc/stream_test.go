package grpc_test

import (
	"context"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	mqgrpc "github.com/mqrpc/mqrpc/adapters/grpc"
	"github.com/mqrpc/mqrpc/adapters/grpc/internal/testpb"
	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/amqp"
	"github.com/mqrpc/mqrpc/broker/memory"
	natsbroker "github.com/mqrpc/mqrpc/broker/nats"
	protocodec "github.com/mqrpc/mqrpc/codec/proto"
	"github.com/mqrpc/mqrpc/internal/testenv"
	"github.com/mqrpc/mqrpc/rpc"
)

// streamBrokers are the brokers the stream tests run on: in-process, and
// the real NATS and RabbitMQ servers (scripts/brokers up).
func streamBrokers(t *testing.T, run func(t *testing.T, b broker.Broker)) {
	t.Run("memory", func(t *testing.T) {
		b := memory.New()
		defer b.Close()
		run(t, b)
	})
	t.Run("nats", func(t *testing.T) {
		b, err := natsbroker.New(testenv.NATSURL(t))
		require.NoError(t, err)
		defer b.Close()
		run(t, b)
	})
	t.Run("rabbitmq", func(t *testing.T) {
		b, err := amqp.New(testenv.AMQPURL(t))
		require.NoError(t, err)
		defer b.Close()
		run(t, b)
	})
}

// serveOn serves impl on b under a subject of this run's own and returns
// a client with ccOpts.
func serveOn(t *testing.T, b broker.Broker, impl testpb.EchoServer, srvOpts []mqgrpc.ServerOption, ccOpts ...mqgrpc.ClientOption) testpb.EchoClient {
	t.Helper()
	prefix := "mqgrpctest." + broker.NewID() + "."
	subject := mqgrpc.WithSubject(func(service string) string { return prefix + service })
	srv := mqgrpc.NewServer(append([]mqgrpc.ServerOption{subject}, srvOpts...)...)
	testpb.RegisterEchoServer(srv, impl)
	sub, err := srv.Serve(b)
	require.NoError(t, err)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		assert.NoError(t, sub.Stop(ctx))
	})
	return testpb.NewEchoClient(mqgrpc.NewClientConn(b, append([]mqgrpc.ClientOption{subject}, ccOpts...)...))
}

// countServer streams 1..n for Count, after recording what its ctx holds.
type countServer struct {
	testpb.UnimplementedEchoServer
	seen func(ctx context.Context)
}

func (s *countServer) Count(in *testpb.CountRequest, stream grpc.ServerStreamingServer[testpb.CountReply]) error {
	if s.seen != nil {
		s.seen(stream.Context())
	}
	if err := stream.SetHeader(metadata.Pairs("x-handler", "count")); err != nil {
		return err
	}
	stream.SetTrailer(metadata.Pairs("x-sent", fmt.Sprint(in.GetN())))
	for i := int32(1); i <= in.GetN(); i++ {
		if err := stream.Send(&testpb.CountReply{I: i}); err != nil {
			return err
		}
	}
	return nil
}

// countingServerStream counts the messages a handler sends.
type countingServerStream struct {
	grpc.ServerStream
	ctx  context.Context
	sent int
}

func (s *countingServerStream) Context() context.Context { return s.ctx }

func (s *countingServerStream) SendMsg(m any) error {
	s.sent++
	return s.ServerStream.SendMsg(m)
}

// countingClientStream counts the messages received and calls end once
// with RecvMsg's first error (io.EOF at an OK end).
type countingClientStream struct {
	grpc.ClientStream
	recv int
	end  func(recv int, err error)
	once sync.Once
}

func (s *countingClientStream) RecvMsg(m any) error {
	err := s.ClientStream.RecvMsg(m)
	if err != nil {
		s.once.Do(func() { s.end(s.recv, err) })
		return err
	}
	s.recv++
	return nil
}

type ctxKey struct{}

// TestStreamInterceptors: gRPC stream interceptors on both sides, chained
// in order, see a stream's start and end, wrap the streams (counting
// messages, injecting metadata and a ctx value) and reject a stream with a
// status the caller receives; on memory, NATS and RabbitMQ.
func TestStreamInterceptors(t *testing.T) {
	streamBrokers(t, testStreamInterceptors)
}

func testStreamInterceptors(t *testing.T, b broker.Broker) {
	var mu sync.Mutex
	var trace []string
	record := func(format string, args ...any) {
		mu.Lock()
		trace = append(trace, fmt.Sprintf(format, args...))
		mu.Unlock()
	}
	traced := func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), trace...)
	}
	const method = "/mqrpc.grpctest.Echo/Count"

	// s1 counts what the handler sends and denies a caller asking for it;
	// s2 hands the handler a ctx with a value and sets header metadata.
	s1 := func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		record("s1 start %s client=%v server=%v", info.FullMethod, info.IsClientStream, info.IsServerStream)
		md, _ := metadata.FromIncomingContext(ss.Context())
		if len(md.Get("x-deny")) > 0 {
			record("s1 deny")
			return status.Error(codes.PermissionDenied, "denied by s1")
		}
		cs := &countingServerStream{ServerStream: ss, ctx: ss.Context()}
		err := handler(srv, cs)
		record("s1 end sent=%d code=%v", cs.sent, status.Code(err))
		return err
	}
	s2 := func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		record("s2 start")
		if err := ss.SetHeader(metadata.Pairs("x-s2", "yes")); err != nil {
			return err
		}
		return handler(srv, &countingServerStream{ServerStream: ss, ctx: context.WithValue(ss.Context(), ctxKey{}, "from s2")})
	}
	// c1 injects metadata and watches the stream to its end; c2 injects
	// metadata and refuses to open a stream whose ctx says so.
	c1 := func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		record("c1 start %s server=%v", method, desc.ServerStreams)
		ctx = metadata.AppendToOutgoingContext(ctx, "x-via-c1", "1")
		cs, err := streamer(ctx, desc, cc, method, opts...)
		if err != nil {
			record("c1 open failed code=%v", status.Code(err))
			return nil, err
		}
		return &countingClientStream{ClientStream: cs, end: func(recv int, err error) {
			if err == io.EOF {
				record("c1 end recv=%d EOF", recv)
				return
			}
			record("c1 end recv=%d code=%v", recv, status.Code(err))
		}}, nil
	}
	c2 := func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		record("c2 start")
		if md, _ := metadata.FromOutgoingContext(ctx); len(md.Get("x-refuse")) > 0 {
			return nil, status.Error(codes.FailedPrecondition, "refused by c2")
		}
		return streamer(metadata.AppendToOutgoingContext(ctx, "x-via-c2", "1"), desc, cc, method, opts...)
	}

	var seenMD metadata.MD
	var seenValue any
	client := serveOn(t, b, &countServer{seen: func(ctx context.Context) {
		seenMD, _ = metadata.FromIncomingContext(ctx)
		seenValue = ctx.Value(ctxKey{})
		record("handler")
	}},
		[]mqgrpc.ServerOption{mqgrpc.WithStreamServerInterceptor(s1), mqgrpc.WithStreamServerInterceptor(s2)},
		mqgrpc.WithStreamClientInterceptor(c1, c2))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	t.Run("start, wrap and end", func(t *testing.T) {
		mu.Lock()
		trace = nil
		mu.Unlock()
		stream, err := client.Count(ctx, &testpb.CountRequest{N: 50})
		require.NoError(t, err)
		for i := int32(1); i <= 50; i++ {
			m, err := stream.Recv()
			require.NoError(t, err)
			require.Equal(t, i, m.GetI())
		}
		_, err = stream.Recv()
		require.ErrorIs(t, err, io.EOF)
		assert.Equal(t, []string{
			"c1 start " + method + " server=true",
			"c2 start",
			"s1 start " + method + " client=false server=true",
			"s2 start",
			"handler",
			"s1 end sent=50 code=OK",
			"c1 end recv=50 EOF",
		}, traced())
		assert.Equal(t, []string{"1"}, seenMD.Get("x-via-c1"))
		assert.Equal(t, []string{"1"}, seenMD.Get("x-via-c2"))
		assert.Equal(t, "from s2", seenValue)
		header, err := stream.Header()
		require.NoError(t, err)
		assert.Equal(t, []string{"yes"}, header.Get("x-s2"))
		assert.Equal(t, []string{"count"}, header.Get("x-handler"))
		assert.Equal(t, []string{"50"}, stream.Trailer().Get("x-sent"))
	})
	t.Run("server interceptor rejects", func(t *testing.T) {
		mu.Lock()
		trace = nil
		mu.Unlock()
		stream, err := client.Count(metadata.AppendToOutgoingContext(ctx, "x-deny", "1"), &testpb.CountRequest{N: 5})
		require.NoError(t, err)
		_, err = stream.Recv()
		assert.Equal(t, codes.PermissionDenied, status.Code(err))
		assert.Equal(t, "denied by s1", status.Convert(err).Message())
		assert.Equal(t, []string{
			"c1 start " + method + " server=true",
			"c2 start",
			"s1 start " + method + " client=false server=true",
			"s1 deny",
			"c1 end recv=0 code=PermissionDenied",
		}, traced())
	})
	t.Run("client interceptor rejects", func(t *testing.T) {
		mu.Lock()
		trace = nil
		mu.Unlock()
		_, err := client.Count(metadata.AppendToOutgoingContext(ctx, "x-refuse", "1"), &testpb.CountRequest{N: 5})
		assert.Equal(t, codes.FailedPrecondition, status.Code(err))
		assert.Equal(t, []string{
			"c1 start " + method + " server=true",
			"c2 start",
			"c1 open failed code=FailedPrecondition",
		}, traced())
	})
}

// TestStreamHeader: ClientStream.Header returns the header metadata once
// the server's first message brought it, before the stream ends (the
// handler waits, after its first message, until the client has the
// header), and so does the grpc.Header call option; RecvMsg then returns
// every message in order, the first included, and SetHeader after the
// first message fails as in gRPC.
func TestStreamHeader(t *testing.T) {
	streamBrokers(t, func(t *testing.T, b broker.Broker) {
		gotHeader := make(chan struct{})
		lateSetHeader := make(chan error, 1)
		client := serveOn(t, b, &headerServer{gotHeader: gotHeader, lateSetHeader: lateSetHeader}, nil)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		const n = 500
		var optHeader metadata.MD
		stream, err := client.Count(ctx, &testpb.CountRequest{N: n}, grpc.Header(&optHeader))
		require.NoError(t, err)
		header, err := stream.Header()
		close(gotHeader)
		require.NoError(t, err)
		assert.Equal(t, header, optHeader, "grpc.Header is set once the header arrived")
		assert.Equal(t, []string{"count"}, header.Get("x-handler"))
		assert.Equal(t, []string{"\x00\x01"}, header.Get("x-raw-bin"))
		for i := int32(1); i <= n; i++ {
			m, err := stream.Recv()
			require.NoError(t, err)
			require.Equal(t, i, m.GetI())
		}
		_, err = stream.Recv()
		require.ErrorIs(t, err, io.EOF)
		assert.Equal(t, []string{fmt.Sprint(n)}, stream.Trailer().Get("x-sent"))
		again, err := stream.Header()
		require.NoError(t, err)
		assert.Equal(t, header, again)
		assert.Equal(t, codes.Internal, status.Code(<-lateSetHeader), "SetHeader after the first message")
	})
}

// headerServer's Count sets header metadata, sends 1, waits until the
// client has the header (at most 20 s), then sends 2..n.
type headerServer struct {
	testpb.UnimplementedEchoServer
	gotHeader     chan struct{}
	lateSetHeader chan error
}

func (s *headerServer) Count(in *testpb.CountRequest, stream grpc.ServerStreamingServer[testpb.CountReply]) error {
	if err := stream.SetHeader(metadata.Pairs("x-handler", "count", "x-raw-bin", "\x00\x01")); err != nil {
		return err
	}
	stream.SetTrailer(metadata.Pairs("x-sent", fmt.Sprint(in.GetN())))
	if err := stream.Send(&testpb.CountReply{I: 1}); err != nil {
		return err
	}
	s.lateSetHeader <- stream.SetHeader(metadata.Pairs("x-late", "1"))
	select {
	case <-s.gotHeader:
	case <-time.After(20 * time.Second):
		return status.Error(codes.DeadlineExceeded, "the client did not get the header before the end")
	}
	for i := int32(2); i <= in.GetN(); i++ {
		if err := stream.Send(&testpb.CountReply{I: i}); err != nil {
			return err
		}
	}
	return nil
}

// TestStreamHeaderAtTheEnd: from a server that sends the header metadata
// only with the end (an mqrpc stream handler, whose reply headers are the
// header metadata), Header waits for the end, reading the
// messages ahead so that a stream longer than the reader's credit still
// ends, and RecvMsg then returns them all in order.
func TestStreamHeaderAtTheEnd(t *testing.T) {
	b := memory.New()
	defer b.Close()
	srv := rpc.NewServer(rpc.WithCodecs(protocodec.Codec{}))
	// A bidirectional handler: mqgrpc sends a server stream's request as
	// a stream message, which rpc.HandleServerStream would not read.
	require.NoError(t, rpc.HandleBidiStream(srv, "Count", func(ctx context.Context, st *rpc.ServerStream[testpb.CountRequest, testpb.CountReply]) error {
		in, err := st.Recv()
		if err != nil {
			return err
		}
		for i := int32(1); i <= in.GetN(); i++ {
			if err := st.Send(&testpb.CountReply{I: i}); err != nil {
				return err
			}
		}
		rpc.SetReplyHeader(ctx, "x-served-by", "rpc")
		return nil
	}))
	sub, err := b.Serve("count-subject", srv)
	require.NoError(t, err)
	defer func() { assert.NoError(t, sub.Stop(context.Background())) }()
	client := testpb.NewEchoClient(mqgrpc.NewClientConn(b, mqgrpc.WithShortMethodNames(),
		mqgrpc.WithSubject(func(string) string { return "count-subject" })))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// More than the reader grants without reading: its first credit, then
	// its window (1024) once it took a message.
	const n = 3000
	stream, err := client.Count(ctx, &testpb.CountRequest{N: n})
	require.NoError(t, err)
	header, err := stream.Header()
	require.NoError(t, err)
	assert.Equal(t, []string{"rpc"}, header.Get("x-served-by"))
	for i := int32(1); i <= n; i++ {
		m, err := stream.Recv()
		require.NoError(t, err)
		require.Equal(t, i, m.GetI())
	}
	_, err = stream.Recv()
	require.ErrorIs(t, err, io.EOF)
}
