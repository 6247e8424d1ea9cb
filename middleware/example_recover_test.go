package middleware_test

import (
	"context"
	"fmt"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/memory"
	"github.com/mqrpc/mqrpc/middleware"
	"github.com/mqrpc/mqrpc/rpc"
)

// Recover turns a panic in server middleware into an Internal error reply
// and reports it to a callback.
func ExampleRecover() {
	b := memory.New()
	defer b.Close()

	buggy := func(next broker.Handler) broker.Handler {
		return broker.HandlerFunc(func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
			var counts []int
			counts[len(req.Body)]++ // a bug: index out of range
			return next.ServeMessage(ctx, req)
		})
	}
	report := func(_ context.Context, req *broker.Message, p *middleware.PanicError) {
		fmt.Printf("recovered in %s: %v\n", req.Header.Get(broker.HeaderMethod), p.Value)
	}
	srv := rpc.NewServer(rpc.WithServerMiddleware(middleware.Recover(middleware.WithPanicHandler(report)), buggy))
	_ = rpc.Handle(srv, "Ping", func(context.Context, *struct{}) (*struct{}, error) { return nil, nil })
	if _, err := b.Serve("svc", srv); err != nil {
		fmt.Println(err)
		return
	}

	err := rpc.NewClient(b).Call(context.Background(), "svc", "Ping", struct{}{}, nil)
	fmt.Println(rpc.CodeOf(err), err)
	// Output:
	// recovered in Ping: runtime error: index out of range [2] with length 0
	// internal internal: panic: runtime error: index out of range [2] with length 0
}
