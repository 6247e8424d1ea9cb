package nats_test

import (
	"context"
	"fmt"
	"time"

	"github.com/mqrpc/mqrpc/broker"
	natsbroker "github.com/mqrpc/mqrpc/broker/nats"
	"github.com/mqrpc/mqrpc/broker/nats/embedded"
)

// A server and a client over a NATS server started in-process: nothing to
// install. Give New a real server's URL (nats://host:4222) instead in
// production.
func Example() {
	srv, err := embedded.Start()
	if err != nil {
		fmt.Println(err)
		return
	}
	defer srv.Close()

	b, err := natsbroker.New(srv.URL())
	if err != nil {
		fmt.Println(err)
		return
	}
	defer b.Close()

	sub, err := b.Serve("greeter", broker.HandlerFunc(func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
		return &broker.Message{Body: append([]byte("hello, "), req.Body...)}, nil
	}))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer sub.Stop(context.Background())

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	reply, err := b.Request(ctx, &broker.Message{Subject: "greeter", Body: []byte("world")})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(string(reply.Body))
	// Output: hello, world
}

// Durable mode: the request is stored in a JetStream work queue while no
// server runs, and served once one starts.
func ExampleWithJetStream() {
	srv, err := embedded.Start() // JetStream is on by default
	if err != nil {
		fmt.Println(err)
		return
	}
	defer srv.Close()

	b, err := natsbroker.New(srv.URL(), natsbroker.WithJetStream(natsbroker.JetStreamConfig{}))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer b.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	replies := make(chan string, 1)
	go func() {
		reply, err := b.Request(ctx, &broker.Message{ID: "order-1", Subject: "orders", Body: []byte("book")})
		if err != nil {
			replies <- err.Error()
			return
		}
		replies <- string(reply.Body)
	}()

	time.Sleep(200 * time.Millisecond) // no server yet: the request waits in the stream
	sub, err := b.Serve("orders", broker.HandlerFunc(func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
		return &broker.Message{Body: []byte("shipped " + string(req.Body) + " for " + req.ID)}, nil
	}))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer sub.Stop(context.Background())
	fmt.Println(<-replies)
	// Output: shipped book for order-1
}
