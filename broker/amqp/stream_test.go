package amqp_test

import (
	"testing"

	"github.com/mqrpc/mqrpc/broker/amqp"
	"github.com/mqrpc/mqrpc/internal/testenv"
	"github.com/mqrpc/mqrpc/rpc/rpctest"
)

// The rpc-level stream cases on the shared RabbitMQ, fast and with quorum
// queues (the opening request durable, the frames on the fast path). The
// broker-level ones are part of the conformance runs
// (TestConformanceFast/Streams, TestConformanceQuorum/Streams, ...).
func TestRPCStreams(t *testing.T) {
	url := testenv.AMQPURL(t)
	t.Run("fast", func(t *testing.T) { rpctest.RunStreams(t, rpctest.Features{}, rpctest.NewBroker(newBrokerFunc(url))) })
	t.Run("quorum", func(t *testing.T) {
		rpctest.RunStreams(t, rpctest.Features{}, rpctest.NewBroker(newBrokerFunc(url, amqp.WithDurable(amqp.QuorumQueue))))
	})
}
