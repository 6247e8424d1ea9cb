package middleware_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/memory"
	"github.com/mqrpc/mqrpc/middleware"
	"github.com/mqrpc/mqrpc/rpc"
)

type govAddRequest struct{ A, B int }
type govAddReply struct{ Sum int }

func govAdd(_ context.Context, in *govAddRequest) (*govAddReply, error) {
	return &govAddReply{Sum: in.A + in.B}, nil
}

// Retry repeats a call that failed with a retryable code. Here the server
// is warming up and refuses the first request with Unavailable.
func ExampleRetry() {
	b := memory.New()
	defer b.Close()

	var refused atomic.Bool
	warmingUp := func(next broker.Handler) broker.Handler {
		return broker.HandlerFunc(func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
			if refused.CompareAndSwap(false, true) {
				return nil, rpc.Errorf(rpc.Unavailable, "warming up")
			}
			return next.ServeMessage(ctx, req)
		})
	}
	srv := rpc.NewServer(rpc.WithServerMiddleware(warmingUp))
	_ = rpc.Handle(srv, "Add", govAdd)
	_, _ = b.Serve("Calculator", srv)

	client := rpc.NewClient(b, rpc.WithClientMiddleware(middleware.Retry(
		middleware.WithMaxAttempts(3),
		middleware.WithBackoff(10*time.Millisecond, time.Second, 2),
		middleware.OnRetry(func(_ context.Context, info rpc.CallInfo, attempt int, err error, _ time.Duration) {
			fmt.Printf("%s: attempt %d after %v\n", info.Method, attempt, err)
		}),
	)))
	// Only calls marked idempotent (or allowed by WithIdempotent)
	// are retried.
	sum, err := rpc.Invoke[govAddRequest, govAddReply](context.Background(), client, "Calculator", "Add",
		&govAddRequest{A: 2, B: 3}, rpc.Idempotent())
	fmt.Println(sum.Sum, err)
	// Output:
	// Add: attempt 2 after unavailable: warming up
	// 5 <nil>
}

// Dedup on the server and Retry on the client make a call that is not
// idempotent run exactly once, although its reply was lost and the client
// sent it again.
func ExampleDedup() {
	b := memory.New()
	defer b.Close()

	var runs atomic.Int32
	srv := rpc.NewServer(rpc.WithServerMiddleware(middleware.Dedup()))
	_ = rpc.Handle(srv, "Pay", func(_ context.Context, in *govAddRequest) (*govAddReply, error) {
		runs.Add(1)
		return &govAddReply{Sum: in.A}, nil
	})
	_, _ = b.Serve("Payments", srv)

	client := rpc.NewClient(b, rpc.WithClientMiddleware(middleware.Retry(
		middleware.WithPerAttemptTimeout(200*time.Millisecond),
		middleware.WithIdempotent(middleware.AlwaysIdempotent), // safe: the server deduplicates
	)))
	b.SetFaults(memory.Faults{DropReplies: 1}) // the first reply is lost
	var reply broker.Header
	paid, err := rpc.Invoke[govAddRequest, govAddReply](context.Background(), client, "Payments", "Pay",
		&govAddRequest{A: 100}, rpc.WithReplyHeader(&reply))
	fmt.Println(paid.Sum, err)
	fmt.Println("runs:", runs.Load(), "replayed:", reply.Get(middleware.HeaderReplayed))
	// Output:
	// 100 <nil>
	// runs: 1 replayed: true
}

// Routing pins calls that ask for a version to it, and sends the others
// to the stable version.
func ExampleRouting() {
	b := memory.New()
	defer b.Close()
	for _, version := range []string{"v1", "v2"} {
		srv := rpc.NewServer()
		_ = rpc.Handle(srv, "Version", func(context.Context, *govAddRequest) (*string, error) {
			return &version, nil
		})
		_, _ = b.Serve("Calculator."+version, srv)
	}
	client := rpc.NewClient(b, rpc.WithClientMiddleware(middleware.Routing(
		middleware.RouteByHeader(middleware.HeaderVersion, map[string]string{"v2": "Calculator.v2"}),
		middleware.RouteService("Calculator", middleware.RouteWeighted(nil,
			middleware.WeightedSubject{Subject: "Calculator.v1", Weight: 100},
			middleware.WeightedSubject{Subject: "Calculator.v2", Weight: 0}, // raise to start a canary
		)),
	)))
	ctx := context.Background()
	stable, _ := rpc.Invoke[govAddRequest, string](ctx, client, "Calculator", "Version", &govAddRequest{})
	pinned, _ := rpc.Invoke[govAddRequest, string](ctx, client, "Calculator", "Version", &govAddRequest{},
		rpc.WithHeader(middleware.HeaderVersion, "v2"))
	fmt.Println(*stable, *pinned)
	// Output:
	// v1 v2
}

// A custom middleware is a function from the next handler to a handler.
// This one works on both sides: on the client it stamps each request with
// the caller's tenant, and on the server it refuses requests without one,
// answering with an *rpc.Error, which the server turns into an error reply.
func Example_customMiddleware() {
	const tenantHeader = "x-tenant"
	stamp := func(tenant string) rpc.Middleware {
		return func(next broker.Handler) broker.Handler {
			return broker.HandlerFunc(func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
				req.SetHeader(tenantHeader, tenant)
				return next.ServeMessage(ctx, req)
			})
		}
	}
	requireTenant := func(next broker.Handler) broker.Handler {
		return broker.HandlerFunc(func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
			if req.Header.Get(tenantHeader) == "" {
				return nil, rpc.Errorf(rpc.Unauthenticated, "no tenant")
			}
			return next.ServeMessage(ctx, req)
		})
	}

	b := memory.New()
	defer b.Close()
	srv := rpc.NewServer(rpc.WithServerMiddleware(requireTenant))
	_ = rpc.Handle(srv, "Add", func(ctx context.Context, in *govAddRequest) (*govAddReply, error) {
		fmt.Println("tenant:", rpc.RequestHeader(ctx).Get(tenantHeader))
		return govAdd(ctx, in)
	})
	_, _ = b.Serve("Calculator", srv)

	ctx := context.Background()
	anonymous := rpc.NewClient(b)
	_, err := rpc.Invoke[govAddRequest, govAddReply](ctx, anonymous, "Calculator", "Add", &govAddRequest{A: 1, B: 2})
	fmt.Println(rpc.CodeOf(err))

	acme := rpc.NewClient(b, rpc.WithClientMiddleware(stamp("acme")))
	sum, err := rpc.Invoke[govAddRequest, govAddReply](ctx, acme, "Calculator", "Add", &govAddRequest{A: 1, B: 2})
	fmt.Println(sum.Sum, err)
	// Output:
	// unauthenticated
	// tenant: acme
	// 3 <nil>
}

// A DeadlineGuard refuses requests whose caller has already given up, and
// counts them.
func ExampleDeadlineGuard() {
	guard := &middleware.DeadlineGuard{}
	srv := rpc.NewServer(rpc.WithServerMiddleware(guard.Middleware))
	_ = rpc.Handle(srv, "Add", govAdd)

	// A request that spent longer in a queue than its caller waits.
	late := &broker.Message{
		Header:   broker.Header{broker.HeaderMethod: "Add"},
		Body:     []byte(`{"A":1,"B":2}`),
		Deadline: time.Now().Add(-time.Second),
	}
	reply, _ := srv.ServeMessage(context.Background(), late)
	fmt.Println(rpc.CodeOf(rpc.ErrorFromReply(reply)), guard.Expired())
	// Output:
	// deadline_exceeded 1
}
