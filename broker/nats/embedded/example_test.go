package embedded_test

import (
	"context"
	"fmt"

	"github.com/mqrpc/mqrpc/broker"
	natsbroker "github.com/mqrpc/mqrpc/broker/nats"
	"github.com/mqrpc/mqrpc/broker/nats/embedded"
)

// A NATS server inside the process: a real broker, nothing installed.
// Other processes reach it at URL.
func ExampleStart() {
	ns, err := embedded.Start(embedded.WithoutJetStream())
	if err != nil {
		panic(err)
	}
	defer ns.Close()
	b, err := natsbroker.New(ns.URL())
	if err != nil {
		panic(err)
	}
	defer b.Close()

	sub, err := b.Serve("greet", broker.HandlerFunc(func(_ context.Context, req *broker.Message) (*broker.Message, error) {
		return &broker.Message{Body: append([]byte("hello, "), req.Body...)}, nil
	}))
	if err != nil {
		panic(err)
	}
	defer sub.Stop(context.Background())
	reply, err := b.Request(context.Background(), &broker.Message{Subject: "greet", Body: []byte("nats")})
	if err != nil {
		panic(err)
	}
	fmt.Println(string(reply.Body))
	// Output: hello, nats
}
