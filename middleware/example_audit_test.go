package middleware_test

import (
	"context"
	"fmt"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/memory"
	"github.com/mqrpc/mqrpc/middleware"
	"github.com/mqrpc/mqrpc/rpc"
)

// Audit is the outermost server middleware, so it records also the
// request that the caller check behind it refuses. Credentials are
// redacted before the sink sees them.
func ExampleAudit() {
	b := memory.New()
	defer b.Close()

	sink := middleware.AuditSinkFunc(func(_ context.Context, r middleware.AuditRecord) {
		fmt.Printf("audit: %s %s.%s caller=%q code=%s request=%dB reply=%dB authorization=%q\n",
			r.ID, r.Subject, r.Method, r.Caller, r.Code, r.RequestSize, r.ReplySize, r.Header.Get("authorization"))
	})
	requireCaller := func(next broker.Handler) broker.Handler {
		return broker.HandlerFunc(func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
			if req.Header.Get(middleware.DefaultCallerHeader) == "" {
				return nil, rpc.Errorf(rpc.Unauthenticated, "who are you?")
			}
			return next.ServeMessage(ctx, req)
		})
	}
	srv := rpc.NewServer(rpc.WithServerMiddleware(
		middleware.Audit(nil, middleware.WithAuditSink(sink)),
		requireCaller,
	))
	_ = rpc.Handle(srv, "Greet", func(_ context.Context, name *string) (*string, error) {
		s := "Hello, " + *name
		return &s, nil
	})
	if _, err := b.Serve("greeter", srv); err != nil {
		fmt.Println(err)
		return
	}

	c := rpc.NewClient(b)
	ctx := context.Background()
	var greeting string
	err := c.Call(ctx, "greeter", "Greet", "Ada", &greeting, rpc.WithMessageID("m-1"),
		rpc.WithHeader(middleware.DefaultCallerHeader, "alice"), rpc.WithHeader("authorization", "Bearer t0ken"))
	fmt.Println(greeting, err)
	err = c.Call(ctx, "greeter", "Greet", "Eve", &greeting, rpc.WithMessageID("m-2"))
	fmt.Println(err)
	// Output:
	// audit: m-1 greeter.Greet caller="alice" code=ok request=5B reply=12B authorization="[REDACTED]"
	// Hello, Ada <nil>
	// audit: m-2 greeter.Greet caller="" code=unauthenticated request=5B reply=0B authorization=""
	// unauthenticated: who are you?
}
