package middleware_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"

	"github.com/mqrpc/mqrpc/broker/memory"
	"github.com/mqrpc/mqrpc/middleware"
	"github.com/mqrpc/mqrpc/rpc"
)

// Logging on a client writes one record per call; the level follows the
// outcome.
func ExampleLogging() {
	b := memory.New()
	defer b.Close()

	srv := rpc.NewServer()
	_ = rpc.Handle(srv, "Get", func(_ context.Context, key *string) (*string, error) {
		if *key != "a" {
			return nil, rpc.Errorf(rpc.NotFound, "no key %q", *key)
		}
		v := "apple"
		return &v, nil
	})
	if _, err := b.Serve("store", srv); err != nil {
		fmt.Println(err)
		return
	}

	// Drop the time and duration so the output is the same every run.
	logger := slog.New(slog.NewTextHandler(os.Stdout, &slog.HandlerOptions{
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey || a.Key == "duration" {
				return slog.Attr{}
			}
			return a
		},
	}))
	c := rpc.NewClient(b, rpc.WithClientMiddleware(middleware.Logging(logger)))
	ctx := context.Background()
	var v string
	_ = c.Call(ctx, "store", "Get", "a", &v, rpc.WithMessageID("m-1"))
	_ = c.Call(ctx, "store", "Get", "b", &v, rpc.WithMessageID("m-2"))
	// Output:
	// level=INFO msg="mqrpc call" side=client service=store method=Get subject=store id=m-1 code=ok request_bytes=3 reply_bytes=7
	// level=WARN msg="mqrpc call" side=client service=store method=Get subject=store id=m-2 code=not_found request_bytes=3 reply_bytes=0 error="not_found: no key \"b\""
}
