package rpc_test

import (
	"context"
	"fmt"
	"io"

	"github.com/mqrpc/mqrpc/broker/memory"
	"github.com/mqrpc/mqrpc/rpc"
)

type CountRequest struct{ To int }
type Number struct{ N int }

// A server-streaming method sends its replies with send; the client ranges
// over them.
func ExampleHandleServerStream() {
	b := memory.New()
	defer b.Close()

	srv := rpc.NewServer()
	_ = rpc.HandleServerStream(srv, "Count", func(ctx context.Context, in *CountRequest, send func(*Number) error) error {
		for i := 1; i <= in.To; i++ {
			if err := send(&Number{N: i}); err != nil {
				return err // the client went away
			}
		}
		return nil
	})
	sub, _ := b.Serve("Counter", srv)
	defer sub.Stop(context.Background())

	c := rpc.NewClient(b)
	for n, err := range rpc.InvokeServerStream[CountRequest, Number](context.Background(), c, "Counter", "Count", &CountRequest{To: 3}) {
		if err != nil {
			fmt.Println("error:", err)
			break
		}
		fmt.Println(n.N)
	}
	// Output:
	// 1
	// 2
	// 3
}

// A bidirectional stream: the client sends and receives over one
// ClientStream, the server over a ServerStream.
func ExampleOpenStream() {
	b := memory.New()
	defer b.Close()

	srv := rpc.NewServer()
	_ = rpc.HandleBidiStream(srv, "Double", func(ctx context.Context, st *rpc.ServerStream[Number, Number]) error {
		for {
			in, err := st.Recv()
			if err == io.EOF {
				return nil // the client closed its side
			}
			if err != nil {
				return err
			}
			if err := st.Send(&Number{N: 2 * in.N}); err != nil {
				return err
			}
		}
	})
	sub, _ := b.Serve("Doubler", srv)
	defer sub.Stop(context.Background())

	c := rpc.NewClient(b)
	st, err := rpc.OpenStream[Number, Number](context.Background(), c, "Doubler", "Double")
	if err != nil {
		panic(err)
	}
	defer st.Close()
	for i := 1; i <= 3; i++ {
		_ = st.Send(&Number{N: i})
		out, _ := st.Recv()
		fmt.Println(out.N)
	}
	_ = st.CloseSend()
	_, err = st.Recv()
	fmt.Println(err == io.EOF)
	// Output:
	// 2
	// 4
	// 6
	// true
}
