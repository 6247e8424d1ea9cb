package control_test

import (
	"context"
	"fmt"
	"time"

	"github.com/mqrpc/mqrpc/broker/memory"
	"github.com/mqrpc/mqrpc/rpc"
	"github.com/mqrpc/mqrpc/rpc/control"
)

// A service served with its control plane, and a caller discovering its
// instances, methods and counters.
func Example() {
	b := memory.New()
	defer b.Close()

	srv := rpc.NewServer()
	_ = rpc.Handle(srv, "Add", func(_ context.Context, in *AddRequest) (*AddReply, error) {
		return &AddReply{Sum: in.A + in.B}, nil
	})
	svc, _ := srv.Serve(b, "Calculator", control.WithVersion("1.2.0"), control.WithID("one"))
	defer svc.Stop(context.Background())

	_, _ = rpc.Invoke[AddRequest, AddReply](context.Background(), rpc.NewClient(b), "Calculator", "Add", &AddRequest{A: 2, B: 40})

	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	pings, _ := control.Discover[control.PingResponse](ctx, b, "Calculator", "")
	for _, p := range pings {
		fmt.Println(p.Name, p.ID, p.Version, p.Status)
	}
	infos, _ := control.Discover[control.InfoResponse](ctx, b, "Calculator", "one")
	for _, ep := range infos[0].Endpoints {
		fmt.Println(ep.Name, ep.RequestType, "->", ep.ReplyType)
	}
	stats, _ := control.Discover[control.StatsResponse](ctx, b, "Calculator", "one")
	for _, ep := range stats[0].Endpoints {
		fmt.Println(ep.Name, ep.NumRequests, "requests,", ep.NumErrors, "errors")
	}
	// Output:
	// Calculator one 1.2.0 SERVING
	// Add github.com/mqrpc/mqrpc/rpc/control_test.AddRequest -> github.com/mqrpc/mqrpc/rpc/control_test.AddReply
	// Add 1 requests, 0 errors
}
