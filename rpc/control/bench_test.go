package control_test

import (
	"context"
	"testing"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/memory"
	"github.com/mqrpc/mqrpc/rpc"
)

// BenchmarkServe measures a call over the memory broker to a server served
// with the control plane (its per-method counters on the hot path) and
// without (b.Serve), side by side: the difference is what counting costs.
func BenchmarkServe(b *testing.B) {
	serve := map[string]func(br broker.Broker, srv *rpc.Server) error{
		"plain": func(br broker.Broker, srv *rpc.Server) error { _, err := br.Serve("calc", srv); return err },
		"control": func(br broker.Broker, srv *rpc.Server) error {
			_, err := srv.Serve(br, "calc")
			return err
		},
	}
	for _, name := range []string{"plain", "control"} {
		b.Run(name, func(b *testing.B) {
			br := memory.New()
			defer br.Close()
			srv := rpc.NewServer()
			_ = rpc.Handle(srv, "Add", func(_ context.Context, in *AddRequest) (*AddReply, error) {
				return &AddReply{Sum: in.A + in.B}, nil
			})
			if err := serve[name](br, srv); err != nil {
				b.Fatal(err)
			}
			c := rpc.NewClient(br)
			ctx := context.Background()
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				var out AddReply
				for pb.Next() {
					if err := c.Call(ctx, "calc", "Add", &AddRequest{A: 1, B: 2}, &out); err != nil {
						b.Fatal(err)
					}
				}
			})
		})
	}
}
