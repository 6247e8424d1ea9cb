package grpc

import (
	"context"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/codec"
	protocodec "github.com/mqrpc/mqrpc/codec/proto"
	"github.com/mqrpc/mqrpc/rpc"
)

// ClientConn is a grpc.ClientConnInterface that sends calls through a
// broker: give it to a generated client constructor such as
// pb.NewGreeterClient. It supports unary and streaming calls (see the
// package doc).
//
// Of the grpc.CallOptions, it honours grpc.Header, grpc.Trailer,
// grpc.CallContentSubtype, grpc.ForceCodec and grpc.ForceCodecV2, and
// ignores the others (compression, credentials, peer, message size limits,
// wait-for-ready: the broker decides those).
//
// A ClientConn is safe for concurrent use. It does not own the broker and
// has nothing to close.
type ClientConn struct {
	idempotent  sync.Map // full method -> bool, from the proto descriptors
	client      *rpc.Client
	subject     func(string) string
	short       bool
	interceptor grpc.UnaryClientInterceptor
	streamInt   grpc.StreamClientInterceptor
	callOptions []grpc.CallOption
}

var _ grpc.ClientConnInterface = (*ClientConn)(nil)

// clientCodec is the codec of a ClientConn's calls and streams when no
// call option (grpc.CallContentSubtype, grpc.ForceCodec...) names another.
var clientCodec codec.Codec = protocodec.Codec{}

// NewClientConn returns a ClientConn whose calls go through b.
func NewClientConn(b broker.Broker, opts ...ClientOption) *ClientConn {
	cfg := clientConfig{subject: defaultSubject, timeout: 30 * time.Second}
	for _, o := range opts {
		o.applyToClient(&cfg)
	}
	return &ClientConn{
		client: rpc.NewClient(b,
			rpc.WithCodec(clientCodec),
			rpc.WithTimeout(cfg.timeout),
			rpc.WithClientMiddleware(cfg.middleware...)),
		subject:     cfg.subject,
		short:       cfg.shortMethods,
		interceptor: chain(cfg.interceptors, joinUnaryClient),
		streamInt:   chain(cfg.streamInts, joinStreamClient),
		callOptions: cfg.callOptions,
	}
}

// Invoke performs a unary call of method ("/package.Service/Method") with
// args and stores the reply in reply. It implements
// grpc.ClientConnInterface. A failed call returns an *Error.
func (cc *ClientConn) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	if len(cc.callOptions) > 0 {
		opts = append(cc.callOptions[:len(cc.callOptions):len(cc.callOptions)], opts...)
	}
	if cc.interceptor == nil {
		return cc.invoke(ctx, method, args, reply, nil, opts...)
	}
	return cc.interceptor(ctx, method, args, reply, nil, cc.invoke, opts...)
}

// NewStream opens a stream of any kind (server, client or bidirectional
// streaming) over the broker, for generated streaming client code (see
// stream.go and the package doc), through the interceptors of
// WithStreamClientInterceptor. It implements grpc.ClientConnInterface.
func (cc *ClientConn) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	if len(cc.callOptions) > 0 {
		opts = append(cc.callOptions[:len(cc.callOptions):len(cc.callOptions)], opts...)
	}
	if cc.streamInt == nil {
		return cc.newStream(ctx, desc, nil, method, opts...)
	}
	return cc.streamInt(ctx, desc, nil, method, cc.newStream, opts...)
}

// invoke is the innermost grpc.UnaryInvoker: one broker round trip.
func (cc *ClientConn) invoke(ctx context.Context, method string, args, reply any, _ *grpc.ClientConn, opts ...grpc.CallOption) error {
	service, name, ok := splitMethod(method)
	if !ok {
		return status.Errorf(codes.Internal, "mqgrpc: malformed method name %q, want /package.Service/Method", method)
	}
	co, err := parseCallOptions(opts)
	if err != nil {
		return err
	}
	var replyHeader broker.Header
	callOpts := cc.rpcCallOptions(ctx, co, method, service, name, &replyHeader)
	mh := method
	if cc.short {
		mh = name
	}
	err = cc.client.Call(ctx, cc.subject(service), mh, args, reply, callOpts...)
	if len(co.headerAddr) > 0 || len(co.trailerAddr) > 0 {
		if merr := co.setMetadata(replyHeader); merr != nil && err == nil {
			return status.Errorf(codes.Internal, "mqgrpc: reply to %s: %v", method, merr)
		}
	}
	if err != nil {
		return callError(err)
	}
	return nil
}

// callOptions are the grpc.CallOptions a ClientConn honours.
type callOptions struct {
	headerAddr, trailerAddr []*metadata.MD
	cd                      codec.Codec
	extra                   []rpc.CallOption
}

func parseCallOptions(opts []grpc.CallOption) (callOptions, error) {
	var co callOptions
	for _, o := range opts {
		switch o := o.(type) {
		case grpc.HeaderCallOption:
			co.headerAddr = append(co.headerAddr, o.HeaderAddr)
		case grpc.TrailerCallOption:
			co.trailerAddr = append(co.trailerAddr, o.TrailerAddr)
		case grpc.ContentSubtypeCallOption:
			sub := strings.ToLower(o.ContentSubtype)
			if isProtoSubtype(sub) {
				co.cd = nil
				continue
			}
			c := encoding.GetCodecV2(sub)
			if c == nil {
				return co, status.Errorf(codes.Internal, "mqgrpc: no codec registered for content-subtype %q", sub)
			}
			co.cd = grpcCodec{name: ContentTypeGRPCPrefix + sub, c: c}
		case grpc.ForceCodecV2CallOption:
			co.cd = grpcCodec{name: ContentTypeGRPCPrefix + strings.ToLower(o.CodecV2.Name()), c: o.CodecV2}
		case grpc.ForceCodecCallOption:
			co.cd = codecV1{name: ContentTypeGRPCPrefix + strings.ToLower(o.Codec.Name()), c: o.Codec}
		case RPCCallOption:
			co.extra = append(co.extra, o.Options...)
		}
	}
	return co, nil
}

// rpcCallOptions are the mqrpc call options of a call of method.
func (cc *ClientConn) rpcCallOptions(ctx context.Context, co callOptions, method, service, name string, replyHeader *broker.Header) []rpc.CallOption {
	callOpts := make([]rpc.CallOption, 0, 4+len(co.extra))
	callOpts = append(callOpts, co.extra...) // first, so ours win
	callOpts = append(callOpts, rpc.WithReplyHeader(replyHeader))
	if cc.isIdempotent(method, service, name) {
		callOpts = append(callOpts, rpc.Idempotent())
	}
	if co.cd != nil {
		callOpts = append(callOpts, rpc.WithCallCodec(co.cd))
	}
	if md, ok := metadata.FromOutgoingContext(ctx); ok && len(md) > 0 {
		h := make(broker.Header, len(md))
		putMetadata(h, md, "")
		for k, v := range h {
			callOpts = append(callOpts, rpc.WithHeader(k, v))
		}
	}
	return callOpts
}

// setMetadata stores the header and trailer metadata of a reply where the
// grpc.Header and grpc.Trailer options asked.
func (co callOptions) setMetadata(replyHeader broker.Header) error {
	header, trailer, err := replyMetadata(replyHeader)
	for _, p := range co.headerAddr {
		*p = header
	}
	for _, p := range co.trailerAddr {
		*p = trailer
	}
	return err
}

// isIdempotent reports whether the proto definition of a method declares
// it safe to repeat (option idempotency_level = IDEMPOTENT or
// NO_SIDE_EFFECTS), looking it up in the global proto registry that
// generated code registers with.
func (cc *ClientConn) isIdempotent(full, service, method string) bool {
	if v, ok := cc.idempotent.Load(full); ok {
		return v.(bool)
	}
	idem := false
	if d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(service)); err == nil {
		if sd, ok := d.(protoreflect.ServiceDescriptor); ok {
			if md := sd.Methods().ByName(protoreflect.Name(method)); md != nil {
				if o, ok := md.Options().(*descriptorpb.MethodOptions); ok {
					idem = o.GetIdempotencyLevel() != descriptorpb.MethodOptions_IDEMPOTENCY_UNKNOWN
				}
			}
		}
	}
	cc.idempotent.Store(full, idem)
	return idem
}

// RPCCallOption is a grpc.CallOption that carries mqrpc call options
// (rpc.Idempotent, rpc.WithMessageID, rpc.WithHeader, ...) to a call made
// through a ClientConn, for the mqrpc middleware of WithClientMiddleware
// to see. Other grpc.ClientConnInterface implementations ignore it.
//
// A method whose proto definition declares option idempotency_level
// (IDEMPOTENT or NO_SIDE_EFFECTS) is marked rpc.Idempotent without it.
type RPCCallOption struct {
	grpc.EmptyCallOption
	// Options are applied before the ClientConn's own, which set the
	// reply header, codec and metadata headers of the call.
	Options []rpc.CallOption
}

// CallOptions returns an RPCCallOption carrying opts:
//
//	client.SayHello(ctx, in, mqgrpc.CallOptions(rpc.Idempotent(), rpc.WithMessageID(id)))
func CallOptions(opts ...rpc.CallOption) RPCCallOption { return RPCCallOption{Options: opts} }

// splitMethod splits "/package.Service/Method" into its service and method.
func splitMethod(fullMethod string) (service, method string, ok bool) {
	s, found := strings.CutPrefix(fullMethod, "/")
	if !found {
		return "", "", false
	}
	i := strings.LastIndexByte(s, '/')
	if i <= 0 || i == len(s)-1 {
		return "", "", false
	}
	return s[:i], s[i+1:], true
}
