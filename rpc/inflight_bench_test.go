package rpc_test

import (
	"context"
	"testing"

	"github.com/mqrpc/mqrpc/rpc"
)

// BenchmarkMaxInFlight: parallel calls through a client limited to 1 and
// to many calls in flight, on the memory broker.
func BenchmarkMaxInFlight(b *testing.B) {
	for _, bc := range []struct {
		name string
		n    int
	}{{"free", 1 << 20}, {"contended", 1}} {
		b.Run(bc.name, func(b *testing.B) {
			_, _, br := newPair(&testing.T{}, nil)
			c := rpc.NewClient(br, rpc.WithMaxInFlight(bc.n))
			ctx := context.Background()
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				in, out := &addReq{A: 1, B: 2}, &addRes{}
				for pb.Next() {
					if err := c.Call(ctx, "calc", "Add", in, out); err != nil {
						b.Error(err)
					}
				}
			})
		})
	}
}
