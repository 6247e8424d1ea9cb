package amqp_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/amqp"
	"github.com/mqrpc/mqrpc/broker/brokertest"
	"github.com/mqrpc/mqrpc/rpc/rpctest"
)

func newBrokerFunc(url string, opts ...amqp.Option) brokertest.NewBroker {
	return func(t testing.TB) broker.Broker {
		t.Helper()
		b, err := amqp.New(url, append([]amqp.Option{
			amqp.WithReconnectBackoff(50*time.Millisecond, time.Second),
			amqp.WithConnectionName(t.Name()),
		}, opts...)...)
		require.NoError(t, err)
		return b
	}
}

// TestConformanceFast runs brokertest in fast mode on the shared RabbitMQ,
// in a vhost of its own so that Restart (dropping every connection of the
// vhost) disturbs no other test.
func TestConformanceFast(t *testing.T) {
	url, vhost := vhostURL(t)
	brokertest.Run(t, brokertest.Features{
		// An unroutable mandatory publish comes back at once.
		NoResponders: true,
		// Auto-delete queues go with their last server.
		Durable: false,
		// RabbitMQ's own limit is 128 MiB; 8 MiB keeps the suite quick.
		MaxBodySize: 8 << 20,
		Restart:     func(t testing.TB) { closeVhostConnections(t, vhost) },
		// Serve and Request on broker/kernel, cancel notices through
		// CancelExchange.
		Kernel: true,
	}, newBrokerFunc(url))
}

// TestConformanceExchange runs brokertest in fast mode through a named
// exchange, where queue groups are separate queues.
func TestConformanceExchange(t *testing.T) {
	url, vhost := vhostURL(t)
	brokertest.Run(t, brokertest.Features{
		NoResponders: true,
		Restart:      func(t testing.TB) { closeVhostConnections(t, vhost) },
		Kernel:       true,
	}, newBrokerFunc(url, amqp.WithExchange("mqrpc.test")))
}

// TestConformanceDurable runs brokertest in durable mode (classic queues)
// against a private node, which Restart really restarts.
func TestConformanceDurable(t *testing.T) {
	n := startNode(t, nil)
	brokertest.Run(t, brokertest.Features{
		// Clients declare the durable queue, so a request is always
		// routable and waits for a server instead.
		NoResponders: false,
		Durable:      true,
		Restart:      func(t testing.TB) { n.restart(t, false) },
		Kernel:       true,
	}, newBrokerFunc(n.URL(), amqp.WithDurable(amqp.ClassicQueue)))
}

// TestConformanceQuorum runs brokertest in durable mode with quorum queues
// on the shared RabbitMQ (vhost of its own; Restart drops connections).
func TestConformanceQuorum(t *testing.T) {
	url, vhost := vhostURL(t)
	brokertest.Run(t, brokertest.Features{
		NoResponders: false,
		Durable:      true,
		Restart:      func(t testing.TB) { closeVhostConnections(t, vhost) },
		Kernel:       true,
	}, newBrokerFunc(url, amqp.WithDurable(amqp.QuorumQueue)))
}

// TestRPCConformance runs the rpc-level suite (rpc/rpctest) on the shared
// RabbitMQ, in fast and durable mode.
func TestRPCConformance(t *testing.T) {
	url, _ := vhostURL(t)
	for name, opts := range map[string][]amqp.Option{
		"fast":    nil,
		"durable": {amqp.WithDurable(amqp.QuorumQueue)},
	} {
		t.Run(name, func(t *testing.T) {
			rpctest.Run(t, rpctest.Features{Kernel: true}, func(t testing.TB) broker.Broker {
				return newBrokerFunc(url, opts...)(t)
			})
		})
	}
}
