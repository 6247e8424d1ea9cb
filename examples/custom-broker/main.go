// Command custom-broker serves and calls an rpc service over a broker that
// mqrpc does not ship: package tcpbroker, plain TCP in under 200 lines on
// top of broker/kernel (its hub, the broker server, is the rest). The
// kernel gives it the delivery pipeline, deadlines, the worker pool,
// Stop/drain/abort and cancel notices; it passes broker/brokertest.
//
//	go run ./examples/custom-broker
//
// The program itself is broker-neutral: -broker takes any URL that
// broker/dial opens instead (go run ./examples/custom-broker -broker
// nats://127.0.0.1:4222).
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/dial"
	"github.com/mqrpc/mqrpc/examples/custom-broker/tcpbroker"
	"github.com/mqrpc/mqrpc/rpc"
)

// Hello is the request and the reply.
type Hello struct{ Name string }

var brokerFlag = flag.String("broker", "tcp",
	`broker: "tcp" (this example's own, package tcpbroker, on a free loopback port) or a URL broker/dial opens: memory, nats://, amqp://`)

func main() {
	flag.Parse()
	if err := run(*brokerFlag); err != nil {
		fmt.Fprintln(os.Stderr, "custom-broker:", err)
		os.Exit(1)
	}
}

func run(brokerArg string) error {
	server, caller, closeAll, err := open(brokerArg)
	if err != nil {
		return err
	}
	defer closeAll()
	srv := rpc.NewServer()
	if err := rpc.Handle(srv, "SayHello", func(_ context.Context, in *Hello) (*Hello, error) {
		return &Hello{Name: "hello, " + in.Name}, nil
	}); err != nil {
		return err
	}
	sub, err := server.Serve("greeter.Greeter", srv)
	if err != nil {
		return err
	}
	defer func() {
		stopCtx, stop := context.WithTimeout(context.Background(), 5*time.Second)
		defer stop()
		_ = sub.Stop(stopCtx)
	}()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := rpc.Invoke[Hello, Hello](ctx, rpc.NewClient(caller), "greeter.Greeter", "SayHello", &Hello{Name: "tcp"})
	if err != nil {
		return err
	}
	fmt.Println(out.Name)
	return nil
}

// open returns a serving and a calling connection: two to a tcpbroker hub
// of this process, or one broker from a URL.
func open(brokerArg string) (server, caller broker.Broker, closeAll func(), err error) {
	if brokerArg != "tcp" {
		b, err := dial.Open(brokerArg, dial.WithName("custom-broker"))
		if err != nil {
			return nil, nil, nil, err
		}
		return b, b, func() { _ = b.Close() }, nil
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, nil, err
	}
	go tcpbroker.Listen(l)
	s, err := tcpbroker.Dial(l.Addr().String())
	if err != nil {
		_ = l.Close()
		return nil, nil, nil, err
	}
	c, err := tcpbroker.Dial(l.Addr().String())
	if err != nil {
		_ = s.Close()
		_ = l.Close()
		return nil, nil, nil, err
	}
	return s, c, func() {
		_ = c.Close()
		_ = s.Close()
		_ = l.Close()
	}, nil
}
