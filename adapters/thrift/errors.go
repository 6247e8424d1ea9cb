package thrift

import (
	"context"
	"errors"

	"github.com/apache/thrift/lib/go/thrift"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/rpc"
)

// Exception is a failed call as both systems see it: a
// thrift.TApplicationException (its TypeId, Read and Write are Thrift's) and
// an mqrpc status (Status, also reached by errors.As and rpc.CodeOf through
// Unwrap).
type Exception struct {
	thrift.TApplicationException
	status *rpc.Error
}

var (
	_ thrift.TApplicationException = (*Exception)(nil)
	_ thrift.TTransportException   = (*transportError)(nil)
)

// NewException returns an Exception for status: its Thrift type is
// ExceptionType(status.Code()) and its message the status message.
func NewException(status *rpc.Error) *Exception {
	return &Exception{
		TApplicationException: thrift.NewTApplicationException(ExceptionType(status.Code()), status.Message()),
		status:                status,
	}
}

// Status returns the mqrpc status of the exception.
func (e *Exception) Status() *rpc.Error { return e.status }

// Unwrap returns the status, so errors.As(err, new(*rpc.Error)) and
// rpc.CodeOf see it.
func (e *Exception) Unwrap() error { return e.status }

// exceptionFrom pairs a Thrift exception read from a reply with the status
// the reply carries, or with the status mapped from its type.
func exceptionFrom(tae thrift.TApplicationException, reply *broker.Message) *Exception {
	var status *rpc.Error
	if err := rpc.ErrorFromReply(reply); err != nil {
		errors.As(err, &status)
	}
	if status == nil {
		status = rpc.NewError(CodeFromExceptionType(tae.TypeId()), tae)
	}
	return &Exception{TApplicationException: tae, status: status}
}

// CodeFromExceptionType returns the mqrpc code of a TApplicationException
// type (see the table in the package documentation).
func CodeFromExceptionType(t int32) rpc.Code {
	switch t {
	case thrift.UNKNOWN_METHOD, thrift.INVALID_TRANSFORM, thrift.INVALID_PROTOCOL, thrift.UNSUPPORTED_CLIENT_TYPE:
		return rpc.Unimplemented
	case thrift.INVALID_MESSAGE_TYPE_EXCEPTION, thrift.PROTOCOL_ERROR, thrift.VALIDATION_FAILED:
		return rpc.InvalidArgument
	case thrift.WRONG_METHOD_NAME, thrift.BAD_SEQUENCE_ID, thrift.MISSING_RESULT, thrift.INTERNAL_ERROR:
		return rpc.Internal
	}
	return rpc.Unknown
}

// ExceptionType returns the TApplicationException type that stands for an
// mqrpc code (see the table in the package documentation).
func ExceptionType(c rpc.Code) int32 {
	switch c {
	case rpc.Unimplemented:
		return thrift.UNKNOWN_METHOD
	case rpc.InvalidArgument:
		return thrift.PROTOCOL_ERROR
	case rpc.Internal:
		return thrift.INTERNAL_ERROR
	}
	return thrift.UNKNOWN_APPLICATION_EXCEPTION
}

// CodeOf returns the mqrpc code of an error returned by a Thrift call: the
// code of an *rpc.Error or broker error in its chain when there is one,
// otherwise the code mapped from the first Thrift exception in the chain
// (see the package documentation), and rpc.CodeOf(err) for anything else.
func CodeOf(err error) rpc.Code {
	if err == nil {
		return rpc.OK
	}
	if c := rpc.CodeOf(err); c != rpc.Unknown {
		return c
	}
	var e *rpc.Error
	if errors.As(err, &e) {
		return e.Code() // an explicit Unknown
	}
	for cur := err; cur != nil; cur = errors.Unwrap(cur) {
		te, ok := cur.(thrift.TException)
		if !ok {
			continue
		}
		switch te.TExceptionType() {
		case thrift.TExceptionTypeApplication:
			if a, ok := cur.(thrift.TApplicationException); ok {
				return CodeFromExceptionType(a.TypeId())
			}
		case thrift.TExceptionTypeTransport:
			if t, ok := cur.(thrift.TTransportException); ok {
				switch t.TypeId() {
				case thrift.NOT_OPEN, thrift.END_OF_FILE:
					return rpc.Unavailable
				case thrift.TIMED_OUT:
					return rpc.DeadlineExceeded
				case thrift.ALREADY_OPEN:
					return rpc.FailedPrecondition
				}
				// UNKNOWN: look further down the chain.
			}
		case thrift.TExceptionTypeProtocol:
			if p, ok := cur.(thrift.TProtocolException); ok {
				switch p.TypeId() {
				case thrift.INVALID_DATA, thrift.NEGATIVE_SIZE, thrift.BAD_VERSION:
					return rpc.InvalidArgument
				case thrift.SIZE_LIMIT, thrift.DEPTH_LIMIT:
					return rpc.ResourceExhausted
				case thrift.NOT_IMPLEMENTED:
					return rpc.Unimplemented
				}
			}
		}
	}
	return rpc.Unknown
}

// transportError is a thrift.TTransportException wrapping the broker error
// of a call that could not be delivered.
type transportError struct {
	typeID int
	err    error
}

// newTransportError wraps err, choosing the Thrift type from the broker
// error (see the package documentation).
func newTransportError(err error) *transportError {
	t := thrift.UNKNOWN_TRANSPORT_EXCEPTION
	switch {
	case errors.Is(err, context.Canceled):
	case errors.Is(err, broker.ErrTimeout), errors.Is(err, context.DeadlineExceeded):
		t = thrift.TIMED_OUT
	case errors.Is(err, broker.ErrNoResponders), errors.Is(err, broker.ErrClosed):
		t = thrift.NOT_OPEN
	case errors.Is(err, broker.ErrDisconnected):
		t = thrift.END_OF_FILE
	}
	return &transportError{typeID: t, err: err}
}

func (e *transportError) Error() string { return "thrift over mqrpc: " + e.err.Error() }
func (e *transportError) Unwrap() error { return e.err }
func (e *transportError) Err() error    { return e.err }
func (e *transportError) TypeId() int   { return e.typeID }
func (e *transportError) Timeout() bool { return e.typeID == thrift.TIMED_OUT }
func (e *transportError) TExceptionType() thrift.TExceptionType {
	return thrift.TExceptionTypeTransport
}

// callError turns the error of a round trip into what Thrift callers get:
// an Exception for a status reply, a TTransportException otherwise.
func callError(err error) error {
	var e *rpc.Error
	if errors.As(err, &e) && e.Wire() {
		return NewException(e)
	}
	return newTransportError(err)
}
