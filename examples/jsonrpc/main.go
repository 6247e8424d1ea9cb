// Command jsonrpc serves a JSON-RPC calculator over a message broker with
// mqrpc's adapters/jsonrpc and calls it: JSON-RPC 2.0 calls, a
// notification, a batch, an error, and the JSON-RPC 1.1 dialect of
// RabbitMQ's Java client (with system.describe).
//
//	go run ./examples/jsonrpc                       # in-process broker
//	go run ./examples/jsonrpc -broker memory # the in-process memory broker (default: an embedded NATS server)
//	go run ./examples/jsonrpc -broker nats://127.0.0.1:4222
//	go run ./examples/jsonrpc -broker amqp://guest:guest@127.0.0.1:5672/
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/mqrpc/mqrpc/adapters/jsonrpc"
	"github.com/mqrpc/mqrpc/broker/dial"
	"github.com/mqrpc/mqrpc/rpc"
)

// DivParams are the params of "divide", by name ({"a":..,"b":..}) or by
// position ([a, b]).
type DivParams struct {
	A float64 `json:"a"`
	B float64 `json:"b"`
}

func main() {
	brokerFlag := flag.String("broker", "embedded",
		`broker: "embedded" (a NATS server in this process), "memory", or a URL: nats://, tls://, amqp://, amqps://`)
	flag.Parse()
	if err := run(*brokerFlag); err != nil {
		fmt.Fprintln(os.Stderr, "jsonrpc:", err)
		os.Exit(1)
	}
}

func run(brokerArg string) error {
	b, err := dial.Open(brokerArg, dial.WithName("jsonrpc-example"))
	if err != nil {
		return err
	}
	defer b.Close()
	fmt.Println("broker:", dial.Redact(brokerArg))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// Server.
	logged := make(chan string, 1)
	srv := jsonrpc.NewServer(jsonrpc.WithServiceInfo(jsonrpc.ServiceDescription{
		Name: "calculator", Version: "1.0", Summary: "adds and divides numbers",
	}))
	err = errors.Join(
		jsonrpc.Register(srv, "calcSum", func(_ context.Context, numbers []float64) (float64, error) {
			var sum float64
			for _, n := range numbers {
				sum += n
			}
			return sum, nil
		}, jsonrpc.Summary("returns the sum of the numbers"), jsonrpc.Idempotent()),
		jsonrpc.Register(srv, "divide", func(_ context.Context, p DivParams) (float64, error) {
			if p.B == 0 {
				return 0, rpc.Errorf(rpc.InvalidArgument, "division by zero")
			}
			return p.A / p.B, nil
		}, jsonrpc.Summary("returns a / b")),
		jsonrpc.Register(srv, "log", func(_ context.Context, line string) (struct{}, error) {
			logged <- line
			return struct{}{}, nil
		}, jsonrpc.Summary("logs a line")),
	)
	if err != nil {
		return err
	}
	sub, err := b.Serve("calculator", srv)
	if err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	defer func() {
		stopCtx, stop := context.WithTimeout(context.Background(), 5*time.Second)
		defer stop()
		_ = sub.Stop(stopCtx)
	}()

	// JSON-RPC 2.0 client.
	c := jsonrpc.NewClient(b, "calculator")
	sum, err := jsonrpc.Invoke[float64](ctx, c, "calcSum", []float64{1, 2, 3, 4.5})
	if err != nil {
		return fmt.Errorf("calcSum: %w", err)
	}
	fmt.Println("calcSum([1 2 3 4.5]) =", sum)

	q, err := jsonrpc.Invoke[float64](ctx, c, "divide", DivParams{A: 84, B: 2})
	if err != nil {
		return fmt.Errorf("divide: %w", err)
	}
	fmt.Println(`divide({"a":84,"b":2}) =`, q)

	_, err = jsonrpc.Invoke[float64](ctx, c, "divide", []float64{1, 0})
	var je *jsonrpc.Error
	if !errors.As(err, &je) {
		return fmt.Errorf("divide([1, 0]): want a JSON-RPC error, got %v", err)
	}
	fmt.Printf("divide([1, 0]) failed: code %d %q, mqrpc status %s\n", je.Code, je.Message, rpc.CodeOf(err))

	if err := c.Notify(ctx, "log", []string{"a notification"}); err != nil {
		return fmt.Errorf("log: %w", err)
	}
	select {
	case line := <-logged:
		fmt.Printf("log: the server got %q\n", line)
	case <-ctx.Done():
		return errors.New("log: the notification never arrived")
	}

	var s1, s2 float64
	batch := []*jsonrpc.BatchElem{
		{Method: "calcSum", Params: []float64{1, 1}, Result: &s1},
		{Method: "calcSum", Params: []float64{2, 2}, Result: &s2},
		{Method: "multiply", Params: []float64{3, 3}},
	}
	if err := c.Batch(ctx, batch); err != nil {
		return fmt.Errorf("batch: %w", err)
	}
	fmt.Printf("batch: %v, %v, %v\n", s1, s2, batch[2].Error)

	// The dialect of RabbitMQ's Java JsonRpcClient: JSON-RPC 1.1 and
	// system.describe.
	c11 := jsonrpc.NewClient(b, "calculator", jsonrpc.WithVersion11())
	desc, err := jsonrpc.Invoke[jsonrpc.ServiceDescription](ctx, c11, "system.describe", nil)
	if err != nil {
		return fmt.Errorf("system.describe: %w", err)
	}
	fmt.Printf("system.describe: %s %s, %q\n", desc.Name, desc.Version, desc.Summary)
	for _, p := range desc.Procs {
		params := make([]string, len(p.Params))
		for i, pd := range p.Params {
			params[i] = pd.Name + " " + pd.Type
		}
		fmt.Printf("  %s(%s) %s: %s\n", p.Name, strings.Join(params, ", "), p.Return, p.Summary)
	}
	sum, err = jsonrpc.Invoke[float64](ctx, c11, "calcSum", []float64{10, 20})
	if err != nil {
		return fmt.Errorf("calcSum (1.1): %w", err)
	}
	fmt.Println("calcSum([10 20]) over JSON-RPC 1.1 =", sum)
	return nil
}
