package rpc_test

import (
	"testing"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/memory"
	"github.com/mqrpc/mqrpc/rpc/rpctest"
)

// The brokers' own tests run rpctest against the network brokers.
func TestConformanceMemory(t *testing.T) {
	root := memory.New()
	t.Cleanup(func() { _ = root.Close() })
	rpctest.Run(t, rpctest.Features{Kernel: true}, func(testing.TB) broker.Broker { return root.Connect() })
}
