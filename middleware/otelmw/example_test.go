package otelmw_test

import (
	"context"
	"fmt"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/mqrpc/mqrpc/broker/memory"
	"github.com/mqrpc/mqrpc/middleware/otelmw"
	"github.com/mqrpc/mqrpc/rpc"
)

// A client and a server instrumented with one tracer provider: the server
// span continues the trace of the client span, whose context travelled in
// the request's traceparent header.
func Example() {
	ctx := context.Background()
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	defer func() { _ = tp.Shutdown(ctx) }()
	inst, err := otelmw.New(otelmw.WithTracerProvider(tp), otelmw.WithMessagingSystem("memory"))
	if err != nil {
		fmt.Println(err)
		return
	}

	b := memory.New()
	defer b.Close()
	srv := rpc.NewServer(rpc.WithServerMiddleware(inst.Server()))
	_ = rpc.Handle(srv, "Echo", func(_ context.Context, s *string) (*string, error) { return s, nil })
	if _, err := b.Serve("echo", srv); err != nil {
		fmt.Println(err)
		return
	}
	c := rpc.NewClient(b, rpc.WithClientMiddleware(inst.Client()))
	var out string
	if err := c.Call(ctx, "echo", "Echo", "hi", &out); err != nil {
		fmt.Println(err)
		return
	}

	ended := spans.Ended() // the server span ends first, before its reply is sent
	for _, s := range ended {
		fmt.Println(s.Name(), s.SpanKind())
	}
	process, send := ended[0], ended[1]
	fmt.Println("one trace:", process.SpanContext().TraceID() == send.SpanContext().TraceID())
	fmt.Println("server span is the client span's child:", process.Parent().SpanID() == send.SpanContext().SpanID())
	// Output:
	// process echo consumer
	// send echo producer
	// one trace: true
	// server span is the client span's child: true
}
