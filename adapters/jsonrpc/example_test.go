package jsonrpc_test

import (
	"context"
	"fmt"

	"github.com/mqrpc/mqrpc/adapters/jsonrpc"
	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/memory"
	"github.com/mqrpc/mqrpc/rpc"
)

// A JSON-RPC 2.0 service on a broker and a client calling it.
func Example() {
	b := memory.New()
	defer b.Close()

	srv := jsonrpc.NewServer()
	_ = jsonrpc.Register(srv, "add", func(_ context.Context, p [2]int) (int, error) { return p[0] + p[1], nil })
	_ = jsonrpc.Register(srv, "find", func(_ context.Context, name string) (string, error) {
		return "", rpc.Errorf(rpc.NotFound, "no user %q", name)
	})
	sub, _ := b.Serve("calc", srv)
	defer sub.Stop(context.Background())

	c := jsonrpc.NewClient(b, "calc")
	sum, err := jsonrpc.Invoke[int](context.Background(), c, "add", []int{40, 2})
	fmt.Println(sum, err)

	_, err = jsonrpc.Invoke[string](context.Background(), c, "find", []string{"bob"})
	fmt.Println(err, rpc.CodeOf(err))
	// Output:
	// 42 <nil>
	// jsonrpc: no user "bob" (code -32005) not_found
}

// The raw exchange: a batch with a notification, and a request in the
// RabbitMQ Java client's JSON-RPC 1.1 dialect.
func ExampleServer_ServeMessage() {
	srv := jsonrpc.NewServer()
	_ = jsonrpc.Register(srv, "add", func(_ context.Context, p [2]int) (int, error) { return p[0] + p[1], nil })

	for _, body := range []string{
		`[{"jsonrpc":"2.0","method":"add","params":[1,2],"id":"a"},{"jsonrpc":"2.0","method":"add","params":[3,4]},{"jsonrpc":"2.0","method":"sub","id":2}]`,
		`{"id":null,"method":"add","version":"1.1","params":[40,2]}`,
	} {
		reply, _ := srv.ServeMessage(context.Background(), &broker.Message{Body: []byte(body)})
		fmt.Println(string(reply.Body))
	}
	// Output:
	// [{"jsonrpc":"2.0","id":"a","result":3},{"jsonrpc":"2.0","id":2,"error":{"code":-32601,"message":"method not found: sub"}}]
	// {"version":"1.1","result":42}
}

// A batch from the client: results and errors per element.
func ExampleClient_Batch() {
	b := memory.New()
	defer b.Close()
	srv := jsonrpc.NewServer()
	_ = jsonrpc.Register(srv, "add", func(_ context.Context, p [2]int) (int, error) { return p[0] + p[1], nil })
	sub, _ := b.Serve("calc", srv)
	defer sub.Stop(context.Background())

	var x, y int
	elems := []*jsonrpc.BatchElem{
		{Method: "add", Params: []int{1, 2}, Result: &x},
		{Method: "add", Params: []int{3, 4}, Result: &y},
		{Method: "mul", Params: []int{5, 6}},
	}
	err := jsonrpc.NewClient(b, "calc").Batch(context.Background(), elems)
	fmt.Println(x, y, elems[2].Error, err)
	// Output:
	// 3 7 jsonrpc: method not found: mul (code -32601) <nil>
}
