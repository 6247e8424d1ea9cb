package memory_test

import (
	"testing"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/brokertest"
	"github.com/mqrpc/mqrpc/broker/memory"
)

// Streams travel the inboxes, not the queues: they run the same with no
// queue buffer at all (every Request and Send waits for a free server).
func TestStreamsUnbuffered(t *testing.T) {
	root := memory.New(memory.WithBuffer(0))
	brokertest.RunStreams(t, brokertest.Features{NoResponders: true, Kernel: true}, func(testing.TB) broker.Broker {
		return root.Connect()
	})
}
