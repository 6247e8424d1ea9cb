package rpc

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

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/codec"
)

// Server dispatches requests to typed method handlers by the mqrpc-method
// header. A Server is a broker.Handler, so any broker serves it:
//
//	srv := rpc.NewServer()
//	rpc.Handle(srv, "Add", add)
//	sub, err := b.Serve("Calculator", srv)
//
// Methods may be registered at any time, also while serving. A Server is
// safe for concurrent use.
type Server struct {
	codecs       map[string]codec.Codec
	defaultCodec codec.Codec
	accepted     string // for error messages
	handler      broker.Handler
	maxSize      int
	maxHeader    int
	window       int // stream.go

	mu      sync.Mutex // serializes registration
	methods atomic.Pointer[map[string]method]
	types   sync.Map // method name -> [2]reflect.Type, for Describe (serve.go)
}

// method is a registered method: call decodes a request body, calls the
// typed handler and encodes the reply. A raw method (HandleRaw) takes the
// body as is, whatever its content type, and call gets a nil codec.
type method struct {
	call func(ctx context.Context, cd codec.Codec, body []byte) ([]byte, error)
	raw  bool
}

type serverConfig struct {
	codec      codec.Codec // for requests without a content type
	codecs     []codec.Codec
	middleware []Middleware
	maxSize    int
	maxHeader  int
	window     int // stream.go
}

// DefaultMaxMessageSize is the default limit on request and reply bodies,
// on both the client and the server.
const DefaultMaxMessageSize = 16 << 20

// DefaultMaxHeaderBytes is the default limit on the total size of a
// request's header names and values on the server.
const DefaultMaxHeaderBytes = 64 << 10

// WithMaxHeaderBytes limits the total size of a request's header names and
// values to n bytes; a larger header is answered with ResourceExhausted.
// Default DefaultMaxHeaderBytes; n < 0 means no limit.
func WithMaxHeaderBytes(n int) ServerOption {
	return serverOptionFunc(func(c *serverConfig) { c.maxHeader = n })
}

// WithCodecs adds codecs to the ones the server accepts, JSON and the
// codec of WithCodec; replies use the codec of the request. Calling it
// again adds more.
func WithCodecs(codecs ...codec.Codec) ServerOption {
	return serverOptionFunc(func(c *serverConfig) { c.codecs = append(c.codecs, codecs...) })
}

// WithServerMiddleware wraps the method dispatcher in mw, the first
// outermost. Calling it again appends. NewServer panics when one of them
// is client-only middleware (see ClientOnly).
func WithServerMiddleware(mw ...Middleware) ServerOption {
	return serverOptionFunc(func(c *serverConfig) { c.middleware = append(c.middleware, mw...) })
}

// NewServer returns a server with no methods. It accepts JSON and the
// codecs of WithCodec and WithCodecs; a request without a content type is
// in the WithCodec codec (default JSON).
func NewServer(opts ...ServerOption) *Server {
	cfg := serverConfig{codec: defaultCodec, maxSize: DefaultMaxMessageSize, maxHeader: DefaultMaxHeaderBytes}
	for _, o := range opts {
		o.applyToServer(&cfg)
	}
	cfg.codecs = append([]codec.Codec{defaultCodec, cfg.codec}, cfg.codecs...)
	s := &Server{
		codecs:       make(map[string]codec.Codec, len(cfg.codecs)),
		defaultCodec: cfg.codec,
		maxSize:      cfg.maxSize,
		maxHeader:    cfg.maxHeader,
		window:       cfg.window,
	}
	names := make([]string, 0, len(cfg.codecs))
	for _, c := range cfg.codecs {
		name := codec.MediaType(c.Name())
		if _, dup := s.codecs[name]; !dup {
			names = append(names, name)
		}
		s.codecs[name] = c
	}
	s.codecs[codec.MediaType(cfg.codec.Name())] = cfg.codec
	sort.Strings(names)
	s.accepted = strings.Join(names, ", ")
	empty := map[string]method{}
	s.methods.Store(&empty)
	s.handler = Chain(ServerSide, broker.HandlerFunc(s.dispatch), cfg.middleware...)
	return s
}

var _ broker.Handler = (*Server)(nil)

// ErrDuplicateMethod is returned when a method name is registered twice.
var ErrDuplicateMethod = errors.New("rpc: method already registered")

// Handle registers fn as the handler of method on s. Req and Res are the
// request and reply types, decoded and encoded with the request's codec
// (for the proto codec they must implement proto.Message).
//
// fn returns an *Error to choose the status code the caller sees; any
// other error reaches the caller as Unknown (context errors as Canceled and
// DeadlineExceeded). A panic in fn is recovered and answered as Internal.
func Handle[Req, Res any](s *Server, name string, fn func(ctx context.Context, req *Req) (*Res, error)) error {
	return s.noteTypes(name, reflect.TypeFor[Req](), reflect.TypeFor[Res](), s.register(name, method{call: func(ctx context.Context, cd codec.Codec, body []byte) ([]byte, error) {
		in := new(Req)
		if err := cd.Unmarshal(body, in); err != nil {
			return nil, Errorf(InvalidArgument, "decode %s request as %s: %w", name, cd.Name(), err)
		}
		out, err := fn(ctx, in)
		if err != nil {
			return nil, err
		}
		return encodeReply(cd, name, out)
	}}))
}

// encodeReply encodes the reply of method name (the zero Res for nil).
func encodeReply[Res any](cd codec.Codec, name string, out *Res) ([]byte, error) {
	if out == nil {
		out = new(Res)
	}
	b, err := cd.Marshal(out)
	if err != nil {
		return nil, Errorf(Internal, "encode %s reply as %s: %w", name, cd.Name(), err)
	}
	return b, nil
}

// HandleRaw registers fn as the handler of method, with the body passed
// as is and no codec involved: the method accepts any content type (or
// none), whatever codecs the server has, and its reply is in the request's
// content type. fn must not retain body.
func HandleRaw(s *Server, name string, fn func(ctx context.Context, body []byte) ([]byte, error)) error {
	return s.register(name, method{raw: true, call: func(ctx context.Context, _ codec.Codec, body []byte) ([]byte, error) {
		return fn(ctx, body)
	}})
}

func (s *Server) register(name string, m method) error {
	if name == "" {
		return errors.New("rpc: empty method name")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	old := *s.methods.Load()
	if _, dup := old[name]; dup {
		return fmt.Errorf("%w: %q", ErrDuplicateMethod, name)
	}
	next := make(map[string]method, len(old)+1)
	for k, v := range old {
		next[k] = v
	}
	next[name] = m
	s.methods.Store(&next)
	return nil
}

// Methods returns the registered method names, sorted.
func (s *Server) Methods() []string {
	m := *s.methods.Load()
	names := make([]string, 0, len(m))
	for k := range m {
		names = append(names, k)
	}
	sort.Strings(names)
	return names
}

// ServeMessage implements broker.Handler. It runs the middleware chain and
// the dispatcher, and turns every error into an error reply: an *Error
// with its code, any other error (from middleware, say) as Unknown, so the
// caller hears at once. Only an error wrapping broker.ErrDeliveryFailed
// fails the delivery instead: the caller gets no reply, and a durable
// broker redelivers the request (or dead-letters it).
func (s *Server) ServeMessage(ctx context.Context, req *broker.Message) (*broker.Message, error) {
	reply, err := s.handler.ServeMessage(ctx, req)
	if err != nil {
		if errors.Is(err, broker.ErrDeliveryFailed) {
			return nil, err
		}
		return withTrailers(ErrorReply(err), err), nil
	}
	return reply, nil
}

// Reject implements broker.Rejecter: it builds the status reply for a
// request the broker rejected (InvalidArgument for a malformed request,
// ResourceExhausted for a message too large, DeadlineExceeded for an
// expired one, Unavailable when the server stopped before it answered).
// The transport writes no status of its own.
func (s *Server) Reject(_ *broker.Message, r *broker.Rejection) *broker.Message {
	return ErrorReply(&Error{code: rejectionCode(r.Reason), err: r})
}

var _ broker.Rejecter = (*Server)(nil)

func (s *Server) dispatch(ctx context.Context, req *broker.Message) (reply *broker.Message, err error) {
	if req.Expired(time.Now()) {
		return nil, Errorf(DeadlineExceeded, "deadline passed before the request was served")
	}
	if s.maxSize >= 0 && len(req.Body) > s.maxSize {
		return nil, Errorf(ResourceExhausted, "request of %d bytes exceeds the server's limit of %d: %w",
			len(req.Body), s.maxSize, broker.ErrMessageTooLarge)
	}
	if s.maxHeader >= 0 {
		if n := headerBytes(req.Header); n > s.maxHeader {
			return nil, Errorf(ResourceExhausted, "request header of %d bytes exceeds the server's limit of %d",
				n, s.maxHeader)
		}
	}
	// The method first: an unknown method is Unimplemented whatever its
	// content type, and a raw method takes any content type.
	name := req.Header.Get(broker.HeaderMethod)
	m, ok := (*s.methods.Load())[name]
	if !ok {
		if name == "" {
			return nil, Errorf(InvalidArgument, "request has no %s header", broker.HeaderMethod)
		}
		return nil, Errorf(Unimplemented, "unknown method %q", name)
	}
	ct := req.Header.Get(broker.HeaderContentType)
	var cd codec.Codec
	if !m.raw {
		cd = s.defaultCodec
		if ct != "" {
			if cd, ok = s.codecs[codec.MediaType(ct)]; !ok {
				return nil, Errorf(InvalidArgument, "unsupported content type %q (accepted: %s)", ct, s.accepted)
			}
		}
	}
	st := &serverCallState{sc: serverCall{Context: ctx, req: req}}
	sc := &st.sc
	defer func() {
		if r := recover(); r != nil {
			reply, err = nil, Errorf(Internal, "panic in method %s: %v", name, r)
		}
	}()
	body, err := m.call(sc, cd, req.Body)
	if err != nil {
		if te, ok := err.(*trailerError); ok {
			return nil, te // a stream's error, with its trailers (stream.go)
		}
		return nil, asError(err)
	}
	if s.maxSize >= 0 && len(body) > s.maxSize {
		return nil, Errorf(ResourceExhausted, "reply of %d bytes exceeds the server's limit of %d: %w",
			len(body), s.maxSize, broker.ErrMessageTooLarge)
	}
	// The reply is in the request's codec; it names it only when the
	// request did not name it the same way (docs/PROTOCOL.md), which
	// spares most replies any header at all. A raw method's reply is in
	// the request's content type, whatever that is, so it names none.
	h := sc.replyHeader
	if cd != nil && ct != cd.Name() {
		if h == nil {
			h = make(broker.Header, 1)
		}
		h[broker.HeaderContentType] = cd.Name()
	} else if h != nil {
		delete(h, broker.HeaderContentType)
	}
	st.reply = broker.Message{Header: h, Body: body}
	return &st.reply, nil
}

// serverCallState is what dispatching one request puts on the heap, in
// one allocation: the handler's call state and the reply message.
type serverCallState struct {
	sc    serverCall
	reply broker.Message
}

func headerBytes(h broker.Header) int {
	n := 0
	for k, v := range h {
		n += len(k) + len(v)
	}
	return n
}
