// Command custom-broker serves and calls an rpc service over a broker that
// mqrpc does not ship: package tcpbroker, plain TCP in under 200 lines on
// top of broker/kernel (its hub, the broker server, is the rest). The
// kernel gives it the delivery pipeline, deadlines, the worker pool,
// Stop/drain/abort and cancel notices; it passes broker/brokertest.
//
//	go run ./examples/custom-broker
package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/mqrpc/mqrpc/examples/custom-broker/tcpbroker"
	"github.com/mqrpc/mqrpc/rpc"
)

// Hello is the request and the reply.
type Hello struct{ Name string }

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "custom-broker:", err)
		os.Exit(1)
	}
}

func run() error {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer l.Close()
	go tcpbroker.Listen(l)

	server, err := tcpbroker.Dial(l.Addr().String())
	if err != nil {
		return err
	}
	defer server.Close()
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
	defer sub.Stop(context.Background())

	caller, err := tcpbroker.Dial(l.Addr().String())
	if err != nil {
		return err
	}
	defer caller.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, err := rpc.Invoke[Hello, Hello](ctx, rpc.NewClient(caller), "greeter.Greeter", "SayHello", &Hello{Name: "tcp"})
	if err != nil {
		return err
	}
	fmt.Println(out.Name)
	return nil
}
