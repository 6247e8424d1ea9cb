// Command quickstart runs a Calculator service and a client in one program
// and prints the results of a few calls. By default it starts an embedded
// NATS server in the process, so it runs a real broker with nothing
// installed.
//
//	go run ./examples/quickstart                                  # embedded NATS
//	go run ./examples/quickstart -broker nats://127.0.0.1:4222    # an external NATS server
//	go run ./examples/quickstart -broker amqp://guest:guest@127.0.0.1:5672/
//	go run ./examples/quickstart -broker memory                   # the in-process memory broker
//
// The -broker default can also be set with MQRPC_BROKER. RocketMQ's client
// is a module of its own (broker/rocketmq), which this program does not
// link: go run ./examples/rocketmq is the same calculator on RocketMQ.
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

// AddRequest asks for A + B.
type AddRequest struct {
	A, B int
}

// DivRequest asks for A / B.
type DivRequest struct {
	A, B int
}

// Result is a calculator answer.
type Result struct {
	Value int
}

// calculator is the service implementation: plain typed functions.
type calculator struct{}

func (calculator) Add(_ context.Context, in *AddRequest) (*Result, error) {
	return &Result{Value: in.A + in.B}, nil
}

func (calculator) Div(_ context.Context, in *DivRequest) (*Result, error) {
	if in.B == 0 {
		return nil, rpc.Errorf(rpc.InvalidArgument, "division by zero")
	}
	return &Result{Value: in.A / in.B}, nil
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "quickstart:", err)
		os.Exit(1)
	}
}

var brokerFlag = flag.String("broker", envOr("MQRPC_BROKER", "embedded"),
	`broker: "embedded" (a NATS server in this process), "memory", or a URL: nats://, tls://, amqp://, amqps://`)

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func run() error {
	flag.Parse()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// One URL picks the broker; nothing else in the program changes.
	b, err := dial.Open(*brokerFlag, dial.WithName("quickstart"))
	if err != nil {
		return err
	}
	defer b.Close()
	fmt.Println("broker:", dial.Redact(*brokerFlag))

	// Server side: register typed methods and serve them on the
	// "Calculator" subject.
	srv := rpc.NewServer()
	calc := calculator{}
	if err := rpc.Handle(srv, "Add", calc.Add); err != nil {
		return err
	}
	if err := rpc.Handle(srv, "Div", calc.Div); err != nil {
		return err
	}
	// srv.Serve (rather than b.Serve) also answers the control plane, so
	// `mqrpc ls` and `nats micro ls` find this instance.
	sub, err := srv.Serve(b, "Calculator")
	if err != nil {
		return err
	}
	defer func() {
		stopCtx, stop := context.WithTimeout(context.Background(), 5*time.Second)
		defer stop()
		_ = sub.Stop(stopCtx)
	}()

	// Client side: typed stubs over the same broker.
	client := rpc.NewClient(b)
	add := rpc.NewMethod[AddRequest, Result](client, "Calculator", "Add")
	div := rpc.NewMethod[DivRequest, Result](client, "Calculator", "Div")

	sum, err := add(ctx, &AddRequest{A: 2, B: 40})
	if err != nil {
		return fmt.Errorf("Add: %w", err)
	}
	fmt.Println("Add(2, 40) =", sum.Value)

	q, err := div(ctx, &DivRequest{A: 84, B: 2})
	if err != nil {
		return fmt.Errorf("Div: %w", err)
	}
	fmt.Println("Div(84, 2) =", q.Value)

	_, err = div(ctx, &DivRequest{A: 1, B: 0})
	var rerr *rpc.Error
	if !errors.As(err, &rerr) || rerr.Code() != rpc.InvalidArgument {
		return fmt.Errorf("Div(1, 0): want an invalid_argument error, got %v", err)
	}
	fmt.Printf("Div(1, 0) failed as expected: code=%s message=%q\n", rerr.Code(), rerr.Message())

	// Many calls at once, spread over the server's workers.
	const n = 100
	errc := make(chan error, n)
	for i := 0; i < n; i++ {
		go func(i int) {
			r, err := add(ctx, &AddRequest{A: i, B: i})
			if err == nil && r.Value != 2*i {
				err = fmt.Errorf("Add(%d, %d) = %d", i, i, r.Value)
			}
			errc <- err
		}(i)
	}
	for i := 0; i < n; i++ {
		if err := <-errc; err != nil {
			return err
		}
	}
	fmt.Println(n, "concurrent calls: all correct")
	return nil
}
