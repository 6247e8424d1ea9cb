// Package testpb is a small gRPC service for the tests of the mqgrpc
// adapter. The Go code is generated from test.proto and checked in.
package testpb

//go:generate protoc --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative test.proto
