package rocketmq_test

import (
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/brokertest"
	"github.com/mqrpc/mqrpc/broker/rocketmq"
	"github.com/mqrpc/mqrpc/internal/testenv"
)

// clientLeaks are goroutines rocketmq-client-go leaves behind after a clean
// shutdown. Each one sleeps before it first looks at the client's done
// channel, so it outlives Shutdown by that sleep:
//   - rmqClient.Start: name-server address refresh and offset persistence
//     sleep 10 s first;
//   - pushConsumer.Start: the expired-message cleaner sleeps ConsumeTimeout
//     (15 min by default) first.
var clientLeaks = []goleak.Option{
	goleak.IgnoreAnyFunction("github.com/apache/rocketmq-client-go/v2/internal.(*rmqClient).Start.func1.1"),
	goleak.IgnoreAnyFunction("github.com/apache/rocketmq-client-go/v2/internal.(*rmqClient).Start.func1.4"),
	goleak.IgnoreAnyFunction("github.com/apache/rocketmq-client-go/v2/consumer.(*pushConsumer).Start.func1.2"),
}

// testLogger logs to stderr when MQRPC_TEST_LOG names a level (debug,
// info, warn, error); otherwise it is nil and nothing is logged.
func testLogger() *slog.Logger {
	var level slog.Level
	if err := level.UnmarshalText([]byte(os.Getenv("MQRPC_TEST_LOG"))); err != nil {
		return nil
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
}

func newBroker(t testing.TB) *rocketmq.Broker {
	t.Helper()
	addr := testenv.RocketMQNameServer(t)
	b, err := rocketmq.New(addr, rocketmq.WithLogger(testLogger()))
	require.NoError(t, err)
	return b
}

func TestConformance(t *testing.T) {
	testenv.RocketMQNameServer(t)
	brokertest.Run(t, brokertest.Features{
		// RocketMQ stores a request while no consumer runs; it has no
		// "nobody listens" signal short of a missing topic.
		NoResponders: false,
		Durable:      true,
		// Consumer-group rebalancing assigns queues to a new consumer
		// asynchronously after it starts.
		ServeSettle: 3 * time.Second,
		Timeout:     20 * time.Second,
		LeakOptions: clientLeaks,
	}, func(t testing.TB) broker.Broker { return newBroker(t) })
}
