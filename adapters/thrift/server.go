package thrift

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/apache/thrift/lib/go/thrift"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/rpc"
)

// Server serves a thrift.TProcessor (a generated processor, a
// thrift.TMultiplexedProcessor, ...) as a broker.Handler:
//
//	sub, err := b.Serve("Calculator", mqthrift.NewServer(calculator.NewCalculatorProcessor(h)))
//
// Each request is read from a memory buffer and its reply written into a
// fresh one, in the protocol of the request. A ONEWAY message gets no reply.
// A request that is not a Thrift message, names an unknown protocol or has
// expired is answered with an error status and no body; a panic in the
// handler is answered with an INTERNAL_ERROR exception (status Internal).
// ServeMessage never returns an error: every failure is reported to the
// caller.
//
// Handlers reach the broker message they serve (its headers, ID and
// deadline) with RequestMessage. A Server is safe for concurrent use when
// the processor is, as generated processors are.
type Server struct {
	processor thrift.TProcessor
	cfg       config
	factories [3]thrift.TProtocolFactory
}

var _ broker.Handler = (*Server)(nil)

// NewServer returns a server for p. Options: WithProtocol (for requests
// that name no protocol), WithConfiguration.
func NewServer(p thrift.TProcessor, opts ...Option) *Server {
	s := &Server{processor: p, cfg: newConfig(opts)}
	for _, pr := range []Protocol{Binary, Compact, JSON} {
		s.factories[pr] = pr.Factory(s.cfg.tconf)
	}
	return s
}

type requestKey struct{}

// RequestMessage returns the broker message a Thrift handler served by a
// Server is handling, or nil outside one. It must not be modified or
// retained after the handler returns.
func RequestMessage(ctx context.Context) *broker.Message {
	m, _ := ctx.Value(requestKey{}).(*broker.Message)
	return m
}

// ServeMessage implements broker.Handler.
func (s *Server) ServeMessage(ctx context.Context, req *broker.Message) (*broker.Message, error) {
	if req.Expired(time.Now()) {
		return rpc.ErrorReply(rpc.Errorf(rpc.DeadlineExceeded, "thrift: deadline passed before the request was served")), nil
	}
	proto := s.cfg.protocol
	if ct := req.Header.Get(broker.HeaderContentType); ct != "" {
		var ok bool
		if proto, ok = ProtocolOf(ct); !ok {
			return rpc.ErrorReply(rpc.Errorf(rpc.InvalidArgument,
				"thrift: unsupported content type %q (accepted: %s, %s, %s)",
				ct, ContentTypeBinary, ContentTypeCompact, ContentTypeJSON)), nil
		}
	} else if p, ok := sniff(req.Body); ok {
		proto = p
	}
	pf := s.factories[proto]
	h, err := peek(ctx, pf, s.cfg.tconf, req.Body)
	if err != nil {
		return rpc.ErrorReply(rpc.Errorf(rpc.InvalidArgument, "thrift: malformed %s message: %w", proto, err)), nil
	}
	out := thrift.NewTMemoryBufferLen(256)
	if h.typ != thrift.CALL && h.typ != thrift.ONEWAY {
		writeException(ctx, pf, out, h, thrift.NewTApplicationException(thrift.INVALID_MESSAGE_TYPE_EXCEPTION,
			fmt.Sprintf("%s: request has message type %d", h.name, h.typ)))
		return s.reply(ctx, proto, pf, out, nil), nil
	}
	perr := s.process(context.WithValue(ctx, requestKey{}, req), h, pf, req.Body, out)
	if h.typ == thrift.ONEWAY {
		return nil, nil
	}
	if errors.Is(perr, thrift.ErrAbandonRequest) && out.Len() == 0 {
		return nil, nil // the handler gave the request up: no reply
	}
	reply := &broker.Message{Header: broker.Header{broker.HeaderContentType: proto.ContentType()}}
	if out.Len() == 0 {
		if perr != nil {
			// Nothing written: the request could not be read, or a
			// oneway method sent as a CALL failed.
			return rpc.ErrorReply(rpc.NewError(CodeOf(perr), perr)), nil
		}
		// A oneway method sent as a CALL: acknowledge it.
		return reply, nil
	}
	return s.reply(ctx, proto, pf, out, perr), nil
}

// reply returns the reply holding out, with the status of the exception
// when out holds one.
func (s *Server) reply(ctx context.Context, proto Protocol, pf thrift.TProtocolFactory, out *thrift.TMemoryBuffer, perr error) *broker.Message {
	reply := &broker.Message{Header: broker.Header{broker.HeaderContentType: proto.ContentType()}}
	reply.Body = out.Bytes()
	if rh, err := peek(ctx, pf, s.cfg.tconf, reply.Body); err == nil && rh.typ == thrift.EXCEPTION {
		code, msg := rpc.Internal, ""
		rp := readProtocol(pf, s.cfg.tconf, reply.Body)
		x := thrift.NewTApplicationException(thrift.UNKNOWN_APPLICATION_EXCEPTION, "")
		if _, _, _, err := rp.ReadMessageBegin(ctx); err == nil && x.Read(ctx, rp) == nil {
			code, msg = CodeFromExceptionType(x.TypeId()), x.Error()
		}
		// The handler chose the code (an *rpc.Error, a context error):
		// keep it exactly.
		var e *rpc.Error
		if c := rpc.CodeOf(perr); c != rpc.OK && (c != rpc.Unknown || errors.As(perr, &e)) {
			code = c
		}
		reply.Header[broker.HeaderStatus] = strconv.FormatUint(uint64(code), 10)
		if msg != "" {
			reply.Header[broker.HeaderStatusMessage] = msg
		}
	}
	return reply
}

// writeException writes x as the EXCEPTION reply to the message h.
func writeException(ctx context.Context, pf thrift.TProtocolFactory, out *thrift.TMemoryBuffer, h messageHeader, x thrift.TApplicationException) {
	oprot := pf.GetProtocol(out)
	_ = oprot.WriteMessageBegin(ctx, h.name, thrift.EXCEPTION, h.seq)
	_ = x.Write(ctx, oprot)
	_ = oprot.WriteMessageEnd(ctx)
}

// process runs the processor, turning a panic into an INTERNAL_ERROR
// exception written in place of whatever the processor wrote.
func (s *Server) process(ctx context.Context, h messageHeader, pf thrift.TProtocolFactory, body []byte, out *thrift.TMemoryBuffer) (err error) {
	defer func() {
		r := recover()
		if r == nil {
			return
		}
		err = rpc.Errorf(rpc.Internal, "thrift: panic in %s: %v", h.name, r)
		out.Reset()
		if h.typ == thrift.ONEWAY {
			return
		}
		writeException(ctx, pf, out, h,
			thrift.NewTApplicationException(thrift.INTERNAL_ERROR, fmt.Sprintf("panic in %s: %v", h.name, r)))
	}()
	_, terr := s.processor.Process(ctx, readProtocol(pf, s.cfg.tconf, body), pf.GetProtocol(out))
	if terr != nil {
		return terr
	}
	return nil
}
