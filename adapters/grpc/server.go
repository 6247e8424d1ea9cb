package grpc

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/codec"
	"github.com/mqrpc/mqrpc/rpc"
)

// Errors of service registration. Test with errors.Is.
var (
	// ErrDuplicateService means a service name was registered twice.
	ErrDuplicateService = errors.New("mqgrpc: service already registered")
	// ErrInvalidService means a service description or implementation
	// cannot be served: a nil description, or an implementation that does
	// not implement the description's HandlerType.
	ErrInvalidService = errors.New("mqgrpc: invalid service")
	// ErrNoServices means Serve was called before any service was
	// registered.
	ErrNoServices = errors.New("mqgrpc: no services registered")
)

// Server is a grpc.ServiceRegistrar whose services are served over a
// broker: register services with generated RegisterXxxServer functions,
// then call Serve. A Server is also a broker.Handler that dispatches to
// every registered service by the mqrpc-method header, for serving it on
// a subject of your choice.
//
// Unary and streaming methods are served (see the package doc), with the
// unary and stream interceptors of WithUnaryServerInterceptor and
// WithStreamServerInterceptor. Handlers receive a ctx with the
// caller's deadline and metadata (metadata.FromIncomingContext), and
// grpc.Method, grpc.SetHeader, grpc.SendHeader and grpc.SetTrailer work on
// it.
//
// A Server is safe for concurrent use. Register services before Serve; a
// service registered later is served by ServeMessage but gets no
// subscription of its own.
type Server struct {
	cfg               serverConfig
	interceptor       grpc.UnaryServerInterceptor
	streamInterceptor grpc.StreamServerInterceptor

	mu       sync.Mutex // serializes registration
	services map[string]*service
	errs     []error
	all      atomic.Pointer[dispatcher] // every service, for ServeMessage
}

var (
	_ grpc.ServiceRegistrar = (*Server)(nil)
	_ broker.Handler        = (*Server)(nil)
)

type service struct {
	name    string
	impl    any
	methods map[string]*grpc.MethodDesc
	streams map[string]*grpc.StreamDesc
	meta    any
}

// NewServer returns a Server with no services.
func NewServer(opts ...ServerOption) *Server {
	cfg := serverConfig{subject: defaultSubject}
	for _, o := range opts {
		o.applyToServer(&cfg)
	}
	s := &Server{
		cfg:               cfg,
		interceptor:       chain(cfg.interceptors, joinUnaryServer),
		streamInterceptor: chain(cfg.streamInts, joinStreamServer),
		services:          map[string]*service{},
	}
	s.all.Store(s.newDispatcher(nil))
	return s
}

// RegisterService registers a service and its implementation, as generated
// RegisterXxxServer functions do. It implements grpc.ServiceRegistrar,
// which has no way to report an error: an invalid or duplicate
// registration is kept and returned by Serve. Use Register to see the
// error at once.
func (s *Server) RegisterService(desc *grpc.ServiceDesc, impl any) {
	if err := s.Register(desc, impl); err != nil {
		s.mu.Lock()
		s.errs = append(s.errs, err)
		s.mu.Unlock()
	}
}

// Register registers a service and its implementation, like
// RegisterService, and returns an error wrapping ErrDuplicateService or
// ErrInvalidService when the service cannot be registered.
func (s *Server) Register(desc *grpc.ServiceDesc, impl any) error {
	if desc == nil || desc.ServiceName == "" {
		return fmt.Errorf("%w: no service description or name", ErrInvalidService)
	}
	if impl != nil && desc.HandlerType != nil {
		ht := reflect.TypeOf(desc.HandlerType)
		if ht.Kind() == reflect.Pointer {
			ht = ht.Elem()
		}
		if ht.Kind() == reflect.Interface && !reflect.TypeOf(impl).Implements(ht) {
			return fmt.Errorf("%w: %s: %T does not implement %v", ErrInvalidService, desc.ServiceName, impl, ht)
		}
	}
	svc := &service{
		name:    desc.ServiceName,
		impl:    impl,
		methods: make(map[string]*grpc.MethodDesc, len(desc.Methods)),
		streams: make(map[string]*grpc.StreamDesc, len(desc.Streams)),
		meta:    desc.Metadata,
	}
	for i := range desc.Methods {
		svc.methods[desc.Methods[i].MethodName] = &desc.Methods[i]
	}
	for i := range desc.Streams {
		svc.streams[desc.Streams[i].StreamName] = &desc.Streams[i]
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, dup := s.services[svc.name]; dup {
		return fmt.Errorf("%w: %s", ErrDuplicateService, svc.name)
	}
	s.services[svc.name] = svc
	all := make([]*service, 0, len(s.services))
	for _, v := range s.services {
		all = append(all, v)
	}
	s.all.Store(s.newDispatcher(all))
	return nil
}

// GetServiceInfo returns the registered services and their methods, keyed
// by service name, as grpc.Server.GetServiceInfo does.
func (s *Server) GetServiceInfo() map[string]grpc.ServiceInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	info := make(map[string]grpc.ServiceInfo, len(s.services))
	for name, svc := range s.services {
		var ms []grpc.MethodInfo
		for m := range svc.methods {
			ms = append(ms, grpc.MethodInfo{Name: m})
		}
		for m, d := range svc.streams {
			ms = append(ms, grpc.MethodInfo{Name: m, IsClientStream: d.ClientStreams, IsServerStream: d.ServerStreams})
		}
		sort.Slice(ms, func(i, j int) bool { return ms[i].Name < ms[j].Name })
		info[name] = grpc.ServiceInfo{Methods: ms, Metadata: svc.meta}
	}
	return info
}

// Serve serves every registered service on b, one subscription per
// subject (the service name, or what WithSubject gives; services mapped
// to the same subject share it), with opts applied to each. The returned
// Subscription stops them all. Serve returns the errors of earlier
// RegisterService calls, and ErrNoServices when there is nothing to serve.
func (s *Server) Serve(b broker.Broker, opts ...broker.ServeOption) (broker.Subscription, error) {
	s.mu.Lock()
	if len(s.errs) > 0 {
		err := errors.Join(s.errs...)
		s.mu.Unlock()
		return nil, err
	}
	bySubject := map[string][]*service{}
	for _, svc := range s.services {
		subj := s.cfg.subject(svc.name)
		bySubject[subj] = append(bySubject[subj], svc)
	}
	s.mu.Unlock()
	if len(bySubject) == 0 {
		return nil, ErrNoServices
	}
	subjects := make([]string, 0, len(bySubject))
	for subj := range bySubject {
		subjects = append(subjects, subj)
	}
	sort.Strings(subjects)
	subs := make(subscriptions, 0, len(subjects))
	for _, subj := range subjects {
		sub, err := b.Serve(subj, s.newDispatcher(bySubject[subj]), opts...)
		if err != nil {
			_ = subs.Stop(context.Background())
			return nil, fmt.Errorf("mqgrpc: serve %s: %w", subj, err)
		}
		subs = append(subs, sub)
	}
	return subs, nil
}

// ServeMessage serves one request for any registered service. It
// implements broker.Handler.
func (s *Server) ServeMessage(ctx context.Context, req *broker.Message) (*broker.Message, error) {
	return s.all.Load().ServeMessage(ctx, req)
}

// subscriptions stops several subscriptions as one.
type subscriptions []broker.Subscription

func (ss subscriptions) Stop(ctx context.Context) error {
	var errs []error
	for _, sub := range ss {
		if err := sub.Stop(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// dispatcher serves the requests of a fixed set of services.
type dispatcher struct {
	s        *Server
	services map[string]*service
	short    map[string][]*service // bare method name -> services having it
	handler  broker.Handler
}

func (s *Server) newDispatcher(svcs []*service) *dispatcher {
	d := &dispatcher{s: s, services: make(map[string]*service, len(svcs)), short: map[string][]*service{}}
	for _, svc := range svcs {
		d.services[svc.name] = svc
		for m := range svc.methods {
			d.short[m] = append(d.short[m], svc)
		}
		for m := range svc.streams {
			d.short[m] = append(d.short[m], svc)
		}
	}
	d.handler = rpc.Chain(rpc.ServerSide, broker.HandlerFunc(d.dispatch), s.cfg.middleware...)
	return d
}

// ServeMessage runs the middleware and the dispatcher and turns an
// *rpc.Error from middleware into an error reply, as rpc.Server does.
func (d *dispatcher) ServeMessage(ctx context.Context, req *broker.Message) (*broker.Message, error) {
	reply, err := d.handler.ServeMessage(ctx, req)
	if err != nil {
		var e *rpc.Error
		if errors.As(err, &e) {
			return rpc.ErrorReply(e), nil
		}
		return nil, err
	}
	return reply, nil
}

// lookup finds the method a request names, full or bare.
func (d *dispatcher) lookup(name string) (svc *service, method string, st *status.Status) {
	if name == "" {
		return nil, "", status.Newf(codes.InvalidArgument, "mqgrpc: request has no %s header", broker.HeaderMethod)
	}
	if strings.HasPrefix(name, "/") {
		sname, m, ok := splitMethod(name)
		if !ok {
			return nil, "", status.Newf(codes.Unimplemented, "mqgrpc: malformed method name %q", name)
		}
		svc = d.services[sname]
		if svc == nil {
			return nil, "", status.Newf(codes.Unimplemented, "unknown service %s", sname)
		}
		return svc, m, nil
	}
	switch svcs := d.short[name]; len(svcs) {
	case 0:
		return nil, "", status.Newf(codes.Unimplemented, "unknown method %s", name)
	case 1:
		return svcs[0], name, nil
	default:
		names := make([]string, len(svcs))
		for i, v := range svcs {
			names[i] = v.name
		}
		sort.Strings(names)
		return nil, "", status.Newf(codes.InvalidArgument,
			"mqgrpc: method name %s is ambiguous here (services %s); send the full method /service/%s",
			name, strings.Join(names, ", "), name)
	}
}

// dispatch serves one request; failures become error replies carrying the
// status, its details and the metadata set so far.
func (d *dispatcher) dispatch(ctx context.Context, req *broker.Message) (*broker.Message, error) {
	svc, name, st := d.lookup(req.Header.Get(broker.HeaderMethod))
	if st != nil {
		return statusReply(st, nil, nil), nil
	}
	full := "/" + svc.name + "/" + name
	md := svc.methods[name]
	if md == nil {
		if rep, ok := d.streamMethod(ctx, req, svc, name, full); ok {
			return rep, nil // stream.go
		}
		return statusReply(status.Newf(codes.Unimplemented, "unknown method %s for service %s", name, svc.name), nil, nil), nil
	}
	ct := codec.MediaType(req.Header.Get(broker.HeaderContentType))
	cd, ok := serverCodec(ct)
	if !ok {
		return statusReply(status.Newf(codes.InvalidArgument,
			"mqgrpc: unsupported content type %q for %s (accepted: %s, application/grpc+<registered gRPC codec>)",
			ct, full, ContentTypeProto), nil, nil), nil
	}
	if ct == "" {
		ct = ContentTypeProto
	}
	if !req.Deadline.IsZero() {
		if req.Expired(time.Now()) {
			return statusReply(status.Newf(codes.DeadlineExceeded, "mqgrpc: deadline passed before %s was served", full), nil, nil), nil
		}
		if dl, ok := ctx.Deadline(); !ok || req.Deadline.Before(dl) {
			var cancel context.CancelFunc
			ctx, cancel = context.WithDeadline(ctx, req.Deadline)
			defer cancel()
		}
	}
	inMD, err := requestMetadata(req.Header)
	if err != nil {
		return statusReply(status.Newf(codes.InvalidArgument, "mqgrpc: %s: %v", full, err), nil, nil), nil
	}
	stream := &transportStream{method: full}
	ctx = metadata.NewIncomingContext(ctx, inMD)
	ctx = grpc.NewContextWithServerTransportStream(ctx, stream)
	dec := func(v any) error {
		if err := cd.Unmarshal(req.Body, v); err != nil {
			return status.Errorf(codes.InvalidArgument, "mqgrpc: decode %s request as %s: %v", full, ct, err)
		}
		return nil
	}
	resp, err := d.s.call(ctx, svc, md, full, dec)
	header, trailer := stream.finish()
	if err != nil {
		return statusReply(statusOf(err), header, trailer), nil
	}
	body, err := cd.Marshal(resp)
	if err != nil {
		return statusReply(status.Newf(codes.Internal, "mqgrpc: encode %s reply as %s: %v", full, ct, err), header, trailer), nil
	}
	h := make(broker.Header, 1+len(header)+len(trailer))
	putMetadata(h, header, "")
	putMetadata(h, trailer, TrailerPrefix)
	h[broker.HeaderContentType] = ct
	return &broker.Message{Header: h, Body: body}, nil
}

// call runs a method handler with the interceptors, recovering a panic.
func (s *Server) call(ctx context.Context, svc *service, md *grpc.MethodDesc, full string, dec func(any) error) (resp any, err error) {
	defer func() {
		if r := recover(); r != nil {
			resp, err = nil, status.Errorf(codes.Internal, "mqgrpc: panic in %s: %v", full, r)
		}
	}()
	return md.Handler(svc.impl, ctx, dec, s.interceptor)
}

// statusReply is an error reply with st, its details, and the metadata.
func statusReply(st *status.Status, header, trailer metadata.MD) *broker.Message {
	h := make(broker.Header, 3+len(header)+len(trailer))
	putMetadata(h, header, "")
	putMetadata(h, trailer, TrailerPrefix)
	putStatus(h, st)
	return &broker.Message{Header: h}
}

// transportStream is the grpc.ServerTransportStream of one request: it
// collects the header and trailer metadata for the reply.
type transportStream struct {
	method string

	mu              sync.Mutex
	header, trailer metadata.MD
	headerSent      bool // SetHeader fails
	sentEarly       bool // a stream's first message carried the header
	done            bool
}

var _ grpc.ServerTransportStream = (*transportStream)(nil)

func (t *transportStream) Method() string { return t.method }

func (t *transportStream) SetHeader(md metadata.MD) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.headerSent || t.done {
		return status.Errorf(codes.Internal, "mqgrpc: %s: SetHeader after the header was sent", t.method)
	}
	t.header = metadata.Join(t.header, md)
	return nil
}

// SendHeader fixes the header metadata. Over a broker the header travels
// with the reply (and with a stream's first message), so nothing is sent
// at once.
func (t *transportStream) SendHeader(md metadata.MD) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.headerSent || t.done {
		return status.Errorf(codes.Internal, "mqgrpc: %s: SendHeader called twice or after the reply", t.method)
	}
	t.header = metadata.Join(t.header, md)
	t.headerSent = true
	return nil
}

func (t *transportStream) SetTrailer(md metadata.MD) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.done {
		return status.Errorf(codes.Internal, "mqgrpc: %s: SetTrailer after the reply", t.method)
	}
	t.trailer = metadata.Join(t.trailer, md)
	return nil
}

// sendHeader marks the header metadata sent and returns it, with whether
// this call sent it (SendHeader or an earlier call did not).
func (t *transportStream) sendHeader() (metadata.MD, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.sentEarly || t.done {
		return nil, false
	}
	t.sentEarly, t.headerSent = true, true
	return t.header, true
}

// finish ends the stream and returns its metadata.
func (t *transportStream) finish() (header, trailer metadata.MD) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.done = true
	return t.header, t.trailer
}
