package thrift

import (
	"bytes"
	"context"
	"fmt"

	"github.com/apache/thrift/lib/go/thrift"

	"github.com/mqrpc/mqrpc/broker"
)

// Transport is a thrift.TTransport over a broker: writes are buffered, Flush
// sends the buffered message to the service's subject and keeps the reply,
// and Read yields the reply. Use it where Thrift code wants a transport:
//
//	t := mqthrift.NewTransport(b, "Calculator", mqthrift.WithOneway("record"))
//	calc := calculator.NewCalculatorClientFactory(t, mqthrift.Binary.Factory(nil))
//
// The protocol factory must be the protocol of the transport (WithProtocol),
// which Flush uses to read the method name and message type of the buffered
// message. A ONEWAY message, or a CALL of a method listed with WithOneway,
// is sent with broker Send and Flush returns without waiting for the
// server; any other message is sent with broker Request and Flush returns
// when the reply arrived (or the call failed).
//
// A Transport holds one message at a time and, like every Thrift transport,
// is not safe for concurrent use; use one per goroutine, or a Client, which
// is.
type Transport struct {
	conn
	wbuf   bytes.Buffer
	rbuf   bytes.Reader
	closed bool
}

var _ thrift.TTransport = (*Transport)(nil)

// NewTransport returns an open transport to subject (the service's queue or
// subject) through b. Options: WithProtocol, WithOneway, WithConfiguration,
// WithTimeout, WithMiddleware, WithHeader. The transport does not own b.
func NewTransport(b broker.Broker, subject string, opts ...Option) *Transport {
	return &Transport{conn: newConn(b, subject, opts)}
}

// Open opens a closed transport again; an open one stays open.
func (t *Transport) Open() error {
	t.closed = false
	return nil
}

// IsOpen reports whether the transport is open.
func (t *Transport) IsOpen() bool { return !t.closed }

// Close discards buffered data and closes the transport. It does not close
// the broker.
func (t *Transport) Close() error {
	t.closed = true
	t.wbuf.Reset()
	t.rbuf.Reset(nil)
	return nil
}

// Write buffers p for the next Flush.
func (t *Transport) Write(p []byte) (int, error) {
	if t.closed {
		return 0, thrift.NewTTransportException(thrift.NOT_OPEN, "thrift over mqrpc: transport closed")
	}
	return t.wbuf.Write(p)
}

// Read reads the reply of the last Flush. It returns io.EOF at its end.
func (t *Transport) Read(p []byte) (int, error) {
	if t.closed {
		return 0, thrift.NewTTransportException(thrift.NOT_OPEN, "thrift over mqrpc: transport closed")
	}
	return t.rbuf.Read(p)
}

// RemainingBytes returns the unread size of the reply.
func (t *Transport) RemainingBytes() uint64 { return uint64(t.rbuf.Len()) }

// Flush sends the buffered message: one-way for oneway messages, as a
// request otherwise, keeping the reply for Read. An empty buffer sends
// nothing. Errors are an *Exception (a status reply) or a
// thrift.TTransportException wrapping the broker error.
func (t *Transport) Flush(ctx context.Context) error {
	if t.closed {
		return thrift.NewTTransportException(thrift.NOT_OPEN, "thrift over mqrpc: transport closed")
	}
	t.rbuf.Reset(nil)
	if t.wbuf.Len() == 0 {
		return nil
	}
	body := bytes.Clone(t.wbuf.Bytes()) // the broker owns what it sends
	t.wbuf.Reset()
	h, err := peek(ctx, t.pf, t.cfg.tconf, body)
	if err != nil {
		return thrift.NewTProtocolException(fmt.Errorf("thrift over mqrpc: flush: not a %s message: %w", t.cfg.protocol, err))
	}
	oneway := h.typ == thrift.ONEWAY || (h.typ == thrift.CALL && t.cfg.oneway[h.name])
	reply, err := t.send(ctx, h.name, body, oneway)
	if err != nil {
		return err
	}
	if reply != nil {
		t.rbuf.Reset(reply.Body)
	}
	return nil
}
