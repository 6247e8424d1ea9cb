package rpc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"reflect"
	"sync"
	"time"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/stream"
	"github.com/mqrpc/mqrpc/codec"
)

// Streams
//
// A stream method exchanges a sequence of messages instead of one request
// and one reply, in one of three kinds: server streaming (one request,
// many replies: HandleServerStream, InvokeServerStream), client streaming
// (many requests, one reply: HandleClientStream, OpenStream and
// CloseAndRecv) and bidirectional (HandleBidiStream, OpenStream). They
// run on every broker that has inboxes (broker.Streamer: broker/memory,
// broker/nats, broker/amqp, broker/rocketmq), over the stream engine of package broker/stream: messages
// arrive in order, a lost or repeated one ends the stream with DataLoss,
// a slow reader makes the writer wait (credit), a peer that goes away is
// noticed within the heartbeat interval (Unavailable), and a cancel on
// either side stops the other.
//
// The opening request is an ordinary call: it passes the client's and the
// server's middleware, which see the start of the stream, and the
// server's handler returns when the stream ends, so middleware sees the
// end as the call's reply or error. The end carries the status and the
// trailers (headers the handler set with SetReplyHeader). The ctx of the
// caller bounds the whole stream (the client's default timeout, for
// unary calls, does not apply); a stream holds one of the server's
// concurrent handler slots for as long as it runs.

// WithStreamWindow sets how many received stream messages a side holds at
// most, the credit it grants its peer: a client for what its server
// sends, a server for what its clients send. Default 1024
// (stream.DefaultWindow); values below 1 select it.
func WithStreamWindow(n int) Option {
	return bothOption{
		client: func(c *clientConfig) { c.stream.Window = n },
		server: func(c *serverConfig) { c.window = n },
	}
}

// WithHeartbeat sets the liveness interval of the client's streams (the
// server follows the client's): a side that hears nothing from its peer
// for this long ends the stream with Unavailable. Each side pings four
// times per interval. Default 5s (stream.DefaultHeartbeat); at least
// 20ms.
func WithHeartbeat(d time.Duration) ClientOption {
	return clientOptionFunc(func(c *clientConfig) { c.stream.Heartbeat = d })
}

// streamError turns an error of the stream engine into an *Error with its
// code.
func streamError(err error) error {
	if err == nil || err == io.EOF {
		return err
	}
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	switch {
	case errors.Is(err, stream.ErrDataLoss):
		return NewError(DataLoss, err)
	case errors.Is(err, stream.ErrPeerGone):
		return NewError(Unavailable, err)
	case errors.Is(err, stream.ErrCanceled), errors.Is(err, stream.ErrClosed):
		return NewError(Canceled, err)
	case errors.Is(err, stream.ErrProtocol):
		return NewError(Internal, err)
	case errors.Is(err, stream.ErrNotStream):
		return NewError(FailedPrecondition, err)
	}
	return asError(err)
}

// trailerError is a stream handler's error with the reply headers set so
// far (trailers and the stream's count), which Server.ServeMessage puts on
// the error reply.
type trailerError struct {
	err    error
	header broker.Header
}

func (e *trailerError) Error() string { return e.err.Error() }
func (e *trailerError) Unwrap() error { return e.err }

// withTrailers adds the trailers an error carries to its error reply,
// never over the status headers.
func withTrailers(rep *broker.Message, err error) *broker.Message {
	var te *trailerError
	if errors.As(err, &te) {
		for k, v := range te.header {
			if _, set := rep.Header[k]; !set && k != broker.HeaderContentType {
				rep.Header[k] = v
			}
		}
	}
	return rep
}

// ServerStream is the server's side of a client or bidirectional stream:
// Recv reads what the client sends, Send writes to it. Send and Recv may
// be called from two goroutines at once, but each from one at a time.
type ServerStream[Req, Res any] struct {
	st      *stream.Stream
	cd      codec.Codec
	name    string
	maxSize int
}

// Recv returns the client's next message, or io.EOF once the client
// closed its side (CloseSend).
func (s *ServerStream[Req, Res]) Recv() (*Req, error) {
	m, err := s.st.Recv()
	if err != nil {
		return nil, streamError(err)
	}
	if s.maxSize >= 0 && len(m.Body) > s.maxSize {
		return nil, Errorf(ResourceExhausted, "%s stream message of %d bytes exceeds the limit of %d: %w",
			s.name, len(m.Body), s.maxSize, broker.ErrMessageTooLarge)
	}
	in := new(Req)
	if err := s.cd.Unmarshal(m.Body, in); err != nil {
		return nil, Errorf(InvalidArgument, "decode %s stream message as %s: %w", s.name, s.cd.Name(), err)
	}
	return in, nil
}

// Send sends m to the client, waiting while the client has granted no
// credit (it reads slower than the server writes).
func (s *ServerStream[Req, Res]) Send(m *Res) error {
	return sendMsg(s.st, s.cd, s.name, s.maxSize, m)
}

func sendMsg(st *stream.Stream, cd codec.Codec, name string, maxSize int, m any) error {
	if ap, ok := cd.(codec.Appender); ok {
		// Encoded into a buffer of the stream's, reused once posted.
		return streamError(st.SendAppend(nil, func(buf []byte) ([]byte, error) {
			b, err := ap.MarshalAppend(buf, m)
			if err != nil {
				return nil, encodeMsgError(cd, name, err)
			}
			return b, checkMsgSize(name, maxSize, len(b))
		}))
	}
	b, err := cd.Marshal(m)
	if err != nil {
		return encodeMsgError(cd, name, err)
	}
	if err := checkMsgSize(name, maxSize, len(b)); err != nil {
		return err
	}
	return streamError(st.Send(&broker.Message{Body: b}))
}

func encodeMsgError(cd codec.Codec, name string, err error) error {
	return Errorf(Internal, "encode %s stream message as %s: %w", name, cd.Name(), err)
}

func checkMsgSize(name string, maxSize, n int) error {
	if maxSize >= 0 && n > maxSize {
		return Errorf(ResourceExhausted, "%s stream message of %d bytes exceeds the limit of %d: %w",
			name, n, maxSize, broker.ErrMessageTooLarge)
	}
	return nil
}

// HandleServerStream registers fn as the handler of the server-streaming
// method name: fn gets the request and sends the replies with send, which
// waits while the client reads slower (credit) and fails once the stream
// ended (the client cancelled or went away: fn should then return).
// Returning ends the stream: nil as OK, an error with its code, as Handle
// does; both after every message sent.
func HandleServerStream[Req, Res any](s *Server, name string, fn func(ctx context.Context, in *Req, send func(*Res) error) error) error {
	return s.handleStream(name, reflect.TypeFor[Req](), reflect.TypeFor[Res](), func(ctx context.Context, cd codec.Codec, body []byte, st *stream.Stream) ([]byte, error) {
		in := new(Req)
		if err := cd.Unmarshal(body, in); err != nil {
			return nil, Errorf(InvalidArgument, "decode %s request as %s: %w", name, cd.Name(), err)
		}
		return nil, fn(ctx, in, func(m *Res) error { return sendMsg(st, cd, name, s.maxSize, m) })
	})
}

// HandleClientStream registers fn as the handler of the client-streaming
// method name: fn reads the client's messages with st.Recv until io.EOF
// and returns the one reply.
func HandleClientStream[Req, Res any](s *Server, name string, fn func(ctx context.Context, st *ServerStream[Req, Res]) (*Res, error)) error {
	return s.handleStream(name, reflect.TypeFor[Req](), reflect.TypeFor[Res](), func(ctx context.Context, cd codec.Codec, _ []byte, st *stream.Stream) ([]byte, error) {
		out, err := fn(ctx, &ServerStream[Req, Res]{st: st, cd: cd, name: name, maxSize: s.maxSize})
		if err != nil {
			return nil, err
		}
		return encodeReply(cd, name, out)
	})
}

// HandleBidiStream registers fn as the handler of the bidirectional
// stream method name: fn reads with st.Recv and writes with st.Send, in
// any order (two goroutines may do each); returning ends the stream.
func HandleBidiStream[Req, Res any](s *Server, name string, fn func(ctx context.Context, st *ServerStream[Req, Res]) error) error {
	return s.handleStream(name, reflect.TypeFor[Req](), reflect.TypeFor[Res](), func(ctx context.Context, cd codec.Codec, _ []byte, st *stream.Stream) ([]byte, error) {
		return nil, fn(ctx, &ServerStream[Req, Res]{st: st, cd: cd, name: name, maxSize: s.maxSize})
	})
}

// handleStream registers a stream method: the opening request is
// accepted, run drives the stream with the stream's ctx, and the reply
// ends it with the stream's count (also an error reply, see trailerError).
func (s *Server) handleStream(name string, req, res reflect.Type, run func(ctx context.Context, cd codec.Codec, body []byte, st *stream.Stream) ([]byte, error)) error {
	return s.noteTypes(name, req, res, s.register(name, method{call: func(ctx context.Context, cd codec.Codec, body []byte) ([]byte, error) {
		msg := RequestMessage(ctx)
		if msg == nil || !stream.IsOpening(msg) {
			return nil, Errorf(FailedPrecondition, "%s is a stream method; open a stream to call it", name)
		}
		st, err := stream.Accept(ctx, msg, s.window)
		if err != nil {
			return nil, streamError(err)
		}
		out, err := func() (out []byte, err error) {
			defer func() {
				if r := recover(); r != nil {
					out, err = nil, Errorf(Internal, "panic in stream method %s: %v", name, r)
				}
			}()
			return run(st.Context(), cd, body, st)
		}()
		for k, v := range st.Finish() {
			SetReplyHeader(ctx, k, v)
		}
		if err != nil {
			return nil, &trailerError{err: streamError(err), header: serverCallFrom(ctx).replyHeader.Clone()}
		}
		return out, nil
	}}))
}

// Stream is the client's side of a stream with untyped messages, for
// adapters of other RPC systems (adapters/grpc): every message goes as a
// stream message, both ways (the opening request carries none), which
// serves every kind of stream when the server's side is written the same
// way. Typed code uses OpenStream and InvokeServerStream.
type Stream struct {
	cs *clientStream
}

// NewStream opens a stream to method of service, as OpenStream does, with
// untyped messages encoded by the call's codec.
func (c *Client) NewStream(ctx context.Context, service, method string, opts ...CallOption) (*Stream, error) {
	cs, err := c.openStream(ctx, service, method, nil, false, opts)
	if err != nil {
		return nil, err
	}
	return &Stream{cs: cs}, nil
}

// SendMsg encodes m and sends it, as ClientStream.Send does.
func (s *Stream) SendMsg(m any) error { return sendMsg(s.cs.st, s.cs.cd, s.cs.name, s.cs.c.maxSize, m) }

// RecvMsg decodes the next message into m, as ClientStream.Recv does:
// io.EOF at an OK end, the stream's error otherwise.
func (s *Stream) RecvMsg(m any) error { return s.cs.recv(m) }

// RecvMessage returns the next message undecoded, with the application
// headers its sender gave it (an adapter's metadata), or what RecvMsg
// would return instead of a message.
func (s *Stream) RecvMessage() (*broker.Message, error) { return s.cs.recvMessage() }

// CloseSend tells the server that the client sends no more.
func (s *Stream) CloseSend() error { return streamError(s.cs.st.CloseSend()) }

// Trailer returns the headers of the server's end of the stream, or nil
// before the end.
func (s *Stream) Trailer() broker.Header { return s.cs.trailer() }

// Context returns the stream's ctx, which ends with the stream.
func (s *Stream) Context() context.Context { return s.cs.st.Context() }

// Close ends the stream, as ClientStream.Close does.
func (s *Stream) Close() { s.cs.close() }

// ClientStream is the client's side of a client or bidirectional stream,
// made by OpenStream. Send and CloseSend may be called from one goroutine
// while Recv is called from another. Close it when done (it cancels the
// stream unless it ended).
type ClientStream[Req, Res any] struct {
	cs *clientStream
}

// clientStream is the untyped state of a client's stream.
type clientStream struct {
	c       *Client
	st      *stream.Stream
	cd      codec.Codec
	name    string // service.method, for errors
	done    chan struct{}
	release func()

	mu     sync.Mutex
	reply  *broker.Message
	endErr error // the call's error, as the client's middleware left it
	closed sync.Once
}

// OpenStream opens a client or bidirectional stream to method of service.
// It returns at once; an error in reaching the server shows in Send or
// Recv. ctx bounds the whole stream. Call options apply to the opening
// request (WithHeader, WithMessageID, WithReplyHeader for the trailers,
// WithCallCodec).
func OpenStream[Req, Res any](ctx context.Context, c *Client, service, method string, opts ...CallOption) (*ClientStream[Req, Res], error) {
	cs, err := c.openStream(ctx, service, method, nil, false, opts)
	if err != nil {
		return nil, err
	}
	return &ClientStream[Req, Res]{cs: cs}, nil
}

// InvokeServerStream calls the server-streaming method of service with in
// and yields its replies in order; the last pair carries the error, if
// the stream ended with one. Breaking out of the loop cancels the stream.
// Each range over the sequence makes a new call.
//
//	for res, err := range rpc.InvokeServerStream[Req, Res](ctx, c, "Svc", "List", &Req{}) {
//		if err != nil { return err }
//		use(res)
//	}
func InvokeServerStream[Req, Res any](ctx context.Context, c *Client, service, method string, in *Req, opts ...CallOption) iter.Seq2[*Res, error] {
	return func(yield func(*Res, error) bool) {
		cs, err := c.openStream(ctx, service, method, in, true, opts)
		if err != nil {
			yield(nil, err)
			return
		}
		defer cs.close()
		for {
			out := new(Res)
			err := cs.recv(out)
			if err == io.EOF {
				return
			}
			if err != nil {
				yield(nil, err)
				return
			}
			if !yield(out, nil) {
				return
			}
		}
	}
}

func (c *Client) openStream(ctx context.Context, service, method string, in any, hasIn bool, opts []CallOption) (*clientStream, error) {
	cfg := callConfig{codec: c.codec}
	if len(opts) > 0 {
		if cfg = applyCallOptions(cfg, opts); cfg.err != nil {
			return nil, cfg.err
		}
	}
	name := service + "." + method
	sm, ok := c.b.(broker.Streamer)
	if !ok {
		return nil, Errorf(Unimplemented, "%s: the broker %T has no streams (broker.Streamer)", name, c.b)
	}
	var body []byte
	if hasIn {
		var err error
		if body, err = cfg.codec.Marshal(in); err != nil {
			return nil, Errorf(InvalidArgument, "encode %s request as %s: %w", name, cfg.codec.Name(), err)
		}
		if c.maxSize >= 0 && len(body) > c.maxSize {
			return nil, Errorf(ResourceExhausted, "%s request of %d bytes exceeds the limit of %d: %w",
				name, len(body), c.maxSize, broker.ErrMessageTooLarge)
		}
	}
	release := func() {}
	if c.inflight != nil {
		if err := c.inflight.Acquire(ctx, 1); err != nil {
			return nil, NewError(CodeOf(err), fmt.Errorf("%s: waiting for a free in-flight slot: %w", name, err))
		}
		release = func() { c.inflight.Release(1) }
	}
	st, err := stream.Open(ctx, sm, c.stream)
	if err != nil {
		release()
		return nil, NewError(Unavailable, fmt.Errorf("%s: %w", name, err))
	}
	h := cfg.header.Clone()
	if h == nil {
		h = make(broker.Header, 6)
	}
	h[broker.HeaderMethod] = method
	h[broker.HeaderContentType] = cfg.codec.Name()
	id := cfg.id
	if id == "" {
		id = broker.NewID()
	}
	msg := &broker.Message{ID: id, Subject: service, Header: h, Body: body}
	msg.Deadline, _ = ctx.Deadline()
	st.Prepare(msg)
	cs := &clientStream{c: c, st: st, cd: cfg.codec, name: name, done: make(chan struct{}), release: release}
	go cs.call(service, method, msg, cfg)
	return cs, nil
}

// call sends the opening request and hands its outcome to the stream.
func (cs *clientStream) call(service, method string, msg *broker.Message, cfg callConfig) {
	defer close(cs.done)
	ctx := cs.st.Context()
	var reply *broker.Message
	var err error
	if cs.c.handler == nil {
		reply, err = cs.c.send(ctx, msg, false)
	} else {
		cctx := &callCtx{Context: ctx, info: CallInfo{Service: service, Method: method, Idempotent: cfg.idempotent}}
		reply, err = cs.c.handler.ServeMessage(cctx, msg)
	}
	if reply != nil && err == nil && reply.Header.Get(stream.HeaderSeq) == "" {
		err = Errorf(Unimplemented, "%s answered with a unary reply: not a stream method", cs.name)
		reply = nil
	}
	var trailer *broker.Message
	if reply != nil {
		// The stream's own headers are not the handler's trailers.
		trailer = &broker.Message{Header: reply.Header.Clone(), Body: reply.Body}
		trailer.Header.Del(stream.HeaderSeq)
		if cfg.replyHeader != nil {
			*cfg.replyHeader = trailer.Header
		}
	}
	cs.mu.Lock()
	cs.reply, cs.endErr = trailer, err
	cs.mu.Unlock()
	if reply != nil {
		// An error reply too: the messages sent before it come first.
		cs.st.Finished(reply, nil)
	} else {
		cs.st.Finished(nil, err)
	}
}

// recv decodes the next message into out; io.EOF at a clean end, the
// call's error at an error end.
func (cs *clientStream) recv(out any) error {
	m, err := cs.recvMessage()
	if err != nil {
		return err
	}
	if err := cs.cd.Unmarshal(m.Body, out); err != nil {
		return Errorf(Internal, "decode %s stream message as %s: %w", cs.name, cs.cd.Name(), err)
	}
	return nil
}

// recvMessage returns the next message, checked against the size limit.
func (cs *clientStream) recvMessage() (*broker.Message, error) {
	m, err := cs.st.Recv()
	if err == io.EOF {
		cs.mu.Lock()
		endErr := cs.endErr
		cs.mu.Unlock()
		if endErr != nil {
			return nil, asError(endErr)
		}
		return nil, io.EOF
	}
	if err != nil {
		return nil, streamError(err)
	}
	if cs.c.maxSize >= 0 && len(m.Body) > cs.c.maxSize {
		return nil, Errorf(ResourceExhausted, "%s stream message of %d bytes exceeds the limit of %d: %w",
			cs.name, len(m.Body), cs.c.maxSize, broker.ErrMessageTooLarge)
	}
	return m, nil
}

func (cs *clientStream) close() {
	cs.closed.Do(func() {
		cs.st.Close()
		<-cs.done
		cs.release()
	})
}

// Send sends m to the server, waiting while the server has granted no
// credit. Once the server ended the stream it returns io.EOF: Recv (or
// CloseAndRecv) then says how the stream ended.
func (s *ClientStream[Req, Res]) Send(m *Req) error {
	return sendMsg(s.cs.st, s.cs.cd, s.cs.name, s.cs.c.maxSize, m)
}

// CloseSend tells the server that the client sends no more: its Recv
// returns io.EOF after the messages sent before.
func (s *ClientStream[Req, Res]) CloseSend() error { return streamError(s.cs.st.CloseSend()) }

// Recv returns the server's next message; io.EOF when the server ended
// the stream with OK, and the stream's error when it ended otherwise.
func (s *ClientStream[Req, Res]) Recv() (*Res, error) {
	out := new(Res)
	if err := s.cs.recv(out); err != nil {
		return nil, err
	}
	return out, nil
}

// CloseAndRecv closes the client's side and returns the server's reply,
// for a client-streaming method; messages the server streamed before it
// are discarded.
func (s *ClientStream[Req, Res]) CloseAndRecv() (*Res, error) {
	if err := s.CloseSend(); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	for {
		err := s.cs.recv(new(Res))
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
	}
	s.cs.mu.Lock()
	reply := s.cs.reply
	s.cs.mu.Unlock()
	out := new(Res)
	if reply != nil && len(reply.Body) > 0 {
		if err := s.cs.cd.Unmarshal(reply.Body, out); err != nil {
			return nil, Errorf(Internal, "decode %s reply as %s: %w", s.cs.name, s.cs.cd.Name(), err)
		}
	}
	return out, nil
}

// Trailer returns the headers the server's end of the stream carried (set
// by the handler with SetReplyHeader), or nil before the end.
func (s *ClientStream[Req, Res]) Trailer() broker.Header { return s.cs.trailer() }

func (cs *clientStream) trailer() broker.Header {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if cs.reply == nil {
		return nil
	}
	return cs.reply.Header
}

// Close ends the stream: if it has not ended, the server is told to
// cancel. It waits for the stream's goroutines and is idempotent; call it
// when done with the stream.
func (s *ClientStream[Req, Res]) Close() { s.cs.close() }
