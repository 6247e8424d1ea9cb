package cases

import (
	"context"
	"testing"

	"github.com/mqrpc/mqrpc/bench/harness"
	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/memory"
)

// memoryPair opens two connections of one in-process hub, for withPair.
func memoryPair() func(string) (broker.Broker, error) {
	hub := memory.New()
	first := true
	return func(string) (broker.Broker, error) {
		if first {
			first = false
			return hub, nil
		}
		return hub.Connect(), nil
	}
}

// BenchmarkMemoryStreamLayers runs the typed (rpc, msgpack) and the gRPC
// stream cases over the in-process broker: what the layers above the
// engine cost per message, without a network (allocs/op / 5,000 is the
// figure per message).
func BenchmarkMemoryStreamLayers(b *testing.B) {
	const n = memoryStreamMsgs
	cfg := testConfig()
	benchGroup(b, []harness.Case{
		{Group: "memory-stream", Name: "engine", Msgs: n, Setup: func(context.Context) (harness.Target, error) {
			return newEngineTarget(n, subject("mqbench_stream"), memoryPair())
		}},
		{Group: "memory-stream", Name: "rpc typed", Msgs: n, Setup: func(context.Context) (harness.Target, error) {
			return cfg.newRPCStreamTarget(n, memoryPair())
		}},
		{Group: "memory-stream", Name: "grpc", Msgs: n, Setup: func(context.Context) (harness.Target, error) {
			return newGRPCStreamTarget(n, memoryPair())
		}},
	})
}
