// Command thrift-calculator serves a Thrift Calculator service over a
// message broker and calls it with the client the thrift compiler generated,
// through mqrpc's adapters/thrift. The Thrift code is unchanged: only the
// transport is a broker.
//
//	go run ./examples/thrift-calculator                       # in-process broker
//	go run ./examples/thrift-calculator -broker embedded-nats # NATS server inside the program
//	go run ./examples/thrift-calculator -broker nats://127.0.0.1:4222
//	go run ./examples/thrift-calculator -broker amqp://guest:guest@127.0.0.1:5672/ -protocol compact
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	mqthrift "github.com/mqrpc/mqrpc/adapters/thrift"
	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/amqp"
	"github.com/mqrpc/mqrpc/broker/memory"
	"github.com/mqrpc/mqrpc/broker/nats"
	"github.com/mqrpc/mqrpc/broker/nats/embedded"
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
	brokerFlag := flag.String("broker", "memory",
		"broker to run on: memory, embedded-nats, a nats:// URL or an amqp:// URL")
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
	b, name, closeBroker, err := openBroker(brokerArg)
	if err != nil {
		return err
	}
	defer closeBroker()
	fmt.Printf("broker: %s, protocol: %s\n", name, proto)

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

// openBroker returns the broker named by the -broker flag and a function
// that closes it.
func openBroker(arg string) (broker.Broker, string, func(), error) {
	switch {
	case arg == "memory":
		b := memory.New()
		return b, "in-process (memory)", func() { _ = b.Close() }, nil
	case arg == "embedded-nats":
		srv, err := embedded.Start(embedded.WithoutJetStream())
		if err != nil {
			return nil, "", nil, fmt.Errorf("start embedded NATS: %w", err)
		}
		b, err := nats.New(nats.WithURL(srv.URL()))
		if err != nil {
			srv.Close()
			return nil, "", nil, err
		}
		return b, "embedded NATS at " + srv.URL(), func() { _ = b.Close(); srv.Close() }, nil
	case strings.HasPrefix(arg, "nats://"), strings.HasPrefix(arg, "tls://"):
		b, err := nats.New(nats.WithURL(arg))
		if err != nil {
			return nil, "", nil, err
		}
		return b, "NATS at " + arg, func() { _ = b.Close() }, nil
	case strings.HasPrefix(arg, "amqp://"), strings.HasPrefix(arg, "amqps://"):
		b, err := amqp.New(arg)
		if err != nil {
			return nil, "", nil, err
		}
		return b, "RabbitMQ", func() { _ = b.Close() }, nil
	}
	return nil, "", nil, fmt.Errorf("unknown broker %q (want memory, embedded-nats, nats://... or amqp://...)", arg)
}
