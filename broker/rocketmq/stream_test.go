package rocketmq_test

import (
	"testing"
	"time"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/brokertest"
	"github.com/mqrpc/mqrpc/rpc/rpctest"
)

// TestRealStreams runs the stream cases of both suites alone on the real
// RocketMQ (they are part of TestConformance too): the full conformance
// restarts the shared broker, the stream cases do not.
//
//	go test -run 'TestRealStreams' ./broker/rocketmq/
func TestRealStreams(t *testing.T) {
	realBroker(t)
	f := brokertest.Features{ServeSettle: 3 * time.Second, Timeout: 20 * time.Second, LeakOptions: clientLeaks}
	newB := func(t testing.TB) broker.Broker { return newBroker(t) }
	t.Run("broker", func(t *testing.T) { brokertest.RunStreams(t, f, newB) })
	t.Run("rpc", func(t *testing.T) { rpctest.RunStreams(t, rpctest.Features{ServeSettle: 3 * time.Second}, newB) })
}
