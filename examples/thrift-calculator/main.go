// Command thrift-calculator serves a Thrift Calculator service over a
// message broker and calls it with the client the thrift compiler generated,
// through mqrpc's adapters/thrift. The Thrift code is unchanged: only the
// transport is a broker.
//
//	go run ./examples/thrift-calculator                       # in-process broker
//	go run ./examples/thrift-calculator -broker memory # the in-process memory broker (default: an embedded NATS server)
//	go run ./examples/thrift-calculator -broker nats://127.0.0.1:4222
//	go run ./examples/thrift-calculator -broker amqp://guest:guest@127.0.0.1:5672/ -protocol compact
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"time"

	mqthrift "github.com/mqrpc/mqrpc/adapters/thrift"
	"github.com/mqrpc/mqrpc/broker/dial"
	"github.com/mqrpc/mqrpc/examples/thrift-calculator/calculator"
)

// handler implements the generated calculator.Calculator interface.
type handler struct {
	notes chan string // receives the notes of the oneway record method
}

func (h *handler) Ping(context.Context) error { return nil }

func (h *handler) Add(_ context.Context, a, b int32) (int32, error) { return a + b, nil }

func (h *handler) CalcSum(_ context.Context, numbers []float64) (float64, error) {
	var sum float64
	for _, n := range numbers {
		sum += n
	}
	return sum, nil
}

func (h *handler) Divide(_ context.Context, a, b int32) (int32, error) {
	if b == 0 {
		return 0, &calculator.InvalidOperation{Code: 1, Why: "cannot divide by zero"}
	}
	return a / b, nil
}

func (h *handler) Record(_ context.Context, note string) error {
	h.notes <- note
	return nil
}

func main() {
	brokerFlag := flag.String("broker", "embedded",
		`broker: "embedded" (a NATS server in this process), "memory", or a URL: nats://, tls://, amqp://, amqps://`)
	protoFlag := flag.String("protocol", "binary", "thrift protocol: binary, compact or json")
	flag.Parse()
	if err := run(*brokerFlag, *protoFlag); err != nil {
		fmt.Fprintln(os.Stderr, "thrift-calculator:", err)
		os.Exit(1)
	}
}

func run(brokerArg, protoArg string) error {
	proto, err := parseProtocol(protoArg)
	if err != nil {
		return err
	}
	b, err := dial.Open(brokerArg, dial.WithName("thrift-calculator"))
	if err != nil {
		return err
	}
	defer b.Close()
	fmt.Printf("broker: %s, protocol: %s\n", dial.Redact(brokerArg), proto)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// Server: the generated processor, served as a broker handler.
	h := &handler{notes: make(chan string, 1)}
	sub, err := b.Serve("Calculator", mqthrift.NewServer(calculator.NewCalculatorProcessor(h)))
	if err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	defer func() {
		stopCtx, stop := context.WithTimeout(context.Background(), 5*time.Second)
		defer stop()
		_ = sub.Stop(stopCtx)
	}()

	// Client: the generated client over an mqrpc Thrift client.
	calc := calculator.NewCalculatorClient(mqthrift.NewClient(b, "Calculator", mqthrift.WithProtocol(proto)))

	if err := calc.Ping(ctx); err != nil {
		return fmt.Errorf("ping: %w", err)
	}
	fmt.Println("ping: ok")

	sum, err := calc.Add(ctx, 2, 40)
	if err != nil {
		return fmt.Errorf("add: %w", err)
	}
	fmt.Println("add(2, 40) =", sum)

	total, err := calc.CalcSum(ctx, []float64{1, 2, 3, 4.5})
	if err != nil {
		return fmt.Errorf("calcSum: %w", err)
	}
	fmt.Println("calcSum([1 2 3 4.5]) =", total)

	_, err = calc.Divide(ctx, 1, 0)
	var invalid *calculator.InvalidOperation
	if !errors.As(err, &invalid) {
		return fmt.Errorf("divide(1, 0): want InvalidOperation, got %v", err)
	}
	fmt.Printf("divide(1, 0) raised InvalidOperation: %s\n", invalid.Why)

	// record is oneway: the call returns once the broker has the message.
	if err := calc.Record(ctx, "hello from a oneway call"); err != nil {
		return fmt.Errorf("record: %w", err)
	}
	select {
	case note := <-h.notes:
		fmt.Printf("record: the server got %q\n", note)
	case <-ctx.Done():
		return fmt.Errorf("record: the note never arrived: %w", ctx.Err())
	}
	return nil
}

func parseProtocol(s string) (mqthrift.Protocol, error) {
	for _, p := range []mqthrift.Protocol{mqthrift.Binary, mqthrift.Compact, mqthrift.JSON} {
		if p.String() == s {
			return p, nil
		}
	}
	return 0, fmt.Errorf("unknown protocol %q (want binary, compact or json)", s)
}
