package rpc_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/memory"
	msgpackcodec "github.com/mqrpc/mqrpc/codec/msgpack"
	"github.com/mqrpc/mqrpc/rpc"
)

// WithCodecs adds to JSON; WithCodec on a server names the codec of
// requests without a content type, and is accepted besides JSON.
func TestServerCodecs(t *testing.T) {
	for _, tt := range []struct {
		name      string
		opts      []rpc.ServerOption
		noCTCodec string // the codec a request without content-type is read with
	}{
		{"WithCodecs adds", []rpc.ServerOption{rpc.WithCodecs(msgpackcodec.Codec{})}, "application/json"},
		{"WithCodec is the default", []rpc.ServerOption{rpc.WithCodec(msgpackcodec.Codec{})}, "application/msgpack"},
		{"nil WithCodec is JSON", []rpc.ServerOption{rpc.WithCodec(nil), rpc.WithCodecs(msgpackcodec.Codec{})}, "application/json"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, _, b := newPair(t, tt.opts)
			for _, cd := range []rpc.Option{rpc.WithCodec(nil), rpc.WithCodec(msgpackcodec.Codec{})} {
				var out addRes
				require.NoError(t, rpc.NewClient(b, cd).Call(context.Background(), "calc", "Add", &addReq{A: 1, B: 2}, &out))
				assert.Equal(t, 3, out.Sum)
			}
			body := []byte(`{"A":1,"B":2}`)
			if tt.noCTCodec == "application/msgpack" {
				body, _ = msgpackcodec.Codec{}.Marshal(&addReq{A: 1, B: 2})
			}
			reply, err := b.Request(context.Background(), &broker.Message{Subject: "calc", Header: broker.Header{"mqrpc-method": "Add"}, Body: body})
			require.NoError(t, err)
			require.NoError(t, rpc.ErrorFromReply(reply))
			assert.Equal(t, tt.noCTCodec, reply.Header.Get("content-type"))
		})
	}
}

var (
	clientOnly = rpc.ClientOnly("clientOnly", func(next broker.Handler) broker.Handler { return next })
	serverOnly = rpc.ServerOnly("serverOnly", func(next broker.Handler) broker.Handler { return next })
	anySide    = rpc.Middleware(func(next broker.Handler) broker.Handler { return next })
)

// A one-sided middleware refuses the other side when the chain is built,
// also behind other middleware, and works on its own side.
func TestMiddlewareSide(t *testing.T) {
	b := memory.New()
	defer b.Close()
	assert.PanicsWithValue(t, "rpc: clientOnly is client middleware; it cannot run in a server chain", func() {
		rpc.NewServer(rpc.WithServerMiddleware(anySide, clientOnly, anySide))
	})
	assert.PanicsWithValue(t, "rpc: serverOnly is server middleware; it cannot run in a client chain", func() {
		rpc.NewClient(b, rpc.WithClientMiddleware(serverOnly, anySide))
	})
	assert.Panics(t, func() { rpc.Chain(rpc.ClientSide, broker.HandlerFunc(nil), serverOnly) })

	srv := rpc.NewServer(rpc.WithServerMiddleware(anySide, serverOnly))
	require.NoError(t, rpc.Handle(srv, "Add", func(_ context.Context, in *addReq) (*addRes, error) { return &addRes{Sum: in.A + in.B}, nil }))
	_, err := b.Serve("calc", srv)
	require.NoError(t, err)
	c := rpc.NewClient(b, rpc.WithClientMiddleware(clientOnly, anySide))
	got, err := rpc.Invoke[addReq, addRes](context.Background(), c, "calc", "Add", &addReq{A: 2, B: 2})
	require.NoError(t, err)
	assert.Equal(t, 4, got.Sum)
	assert.Equal(t, "client", rpc.ClientSide.String())
	assert.Equal(t, "server", rpc.ServerSide.String())
}
