// Package helloworld is the Greeter service of grpc-go's helloworld
// example. The Go code is generated from helloworld.proto and checked in;
// ../README.md says how.
package helloworld

//go:generate protoc --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative helloworld.proto
