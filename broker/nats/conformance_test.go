package nats_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/brokertest"
	natsbroker "github.com/mqrpc/mqrpc/broker/nats"
	"github.com/mqrpc/mqrpc/internal/testenv"
	"github.com/mqrpc/mqrpc/rpc/rpctest"
)

// Core NATS promises a quick no-responders error but keeps nothing while
// no server runs.
func TestConformanceCore(t *testing.T) {
	url := testenv.NATSURL(t)
	brokertest.Run(t, brokertest.Features{NoResponders: true, Kernel: true}, func(t testing.TB) broker.Broker {
		return newBroker(t, url)
	})
}

// Durable mode stores every request, so a request without a server waits
// for one instead of failing with no responders.
func TestConformanceJetStream(t *testing.T) {
	url := testenv.NATSURL(t)
	js := testJetStream(t, url)
	brokertest.Run(t, brokertest.Features{Durable: true, Kernel: true}, func(t testing.TB) broker.Broker {
		return newBroker(t, url, natsbroker.WithJetStream(js))
	})
}

// The restart runs use a private embedded server, so restarting it never
// disturbs other tests sharing the nats-server on 4222.
func TestConformanceCoreRestart(t *testing.T) {
	srv := startEmbedded(t)
	restart := func(t testing.TB) { require.NoError(t, srv.Restart()) }
	brokertest.Run(t, brokertest.Features{NoResponders: true, Kernel: true, Restart: restart}, func(t testing.TB) broker.Broker {
		return newBroker(t, srv.URL(), natsbroker.WithReconnectWait(50*time.Millisecond))
	})
}

func TestConformanceJetStreamRestart(t *testing.T) {
	srv := startEmbedded(t)
	js := testJetStream(t, srv.URL(), func(c *natsbroker.JetStreamConfig) {
		c.MemoryStorage = false // the stored requests must survive the restart
	})
	restart := func(t testing.TB) { require.NoError(t, srv.Restart()) }
	f := brokertest.Features{Durable: true, Kernel: true, Restart: restart, LeakOptions: embeddedJetStreamGoroutines()}
	brokertest.Run(t, f, func(t testing.TB) broker.Broker {
		return newBroker(t, srv.URL(), natsbroker.WithJetStream(js),
			natsbroker.WithReconnectWait(50*time.Millisecond))
	})
}

// embeddedJetStreamGoroutines ignores the goroutines the in-process
// nats-server starts for the streams and consumers a test creates: they
// belong to the server, which lives on after the broker client is closed.
func embeddedJetStreamGoroutines() []goleak.Option {
	const srv = "github.com/nats-io/nats-server/v2/server"
	var opts []goleak.Option
	for _, f := range []string{
		".(*consumer).loopAndGatherMsgs",
		".(*consumer).processInboundAcks",
		".(*consumer).processInboundNextMsgReqs",
		".(*consumerFileStore).flushLoop",
		".(*fileStore).flushStreamStateLoop",
		".(*stream).internalLoop",
		".(*stream).signalConsumersLoop",
		"/ats.Register.func1",
	} {
		opts = append(opts, goleak.IgnoreTopFunction(srv+f))
	}
	return opts
}

// The rpc-level suite: what a caller of an rpc service sees on NATS (a
// middleware error is a reply, a delivery failure only on purpose,
// Unavailable from a server that stops, a cancel that reaches the method).
func TestRPCConformanceCore(t *testing.T) {
	url := testenv.NATSURL(t)
	rpctest.Run(t, rpctest.Features{Kernel: true}, func(t testing.TB) broker.Broker {
		return newBroker(t, url)
	})
}

func TestRPCConformanceJetStream(t *testing.T) {
	url := testenv.NATSURL(t)
	js := testJetStream(t, url)
	rpctest.Run(t, rpctest.Features{Kernel: true}, func(t testing.TB) broker.Broker {
		return newBroker(t, url, natsbroker.WithJetStream(js))
	})
}
