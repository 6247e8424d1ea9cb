package rpc_test

import (
	"context"
	"testing"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/memory"
	"github.com/mqrpc/mqrpc/codec"
	jsoncodec "github.com/mqrpc/mqrpc/codec/json"
	msgpackcodec "github.com/mqrpc/mqrpc/codec/msgpack"
	"github.com/mqrpc/mqrpc/rpc"
)

// BenchmarkCall measures a whole call over the memory broker: what mqrpc
// itself costs, with no network, next to a direct call of the same handler
// with the same codec.
func BenchmarkCall(b *testing.B) {
	for _, cd := range []codec.Codec{jsoncodec.Codec{}, msgpackcodec.Codec{}} {
		b.Run("memory/"+cd.Name(), func(b *testing.B) {
			br := memory.New()
			defer br.Close()
			srv := rpc.NewServer(rpc.WithCodecs(cd))
			_ = rpc.Handle(srv, "Add", func(_ context.Context, in *addReq) (*addRes, error) {
				return &addRes{Sum: in.A + in.B}, nil
			})
			_, _ = br.Serve("calc", srv)
			c := rpc.NewClient(br, rpc.WithCodec(cd))
			ctx := context.Background()
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				var out addRes
				for pb.Next() {
					if err := c.Call(ctx, "calc", "Add", &addReq{A: 1, B: 2}, &out); err != nil {
						b.Fatal(err)
					}
				}
			})
		})
		b.Run("direct/"+cd.Name(), func(b *testing.B) {
			srv := rpc.NewServer(rpc.WithCodecs(cd))
			_ = rpc.Handle(srv, "Add", func(_ context.Context, in *addReq) (*addRes, error) {
				return &addRes{Sum: in.A + in.B}, nil
			})
			ctx := context.Background()
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				var out addRes
				for pb.Next() {
					body, _ := cd.Marshal(&addReq{A: 1, B: 2})
					reply, err := srv.ServeMessage(ctx, &broker.Message{Subject: "calc",
						Header: broker.Header{broker.HeaderMethod: "Add", broker.HeaderContentType: cd.Name()}, Body: body})
					if err != nil {
						b.Fatal(err)
					}
					if err := cd.Unmarshal(reply.Body, &out); err != nil {
						b.Fatal(err)
					}
				}
			})
		})
	}
}
