package thrift_test

import (
	"context"
	"runtime"
	"testing"
	"time"

	"github.com/apache/thrift/lib/go/thrift"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	mqthrift "github.com/mqrpc/mqrpc/adapters/thrift"
	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/examples/thrift-calculator/calculator"
	"github.com/mqrpc/mqrpc/rpc"
)

// encode returns a Thrift message for method with args in protocol p.
func encode(t testing.TB, p mqthrift.Protocol, method string, typ thrift.TMessageType, args thrift.TStruct) []byte {
	t.Helper()
	ctx := context.Background()
	buf := thrift.NewTMemoryBuffer()
	prot := p.Factory(nil).GetProtocol(buf)
	require.NoError(t, prot.WriteMessageBegin(ctx, method, typ, 7))
	require.NoError(t, args.Write(ctx, prot))
	require.NoError(t, prot.WriteMessageEnd(ctx))
	require.NoError(t, prot.Flush(ctx))
	return buf.Bytes()
}

func TestServerMessages(t *testing.T) {
	srv := mqthrift.NewServer(calculator.NewCalculatorProcessor(newCalc()))
	add := &calculator.CalculatorAddArgs{A: 40, B: 2}
	tests := []struct {
		name        string
		contentType string
		body        func(t testing.TB) []byte
		deadline    time.Time
		noReply     bool
		status      rpc.Code
		wantBody    bool
	}{
		{name: "binary sniffed", body: func(t testing.TB) []byte { return encode(t, mqthrift.Binary, "add", thrift.CALL, add) }, wantBody: true},
		{name: "compact sniffed", body: func(t testing.TB) []byte { return encode(t, mqthrift.Compact, "add", thrift.CALL, add) }, wantBody: true},
		{name: "json sniffed", body: func(t testing.TB) []byte { return encode(t, mqthrift.JSON, "add", thrift.CALL, add) }, wantBody: true},
		{name: "x-thrift alias", contentType: "application/x-thrift", body: func(t testing.TB) []byte { return encode(t, mqthrift.Binary, "add", thrift.CALL, add) }, wantBody: true},
		{name: "content type with parameters", contentType: "Application/Vnd.Apache.Thrift.Compact; q=1", body: func(t testing.TB) []byte { return encode(t, mqthrift.Compact, "add", thrift.CALL, add) }, wantBody: true},
		{name: "oneway", body: func(t testing.TB) []byte {
			return encode(t, mqthrift.Binary, "record", thrift.ONEWAY, &calculator.CalculatorRecordArgs{Note: "n"})
		}, noReply: true},
		{name: "oneway as call", body: func(t testing.TB) []byte {
			return encode(t, mqthrift.Binary, "record", thrift.CALL, &calculator.CalculatorRecordArgs{Note: "n"})
		}},
		{name: "unknown method", body: func(t testing.TB) []byte { return encode(t, mqthrift.Compact, "nope", thrift.CALL, add) }, status: rpc.Unimplemented, wantBody: true},
		{name: "wrong protocol", contentType: mqthrift.ContentTypeJSON, body: func(t testing.TB) []byte { return encode(t, mqthrift.Binary, "add", thrift.CALL, add) }, status: rpc.InvalidArgument},
		{name: "unknown content type", contentType: "application/json", body: func(t testing.TB) []byte { return []byte("{}") }, status: rpc.InvalidArgument},
		{name: "empty body", body: func(t testing.TB) []byte { return nil }, status: rpc.InvalidArgument},
		{name: "garbage", body: func(t testing.TB) []byte { return []byte("\x80\x01\x00\x01garbage") }, status: rpc.InvalidArgument},
		{name: "truncated arguments", body: func(t testing.TB) []byte {
			b := encode(t, mqthrift.Binary, "add", thrift.CALL, add)
			return b[:len(b)-3]
		}, status: rpc.InvalidArgument, wantBody: true},
		{name: "reply message as request", body: func(t testing.TB) []byte { return encode(t, mqthrift.Binary, "add", thrift.REPLY, add) }, status: rpc.InvalidArgument, wantBody: true},
		{name: "expired", deadline: time.Now().Add(-time.Second), body: func(t testing.TB) []byte { return encode(t, mqthrift.Binary, "add", thrift.CALL, add) }, status: rpc.DeadlineExceeded},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := &broker.Message{ID: "1", Subject: "Calculator", Body: tt.body(t), Deadline: tt.deadline}
			if tt.contentType != "" {
				req.SetHeader(broker.HeaderContentType, tt.contentType)
			}
			reply, err := srv.ServeMessage(context.Background(), req)
			require.NoError(t, err)
			if tt.noReply {
				assert.Nil(t, reply)
				return
			}
			require.NotNil(t, reply)
			assert.Equal(t, tt.status, rpc.CodeOf(rpc.ErrorFromReply(reply)), "status %v", rpc.ErrorFromReply(reply))
			assert.Equal(t, tt.wantBody, len(reply.Body) > 0)
		})
	}
}

func TestCodeTables(t *testing.T) {
	for _, c := range []rpc.Code{rpc.Unimplemented, rpc.InvalidArgument, rpc.Internal, rpc.Unknown} {
		assert.Equal(t, c, mqthrift.CodeFromExceptionType(mqthrift.ExceptionType(c)), c.String())
	}
	for ty := int32(0); ty <= thrift.VALIDATION_FAILED+1; ty++ {
		c := mqthrift.CodeFromExceptionType(ty)
		assert.NotEqual(t, rpc.OK, c)
		assert.Equal(t, c, mqthrift.CodeOf(thrift.NewTApplicationException(ty, "x")))
	}
	// Every code survives the trip through an Exception.
	for c := rpc.Canceled; c <= rpc.Unauthenticated; c++ {
		x := mqthrift.NewException(rpc.NewError(c, nil))
		assert.Equal(t, c, rpc.CodeOf(x))
		assert.Equal(t, c, mqthrift.CodeOf(x))
		assert.Equal(t, mqthrift.ExceptionType(c), x.TypeId())
	}
	tests := []struct {
		err  error
		want rpc.Code
	}{
		{nil, rpc.OK},
		{thrift.NewTTransportException(thrift.NOT_OPEN, "x"), rpc.Unavailable},
		{thrift.NewTTransportException(thrift.END_OF_FILE, "x"), rpc.Unavailable},
		{thrift.NewTTransportException(thrift.TIMED_OUT, "x"), rpc.DeadlineExceeded},
		{thrift.NewTTransportException(thrift.ALREADY_OPEN, "x"), rpc.FailedPrecondition},
		{thrift.NewTTransportException(thrift.UNKNOWN_TRANSPORT_EXCEPTION, "x"), rpc.Unknown},
		{thrift.NewTProtocolExceptionWithType(thrift.INVALID_DATA, errString("x")), rpc.InvalidArgument},
		{thrift.NewTProtocolExceptionWithType(thrift.SIZE_LIMIT, errString("x")), rpc.ResourceExhausted},
		{thrift.NewTProtocolExceptionWithType(thrift.NOT_IMPLEMENTED, errString("x")), rpc.Unimplemented},
		{thrift.NewTProtocolExceptionWithType(thrift.UNKNOWN_PROTOCOL_EXCEPTION, errString("x")), rpc.Unknown},
		{thrift.NewTProtocolException(broker.ErrNoResponders), rpc.Unavailable},
		{rpc.NewError(rpc.Unknown, nil), rpc.Unknown},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, mqthrift.CodeOf(tt.err), "%v", tt.err)
	}
}

type errString string

func (e errString) Error() string { return string(e) }

func TestProtocolOf(t *testing.T) {
	for _, p := range protocols {
		got, ok := mqthrift.ProtocolOf(p.ContentType())
		require.True(t, ok)
		assert.Equal(t, p, got)
	}
	_, ok := mqthrift.ProtocolOf("application/json")
	assert.False(t, ok)
}

// A tiny message declaring a huge list is refused without allocating for
// the list.
func TestServerHugeDeclaredSize(t *testing.T) {
	srv := mqthrift.NewServer(calculator.NewCalculatorProcessor(newCalc()))
	for _, p := range protocols {
		t.Run(p.String(), func(t *testing.T) {
			ctx := context.Background()
			buf := thrift.NewTMemoryBuffer()
			prot := p.Factory(nil).GetProtocol(buf)
			require.NoError(t, prot.WriteMessageBegin(ctx, "calcSum", thrift.CALL, 1))
			require.NoError(t, prot.WriteStructBegin(ctx, "args"))
			require.NoError(t, prot.WriteFieldBegin(ctx, "numbers", thrift.LIST, 1))
			require.NoError(t, prot.WriteListBegin(ctx, thrift.DOUBLE, 50_000_000))
			require.NoError(t, prot.Flush(ctx))
			body := buf.Bytes()

			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			reply, err := srv.ServeMessage(ctx, &broker.Message{Header: broker.Header{broker.HeaderContentType: p.ContentType()}, Body: body})
			runtime.ReadMemStats(&after)
			require.NoError(t, err)
			assert.Equal(t, rpc.InvalidArgument, rpc.CodeOf(rpc.ErrorFromReply(reply)))
			assert.Less(t, after.TotalAlloc-before.TotalAlloc, uint64(1<<20), "bytes allocated")
		})
	}
}
