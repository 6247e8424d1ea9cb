package memory_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/memory"
)

// The memory broker needs no setup: serve a handler, then request.
func Example() {
	b := memory.New()
	defer b.Close()
	_, _ = b.Serve("echo", broker.HandlerFunc(func(_ context.Context, req *broker.Message) (*broker.Message, error) {
		return &broker.Message{Body: append([]byte("echo: "), req.Body...)}, nil
	}))
	reply, err := b.Request(context.Background(), &broker.Message{Subject: "echo", Body: []byte("hi")})
	fmt.Println(string(reply.Body), err)
	// Output: echo: hi <nil>
}

// Faults make the layers above face what real brokers do: here the next
// reply is lost after the handler ran, so the caller times out although
// the work was done (what retry plus dedup middleware must handle).
func ExampleBroker_SetFaults() {
	b := memory.New()
	var runs atomic.Int32
	_, _ = b.Serve("pay", broker.HandlerFunc(func(_ context.Context, _ *broker.Message) (*broker.Message, error) {
		runs.Add(1)
		return &broker.Message{Body: []byte("paid")}, nil
	}), broker.WithConcurrency(1))

	b.SetFaults(memory.Faults{DropReplies: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := b.Request(ctx, &broker.Message{Subject: "pay"})
	_ = b.Close() // waits for handlers in flight
	fmt.Println(errors.Is(err, broker.ErrTimeout), runs.Load())
	// Output: true 1
}
