// Command rocketmq is the quickstart's Calculator on RocketMQ: a service
// and a client in one program, through a RocketMQ name server.
//
//	scripts/brokers up rocketmq        # a RocketMQ name server and broker on 127.0.0.1:9876
//	go run ./examples/rocketmq         # or -broker rocketmq://ns1:9876,ns2:9876
//
// broker/rocketmq is a module of its own (rocketmq-client-go is linked only
// by programs that import it), so this example is one too; its go.mod
// requires github.com/mqrpc/mqrpc and github.com/mqrpc/mqrpc/broker/rocketmq.
// broker/dial opens rocketmq:// URLs once the program imports
// broker/rocketmq/dialrocketmq for its side effect; every other URL dial
// knows works as well.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/mqrpc/mqrpc/broker/dial"
	"github.com/mqrpc/mqrpc/rpc"
)

import _ "github.com/mqrpc/mqrpc/broker/rocketmq/dialrocketmq" // rocketmq:// URLs for broker/dial

// AddRequest asks for A + B.
type AddRequest struct{ A, B int }

// DivRequest asks for A / B.
type DivRequest struct{ A, B int }

// Result is a calculator answer.
type Result struct{ Value int }

func main() {
	flag.Parse()
	if err := run(*brokerFlag); err != nil {
		fmt.Fprintln(os.Stderr, "rocketmq:", err)
		os.Exit(1)
	}
}

var brokerFlag = flag.String("broker", envOr("MQRPC_BROKER", "rocketmq://127.0.0.1:9876"),
	"broker URL: rocketmq://host:port[,host:port...], or any URL broker/dial opens (memory:, embedded:, nats://, amqp://)")

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func run(url string) error {
	b, err := dial.Open(url) // rocketmq://ns1:9876,ns2:9876, memory:, nats://...
	if err != nil {
		return err
	}
	defer b.Close()
	fmt.Println("broker:", dial.Redact(url))

	srv := rpc.NewServer()
	if err := rpc.Handle(srv, "Add", func(_ context.Context, in *AddRequest) (*Result, error) {
		return &Result{Value: in.A + in.B}, nil
	}); err != nil {
		return err
	}
	if err := rpc.Handle(srv, "Div", func(_ context.Context, in *DivRequest) (*Result, error) {
		if in.B == 0 {
			return nil, rpc.Errorf(rpc.InvalidArgument, "division by zero")
		}
		return &Result{Value: in.A / in.B}, nil
	}); err != nil {
		return err
	}
	sub, err := srv.Serve(b, "Calculator")
	if err != nil {
		return err
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = sub.Stop(ctx)
	}()

	client := rpc.NewClient(b)
	add := rpc.NewMethod[AddRequest, Result](client, "Calculator", "Add")
	div := rpc.NewMethod[DivRequest, Result](client, "Calculator", "Div")

	// A new RocketMQ consumer group takes a few seconds to be given the
	// topic's queues: until then a request waits in the topic, so the
	// first call gets a generous deadline.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	sum, err := add(ctx, &AddRequest{A: 2, B: 40})
	if err != nil {
		return fmt.Errorf("calling Add: %w", err)
	}
	fmt.Println("Add(2, 40) =", sum.Value)
	q, err := div(ctx, &DivRequest{A: 84, B: 2})
	if err != nil {
		return fmt.Errorf("calling Div: %w", err)
	}
	fmt.Println("Div(84, 2) =", q.Value)
	_, err = div(ctx, &DivRequest{A: 1, B: 0})
	var rerr *rpc.Error
	if !errors.As(err, &rerr) || rerr.Code() != rpc.InvalidArgument {
		return fmt.Errorf("Div(1, 0): want an invalid_argument error, got %v", err)
	}
	fmt.Printf("Div(1, 0) failed as expected: code=%s message=%q\n", rerr.Code(), rerr.Message())
	return nil
}
