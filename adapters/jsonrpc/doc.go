// Package jsonrpc carries JSON-RPC over any mqrpc broker: a JSON-RPC 2.0
// server (a broker.Handler) and client, and the JSON-RPC 1.1 dialect of
// RabbitMQ's Java client (com.rabbitmq.tools.jsonrpc.JsonRpcClient and
// JsonRpcServer), so that Java client can call Go services and Go can call
// Java services.
//
//	srv := jsonrpc.NewServer()
//	jsonrpc.Register(srv, "add", func(ctx context.Context, p [2]int) (int, error) { return p[0] + p[1], nil })
//	sub, err := b.Serve("calc", srv)
//
//	c := jsonrpc.NewClient(b, "calc")
//	sum, err := jsonrpc.Invoke[int](ctx, c, "add", []int{1, 2})
//
// Each broker message carries one JSON-RPC request, notification or batch
// (content-type application/json; the server also reads messages with no
// content type, as the Java client sends them), and the reply carries the
// response.
//
// # JSON-RPC 2.0
//
// Requests, notifications (requests without an id: served, never answered,
// sent by Client.Notify with broker Send) and batches (answered with an
// array of the responses that are not to notifications, or with nothing
// when all are notifications; Client.Batch). Ids of any JSON type allowed
// (string, number, null) are echoed byte for byte. Errors use the standard
// codes: -32700 parse error, -32600 invalid request, -32601 method not
// found, -32602 invalid params, -32603 internal error.
//
// # The RabbitMQ Java client's dialect (JSON-RPC 1.1)
//
// A request with "version":"1.1", such as
//
//	{"id":null,"method":"add","version":"1.1","params":[1,2]}
//
// is answered as the Java JsonRpcServer answers:
//
//	{"version":"1.1","result":3}
//	{"version":"1.1","id":7,"error":{"name":"JSONRPCError","code":-32601,"message":"...","error":null}}
//
// (a null id is left out, as the Java server does; the "error" member of
// the error object carries Error.Data). Every 1.1 request is answered:
// the dialect has no notifications. The system.describe method returns
// the ServiceDescription the Java client reads when it starts, with one
// procedure per registered method (its parameters worked out from the
// params type, see Register) and the javaReturnType the Java client needs
// to convert results. The Java client publishes to a queue with reply_to and
// correlation_id; over broker/amqp that is a plain request to the subject
// the server is served on. A Client made with WithVersion11 speaks the same
// dialect to a Java JsonRpcServer.
//
// # Status codes
//
// A single error response also carries the mqrpc status in its
// mqrpc-status header, so mqrpc middleware sees the failure, and a client
// *Error unwraps to that status (an *rpc.Error). Codes map both ways
// without loss for every mqrpc code, and the JSON-RPC code of an error
// object always travels unchanged in the body:
//
//	JSON-RPC code                     mqrpc code
//	-32700 parse error                InvalidArgument
//	-32600 invalid request            InvalidArgument
//	-32601 method not found           Unimplemented
//	-32602 invalid params             InvalidArgument  <- InvalidArgument
//	-32603 internal error             Internal         <- Internal
//	-32601                                             <- Unimplemented
//	-32000 - c (-32001 ... -32016)    c                <- any other code c
//	-32000                            Unknown
//	400, 403, 500, 505 (Java server)  InvalidArgument, PermissionDenied, Internal, Unimplemented
//	any other code                    Unknown
//
// A handler's *rpc.Error with code NotFound thus reaches a JSON-RPC caller
// as code -32005 and an mqrpc caller as NotFound; an application's own
// JSON-RPC code (a handler returning &jsonrpc.Error{Code: 42}) reaches the
// caller as 42, with status Unknown.
package jsonrpc
