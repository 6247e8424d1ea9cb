// Package guide_test holds the code of docs/GUIDE.md. Every Go block of
// the guide appears here verbatim (TestGuideSnippetsAreHere checks it), so
// each one compiles, and the ones with an Output comment run.
package guide_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/amqp"
	"github.com/mqrpc/mqrpc/broker/dial"
	"github.com/mqrpc/mqrpc/broker/memory"
	"github.com/mqrpc/mqrpc/broker/nats"
	"github.com/mqrpc/mqrpc/broker/nats/embedded"
	jsoncodec "github.com/mqrpc/mqrpc/codec/json"
	"github.com/mqrpc/mqrpc/middleware"
	"github.com/mqrpc/mqrpc/rpc"
)

type AddRequest struct{ A, B int }
type AddReply struct{ Sum int }

type Item struct{ SKU string }
type OutOfStock struct {
	SKU  string
	Left int
}

// newCalculator is the server of the guide's first example.
func newCalculator() (*rpc.Server, error) {
	srv := rpc.NewServer()
	err := rpc.Handle(srv, "Add", func(ctx context.Context, in *AddRequest) (*AddReply, error) {
		return &AddReply{Sum: in.A + in.B}, nil
	})
	return srv, err
}

func Example_firstCall() {
	b := memory.New() // in-process broker: nothing to install
	defer b.Close()

	srv := rpc.NewServer()
	err := rpc.Handle(srv, "Add", func(ctx context.Context, in *AddRequest) (*AddReply, error) {
		return &AddReply{Sum: in.A + in.B}, nil
	})
	if err != nil {
		log.Fatal(err) // a duplicate or empty method name
	}
	sub, err := b.Serve("Calculator", srv) // competing consumers of "Calculator"
	if err != nil {
		log.Fatal(err)
	}
	defer sub.Stop(context.Background())

	client := rpc.NewClient(b)
	add := rpc.NewMethod[AddRequest, AddReply](client, "Calculator", "Add")
	sum, err := add(context.Background(), &AddRequest{A: 2, B: 40})
	fmt.Println(sum.Sum, err)
	// Output: 42 <nil>
}

func takeItem(ctx context.Context, in *Item) (*Item, error) {
	d, err := rpc.NewErrorDetail("example.com/inventory.OutOfStock", jsoncodec.Codec{}, &OutOfStock{SKU: in.SKU})
	if err != nil {
		return nil, err
	}
	return nil, rpc.Errorf(rpc.FailedPrecondition, "%s is out of stock", in.SKU).WithDetails(d)
}

func Example_errors() {
	b := memory.New()
	defer b.Close()
	srv := rpc.NewServer()
	_ = rpc.Handle(srv, "Take", takeItem)
	_, _ = b.Serve("Inventory", srv)
	client := rpc.NewClient(b)
	ctx := context.Background()

	_, err := rpc.Invoke[Item, Item](ctx, client, "Inventory", "Take", &Item{SKU: "A1"})
	switch rpc.CodeOf(err) {
	case rpc.OK:
	case rpc.Unavailable: // no server, broker unreachable: retryable
	case rpc.DeadlineExceeded: // no reply in time: the server may have run it
	default:
		var e *rpc.Error
		if errors.As(err, &e) && e.Wire() { // the server answered with this status
			fmt.Println(e.Code(), e.Message())
			for _, d := range e.Details() {
				var oos OutOfStock
				if d.Type == "example.com/inventory.OutOfStock" && d.Unmarshal(jsoncodec.Codec{}, &oos) == nil {
					fmt.Println("out of stock:", oos.SKU)
				}
			}
		}
	}

	err = client.Call(ctx, "NoSuchService", "Take", &Item{}, nil)
	fmt.Println(rpc.CodeOf(err), errors.Is(err, broker.ErrNoResponders))
	// Output:
	// failed_precondition A1 is out of stock
	// out of stock: A1
	// unavailable true
}

func Example_middleware() {
	b := memory.New()
	defer b.Close()
	routes := middleware.RouteTable(map[string]string{"Calculator": "Calculator.v2"})

	breakers := middleware.NewCircuitBreaker()
	client := rpc.NewClient(b, rpc.WithClientMiddleware(
		middleware.Timeout(5*time.Second), // bounds the whole call, retries included
		middleware.Retry(),                // repeats failed attempts of idempotent calls
		middleware.Routing(routes),        // picks the subject, afresh for every attempt
		breakers.Middleware,               // one circuit per subject, after routing
	))

	guard := &middleware.DeadlineGuard{}
	srv := rpc.NewServer(rpc.WithServerMiddleware(
		middleware.Recover(),            // outermost: a panic anywhere inside becomes Internal
		guard.Middleware,                // refuses expired requests, sets the handler's deadline
		middleware.ConcurrencyLimit(64), // refuses the excess at once, with ResourceExhausted
	))

	_, _ = client, srv
	// Output:
}

func Example_deadlines() {
	b := memory.New()
	defer b.Close()
	srv, _ := newCalculator()
	_, _ = b.Serve("Calculator", srv)
	client := rpc.NewClient(b)
	_ = rpc.Handle(srv, "AddVia", handlerWithNestedCall(client))

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	var out AddReply
	err := client.Call(ctx, "Calculator", "Add", &AddRequest{A: 1, B: 2}, &out)
	fmt.Println(out.Sum, err)
	// Output: 3 <nil>
}

// The guide's handler that calls another service with its own ctx.
func handlerWithNestedCall(client *rpc.Client) func(ctx context.Context, in *AddRequest) (*AddReply, error) {
	return func(ctx context.Context, in *AddRequest) (*AddReply, error) {
		// ctx ends at the caller's deadline: a nested call gets what is left.
		var out AddReply
		if err := client.Call(ctx, "Adder", "Add", in, &out); err != nil {
			return nil, err
		}
		return &out, nil
	}
}

// runUntilSignal is compiled, not run: it serves until SIGINT or SIGTERM.
func runUntilSignal() {
	b, err := dial.Open("embedded:")
	if err != nil {
		log.Fatal(err)
	}
	srv, err := newCalculator()
	if err != nil {
		log.Fatal(err)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// Serves until ctx ends, then lets requests in flight finish (up to
	// rpc.DefaultDrainTimeout) and closes b.
	if err := rpc.Run(ctx, b, srv, "Calculator"); err != nil {
		log.Fatal(err)
	}
}

// serverProcess is compiled, not run: the server of the two-process example.
func serverProcess() {
	ns, err := embedded.Start(embedded.WithPort(4333)) // a NATS server inside this process
	if err != nil {
		log.Fatal(err)
	}
	defer ns.Close()
	b, err := nats.New(ns.URL())
	if err != nil {
		log.Fatal(err)
	}
	srv, err := newCalculator()
	if err != nil {
		log.Fatal(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := rpc.Run(ctx, b, srv, "Calculator"); err != nil {
		log.Fatal(err)
	}
}

// clientProcess is compiled, not run: the client of the two-process example.
func clientProcess() {
	b, err := dial.Open("nats://127.0.0.1:4333")
	if err != nil {
		log.Fatal(err)
	}
	defer b.Close()
	add := rpc.NewMethod[AddRequest, AddReply](rpc.NewClient(b), "Calculator", "Add")
	sum, err := add(context.Background(), &AddRequest{A: 1, B: 2})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(sum.Sum)
}

// realBrokers is compiled, not run: brokers by URL, and the durable modes.
func realBrokers() {
	b, err := dial.Open(os.Getenv("MQRPC_BROKER")) // memory:, embedded:, nats://, amqp://
	if err != nil {
		log.Fatal(err)
	}
	defer b.Close()

	js, err := nats.New("nats://127.0.0.1:4222", nats.WithJetStream(nats.JetStreamConfig{}))
	if err != nil {
		log.Fatal(err)
	}
	defer js.Close()
	rabbit, err := amqp.New("amqp://guest:guest@127.0.0.1:5672/",
		amqp.WithDurable(amqp.QuorumQueue), amqp.WithDeadLetter("mqrpc.dead-letter", 5))
	if err != nil {
		log.Fatal(err)
	}
	defer rabbit.Close()
}

// The guide's programs that need a real broker or run until a signal are
// compiled, not run.
var _ = []func(){runUntilSignal, serverProcess, clientProcess, realBrokers}

// Every Go block of docs/GUIDE.md appears in this file or, for RocketMQ
// (a module of its own, which this one cannot import), in
// examples/rocketmq/main.go (indentation and blank lines aside), so the
// guide shows only code that compiles.
type CountRequest struct{ To int }
type Number struct{ N int }

// countOver is the guide's server-streaming snippet: the handler and the
// client's loop over the stream.
func countOver(ctx context.Context, srv *rpc.Server, client *rpc.Client) error {
	err := rpc.HandleServerStream(srv, "Count", func(ctx context.Context, in *CountRequest, send func(*Number) error) error {
		for i := 1; i <= in.To; i++ {
			if err := send(&Number{N: i}); err != nil {
				return err // the client cancelled or went away
			}
		}
		return nil // or an *rpc.Error: the stream ends with its code, after the messages sent
	})
	if err != nil {
		return err
	}

	for n, err := range rpc.InvokeServerStream[CountRequest, Number](ctx, client, "Counter", "Count", &CountRequest{To: 3}) {
		if err != nil {
			return err
		}
		fmt.Println(n.N)
	}
	return nil
}

func Example_streams() {
	b := memory.New()
	defer b.Close()
	srv := rpc.NewServer()
	sub, err := b.Serve("Counter", srv)
	if err != nil {
		log.Fatal(err)
	}
	defer sub.Stop(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := countOver(ctx, srv, rpc.NewClient(b)); err != nil {
		log.Fatal(err)
	}
	// Output:
	// 1
	// 2
	// 3
}

func TestGuideSnippetsAreHere(t *testing.T) {
	guide, err := os.ReadFile("../../docs/GUIDE.md")
	if err != nil {
		t.Fatal(err)
	}
	self, err := os.ReadFile("guide_test.go")
	if err != nil {
		t.Fatal(err)
	}
	rocketmqExample, err := os.ReadFile("../rocketmq/main.go")
	if err != nil {
		t.Fatal(err)
	}
	here := "\n" + strings.Join(normalize(string(self)), "\n") + "\n" +
		strings.Join(normalize(string(rocketmqExample)), "\n") + "\n"
	var block []string
	in, n := false, 0
	sc := bufio.NewScanner(strings.NewReader(string(guide)))
	for sc.Scan() {
		line := sc.Text()
		switch {
		case !in && strings.TrimSpace(line) == "```go":
			in, block = true, nil
		case in && strings.TrimSpace(line) == "```":
			in = false
			n++
			want := "\n" + strings.Join(normalize(strings.Join(block, "\n")), "\n") + "\n"
			if !strings.Contains(here, want) {
				t.Errorf("GUIDE.md Go block %d is not in guide_test.go:\n%s", n, strings.Join(block, "\n"))
			}
		case in:
			block = append(block, line)
		}
	}
	if n < 6 {
		t.Fatalf("found %d Go blocks in GUIDE.md", n)
	}
}

// normalize returns the lines of s without indentation and blank lines.
func normalize(s string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return out
}
