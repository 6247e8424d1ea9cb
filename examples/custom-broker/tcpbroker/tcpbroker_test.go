package tcpbroker_test

import (
	"net"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/brokertest"
	"github.com/mqrpc/mqrpc/examples/custom-broker/tcpbroker"
	"github.com/mqrpc/mqrpc/rpc/rpctest"
)

func hub(t *testing.T) func(t testing.TB) broker.Broker {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { l.Close() })
	go tcpbroker.Listen(l)
	return func(t testing.TB) broker.Broker {
		b, err := tcpbroker.Dial(l.Addr().String())
		require.NoError(t, err)
		return b
	}
}

func TestConformance(t *testing.T) {
	brokertest.Run(t, brokertest.Features{NoResponders: true, Kernel: true}, hub(t))
}

func TestRPCConformance(t *testing.T) {
	rpctest.Run(t, rpctest.Features{Kernel: true}, hub(t))
}
