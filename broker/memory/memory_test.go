package memory_test

import (
	"testing"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/brokertest"
	"github.com/mqrpc/mqrpc/broker/memory"
)

func TestConformance(t *testing.T) {
	root := memory.New()
	brokertest.Run(t, brokertest.Features{NoResponders: true, Kernel: true}, func(testing.TB) broker.Broker {
		return root.Connect()
	})
}
