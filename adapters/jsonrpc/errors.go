package jsonrpc

import (
	"encoding/json"
	"errors"
	"strconv"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/rpc"
)

// The error codes defined by JSON-RPC 2.0.
const (
	CodeParseError     = -32700 // invalid JSON
	CodeInvalidRequest = -32600 // not a valid request object
	CodeMethodNotFound = -32601 // no such method
	CodeInvalidParams  = -32602 // params do not fit the method
	CodeInternalError  = -32603 // the server failed
	// CodeServerError is the start of the range -32000 to -32099 that
	// JSON-RPC leaves to implementations. mqrpc uses CodeServerError - c
	// for the mqrpc status code c (see CodeFromStatus).
	CodeServerError = -32000
)

// Error is a JSON-RPC error object. Handlers return it to choose the code,
// message and data the caller sees; clients return it for every error
// response.
//
// An Error received by a client also carries the mqrpc status of the
// reply: errors.As(err, new(*rpc.Error)) and rpc.CodeOf see it through
// Unwrap. It is the status the server put in the reply headers when there
// is one (the exact code a handler returned as an *rpc.Error), otherwise
// StatusFromCode(Code).
type Error struct {
	// Code is the JSON-RPC error code.
	Code int `json:"code"`
	// Message is a short description of the error.
	Message string `json:"message"`
	// Data is additional information, any JSON value; nil for none.
	// In the RabbitMQ (JSON-RPC 1.1) dialect it travels as the "error"
	// member of the error object.
	Data json.RawMessage `json:"data,omitempty"`

	status *rpc.Error
}

// Error returns "jsonrpc: <message> (code <code>)".
func (e *Error) Error() string {
	return "jsonrpc: " + e.Message + " (code " + strconv.Itoa(e.Code) + ")"
}

// Status returns the mqrpc status of the error: the one received with it,
// or one made from StatusFromCode(e.Code).
func (e *Error) Status() *rpc.Error {
	if e.status != nil {
		return e.status
	}
	return rpc.NewError(StatusFromCode(e.Code), errors.New(e.Message))
}

// Unwrap returns the mqrpc status received with the error, if any.
func (e *Error) Unwrap() error {
	if e.status == nil {
		return nil
	}
	return e.status
}

// StatusFromCode returns the mqrpc status code for a JSON-RPC error code:
//
//	JSON-RPC code                         mqrpc code
//	-32700 parse error                    InvalidArgument
//	-32600 invalid request                InvalidArgument
//	-32601 method not found               Unimplemented
//	-32602 invalid params                 InvalidArgument
//	-32603 internal error                 Internal
//	-32000                                Unknown
//	-32001 ... -32016 (-32000 - c)        c (Canceled ... Unauthenticated)
//	400, 403, 500, 505 (RabbitMQ's Java   InvalidArgument, PermissionDenied,
//	   JsonRpcServer)                     Internal, Unimplemented
//	anything else                         Unknown
func StatusFromCode(code int) rpc.Code {
	switch code {
	case CodeParseError, CodeInvalidRequest, CodeInvalidParams, 400:
		return rpc.InvalidArgument
	case CodeMethodNotFound, 505:
		return rpc.Unimplemented
	case CodeInternalError, 500:
		return rpc.Internal
	case 403:
		return rpc.PermissionDenied
	}
	if c := CodeServerError - code; c > 0 && c <= int(rpc.Unauthenticated) {
		return rpc.Code(c)
	}
	return rpc.Unknown
}

// CodeFromStatus returns the JSON-RPC error code for an mqrpc status code,
// so that StatusFromCode(CodeFromStatus(c)) == c for every code but OK:
//
//	mqrpc code        JSON-RPC code
//	InvalidArgument   -32602 invalid params
//	Unimplemented     -32601 method not found
//	Internal          -32603 internal error
//	any other c       -32000 - c (Unknown: -32002, NotFound: -32005, ...)
func CodeFromStatus(c rpc.Code) int {
	switch c {
	case rpc.InvalidArgument:
		return CodeInvalidParams
	case rpc.Unimplemented:
		return CodeMethodNotFound
	case rpc.Internal:
		return CodeInternalError
	case rpc.OK:
		c = rpc.Unknown
	}
	return CodeServerError - int(c)
}

// errorOf turns what a handler returned into a JSON-RPC error object.
func errorOf(err error) *Error {
	var je *Error
	if errors.As(err, &je) {
		return je
	}
	c := rpc.CodeOf(err)
	msg := err.Error()
	var re *rpc.Error
	if errors.As(err, &re) {
		c, msg = re.Code(), re.Message()
		if msg == "" {
			msg = c.String()
		}
	}
	return &Error{Code: CodeFromStatus(c), Message: msg}
}

// newError returns an Error for a failure found by the server itself.
func newError(code int, msg string) *Error { return &Error{Code: code, Message: msg} }

// wireStatus returns the mqrpc status a client attaches to an error object:
// the reply's status header when there is one, else the mapped code.
func wireStatus(reply *broker.Message, e *Error) *rpc.Error {
	var re *rpc.Error
	if reply != nil && len(reply.Header) > 0 {
		if err := rpc.ErrorFromReply(reply); err != nil && errors.As(err, &re) {
			return re
		}
	}
	// A wire status with the mapped code, made the only public way.
	m := &broker.Message{Header: broker.Header{
		broker.HeaderStatus:        strconv.Itoa(int(StatusFromCode(e.Code))),
		broker.HeaderStatusMessage: e.Message,
	}}
	errors.As(rpc.ErrorFromReply(m), &re)
	return re
}
