// Command rabbitmq is the quickstart's Calculator on RabbitMQ, with the
// broker package itself rather than broker/dial, so its options are at
// hand: a service and a client in one program.
//
//	scripts/brokers up rabbitmq         # RabbitMQ on 127.0.0.1:5672 (guest/guest)
//	go run ./examples/rabbitmq          # fast mode: direct reply-to, nothing stored
//	go run ./examples/rabbitmq -durable # quorum queue, publisher confirms, dead letters
//
// In durable mode a request waits in its queue while no server runs and is
// acknowledged only after its reply, so a server crash hands it to the next
// server; every client and server of a service must use the same mode.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/mqrpc/mqrpc/broker/amqp"
	"github.com/mqrpc/mqrpc/broker/dial"
	"github.com/mqrpc/mqrpc/rpc"
)

// AddRequest asks for A + B.
type AddRequest struct{ A, B int }

// DivRequest asks for A / B.
type DivRequest struct{ A, B int }

// Result is a calculator answer.
type Result struct{ Value int }

var (
	urlFlag     = flag.String("url", envOr("MQRPC_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"), "RabbitMQ URL (comma-separated for a cluster's nodes)")
	durableFlag = flag.Bool("durable", false, "durable mode: a quorum queue, publisher confirms, a dead-letter exchange")
)

func main() {
	flag.Parse()
	if err := run(*urlFlag, "Calculator", *durableFlag); err != nil {
		fmt.Fprintln(os.Stderr, "rabbitmq:", err)
		os.Exit(1)
	}
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func run(url, service string, durable bool) error {
	opts := []amqp.Option{amqp.WithConnectionName("rabbitmq-example")}
	if durable {
		opts = append(opts, amqp.WithDurable(amqp.QuorumQueue), amqp.WithDeadLetter("mqrpc.example.dlx", 5))
	}
	b, err := amqp.New(url, opts...)
	if err != nil {
		return err
	}
	defer b.Close()
	fmt.Println("broker:", dial.Redact(url), "durable:", durable)

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
	sub, err := srv.Serve(b, service)
	if err != nil {
		return err
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = sub.Stop(ctx)
	}()

	client := rpc.NewClient(b)
	add := rpc.NewMethod[AddRequest, Result](client, service, "Add")
	div := rpc.NewMethod[DivRequest, Result](client, service, "Div")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
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
