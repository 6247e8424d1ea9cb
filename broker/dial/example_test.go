package dial_test

import (
	"context"
	"fmt"

	"github.com/mqrpc/mqrpc/broker/dial"
	"github.com/mqrpc/mqrpc/rpc"
)

type echo struct{ Text string }

// The broker is a URL: the same program runs in-process ("memory:"), on an
// embedded NATS server ("embedded:") or on a real broker (nats://,
// amqp://, rocketmq://).
func ExampleOpen() {
	for _, url := range []string{"memory:", "embedded:"} {
		b, err := dial.Open(url, dial.WithName("example"))
		if err != nil {
			fmt.Println(err)
			continue
		}
		srv := rpc.NewServer()
		_ = rpc.Handle(srv, "Echo", func(_ context.Context, in *echo) (*echo, error) { return in, nil })
		sub, err := b.Serve("Echo", srv)
		if err != nil {
			fmt.Println(err)
			continue
		}
		out, err := rpc.Invoke[echo, echo](context.Background(), rpc.NewClient(b), "Echo", "Echo", &echo{Text: "hi from " + url})
		fmt.Println(out.Text, err)
		_ = sub.Stop(context.Background())
		_ = b.Close()
	}
	_, err := dial.Open("carrier-pigeon://coop")
	fmt.Println(err)
	// Output:
	// hi from memory: <nil>
	// hi from embedded: <nil>
	// dial: unknown broker scheme "carrier-pigeon" in "carrier-pigeon://coop" (want memory, embedded, nats, tls, amqp, amqps, one given to Register (see Schemes) or one given with WithScheme)
}
