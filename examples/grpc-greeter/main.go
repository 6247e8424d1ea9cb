// Command grpc-greeter runs gRPC's helloworld Greeter over a message
// broker: the service is registered with the generated
// RegisterGreeterServer and called with the generated GreeterClient,
// unchanged, through mqgrpc.
//
//	go run ./examples/grpc-greeter                                 # in-process broker
//	go run ./examples/grpc-greeter -broker memory          # the in-process memory broker (default: an embedded NATS server)
//	go run ./examples/grpc-greeter -broker nats://127.0.0.1:4222
//	go run ./examples/grpc-greeter -broker amqp://guest:guest@127.0.0.1:5672/
//	go run ./examples/grpc-greeter -name Alice
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	mqgrpc "github.com/mqrpc/mqrpc/adapters/grpc"
	"github.com/mqrpc/mqrpc/broker/dial"
	pb "github.com/mqrpc/mqrpc/examples/grpc-greeter/helloworld"
)

// greeter implements helloworld.GreeterServer exactly as it would for a
// grpc.Server.
type greeter struct {
	pb.UnimplementedGreeterServer
}

func (greeter) SayHello(ctx context.Context, in *pb.HelloRequest) (*pb.HelloReply, error) {
	if in.GetName() == "" {
		return nil, status.Error(codes.InvalidArgument, "name must not be empty")
	}
	_ = grpc.SetTrailer(ctx, metadata.Pairs("greeted", in.GetName()))
	return &pb.HelloReply{Message: "Hello " + in.GetName()}, nil
}

func main() {
	brokerFlag := flag.String("broker", "embedded",
		`broker: "embedded" (a NATS server in this process), "memory", or a URL: nats://, tls://, amqp://, amqps://`)
	name := flag.String("name", "world", "name to greet")
	flag.Parse()
	if err := run(*brokerFlag, *name); err != nil {
		fmt.Fprintln(os.Stderr, "grpc-greeter:", err)
		os.Exit(1)
	}
}

func run(brokerArg, name string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	b, err := dial.Open(brokerArg, dial.WithName("grpc-greeter"))
	if err != nil {
		return err
	}
	defer b.Close()
	fmt.Println("broker:", dial.Redact(brokerArg))

	// Server side: the generated registration function, with an mqgrpc
	// Server as the grpc.ServiceRegistrar. It serves the subject
	// "helloworld.Greeter".
	srv := mqgrpc.NewServer()
	pb.RegisterGreeterServer(srv, greeter{})
	sub, err := srv.Serve(b)
	if err != nil {
		return err
	}
	defer func() {
		stopCtx, stop := context.WithTimeout(context.Background(), 5*time.Second)
		defer stop()
		_ = sub.Stop(stopCtx)
	}()

	// Client side: the generated client, with an mqgrpc ClientConn as the
	// grpc.ClientConnInterface.
	client := pb.NewGreeterClient(mqgrpc.NewClientConn(b))

	var trailer metadata.MD
	reply, err := client.SayHello(ctx, &pb.HelloRequest{Name: name}, grpc.Trailer(&trailer))
	if err != nil {
		return fmt.Errorf("SayHello: %w", err)
	}
	fmt.Println("Greeting:", reply.GetMessage())
	fmt.Println("trailer greeted:", strings.Join(trailer.Get("greeted"), ","))

	_, err = client.SayHello(ctx, &pb.HelloRequest{})
	if status.Code(err) != codes.InvalidArgument {
		return fmt.Errorf("SayHello with no name: want InvalidArgument, got %v", err)
	}
	fmt.Println("SayHello with no name failed as expected:", status.Code(err), status.Convert(err).Message())
	return nil
}
