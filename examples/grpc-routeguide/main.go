// Command grpc-routeguide runs gRPC's route_guide service, all four kinds
// of method (unary GetFeature, server-streaming ListFeatures,
// client-streaming RecordRoute, bidirectional RouteChat), over a message
// broker through mqgrpc, with grpc-go's generated stubs unchanged
// (package routeguide). A gRPC stream server interceptor counts the
// messages of every stream, as it would on a grpc.Server.
//
//	go run ./examples/grpc-routeguide                                 # an embedded NATS server
//	go run ./examples/grpc-routeguide -broker memory
//	go run ./examples/grpc-routeguide -broker nats://127.0.0.1:4222
//	go run ./examples/grpc-routeguide -broker amqp://guest:guest@127.0.0.1:5672/
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	mqgrpc "github.com/mqrpc/mqrpc/adapters/grpc"
	"github.com/mqrpc/mqrpc/broker/dial"
	pb "github.com/mqrpc/mqrpc/examples/grpc-routeguide/routeguide"
)

// streamLog is a grpc.StreamServerInterceptor that counts the messages
// each stream receives and sends, and notes them with the stream's status
// when the handler returns.
type streamLog struct {
	mu    sync.Mutex
	lines []string
}

func (l *streamLog) intercept(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	cs := &countingStream{ServerStream: ss}
	err := handler(srv, cs)
	l.mu.Lock()
	l.lines = append(l.lines, fmt.Sprintf("%s: received %d, sent %d, %v", info.FullMethod, cs.recv, cs.sent, status.Code(err)))
	l.mu.Unlock()
	return err
}

// countingStream counts the messages through a grpc.ServerStream.
type countingStream struct {
	grpc.ServerStream
	recv, sent int
}

func (s *countingStream) RecvMsg(m any) error {
	err := s.ServerStream.RecvMsg(m)
	if err == nil {
		s.recv++
	}
	return err
}

func (s *countingStream) SendMsg(m any) error {
	err := s.ServerStream.SendMsg(m)
	if err == nil {
		s.sent++
	}
	return err
}

// routeGuide implements routeguide.RouteGuideServer as it would for a
// grpc.Server.
type routeGuide struct {
	pb.UnimplementedRouteGuideServer
	features []*pb.Feature

	mu    sync.Mutex
	notes map[string][]*pb.RouteNote // by location
}

func newRouteGuide() *routeGuide {
	g := &routeGuide{notes: map[string][]*pb.RouteNote{}}
	for i, name := range []string{"Patriots Path", "Bluebell Lane", "Oak Hill", "Mill Pond", "Ridge Road"} {
		g.features = append(g.features, &pb.Feature{Name: name,
			Location: &pb.Point{Latitude: 407838351 + int32(i)*10000, Longitude: -746143763 + int32(i)*10000}})
	}
	return g
}

func (g *routeGuide) GetFeature(_ context.Context, p *pb.Point) (*pb.Feature, error) {
	for _, f := range g.features {
		if f.GetLocation().GetLatitude() == p.GetLatitude() && f.GetLocation().GetLongitude() == p.GetLongitude() {
			return f, nil
		}
	}
	return &pb.Feature{Location: p}, nil // no feature: an unnamed one
}

func (g *routeGuide) ListFeatures(rect *pb.Rectangle, stream pb.RouteGuide_ListFeaturesServer) error {
	for _, f := range g.features {
		if inRange(f.GetLocation(), rect) {
			if err := stream.Send(f); err != nil {
				return err
			}
		}
	}
	return nil
}

func (g *routeGuide) RecordRoute(stream pb.RouteGuide_RecordRouteServer) error {
	var count, features, distance int32
	var last *pb.Point
	start := time.Now()
	for {
		p, err := stream.Recv()
		if err == io.EOF {
			return stream.SendAndClose(&pb.RouteSummary{PointCount: count, FeatureCount: features,
				Distance: distance, ElapsedTime: int32(time.Since(start).Seconds())})
		}
		if err != nil {
			return err
		}
		count++
		if f, _ := g.GetFeature(stream.Context(), p); f.GetName() != "" {
			features++
		}
		if last != nil {
			distance += abs(p.GetLatitude()-last.GetLatitude()) + abs(p.GetLongitude()-last.GetLongitude())
		}
		last = p
	}
}

func (g *routeGuide) RouteChat(stream pb.RouteGuide_RouteChatServer) error {
	for {
		in, err := stream.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		key := fmt.Sprint(in.GetLocation().GetLatitude(), in.GetLocation().GetLongitude())
		g.mu.Lock()
		prev := append([]*pb.RouteNote(nil), g.notes[key]...)
		g.notes[key] = append(g.notes[key], in)
		g.mu.Unlock()
		for _, n := range prev {
			if err := stream.Send(n); err != nil {
				return err
			}
		}
	}
}

func inRange(p *pb.Point, r *pb.Rectangle) bool {
	lo, hi := r.GetLo(), r.GetHi()
	return p.GetLatitude() >= min(lo.GetLatitude(), hi.GetLatitude()) && p.GetLatitude() <= max(lo.GetLatitude(), hi.GetLatitude()) &&
		p.GetLongitude() >= min(lo.GetLongitude(), hi.GetLongitude()) && p.GetLongitude() <= max(lo.GetLongitude(), hi.GetLongitude())
}

func abs(x int32) int32 {
	if x < 0 {
		return -x
	}
	return x
}

func main() {
	brokerFlag := flag.String("broker", "embedded",
		`broker: "embedded" (a NATS server in this process), "memory", or a URL: nats://, amqp://`)
	flag.Parse()
	if err := run(*brokerFlag, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "grpc-routeguide:", err)
		os.Exit(1)
	}
}

func run(brokerArg string, out io.Writer) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, err := dial.Open(brokerArg, dial.WithName("grpc-routeguide"))
	if err != nil {
		return err
	}
	defer b.Close()

	// Server side: the generated registration function, with an mqgrpc
	// Server as the grpc.ServiceRegistrar (subject "routeguide.RouteGuide"),
	// and a stream interceptor.
	var log streamLog
	srv := mqgrpc.NewServer(mqgrpc.WithStreamServerInterceptor(log.intercept))
	pb.RegisterRouteGuideServer(srv, newRouteGuide())
	sub, err := srv.Serve(b)
	if err != nil {
		return err
	}
	defer func() {
		stopCtx, stop := context.WithTimeout(context.Background(), 5*time.Second)
		defer stop()
		_ = sub.Stop(stopCtx)
	}()

	// Client side: the generated client on an mqgrpc ClientConn.
	client := pb.NewRouteGuideClient(mqgrpc.NewClientConn(b))

	f, err := client.GetFeature(ctx, &pb.Point{Latitude: 407838351, Longitude: -746143763})
	if err != nil {
		return fmt.Errorf("GetFeature: %w", err)
	}
	fmt.Fprintf(out, "GetFeature: %q\n", f.GetName())

	list, err := client.ListFeatures(ctx, &pb.Rectangle{
		Lo: &pb.Point{Latitude: 407838351, Longitude: -746143763},
		Hi: &pb.Point{Latitude: 407858351, Longitude: -746123763}})
	if err != nil {
		return fmt.Errorf("ListFeatures: %w", err)
	}
	for {
		f, err := list.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("ListFeatures: %w", err)
		}
		fmt.Fprintf(out, "ListFeatures: %q\n", f.GetName())
	}

	rec, err := client.RecordRoute(ctx)
	if err != nil {
		return fmt.Errorf("RecordRoute: %w", err)
	}
	for i := int32(0); i < 4; i++ {
		if err := rec.Send(&pb.Point{Latitude: 407838351 + i*10000, Longitude: -746143763 + i*10000}); err != nil {
			return fmt.Errorf("RecordRoute: %w", err)
		}
	}
	sum, err := rec.CloseAndRecv()
	if err != nil {
		return fmt.Errorf("RecordRoute: %w", err)
	}
	fmt.Fprintf(out, "RecordRoute: %d points, %d features, distance %d\n", sum.GetPointCount(), sum.GetFeatureCount(), sum.GetDistance())

	chat, err := client.RouteChat(ctx)
	if err != nil {
		return fmt.Errorf("RouteChat: %w", err)
	}
	got := make(chan error, 1)
	var heard []string
	go func() {
		for {
			n, err := chat.Recv()
			if err == io.EOF {
				got <- nil
				return
			}
			if err != nil {
				got <- err
				return
			}
			heard = append(heard, n.GetMessage())
		}
	}()
	for i, msg := range []string{"first", "second", "third", "fourth"} {
		note := &pb.RouteNote{Location: &pb.Point{Latitude: int32(i % 2)}, Message: msg}
		if err := chat.Send(note); err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("RouteChat: %w", err)
		}
	}
	if err := chat.CloseSend(); err != nil {
		return fmt.Errorf("RouteChat: %w", err)
	}
	if err := <-got; err != nil {
		return fmt.Errorf("RouteChat: %w", err)
	}
	fmt.Fprintf(out, "RouteChat: heard %v\n", heard)

	// Each stream's interceptor returned before its caller saw the end.
	log.mu.Lock()
	defer log.mu.Unlock()
	for _, l := range log.lines {
		fmt.Fprintln(out, "interceptor:", l)
	}
	return nil
}
