package rpc

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/semaphore"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/stream"
	"github.com/mqrpc/mqrpc/codec"
	jsoncodec "github.com/mqrpc/mqrpc/codec/json"
)

// Client calls services over a broker. It is safe for concurrent use; make
// one per broker and share it.
type Client struct {
	b        broker.Broker
	codec    codec.Codec
	timeout  time.Duration
	handler  broker.Handler // nil without middleware: calls go to the broker
	maxSize  int
	inflight *semaphore.Weighted // nil: unlimited
	stream   stream.Config       // stream.go

	// Without middleware nothing changes a request's header after it is
	// made (brokers treat it as read-only, see broker.Broker), so calls
	// without header options share one header per method.
	headersMu sync.Mutex
	headers   atomic.Pointer[map[string]broker.Header]
}

// maxSharedHeaders bounds the shared request headers of a client: one per
// method called, which a gateway forwarding arbitrary method names could
// otherwise grow without end.
const maxSharedHeaders = 256

// sharedHeader returns the request header of calls to method in the
// client's codec, made once and then shared (read-only) by every such
// call, or nil when the client holds maxSharedHeaders already.
func (c *Client) sharedHeader(method string) broker.Header {
	if m := c.headers.Load(); m != nil {
		if h, ok := (*m)[method]; ok {
			return h
		}
	}
	c.headersMu.Lock()
	defer c.headersMu.Unlock()
	var old map[string]broker.Header
	if m := c.headers.Load(); m != nil {
		old = *m
	}
	if h, ok := old[method]; ok {
		return h
	}
	if len(old) >= maxSharedHeaders {
		return nil
	}
	h := broker.Header{broker.HeaderMethod: method, broker.HeaderContentType: c.codec.Name()}
	m := make(map[string]broker.Header, len(old)+1)
	for k, v := range old {
		m[k] = v
	}
	m[method] = h
	c.headers.Store(&m)
	return h
}

type clientConfig struct {
	codec       codec.Codec
	timeout     time.Duration
	middleware  []Middleware
	maxSize     int
	maxInFlight int
	stream      stream.Config // stream.go
}

// WithMaxInFlight limits the calls in flight on the client to n: further
// calls wait for a free slot until their ctx ends (then they fail with the
// ctx's code), so a client cannot flood the broker. Default 0: no limit.
func WithMaxInFlight(n int) ClientOption {
	return clientOptionFunc(func(c *clientConfig) { c.maxInFlight = n })
}

// defaultCodec is the codec of both sides unless WithCodec says otherwise.
var defaultCodec codec.Codec = jsoncodec.Codec{}

// WithTimeout sets the timeout of calls whose ctx has no deadline. Default:
// 30s. Zero or less means no default timeout (calls then wait as long as
// their ctx, which a broker without replies could make forever).
func WithTimeout(d time.Duration) ClientOption {
	return clientOptionFunc(func(cfg *clientConfig) { cfg.timeout = d })
}

// WithClientMiddleware wraps the broker round trip in mw, the first
// outermost. Calling it again appends. NewClient panics when one of them
// is server-only middleware (see ServerOnly).
func WithClientMiddleware(mw ...Middleware) ClientOption {
	return clientOptionFunc(func(cfg *clientConfig) { cfg.middleware = append(cfg.middleware, mw...) })
}

// NewClient returns a client that sends its calls through b. The client
// does not own b: closing b is the caller's business.
func NewClient(b broker.Broker, opts ...ClientOption) *Client {
	cfg := clientConfig{codec: defaultCodec, timeout: 30 * time.Second, maxSize: DefaultMaxMessageSize}
	for _, o := range opts {
		o.applyToClient(&cfg)
	}
	c := &Client{b: b, codec: cfg.codec, timeout: cfg.timeout, maxSize: cfg.maxSize, stream: cfg.stream}
	if cfg.maxInFlight > 0 {
		c.inflight = semaphore.NewWeighted(int64(cfg.maxInFlight))
	}
	if len(cfg.middleware) > 0 {
		c.handler = Chain(ClientSide, broker.HandlerFunc(c.roundTrip), cfg.middleware...)
	}
	return c
}

// CallOption configures one call.
type CallOption func(*callConfig)

type callConfig struct {
	err         error // from an option: the call fails with it
	header      broker.Header
	id          string
	idempotent  bool
	replyHeader *broker.Header
	codec       codec.Codec
}

// WithHeader adds a request header. Names are case-insensitive. The names
// of the wire protocol (see ReservedHeader) are refused: the call fails
// with InvalidArgument wrapping ErrReservedHeader, before anything is
// sent.
func WithHeader(name, value string) CallOption {
	return func(c *callConfig) {
		if ReservedHeader(name) {
			if c.err == nil {
				c.err = Errorf(InvalidArgument, "header %q: %w", name, ErrReservedHeader)
			}
			return
		}
		if c.header == nil {
			c.header = make(broker.Header, 2)
		}
		c.header.Set(name, value)
	}
}

// WithMessageID sets the request's message ID, the deduplication key.
// Default: a fresh ID per call, kept across retries of that call.
func WithMessageID(id string) CallOption { return func(c *callConfig) { c.id = id } }

// Idempotent marks the call safe to execute more than once, which lets
// retry middleware repeat it.
func Idempotent() CallOption { return func(c *callConfig) { c.idempotent = true } }

// WithReplyHeader stores the reply's headers in *h when the call returns
// a reply (also an error reply).
func WithReplyHeader(h *broker.Header) CallOption { return func(c *callConfig) { c.replyHeader = h } }

// WithCallCodec encodes this call with cd instead of the client's codec.
func WithCallCodec(cd codec.Codec) CallOption { return func(c *callConfig) { c.codec = cd } }

// Call invokes method of service with in and decodes the reply into out
// (out may be nil to discard it). The error, if any, is an *Error: a wire
// error from the server, or a local one wrapping the broker's error (so
// errors.Is(err, broker.ErrNoResponders) works).
func (c *Client) Call(ctx context.Context, service, method string, in, out any, opts ...CallOption) error {
	return c.do(ctx, service, method, in, out, false, opts)
}

// Notify sends a one-way request: the server runs method with in, and no
// reply comes back. It returns once the broker accepted the message.
func (c *Client) Notify(ctx context.Context, service, method string, in any, opts ...CallOption) error {
	return c.do(ctx, service, method, in, nil, true, opts)
}

// callState is what one call puts on the heap, in one allocation: the
// ctx the middleware chain sees and the request message.
type callState struct {
	ctx callCtx
	msg broker.Message
}

// applyCallOptions applies opts to cfg. It is a function of its own so
// that only calls with options pay for cfg escaping to the heap.
func applyCallOptions(cfg callConfig, opts []CallOption) callConfig {
	p := &cfg
	for _, o := range opts {
		o(p)
	}
	return *p
}

func (c *Client) do(ctx context.Context, service, method string, in, out any, oneWay bool, opts []CallOption) error {
	cfg := callConfig{codec: c.codec}
	if len(opts) > 0 {
		if cfg = applyCallOptions(cfg, opts); cfg.err != nil {
			return cfg.err
		}
	}
	body, err := cfg.codec.Marshal(in)
	if err != nil {
		return Errorf(InvalidArgument, "encode %s.%s request as %s: %w", service, method, cfg.codec.Name(), err)
	}
	if c.maxSize >= 0 && len(body) > c.maxSize {
		return Errorf(ResourceExhausted, "%s.%s request of %d bytes exceeds the limit of %d: %w",
			service, method, len(body), c.maxSize, broker.ErrMessageTooLarge)
	}
	var h broker.Header
	if len(opts) == 0 && c.handler == nil {
		h = c.sharedHeader(method)
	}
	if h == nil {
		h = cfg.header
		if h == nil {
			h = make(broker.Header, 2)
		}
		h[broker.HeaderMethod] = method
		h[broker.HeaderContentType] = cfg.codec.Name()
	}
	id := cfg.id
	if id == "" {
		id = broker.NewID()
	}
	if c.timeout > 0 {
		if _, ok := ctx.Deadline(); !ok {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, c.timeout)
			defer cancel()
		}
	}
	if c.inflight != nil {
		if err := c.inflight.Acquire(ctx, 1); err != nil {
			return NewError(CodeOf(err), fmt.Errorf("%s.%s: waiting for a free in-flight slot: %w", service, method, err))
		}
		defer c.inflight.Release(1)
	}
	var reply *broker.Message
	if c.handler == nil {
		msg := &broker.Message{ID: id, Subject: service, Header: h, Body: body}
		msg.Deadline, _ = ctx.Deadline()
		reply, err = c.send(ctx, msg, oneWay)
	} else {
		st := &callState{msg: broker.Message{ID: id, Subject: service, Header: h, Body: body}}
		st.msg.Deadline, _ = ctx.Deadline()
		st.ctx = callCtx{Context: ctx, info: CallInfo{Service: service, Method: method, Idempotent: cfg.idempotent, OneWay: oneWay}}
		reply, err = c.handler.ServeMessage(&st.ctx, &st.msg)
	}
	if cfg.replyHeader != nil && reply != nil {
		*cfg.replyHeader = reply.Header
	}
	if err != nil {
		return asError(err)
	}
	if oneWay || out == nil || reply == nil {
		return nil
	}
	if c.maxSize >= 0 && len(reply.Body) > c.maxSize {
		return Errorf(ResourceExhausted, "%s.%s reply of %d bytes exceeds the limit of %d: %w",
			service, method, len(reply.Body), c.maxSize, broker.ErrMessageTooLarge)
	}
	rc := cfg.codec
	if ct := reply.Header.Get(broker.HeaderContentType); ct != "" && codec.MediaType(ct) != codec.MediaType(rc.Name()) {
		return Errorf(Internal, "reply to %s.%s has content type %q, want %q", service, method, ct, rc.Name())
	}
	if err := rc.Unmarshal(reply.Body, out); err != nil {
		return Errorf(Internal, "decode %s.%s reply as %s: %w", service, method, rc.Name(), err)
	}
	return nil
}

// roundTrip is the innermost client handler: it sends through the broker
// and turns an error reply into an error. The reply is returned along
// with its error so middleware can read its headers.
func (c *Client) roundTrip(ctx context.Context, msg *broker.Message) (*broker.Message, error) {
	ci, ok := ctx.Value(callInfoKey{}).(*CallInfo)
	return c.send(ctx, msg, ok && ci.OneWay)
}

// send is roundTrip once it is known whether the call is one-way; a client
// without middleware calls it directly.
func (c *Client) send(ctx context.Context, msg *broker.Message, oneWay bool) (*broker.Message, error) {
	if oneWay {
		return nil, c.b.Send(ctx, msg)
	}
	reply, err := c.b.Request(ctx, msg)
	if err != nil {
		return nil, err
	}
	if err := ErrorFromReply(reply); err != nil {
		return reply, err
	}
	return reply, nil
}

// Invoke is the typed form of Client.Call: it calls method of service with
// in and returns the decoded reply. Its type parameters are in the order
// of Handle's and NewMethod's: request, then reply.
func Invoke[Req, Res any](ctx context.Context, c *Client, service, method string, in *Req, opts ...CallOption) (*Res, error) {
	out := new(Res)
	if err := c.Call(ctx, service, method, in, out, opts...); err != nil {
		return nil, err
	}
	return out, nil
}

// Method is a typed client stub for one method: call it like a function.
//
//	add := rpc.NewMethod[AddRequest, AddReply](client, "Calculator", "Add")
//	sum, err := add(ctx, &AddRequest{A: 1, B: 2})
type Method[Req, Res any] func(ctx context.Context, in *Req, opts ...CallOption) (*Res, error)

// NewMethod returns a typed stub for method of service on c.
func NewMethod[Req, Res any](c *Client, service, method string) Method[Req, Res] {
	return func(ctx context.Context, in *Req, opts ...CallOption) (*Res, error) {
		return Invoke[Req, Res](ctx, c, service, method, in, opts...)
	}
}

// ErrReservedHeader is wrapped by the error of a call given a header name
// that mqrpc sets itself (see WithHeader).
var ErrReservedHeader = errors.New("rpc: reserved header name")

// reservedHeaders are the header names of the wire protocol
// (docs/PROTOCOL.md), which mqrpc and its brokers set themselves.
var reservedHeaders = map[string]bool{
	broker.HeaderContentType: true, broker.HeaderMethod: true, broker.HeaderDeadline: true,
	broker.HeaderStatus: true, broker.HeaderStatusMessage: true, HeaderDetails: true,
	// broker/nats (JetStream) and broker/rocketmq markers
	"mqrpc-reply": true, "mqrpc-empty-body": true, "mqrpc-topic-init": true,
	"mqrpc-dead-reason": true, "mqrpc-deliveries": true,
	// streams (broker/stream)
	stream.HeaderStream: true, stream.HeaderInbox: true, stream.HeaderHeartbeat: true,
	stream.HeaderFrame: true, stream.HeaderSeq: true, stream.HeaderCredit: true, stream.HeaderBatch: true,
}

// ReservedHeader reports whether name (case-insensitive) is a header of
// the wire protocol that mqrpc sets itself: content-type, mqrpc-method,
// mqrpc-deadline, mqrpc-status, mqrpc-message, mqrpc-details and the
// brokers' own markers (docs/PROTOCOL.md). Middleware headers such as
// mqrpc-version or mqrpc-caller are not reserved.
func ReservedHeader(name string) bool { return reservedHeaders[strings.ToLower(name)] }
