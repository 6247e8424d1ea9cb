package nats_test

import (
	"testing"

	"github.com/mqrpc/mqrpc/broker"
	natsbroker "github.com/mqrpc/mqrpc/broker/nats"
	"github.com/mqrpc/mqrpc/internal/testenv"
	"github.com/mqrpc/mqrpc/rpc/rpctest"
)

// The rpc-level stream cases on the shared server, in core and in durable
// mode (the opening request goes through JetStream, the frames over core
// inboxes). The broker-level ones are part of the conformance runs
// (TestConformanceCore/Streams, TestConformanceJetStream/Streams).
func TestRPCStreams(t *testing.T) {
	url := testenv.NATSURL(t)
	t.Run("core", func(t *testing.T) {
		rpctest.RunStreams(t, rpctest.Features{}, func(t testing.TB) broker.Broker {
			return newBroker(t, url)
		})
	})
	t.Run("jetstream", func(t *testing.T) {
		js := testJetStream(t, url)
		rpctest.RunStreams(t, rpctest.Features{}, func(t testing.TB) broker.Broker {
			return newBroker(t, url, natsbroker.WithJetStream(js))
		})
	})
}
