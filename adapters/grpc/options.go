package grpc

import (
	"context"
	"time"

	"google.golang.org/grpc"

	"github.com/mqrpc/mqrpc/rpc"
)

// ClientOption configures a ClientConn made by NewClientConn.
type ClientOption interface {
	applyToClient(*clientConfig)
}

// ServerOption configures a Server made by NewServer.
type ServerOption interface {
	applyToServer(*serverConfig)
}

// Option configures both a ClientConn and a Server; give both sides the
// same one.
type Option interface {
	ClientOption
	ServerOption
}

type clientConfig struct {
	subject      func(service string) string
	timeout      time.Duration
	shortMethods bool
	interceptors []grpc.UnaryClientInterceptor
	streamInts   []grpc.StreamClientInterceptor
	middleware   []rpc.Middleware
	callOptions  []grpc.CallOption
}

type serverConfig struct {
	subject      func(service string) string
	interceptors []grpc.UnaryServerInterceptor
	streamInts   []grpc.StreamServerInterceptor
	middleware   []rpc.Middleware
}

type clientOptionFunc func(*clientConfig)

func (f clientOptionFunc) applyToClient(c *clientConfig) { f(c) }

type serverOptionFunc func(*serverConfig)

func (f serverOptionFunc) applyToServer(c *serverConfig) { f(c) }

type subjectOption func(service string) string

func (o subjectOption) applyToClient(c *clientConfig) { c.subject = o }
func (o subjectOption) applyToServer(c *serverConfig) { c.subject = o }

// WithSubject sets the broker subject of each gRPC service: fn gets the
// full service name ("helloworld.Greeter") and returns the subject.
// Default: the service name itself. A nil fn selects the default. Client
// and server must agree, so pass the same option to both.
func WithSubject(fn func(service string) string) Option {
	if fn == nil {
		fn = defaultSubject
	}
	return subjectOption(fn)
}

func defaultSubject(service string) string { return service }

// WithTimeout sets the deadline of calls whose ctx has none. Default: 30s,
// because a broker, unlike a gRPC connection, cannot tell a caller that
// the server holding its request died. Zero or less means no default
// deadline: such calls wait as long as their ctx.
func WithTimeout(d time.Duration) ClientOption {
	return clientOptionFunc(func(c *clientConfig) { c.timeout = d })
}

// WithShortMethodNames makes the client send the bare method name
// ("SayHello") in the mqrpc-method header instead of the full gRPC method
// ("/helloworld.Greeter/SayHello"), so generated stubs can call services
// written with rpc.Handle. Default: full methods. A Server accepts both.
func WithShortMethodNames() ClientOption {
	return clientOptionFunc(func(c *clientConfig) { c.shortMethods = true })
}

// WithUnaryClientInterceptor adds gRPC unary client interceptors; the
// first runs outermost. The *grpc.ClientConn argument they receive is
// nil. Calling it again appends. Default: none.
func WithUnaryClientInterceptor(interceptors ...grpc.UnaryClientInterceptor) ClientOption {
	return clientOptionFunc(func(c *clientConfig) { c.interceptors = append(c.interceptors, interceptors...) })
}

// WithStreamClientInterceptor adds gRPC stream client interceptors, which
// run around NewStream (every streaming call) as with
// grpc.WithChainStreamInterceptor: the first runs outermost, the
// *grpc.ClientConn argument they receive is nil, and an interceptor sees
// the stream's messages and end by wrapping the grpc.ClientStream the
// streamer returns (RecvMsg returning io.EOF or an error is the end). An
// error an interceptor returns is the error of NewStream. Calling it again
// appends. Default: none.
func WithStreamClientInterceptor(interceptors ...grpc.StreamClientInterceptor) ClientOption {
	return clientOptionFunc(func(c *clientConfig) { c.streamInts = append(c.streamInts, interceptors...) })
}

// WithClientMiddleware wraps the broker round trip of every call in mqrpc
// middleware (retry, routing, logging, ...), the first outermost; it runs
// inside the gRPC interceptors. Calling it again appends. Default: none.
func WithClientMiddleware(mw ...rpc.Middleware) ClientOption {
	return clientOptionFunc(func(c *clientConfig) { c.middleware = append(c.middleware, mw...) })
}

// WithDefaultCallOptions sets call options applied before the options of
// each call, as grpc.WithDefaultCallOptions does. Calling it again
// appends. Default: none.
func WithDefaultCallOptions(opts ...grpc.CallOption) ClientOption {
	return clientOptionFunc(func(c *clientConfig) { c.callOptions = append(c.callOptions, opts...) })
}

// WithUnaryServerInterceptor adds gRPC unary server interceptors; the
// first runs outermost. Calling it again appends. Default: none.
func WithUnaryServerInterceptor(interceptors ...grpc.UnaryServerInterceptor) ServerOption {
	return serverOptionFunc(func(c *serverConfig) { c.interceptors = append(c.interceptors, interceptors...) })
}

// WithStreamServerInterceptor adds gRPC stream server interceptors, which
// run around every streaming method's handler as with
// grpc.ChainStreamInterceptor: the first runs outermost; the call starts
// once the stream is open and returns when the handler returned, just
// before the stream ends with the error it returns (nil: OK), so an
// interceptor that returns a status without calling the handler rejects
// the stream and the caller receives that status. An interceptor may wrap
// the grpc.ServerStream it passes on (to count messages, or to give the
// handler another Context). Calling it again appends. Default: none.
func WithStreamServerInterceptor(interceptors ...grpc.StreamServerInterceptor) ServerOption {
	return serverOptionFunc(func(c *serverConfig) { c.streamInts = append(c.streamInts, interceptors...) })
}

// WithServerMiddleware wraps the server's dispatcher in mqrpc middleware,
// the first outermost; it runs outside the gRPC interceptors and sees the
// broker messages. A failed call reaches it as a reply message carrying
// the status headers, not as an error, so that its trailers and details
// travel with it: read the status with rpc.ErrorFromReply. A middleware
// answers a request itself by returning an *rpc.Error. Calling it again
// appends. Default: none.
func WithServerMiddleware(mw ...rpc.Middleware) ServerOption {
	return serverOptionFunc(func(c *serverConfig) { c.middleware = append(c.middleware, mw...) })
}

// chain returns one interceptor running all of is, the first outermost (as
// grpc-go's chaining options do), or nil for none. join(outer, inner)
// makes the interceptor that runs outer with inner between it and the
// handler; the four kinds below differ only in that.
func chain[I any](is []I, join func(outer, inner I) I) I {
	if len(is) == 0 {
		var none I
		return none
	}
	c := is[len(is)-1]
	for i := len(is) - 2; i >= 0; i-- {
		c = join(is[i], c)
	}
	return c
}

func joinUnaryClient(outer, inner grpc.UnaryClientInterceptor) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		return outer(ctx, method, req, reply, cc, func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, opts ...grpc.CallOption) error {
			return inner(ctx, method, req, reply, cc, invoker, opts...)
		}, opts...)
	}
}

func joinStreamClient(outer, inner grpc.StreamClientInterceptor) grpc.StreamClientInterceptor {
	return func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		return outer(ctx, desc, cc, method, func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
			return inner(ctx, desc, cc, method, streamer, opts...)
		}, opts...)
	}
}

func joinUnaryServer(outer, inner grpc.UnaryServerInterceptor) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		return outer(ctx, req, info, func(ctx context.Context, req any) (any, error) {
			return inner(ctx, req, info, handler)
		})
	}
}

func joinStreamServer(outer, inner grpc.StreamServerInterceptor) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		return outer(srv, ss, info, func(srv any, ss grpc.ServerStream) error {
			return inner(srv, ss, info, handler)
		})
	}
}
