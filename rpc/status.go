package rpc

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/mqrpc/mqrpc/broker"
)

// Code is a status code, from gRPC's code set, so errors map one to one to
// gRPC and to most RPC systems. It travels in the mqrpc-status reply
// header as a decimal number.
type Code uint32

// The status codes. The numbers are gRPC's and are part of the wire
// protocol.
const (
	OK                 Code = 0
	Canceled           Code = 1
	Unknown            Code = 2
	InvalidArgument    Code = 3
	DeadlineExceeded   Code = 4
	NotFound           Code = 5
	AlreadyExists      Code = 6
	PermissionDenied   Code = 7
	ResourceExhausted  Code = 8
	FailedPrecondition Code = 9
	Aborted            Code = 10
	OutOfRange         Code = 11
	Unimplemented      Code = 12
	Internal           Code = 13
	Unavailable        Code = 14
	DataLoss           Code = 15
	Unauthenticated    Code = 16
)

var codeNames = [...]string{
	"ok", "canceled", "unknown", "invalid_argument", "deadline_exceeded", "not_found",
	"already_exists", "permission_denied", "resource_exhausted", "failed_precondition",
	"aborted", "out_of_range", "unimplemented", "internal", "unavailable", "data_loss",
	"unauthenticated",
}

// String returns the code's name in snake case, such as "not_found".
func (c Code) String() string {
	if int(c) < len(codeNames) {
		return codeNames[c]
	}
	return "code_" + strconv.FormatUint(uint64(c), 10)
}

// Error is an error with a status code. Handlers return it to choose the
// code a caller sees; callers receive it for every failed call.
//
// An Error decoded from a reply is a wire error (Wire reports true): the
// failure happened on the server. An Error made locally (a timeout, no
// responders) is not. An Error may carry typed details (WithDetails),
// which travel with it in the reply.
type Error struct {
	code    Code
	err     error
	wire    bool
	details []ErrorDetail
}

// NewError returns an error with code c wrapping err. A nil err gives an
// error whose message is the code's name.
func NewError(c Code, err error) *Error { return &Error{code: c, err: err} }

// Errorf returns an error with code c and a formatted message; %w works.
func Errorf(c Code, format string, args ...any) *Error {
	return &Error{code: c, err: fmt.Errorf(format, args...)}
}

// Code returns the status code.
func (e *Error) Code() Code { return e.code }

// Message returns the error message without the code.
func (e *Error) Message() string {
	if e.err == nil {
		return ""
	}
	return e.err.Error()
}

// Wire reports whether the error came from a server's reply.
func (e *Error) Wire() bool { return e.wire }

// Error implements error: "code: message".
func (e *Error) Error() string {
	if e.err == nil {
		return e.code.String()
	}
	return e.code.String() + ": " + e.err.Error()
}

// Unwrap returns the wrapped error.
func (e *Error) Unwrap() error { return e.err }

// Is reports an error with code DeadlineExceeded as
// context.DeadlineExceeded and one with code Canceled as context.Canceled,
// whether it came over the wire or from this process, so
// errors.Is(err, context.DeadlineExceeded) means the same everywhere.
func (e *Error) Is(target error) bool {
	switch target {
	case context.DeadlineExceeded:
		return e.code == DeadlineExceeded
	case context.Canceled:
		return e.code == Canceled
	}
	return false
}

// CodeOf returns the status code of err: OK for nil, the code of an *Error
// in its chain, and for local failures the code that describes them
// (context and broker sentinels included); Unknown otherwise.
func CodeOf(err error) Code {
	if err == nil {
		return OK
	}
	var e *Error
	if errors.As(err, &e) {
		return e.code
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, broker.ErrTimeout):
		if errors.Is(err, context.Canceled) {
			return Canceled
		}
		return DeadlineExceeded
	case errors.Is(err, context.Canceled):
		return Canceled
	case errors.Is(err, broker.ErrNoResponders), errors.Is(err, broker.ErrDisconnected),
		errors.Is(err, broker.ErrClosed):
		return Unavailable
	case errors.Is(err, broker.ErrMessageTooLarge):
		return ResourceExhausted
	}
	return Unknown
}

// rejectionCode is the status code of a broker's rejection.
func rejectionCode(r broker.Reason) Code {
	switch r {
	case broker.Malformed:
		return InvalidArgument
	case broker.TooLarge:
		return ResourceExhausted
	case broker.Expired:
		return DeadlineExceeded
	case broker.Unavailable:
		return Unavailable
	}
	return Unknown
}

// asError returns err as an *Error, converting local failures with CodeOf.
func asError(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	return &Error{code: CodeOf(err), err: err}
}

// wireError is the error carried by a reply.
type wireError struct{ msg string }

func (w wireError) Error() string { return w.msg }

// ErrorFromReply returns the error a reply carries in its status headers,
// or nil for a successful reply. The error is a wire *Error.
func ErrorFromReply(reply *broker.Message) error {
	s := reply.Header.Get(broker.HeaderStatus)
	if s == "" || s == "0" {
		return nil
	}
	n, err := strconv.ParseUint(s, 10, 32)
	c := Code(n)
	msg := reply.Header.Get(broker.HeaderStatusMessage)
	if err != nil {
		c, msg = Unknown, "malformed status "+strconv.Quote(s)+": "+msg
	}
	var details []ErrorDetail
	if d := reply.Header.Get(HeaderDetails); d != "" {
		// The code and message still hold: keep them, and say why the
		// details are missing.
		if details, err = decodeDetails(d); err != nil {
			msg += " (malformed " + HeaderDetails + " header: " + err.Error() + ")"
		}
	}
	var inner error
	if msg != "" {
		inner = wireError{msg}
	}
	return &Error{code: c, err: inner, wire: true, details: details}
}

// ErrorReply returns a reply message carrying err's status code, message
// and details, with an empty body. Server middleware uses it to answer a
// request without calling the handler; most code just returns an *Error.
func ErrorReply(err error) *broker.Message {
	e := asError(err)
	h := make(broker.Header, 2)
	c := e.code
	if c == OK {
		c = Unknown
	}
	h[broker.HeaderStatus] = strconv.FormatUint(uint64(c), 10)
	if m := e.Message(); m != "" {
		h[broker.HeaderStatusMessage] = m
	}
	if len(e.details) > 0 {
		h[HeaderDetails] = encodeDetails(e.details)
	}
	return &broker.Message{Header: h}
}
