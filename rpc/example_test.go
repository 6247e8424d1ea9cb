package rpc_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/memory"
	jsoncodec "github.com/mqrpc/mqrpc/codec/json"
	"github.com/mqrpc/mqrpc/rpc"
)

type GreetRequest struct{ Name string }
type GreetReply struct{ Greeting string }

func greet(_ context.Context, in *GreetRequest) (*GreetReply, error) {
	if in.Name == "" {
		return nil, rpc.Errorf(rpc.InvalidArgument, "name is required")
	}
	return &GreetReply{Greeting: "Hello, " + in.Name}, nil
}

// A server registers typed handlers and is served by a broker on a subject.
func ExampleServer() {
	b := memory.New()
	defer b.Close()

	srv := rpc.NewServer()
	if err := rpc.Handle(srv, "Greet", greet); err != nil {
		panic(err)
	}
	sub, err := b.Serve("Greeter", srv)
	if err != nil {
		panic(err)
	}
	defer sub.Stop(context.Background())

	// Any client of the broker can call it now; here, a raw broker request.
	reply, err := b.Request(context.Background(), &broker.Message{
		Subject: "Greeter",
		Header:  broker.Header{broker.HeaderMethod: "Greet", broker.HeaderContentType: "application/json"},
		Body:    []byte(`{"Name":"broker"}`),
	})
	if err != nil {
		panic(err)
	}
	fmt.Println(string(reply.Body))
	// Output: {"Greeting":"Hello, broker"}
}

// A client calls a method with Call, or through a typed stub.
func ExampleClient_Call() {
	b := memory.New()
	defer b.Close()
	srv := rpc.NewServer()
	_ = rpc.Handle(srv, "Greet", greet)
	_, _ = b.Serve("Greeter", srv)

	client := rpc.NewClient(b)
	var out GreetReply
	if err := client.Call(context.Background(), "Greeter", "Greet", &GreetRequest{Name: "Ada"}, &out); err != nil {
		panic(err)
	}
	fmt.Println(out.Greeting)

	// Errors carry a status code from the server.
	err := client.Call(context.Background(), "Greeter", "Greet", &GreetRequest{}, &out)
	fmt.Println(rpc.CodeOf(err), err)
	// Output:
	// Hello, Ada
	// invalid_argument invalid_argument: name is required
}

// upperJSON is a custom codec: JSON with upper-cased string output, under
// its own media type.
type upperJSON struct{}

func (upperJSON) Name() string { return "application/x-upper-json" }
func (upperJSON) Marshal(v any) ([]byte, error) {
	b, err := json.Marshal(v)
	return []byte(strings.ToUpper(string(b))), err
}
func (upperJSON) Unmarshal(data []byte, v any) error { return json.Unmarshal(data, v) }

// A custom codec plugs in on both sides; the server answers in the codec
// the caller used.
func ExampleWithCodec() {
	b := memory.New()
	defer b.Close()
	srv := rpc.NewServer(rpc.WithCodecs(upperJSON{}))
	_ = rpc.Handle(srv, "Greet", func(_ context.Context, in *GreetRequest) (*GreetReply, error) {
		return &GreetReply{Greeting: "hello, " + in.Name}, nil
	})
	_, _ = b.Serve("Greeter", srv)

	client := rpc.NewClient(b, rpc.WithCodec(upperJSON{}))
	var raw map[string]string
	_ = client.Call(context.Background(), "Greeter", "Greet", &GreetRequest{Name: "codec"}, &raw)
	fmt.Println(raw)
	// Output: map[GREETING:HELLO, CODEC]
}

// A middleware wraps the broker round trip on the client (or the method
// dispatcher on the server). This one stamps a header on every request and
// records each call's method.
func ExampleMiddleware() {
	b := memory.New()
	defer b.Close()
	srv := rpc.NewServer()
	_ = rpc.Handle(srv, "Greet", func(ctx context.Context, in *GreetRequest) (*GreetReply, error) {
		return &GreetReply{Greeting: "Hello, " + in.Name + " from " + rpc.RequestHeader(ctx).Get("x-tenant")}, nil
	})
	_, _ = b.Serve("Greeter", srv)

	tenant := func(next broker.Handler) broker.Handler {
		return broker.HandlerFunc(func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
			req.SetHeader("x-tenant", "acme")
			start := time.Now()
			reply, err := next.ServeMessage(ctx, req)
			info, _ := rpc.CallInfoFromContext(ctx)
			_ = time.Since(start) // a real middleware would record this
			fmt.Printf("called %s.%s: %v\n", info.Service, info.Method, rpc.CodeOf(err))
			return reply, err
		})
	}
	client := rpc.NewClient(b, rpc.WithClientMiddleware(tenant))
	var out GreetReply
	_ = client.Call(context.Background(), "Greeter", "Greet", &GreetRequest{Name: "Grace"}, &out)
	fmt.Println(out.Greeting)
	// Output:
	// called Greeter.Greet: ok
	// Hello, Grace from acme
}

// OutOfStock is an error detail of an inventory service.
type OutOfStock struct {
	SKU  string
	Left int
}

// An error carries typed details beside its code and message; the caller
// finds them with errors.As.
func ExampleError_WithDetails() {
	b := memory.New()
	defer b.Close()
	srv := rpc.NewServer()
	_ = rpc.Handle(srv, "Take", func(_ context.Context, in *OutOfStock) (*OutOfStock, error) {
		d, err := rpc.NewErrorDetail("example.com/inventory.OutOfStock", jsoncodec.Codec{}, &OutOfStock{SKU: in.SKU})
		if err != nil {
			return nil, err
		}
		return nil, rpc.Errorf(rpc.FailedPrecondition, "%s is out of stock", in.SKU).WithDetails(d)
	})
	_, _ = b.Serve("Inventory", srv)

	err := rpc.NewClient(b).Call(context.Background(), "Inventory", "Take", &OutOfStock{SKU: "A1"}, nil)
	var e *rpc.Error
	if errors.As(err, &e) {
		for _, d := range e.Details() {
			var oos OutOfStock
			if d.Type == "example.com/inventory.OutOfStock" && d.Unmarshal(jsoncodec.Codec{}, &oos) == nil {
				fmt.Printf("%s: %s left %d\n", e.Code(), oos.SKU, oos.Left)
			}
		}
	}
	// Output: failed_precondition: A1 left 0
}
