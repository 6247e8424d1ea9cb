package thrift_test

import (
	"context"
	"fmt"

	mqthrift "github.com/mqrpc/mqrpc/adapters/thrift"
	"github.com/mqrpc/mqrpc/broker/memory"
	"github.com/mqrpc/mqrpc/examples/thrift-calculator/calculator"
	"github.com/mqrpc/mqrpc/rpc"
)

// A generated Thrift processor served on a broker, and the generated
// client calling it.
func Example() {
	b := memory.New()
	defer b.Close()

	// Server: any thrift.TProcessor.
	sub, _ := b.Serve("Calculator", mqthrift.NewServer(calculator.NewCalculatorProcessor(newCalc())))
	defer sub.Stop(context.Background())

	// Client: the generated client over a Client.
	calc := calculator.NewCalculatorClient(mqthrift.NewClient(b, "Calculator", mqthrift.WithProtocol(mqthrift.Compact)))
	sum, err := calc.CalcSum(context.Background(), []float64{1, 2, 3.5})
	fmt.Println(sum, err)

	// An error the handler returned as an *rpc.Error keeps its code.
	_, err = calc.Divide(context.Background(), 1, divNotFound)
	fmt.Println(rpc.CodeOf(err), err)
	// Output:
	// 6.5 <nil>
	// not_found Internal error processing divide: not_found: no such divisor
}

// A Transport under a generated client built from a transport and a
// protocol factory. Oneway methods are listed so they do not wait.
func ExampleNewTransport() {
	b := memory.New()
	defer b.Close()
	h := newCalc()
	sub, _ := b.Serve("Calculator", mqthrift.NewServer(calculator.NewCalculatorProcessor(h)))
	defer sub.Stop(context.Background())

	t := mqthrift.NewTransport(b, "Calculator", mqthrift.WithProtocol(mqthrift.JSON), mqthrift.WithOneway("record"))
	calc := calculator.NewCalculatorClientFactory(t, mqthrift.JSON.Factory(nil))
	sum, err := calc.Add(context.Background(), 40, 2)
	fmt.Println(sum, err)
	fmt.Println(calc.Record(context.Background(), "sent one-way"))
	fmt.Println(<-h.notes)
	// Output:
	// 42 <nil>
	// <nil>
	// sent one-way
}
