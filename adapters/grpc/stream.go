package grpc

import (
	"context"
	"errors"
	"io"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/stream"
	"github.com/mqrpc/mqrpc/codec"
	"github.com/mqrpc/mqrpc/rpc"
)

// Streams run on mqrpc's stream engine (rpc.Client.NewStream on the
// client, broker/stream on the server). Every gRPC message travels as a
// stream message, both ways, whatever the kind of the method: the generated
// code of a server-streaming method sends its one request with SendMsg and
// CloseSend, and a client-streaming handler answers with SendAndClose,
// which is SendMsg; so one wire shape serves the three kinds.

// clientStream is a grpc.ClientStream over an mqrpc stream.
type clientStream struct {
	ctx    context.Context
	s      *rpc.Stream
	method string
	co     callOptions
	cd     codec.Codec // the messages' codec
	// clientStreams: the method takes a stream of requests, so SendMsg
	// may report the server's end with io.EOF (see SendMsg).
	clientStreams bool

	once            sync.Once
	header, trailer metadata.MD

	// recvMu serializes RecvMsg and Header, which may read ahead: the
	// messages read ahead wait in ahead, and the error that ended the
	// stream, met while reading ahead, in aheadErr. first is set once the
	// server's first message arrived, early its header metadata if that
	// message carried it (headerMarker).
	recvMu   sync.Mutex
	ahead    []*broker.Message
	aheadErr error
	first    bool
	early    metadata.MD
}

var _ grpc.ClientStream = (*clientStream)(nil)

// newStream is the innermost grpc.Streamer: it opens the mqrpc stream.
func (cc *ClientConn) newStream(ctx context.Context, desc *grpc.StreamDesc, _ *grpc.ClientConn, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	service, name, ok := splitMethod(method)
	if !ok {
		return nil, status.Errorf(codes.Internal, "mqgrpc: malformed method name %q, want /package.Service/Method", method)
	}
	co, err := parseCallOptions(opts)
	if err != nil {
		return nil, err
	}
	cd := co.cd
	if cd == nil {
		cd = clientCodec
	}
	callOpts := cc.rpcCallOptions(ctx, co, method, service, name, nil)
	mh := method
	if cc.short {
		mh = name
	}
	s, err := cc.client.NewStream(ctx, cc.subject(service), mh, callOpts...)
	if err != nil {
		return nil, callError(err)
	}
	return &clientStream{ctx: ctx, s: s, method: method, co: co, cd: cd, clientStreams: desc == nil || desc.ClientStreams}, nil
}

// end records the metadata of the stream's end and releases the stream.
func (c *clientStream) end() {
	c.once.Do(func() {
		c.s.Close()
		h := c.s.Trailer()
		c.header, c.trailer, _ = replyMetadata(h)
		if h != nil {
			_ = c.co.setMetadata(h)
		}
	})
}

// next returns the next message from the server; recvMu is held.
func (c *clientStream) next() (*broker.Message, error) {
	m, err := c.s.RecvMessage()
	if err != nil {
		return nil, err
	}
	if !c.first {
		c.first = true
		if m.Header.Get(headerMarker) != "" {
			c.early, _, err = replyMetadata(m.Header)
			if err != nil {
				return nil, status.Errorf(codes.Internal, "mqgrpc: %s: header metadata: %v", c.method, err)
			}
			for _, p := range c.co.headerAddr { // grpc.Header
				*p = c.early
			}
		}
	}
	return m, nil
}

// Header returns the header metadata, blocking until it arrived, as
// gRPC's Header does. An mqgrpc server sends it with its first message
// (or, when it sends none, with the end of the stream, the reply to the
// opening request), so Header reads the first message ahead and keeps it
// for RecvMsg. A server that sent its first message without header
// metadata (older mqgrpc, or another server) has it travel with the end:
// then Header reads ahead, in memory, until the end, so that a server
// waiting for credit can finish. In a bidirectional stream whose server
// waits for the client's messages before it sends, call Header only once
// it can send, or it waits until the stream's deadline. When the stream
// ended without a reply from the server (it went away, the ctx ended),
// Header returns nil metadata and a nil error, and RecvMsg tells the
// status.
func (c *clientStream) Header() (metadata.MD, error) {
	c.recvMu.Lock()
	defer c.recvMu.Unlock()
	for c.early == nil && c.s.Trailer() == nil && c.aheadErr == nil {
		m, err := c.next()
		if err != nil {
			c.aheadErr = err
			break
		}
		c.ahead = append(c.ahead, m)
	}
	if c.early != nil {
		return c.early, nil
	}
	if h := c.s.Trailer(); h != nil {
		header, _, err := replyMetadata(h)
		return header, err
	}
	return nil, nil
}

// Trailer returns the trailer metadata, once RecvMsg returned an error or
// io.EOF.
func (c *clientStream) Trailer() metadata.MD {
	if h := c.s.Trailer(); h != nil {
		_, trailer, _ := replyMetadata(h)
		return trailer
	}
	return nil
}

func (c *clientStream) CloseSend() error {
	if err := c.s.CloseSend(); err != nil && !errors.Is(err, io.EOF) {
		return callError(err)
	}
	return nil
}

func (c *clientStream) Context() context.Context { return c.ctx }

func (c *clientStream) SendMsg(m any) error {
	err := c.s.SendMsg(m)
	if errors.Is(err, io.EOF) {
		// The server ended the stream; RecvMsg says how. As in grpc-go, a
		// method that takes one request gets nil, since its generated
		// code returns SendMsg's error as the call's (a server stream
		// rejected at once would fail with a bare io.EOF).
		if !c.clientStreams {
			return nil
		}
		return io.EOF
	}
	if err == nil {
		return nil
	}
	return callError(err)
}

func (c *clientStream) RecvMsg(m any) error {
	c.recvMu.Lock()
	defer c.recvMu.Unlock()
	var msg *broker.Message
	var err error
	switch {
	case len(c.ahead) > 0:
		msg = c.ahead[0]
		c.ahead[0] = nil
		c.ahead = c.ahead[1:]
	case c.aheadErr != nil:
		err = c.aheadErr
	default:
		msg, err = c.next()
	}
	if err == nil {
		if err = c.cd.Unmarshal(msg.Body, m); err == nil {
			return nil
		}
		err = status.Errorf(codes.Internal, "mqgrpc: decode %s stream message as %s: %v", c.method, c.cd.Name(), err)
	}
	c.end()
	if err == io.EOF {
		return io.EOF
	}
	return callError(err)
}

// streamMethod answers a request for the streaming method name of svc,
// or reports false when svc has no such method.
func (d *dispatcher) streamMethod(ctx context.Context, req *broker.Message, svc *service, name, full string) (*broker.Message, bool) {
	sd, ok := svc.streams[name]
	if !ok {
		return nil, false
	}
	if !stream.IsOpening(req) {
		return statusReply(status.Newf(codes.FailedPrecondition,
			"mqgrpc: %s is a streaming method; open a stream to call it", full), nil, nil), true
	}
	ct := codec.MediaType(req.Header.Get(broker.HeaderContentType))
	cd, ok := serverCodec(ct)
	if !ok {
		return statusReply(status.Newf(codes.InvalidArgument,
			"mqgrpc: unsupported content type %q for %s (accepted: %s, application/grpc+<registered gRPC codec>)",
			ct, full, ContentTypeProto), nil, nil), true
	}
	return d.serveStream(ctx, req, svc, sd, full, cd), true
}

// serveStream serves a request that opens a stream of sd: the handler
// runs with a grpc.ServerStream over the stream, and its return ends it.
func (d *dispatcher) serveStream(ctx context.Context, req *broker.Message, svc *service, sd *grpc.StreamDesc, full string, cd codec.Codec) *broker.Message {
	inMD, err := requestMetadata(req.Header)
	if err != nil {
		return statusReply(status.Newf(codes.InvalidArgument, "mqgrpc: %s: %v", full, err), nil, nil)
	}
	if !req.Deadline.IsZero() {
		if req.Expired(time.Now()) {
			return statusReply(status.Newf(codes.DeadlineExceeded, "mqgrpc: deadline passed before %s was served", full), nil, nil)
		}
		if dl, ok := ctx.Deadline(); !ok || req.Deadline.Before(dl) {
			var cancel context.CancelFunc
			ctx, cancel = context.WithDeadline(ctx, req.Deadline)
			defer cancel()
		}
	}
	st, err := stream.Accept(ctx, req, 0)
	if err != nil {
		return statusReply(streamStatus(err), nil, nil)
	}
	ts := &transportStream{method: full}
	sctx := metadata.NewIncomingContext(st.Context(), inMD)
	sctx = grpc.NewContextWithServerTransportStream(sctx, ts)
	ss := &serverStream{ctx: sctx, st: st, cd: cd, ts: ts}
	err = func() (err error) {
		defer func() {
			if r := recover(); r != nil {
				err = status.Errorf(codes.Internal, "mqgrpc: panic in %s: %v", full, r)
			}
		}()
		if si := d.s.streamInterceptor; si != nil {
			info := &grpc.StreamServerInfo{FullMethod: full, IsClientStream: sd.ClientStreams, IsServerStream: sd.ServerStreams}
			return si(svc.impl, ss, info, sd.Handler)
		}
		return sd.Handler(svc.impl, ss)
	}()
	header, trailer := ts.finish()
	end := st.Finish()
	var rep *broker.Message
	if err != nil {
		rep = statusReply(statusOf(streamErr(err)), header, trailer)
	} else {
		h := make(broker.Header, 2+len(header)+len(trailer))
		putMetadata(h, header, "")
		putMetadata(h, trailer, TrailerPrefix)
		rep = &broker.Message{Header: h}
	}
	for k, v := range end {
		rep.Header[k] = v
	}
	return rep
}

// serverStream is a grpc.ServerStream over the server's side of a stream.
type serverStream struct {
	ctx context.Context
	st  *stream.Stream
	cd  codec.Codec
	ts  *transportStream
	// sent: a message went (SendMsg is not called concurrently), so the
	// header metadata is settled and later messages may be encoded in
	// place (SendAppend).
	sent bool
}

var _ grpc.ServerStream = (*serverStream)(nil)

func (s *serverStream) SetHeader(md metadata.MD) error  { return s.ts.SetHeader(md) }
func (s *serverStream) SendHeader(md metadata.MD) error { return s.ts.SendHeader(md) }
func (s *serverStream) SetTrailer(md metadata.MD)       { _ = s.ts.SetTrailer(md) }
func (s *serverStream) Context() context.Context        { return s.ctx }

func (s *serverStream) SendMsg(m any) error {
	var err error
	if ap, ok := s.cd.(codec.Appender); ok && s.sent {
		// Encoded into a buffer of the stream's, reused once posted.
		err = s.st.SendAppend(nil, func(buf []byte) ([]byte, error) {
			b, err := ap.MarshalAppend(buf, m)
			if err != nil {
				return nil, s.encodeError(err)
			}
			return b, nil
		})
	} else {
		b, merr := s.cd.Marshal(m)
		if merr != nil {
			return s.encodeError(merr)
		}
		msg := &broker.Message{Body: b}
		if header, first := s.ts.sendHeader(); first {
			// The first message carries the header metadata, as gRPC
			// sends the headers before it; later SetHeader calls fail.
			msg.Header = make(broker.Header, 1+len(header))
			putMetadata(msg.Header, header, "")
			msg.Header[headerMarker] = "1"
		}
		s.sent = true
		err = s.st.Send(msg)
	}
	if err != nil {
		if _, ok := status.FromError(err); ok {
			return err // encodeError
		}
		return streamStatus(err).Err()
	}
	return nil
}

func (s *serverStream) encodeError(err error) error {
	return status.Errorf(codes.Internal, "mqgrpc: encode %s stream message: %v", s.ts.method, err)
}

func (s *serverStream) RecvMsg(m any) error {
	msg, err := s.st.Recv()
	if err == io.EOF {
		return io.EOF
	}
	if err != nil {
		return streamStatus(err).Err()
	}
	if err := s.cd.Unmarshal(msg.Body, m); err != nil {
		return status.Errorf(codes.InvalidArgument, "mqgrpc: decode %s stream message: %v", s.ts.method, err)
	}
	return nil
}

// streamStatus is the status of an error of the stream engine.
func streamStatus(err error) *status.Status {
	return status.New(streamCode(err), err.Error())
}

func streamCode(err error) codes.Code {
	switch {
	case errors.Is(err, stream.ErrDataLoss):
		return codes.DataLoss
	case errors.Is(err, stream.ErrPeerGone):
		return codes.Unavailable
	case errors.Is(err, stream.ErrCanceled), errors.Is(err, stream.ErrClosed), errors.Is(err, context.Canceled):
		return codes.Canceled
	case errors.Is(err, context.DeadlineExceeded):
		return codes.DeadlineExceeded
	case errors.Is(err, stream.ErrProtocol):
		return codes.Internal
	case errors.Is(err, stream.ErrNotStream):
		return codes.FailedPrecondition
	}
	return codes.Unknown
}

// streamErr gives a handler's plain error from the engine (or its ctx)
// its status code.
func streamErr(err error) error {
	if _, ok := status.FromError(err); ok {
		return err
	}
	var e *rpc.Error
	if errors.As(err, &e) {
		return err
	}
	if c := streamCode(err); c != codes.Unknown {
		return status.Error(c, err.Error())
	}
	return err
}
