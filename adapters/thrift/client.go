package thrift

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/apache/thrift/lib/go/thrift"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/rpc"
)

// conn is the client side shared by Client and Transport: it turns one
// encoded Thrift message into a broker message and sends it.
type conn struct {
	b       broker.Broker
	subject string
	cfg     config
	pf      thrift.TProtocolFactory
	handler broker.Handler
}

func newConn(b broker.Broker, subject string, opts []Option) conn {
	c := conn{b: b, subject: subject, cfg: newConfig(opts)}
	c.pf = c.cfg.protocol.Factory(c.cfg.tconf)
	c.handler = rpc.Chain(rpc.ClientSide, broker.HandlerFunc(c.roundTrip), c.cfg.middleware...)
	return c
}

// roundTrip is the innermost handler: Send for oneway messages, Request
// otherwise, with a status reply turned into an *rpc.Error (the reply is
// returned too: it may carry a Thrift exception).
func (c *conn) roundTrip(ctx context.Context, msg *broker.Message) (*broker.Message, error) {
	if ci, _ := rpc.CallInfoFromContext(ctx); ci.OneWay {
		return nil, c.b.Send(ctx, msg)
	}
	reply, err := c.b.Request(ctx, msg)
	if err != nil {
		return nil, err
	}
	return reply, rpc.ErrorFromReply(reply)
}

// send sends one encoded message (the broker takes ownership of body) and
// returns the reply body: nil for oneway. An error reply with a body (a
// Thrift exception) is a successful round trip: Thrift reads the exception
// from the body.
func (c *conn) send(ctx context.Context, method string, body []byte, oneway bool) (*broker.Message, error) {
	h := make(broker.Header, 2+len(c.cfg.header))
	for k, v := range c.cfg.header {
		h[k] = v
	}
	h[broker.HeaderMethod] = method
	h[broker.HeaderContentType] = c.cfg.protocol.ContentType()
	msg := &broker.Message{ID: broker.NewID(), Subject: c.subject, Header: h, Body: body}
	if c.cfg.timeout > 0 {
		if _, ok := ctx.Deadline(); !ok {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, c.cfg.timeout)
			defer cancel()
		}
	}
	if d, ok := ctx.Deadline(); ok {
		msg.Deadline = d
	}
	// Client middleware (retry, logging, ...) reads what the call is.
	ctx = rpc.ContextWithCallInfo(ctx, rpc.CallInfo{Service: c.subject, Method: method, OneWay: oneway})
	reply, err := c.handler.ServeMessage(ctx, msg)
	if oneway {
		if err != nil {
			return nil, callError(err)
		}
		return nil, nil
	}
	if err != nil {
		var e *rpc.Error
		if reply != nil && len(reply.Body) > 0 && errors.As(err, &e) && e.Wire() {
			return reply, nil
		}
		return nil, callError(err)
	}
	if reply == nil {
		return nil, NewException(rpc.Errorf(rpc.Internal, "no reply to %s", method))
	}
	return reply, nil
}

// Client is a thrift.TClient that calls a Thrift service over a broker.
// Wrap it in the generated client:
//
//	calc := calculator.NewCalculatorClient(mqthrift.NewClient(b, "Calculator"))
//
// Unlike thrift.TStandardClient, a Client is safe for concurrent use: each
// call encodes into its own buffer. (Generated clients are not, as they
// record the metadata of the last reply: share the Client and give each
// goroutine its own generated wrapper, which costs one small allocation.) Oneway methods are sent with broker Send
// and return once the broker accepted them. A failed call returns an
// *Exception (the server or a middleware reported a status) or a
// thrift.TTransportException wrapping the broker error.
type Client struct {
	conn
	seq atomic.Int32
}

var _ thrift.TClient = (*Client)(nil)

// NewClient returns a client that sends calls to subject (the service's
// queue or subject) through b. Options: WithProtocol, WithConfiguration,
// WithTimeout, WithMiddleware, WithHeader. The client does not own b.
func NewClient(b broker.Broker, subject string, opts ...Option) *Client {
	return &Client{conn: newConn(b, subject, opts)}
}

// Call implements thrift.TClient: it sends method with args and reads the
// reply into result; a nil result means a oneway method. The ResponseMeta
// headers are the reply's broker headers.
func (c *Client) Call(ctx context.Context, method string, args, result thrift.TStruct) (thrift.ResponseMeta, error) {
	oneway := result == nil
	typ := thrift.CALL
	if oneway {
		typ = thrift.ONEWAY
	}
	seq := c.seq.Add(1)
	out := thrift.NewTMemoryBufferLen(256)
	oprot := c.pf.GetProtocol(out)
	if err := oprot.WriteMessageBegin(ctx, method, typ, seq); err != nil {
		return thrift.ResponseMeta{}, fmt.Errorf("thrift: encode %s: %w", method, err)
	}
	if err := args.Write(ctx, oprot); err != nil {
		return thrift.ResponseMeta{}, fmt.Errorf("thrift: encode %s: %w", method, err)
	}
	if err := oprot.WriteMessageEnd(ctx); err != nil {
		return thrift.ResponseMeta{}, fmt.Errorf("thrift: encode %s: %w", method, err)
	}
	if err := oprot.Flush(ctx); err != nil {
		return thrift.ResponseMeta{}, fmt.Errorf("thrift: encode %s: %w", method, err)
	}
	reply, err := c.send(ctx, method, out.Bytes(), oneway)
	if err != nil || oneway {
		return thrift.ResponseMeta{}, err
	}
	meta := thrift.ResponseMeta{Headers: thrift.THeaderMap(reply.Header)}
	iprot := readProtocol(c.pf, c.cfg.tconf, reply.Body)
	name, rtyp, rseq, err := iprot.ReadMessageBegin(ctx)
	switch {
	case err != nil:
		return meta, exceptionFrom(thrift.NewTApplicationException(thrift.PROTOCOL_ERROR,
			fmt.Sprintf("%s: malformed reply: %v", method, err)), reply)
	case name != method:
		return meta, exceptionFrom(thrift.NewTApplicationException(thrift.WRONG_METHOD_NAME,
			fmt.Sprintf("%s: reply names method %q", method, name)), reply)
	case rseq != seq:
		return meta, exceptionFrom(thrift.NewTApplicationException(thrift.BAD_SEQUENCE_ID,
			fmt.Sprintf("%s: reply has sequence id %d, want %d", method, rseq, seq)), reply)
	case rtyp == thrift.EXCEPTION:
		x := thrift.NewTApplicationException(thrift.UNKNOWN_APPLICATION_EXCEPTION, "")
		if err := x.Read(ctx, iprot); err != nil {
			return meta, exceptionFrom(thrift.NewTApplicationException(thrift.PROTOCOL_ERROR,
				fmt.Sprintf("%s: malformed exception: %v", method, err)), reply)
		}
		return meta, exceptionFrom(x, reply)
	case rtyp != thrift.REPLY:
		return meta, exceptionFrom(thrift.NewTApplicationException(thrift.INVALID_MESSAGE_TYPE_EXCEPTION,
			fmt.Sprintf("%s: reply has message type %d", method, rtyp)), reply)
	}
	if err := result.Read(ctx, iprot); err != nil {
		return meta, exceptionFrom(thrift.NewTApplicationException(thrift.PROTOCOL_ERROR,
			fmt.Sprintf("%s: malformed result: %v", method, err)), reply)
	}
	if err := iprot.ReadMessageEnd(ctx); err != nil {
		return meta, exceptionFrom(thrift.NewTApplicationException(thrift.PROTOCOL_ERROR,
			fmt.Sprintf("%s: malformed reply: %v", method, err)), reply)
	}
	return meta, nil
}
