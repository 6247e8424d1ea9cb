package natskv_test

import (
	"context"
	"fmt"
	"log"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/memory"
	"github.com/mqrpc/mqrpc/broker/nats/embedded"
	"github.com/mqrpc/mqrpc/middleware"
	"github.com/mqrpc/mqrpc/middleware/dedupstore/natskv"
	"github.com/mqrpc/mqrpc/rpc"
)

type PayRequest struct{ Cents int }
type PayReply struct{ Paid int }

// A payment service whose processes share a NATS key-value bucket: a call
// retried with the same message ID, wherever it lands, pays once.
func Example() {
	ctx := context.Background()
	srv, err := embedded.Start() // a NATS server with JetStream, for the example
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Stop()
	nc, err := nats.Connect(srv.URL())
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		log.Fatal(err)
	}
	store, err := natskv.New(ctx, js, "payments_dedup")
	if err != nil {
		log.Fatal(err)
	}

	b := memory.New()
	defer b.Close()
	payments := 0
	server := rpc.NewServer(rpc.WithServerMiddleware(middleware.Dedup(middleware.WithDedupStore(store))))
	_ = rpc.Handle(server, "Pay", func(_ context.Context, in *PayRequest) (*PayReply, error) {
		payments++
		return &PayReply{Paid: in.Cents}, nil
	})
	sub, err := b.Serve("payments", server)
	if err != nil {
		log.Fatal(err)
	}
	defer sub.Stop(ctx)

	client := rpc.NewClient(b)
	for range 2 { // the same call twice, as a retry would send it
		var header broker.Header
		out, err := rpc.Invoke[PayRequest, PayReply](ctx, client, "payments", "Pay", &PayRequest{Cents: 500},
			rpc.WithMessageID("order-42"), rpc.WithReplyHeader(&header))
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println("paid", out.Paid, "replayed:", header.Get(middleware.HeaderReplayed) == "true")
	}
	fmt.Println("payments made:", payments)
	// Output:
	// paid 500 replayed: false
	// paid 500 replayed: true
	// payments made: 1
}
