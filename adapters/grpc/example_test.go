package grpc_test

import (
	"context"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	mqgrpc "github.com/mqrpc/mqrpc/adapters/grpc"
	"github.com/mqrpc/mqrpc/broker/memory"
	pb "github.com/mqrpc/mqrpc/examples/grpc-greeter/helloworld"
)

type greeter struct {
	pb.UnimplementedGreeterServer
}

func (greeter) SayHello(ctx context.Context, in *pb.HelloRequest) (*pb.HelloReply, error) {
	if in.GetName() == "" {
		return nil, status.Error(codes.InvalidArgument, "name must not be empty")
	}
	md, _ := metadata.FromIncomingContext(ctx)
	_ = grpc.SetTrailer(ctx, metadata.Pairs("lang", md.Get("lang")[0]))
	return &pb.HelloReply{Message: "Hello " + in.GetName()}, nil
}

// A generated gRPC service and client over a broker: the Server is the
// grpc.ServiceRegistrar, the ClientConn the grpc.ClientConnInterface.
func Example() {
	b := memory.New()
	defer b.Close()

	srv := mqgrpc.NewServer()
	pb.RegisterGreeterServer(srv, greeter{})
	sub, err := srv.Serve(b) // on the subject "helloworld.Greeter"
	if err != nil {
		fmt.Println(err)
		return
	}
	defer sub.Stop(context.Background())

	client := pb.NewGreeterClient(mqgrpc.NewClientConn(b))
	ctx := metadata.AppendToOutgoingContext(context.Background(), "lang", "en")
	var trailer metadata.MD
	reply, err := client.SayHello(ctx, &pb.HelloRequest{Name: "world"}, grpc.Trailer(&trailer))
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(reply.GetMessage(), trailer.Get("lang"))

	_, err = client.SayHello(ctx, &pb.HelloRequest{})
	fmt.Println(status.Code(err), status.Convert(err).Message())
	// Output:
	// Hello world [en]
	// InvalidArgument name must not be empty
}

// Interceptors run as with grpc-go: client interceptors around the broker
// round trip, server interceptors around the handler.
func ExampleWithUnaryServerInterceptor() {
	b := memory.New()
	defer b.Close()

	logCalls := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		resp, err := handler(ctx, req)
		fmt.Println("served", info.FullMethod, status.Code(err))
		return resp, err
	}
	srv := mqgrpc.NewServer(mqgrpc.WithUnaryServerInterceptor(logCalls))
	pb.RegisterGreeterServer(srv, greeter{})
	sub, err := srv.Serve(b)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer sub.Stop(context.Background())

	addLang := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		return invoker(metadata.AppendToOutgoingContext(ctx, "lang", "fr"), method, req, reply, cc, opts...)
	}
	client := pb.NewGreeterClient(mqgrpc.NewClientConn(b, mqgrpc.WithUnaryClientInterceptor(addLang)))
	reply, err := client.SayHello(context.Background(), &pb.HelloRequest{Name: "monde"})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(reply.GetMessage())
	// Output:
	// served /helloworld.Greeter/SayHello OK
	// Hello monde
}
