// Package rpc is the processor layer of mqrpc: typed servers and clients
// on top of any broker.Broker and any codec.Codec.
//
// A Server registers typed handlers with Handle and dispatches requests by
// the mqrpc-method header; it is itself a broker.Handler, so any broker can
// serve it. A Client encodes a request with its codec, sends it through the
// broker and decodes the reply. Failures carry a status Code (gRPC's code
// set) in the reply headers, so every codec and every language can read
// them; CodeOf tells the code of any error.
//
// Middleware has one type for both sides: it wraps a broker.Handler.
package rpc
