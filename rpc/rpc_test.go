package rpc_test

import (
	"bytes"
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/memory"
	"github.com/mqrpc/mqrpc/codec"
	jsoncodec "github.com/mqrpc/mqrpc/codec/json"
	msgpackcodec "github.com/mqrpc/mqrpc/codec/msgpack"
	protocodec "github.com/mqrpc/mqrpc/codec/proto"
	rawcodec "github.com/mqrpc/mqrpc/codec/raw"
	"github.com/mqrpc/mqrpc/rpc"

	"google.golang.org/protobuf/types/known/wrapperspb"
)

type addReq struct{ A, B int }
type addRes struct{ Sum int }

func newPair(t *testing.T, sopts []rpc.ServerOption, copts ...rpc.ClientOption) (*rpc.Server, *rpc.Client, *memory.Broker) {
	t.Helper()
	b := memory.New()
	t.Cleanup(func() { _ = b.Close() })
	srv := rpc.NewServer(sopts...)
	require.NoError(t, rpc.Handle(srv, "Add", func(_ context.Context, in *addReq) (*addRes, error) {
		return &addRes{Sum: in.A + in.B}, nil
	}))
	require.NoError(t, rpc.Handle(srv, "Fail", func(_ context.Context, in *addReq) (*addRes, error) {
		return nil, rpc.Errorf(rpc.Code(in.A), "failed with %d", in.A)
	}))
	require.NoError(t, rpc.Handle(srv, "Plain", func(_ context.Context, _ *addReq) (*addRes, error) {
		return nil, errors.New("plain failure")
	}))
	require.NoError(t, rpc.Handle(srv, "Panic", func(_ context.Context, _ *addReq) (*addRes, error) {
		panic("boom")
	}))
	_, err := b.Serve("calc", srv)
	require.NoError(t, err)
	return srv, rpc.NewClient(b, copts...), b
}

func TestCallCodecs(t *testing.T) {
	_, _, b := newPair(t, []rpc.ServerOption{rpc.WithCodecs(jsoncodec.Codec{}, msgpackcodec.Codec{})})
	for _, cd := range []codec.Codec{jsoncodec.Codec{}, msgpackcodec.Codec{}} {
		t.Run(cd.Name(), func(t *testing.T) {
			c := rpc.NewClient(b, rpc.WithCodec(cd))
			var reply broker.Header
			got, err := rpc.Invoke[addReq, addRes](context.Background(), c, "calc", "Add", &addReq{A: 2, B: 3}, rpc.WithReplyHeader(&reply))
			require.NoError(t, err)
			assert.Equal(t, 5, got.Sum)
			assert.Empty(t, reply.Get("content-type"), "a reply in the request's codec does not name it again")
		})
	}
}

// Bytes that are already encoded pass through a call with the raw codec,
// to a raw method and to a typed one.
func TestRawBytes(t *testing.T) {
	srv, _, b := newPair(t, []rpc.ServerOption{rpc.WithCodecs(jsoncodec.Codec{}, rawcodec.Codec{})})
	require.NoError(t, rpc.HandleRaw(srv, "Upper", func(_ context.Context, body []byte) ([]byte, error) {
		return bytes.ToUpper(body), nil
	}))
	require.NoError(t, rpc.Handle(srv, "Len", func(_ context.Context, in *[]byte) (*[]byte, error) {
		out := []byte(strconv.Itoa(len(*in)))
		return &out, nil
	}))
	c := rpc.NewClient(b, rpc.WithCodec(rawcodec.Codec{}))
	var out []byte
	require.NoError(t, c.Call(context.Background(), "calc", "Upper", []byte("abc\x00"), &out))
	assert.Equal(t, []byte("ABC\x00"), out)
	require.NoError(t, c.Call(context.Background(), "calc", "Len", "four", &out))
	assert.Equal(t, "4", string(out))
	err := c.Call(context.Background(), "calc", "Upper", 42, &out)
	assert.Equal(t, rpc.InvalidArgument, rpc.CodeOf(err), "%v", err)
}

// A raw method takes any content type, also on a server whose codecs do
// not include it (the default, JSON only), and answers in the request's
// content type without naming it.
func TestRawMethodAnyContentType(t *testing.T) {
	srv, _, b := newPair(t, nil)
	require.NoError(t, rpc.HandleRaw(srv, "Upper", func(_ context.Context, body []byte) ([]byte, error) {
		return bytes.ToUpper(body), nil
	}))
	c := rpc.NewClient(b, rpc.WithCodec(rawcodec.Codec{}))
	var out []byte
	var reply broker.Header
	require.NoError(t, c.Call(context.Background(), "calc", "Upper", []byte("abc"), &out, rpc.WithReplyHeader(&reply)))
	assert.Equal(t, []byte("ABC"), out)
	assert.Empty(t, reply.Get("content-type"))
	for _, ct := range []string{"", "application/x-bogus"} {
		h := broker.Header{"mqrpc-method": "Upper"}
		if ct != "" {
			h.Set("content-type", ct)
		}
		rep, err := srv.ServeMessage(context.Background(), &broker.Message{Header: h, Body: []byte("xy")})
		require.NoError(t, err)
		require.NoError(t, rpc.ErrorFromReply(rep), "content type %q", ct)
		assert.Equal(t, "XY", string(rep.Body))
		assert.Empty(t, rep.Header.Get("content-type"), "content type %q", ct)
	}
}

// The method is looked up before the content type: an unknown method is
// Unimplemented whatever content type it names.
func TestUnknownMethodUnacceptedContentType(t *testing.T) {
	_, _, b := newPair(t, nil)
	reply, err := b.Request(context.Background(), &broker.Message{Subject: "calc",
		Header: broker.Header{"mqrpc-method": "Nope", "content-type": "application/x-bogus"}, Body: []byte{1}})
	require.NoError(t, err)
	e := rpc.ErrorFromReply(reply)
	assert.Equal(t, rpc.Unimplemented, rpc.CodeOf(e), "%v", e)
	assert.Contains(t, e.Error(), `unknown method "Nope"`)
}

// A reply names its codec when the request did not name it the same way.
func TestReplyContentType(t *testing.T) {
	srv, _, _ := newPair(t, []rpc.ServerOption{rpc.WithCodecs(jsoncodec.Codec{}, msgpackcodec.Codec{})})
	for _, tt := range []struct{ request, reply string }{
		{"", "application/json"},                                // the server's default codec
		{"application/json; charset=utf-8", "application/json"}, // parameters
		{"Application/MsgPack", "application/msgpack"},          // case
		{"application/json", ""},
		{"application/msgpack", ""},
	} {
		h := broker.Header{"mqrpc-method": "Add"}
		if tt.request != "" {
			h.Set("content-type", tt.request)
		}
		body := []byte(`{"A":1,"B":2}`)
		if strings.Contains(strings.ToLower(tt.request), "msgpack") {
			var err error
			body, err = msgpackcodec.Codec{}.Marshal(&addReq{A: 1, B: 2})
			require.NoError(t, err)
		}
		rep, err := srv.ServeMessage(context.Background(), &broker.Message{Header: h, Body: body})
		require.NoError(t, err, tt.request)
		require.Empty(t, rep.Header.Get(broker.HeaderStatus), "%s: %s", tt.request, rep.Header.Get(broker.HeaderStatusMessage))
		assert.Equal(t, tt.reply, rep.Header.Get("content-type"), "request content-type %q", tt.request)
	}
}

func TestErrors(t *testing.T) {
	_, c, _ := newPair(t, nil)
	ctx := context.Background()
	tests := []struct {
		name   string
		method string
		in     addReq
		code   rpc.Code
		msg    string
	}{
		{"StatusFromHandler", "Fail", addReq{A: int(rpc.NotFound)}, rpc.NotFound, "failed with 5"},
		{"PlainErrorIsUnknown", "Plain", addReq{}, rpc.Unknown, "plain failure"},
		{"PanicIsInternal", "Panic", addReq{}, rpc.Internal, "panic in method Panic: boom"},
		{"UnknownMethod", "Nope", addReq{}, rpc.Unimplemented, `unknown method "Nope"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := c.Call(ctx, "calc", tt.method, &tt.in, &addRes{})
			require.Error(t, err)
			assert.Equal(t, tt.code, rpc.CodeOf(err))
			var e *rpc.Error
			require.ErrorAs(t, err, &e)
			assert.True(t, e.Wire(), "error from the server is a wire error")
			assert.Equal(t, tt.msg, e.Message())
		})
	}
}

func TestUnknownContentType(t *testing.T) {
	_, _, b := newPair(t, nil)
	reply, err := b.Request(context.Background(), &broker.Message{Subject: "calc",
		Header: broker.Header{"mqrpc-method": "Add", "content-type": "application/x-bogus"}, Body: []byte{1, 2, 3}})
	require.NoError(t, err)
	e := rpc.ErrorFromReply(reply)
	assert.Equal(t, rpc.InvalidArgument, rpc.CodeOf(e))
	assert.Contains(t, e.Error(), `unsupported content type "application/x-bogus" (accepted: application/json)`)
}

func TestGarbageBody(t *testing.T) {
	_, _, b := newPair(t, nil)
	reply, err := b.Request(context.Background(), &broker.Message{Subject: "calc",
		Header: broker.Header{"mqrpc-method": "Add", "content-type": "application/json"}, Body: []byte("{not json")})
	require.NoError(t, err)
	e := rpc.ErrorFromReply(reply)
	assert.Equal(t, rpc.InvalidArgument, rpc.CodeOf(e))
}

func TestLocalErrors(t *testing.T) {
	b := memory.New()
	defer b.Close()
	c := rpc.NewClient(b)
	err := c.Call(context.Background(), "nobody", "Add", &addReq{}, nil)
	assert.Equal(t, rpc.Unavailable, rpc.CodeOf(err))
	assert.ErrorIs(t, err, broker.ErrNoResponders)
	var e *rpc.Error
	require.ErrorAs(t, err, &e)
	assert.False(t, e.Wire())

	_, c2, _ := newPair(t, nil)
	require.NoError(t, rpc.Handle(rpc.NewServer(), "x", func(context.Context, *addReq) (*addRes, error) { return nil, nil }))
	ctx, cancel := context.WithTimeout(context.Background(), time.Nanosecond)
	defer cancel()
	time.Sleep(time.Millisecond)
	err = c2.Call(ctx, "calc", "Add", &addReq{}, nil)
	assert.Equal(t, rpc.DeadlineExceeded, rpc.CodeOf(err))
}

func TestProtoCodec(t *testing.T) {
	b := memory.New()
	defer b.Close()
	srv := rpc.NewServer(rpc.WithCodecs(protocodec.Codec{}))
	require.NoError(t, rpc.Handle(srv, "Upper", func(_ context.Context, in *wrapperspb.StringValue) (*wrapperspb.StringValue, error) {
		return wrapperspb.String(in.GetValue() + "!"), nil
	}))
	_, err := b.Serve("s", srv)
	require.NoError(t, err)
	c := rpc.NewClient(b, rpc.WithCodec(protocodec.Codec{}))
	got, err := rpc.NewMethod[wrapperspb.StringValue, wrapperspb.StringValue](c, "s", "Upper")(context.Background(), wrapperspb.String("hi"))
	require.NoError(t, err)
	assert.Equal(t, "hi!", got.GetValue())
}

func TestDuplicateMethod(t *testing.T) {
	srv := rpc.NewServer()
	fn := func(context.Context, *addReq) (*addRes, error) { return nil, nil }
	require.NoError(t, rpc.Handle(srv, "A", fn))
	assert.ErrorIs(t, rpc.Handle(srv, "A", fn), rpc.ErrDuplicateMethod)
	assert.Equal(t, []string{"A"}, srv.Methods())
}

func TestNotify(t *testing.T) {
	b := memory.New()
	defer b.Close()
	srv := rpc.NewServer()
	got := make(chan int, 1)
	require.NoError(t, rpc.Handle(srv, "Log", func(_ context.Context, in *addReq) (*addRes, error) {
		got <- in.A
		return nil, nil
	}))
	_, err := b.Serve("log", srv)
	require.NoError(t, err)
	require.NoError(t, rpc.NewClient(b).Notify(context.Background(), "log", "Log", &addReq{A: 7}))
	select {
	case v := <-got:
		assert.Equal(t, 7, v)
	case <-time.After(5 * time.Second):
		t.Fatal("notification not delivered")
	}
}
