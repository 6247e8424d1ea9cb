package rocketmq_test

import (
	"flag"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/brokertest"
	"github.com/mqrpc/mqrpc/broker/rocketmq"
	"github.com/mqrpc/mqrpc/internal/testenv"
)

// clientLeaks are the goroutines rocketmq-client-go v2.1.2 leaves running
// after a clean Shutdown, measured after Close (TestZZ-style sampling every
// 5 s for 65 s, see the package report):
//   - statsItemSet.init.func4/5/6: five stats sets per consumer, each with
//     three goroutines that sleep until the next minute, hour and month
//     before they first look at their closed channel;
//   - pushConsumer.Start.func1.2: the expired-message cleaner sleeps
//     ConsumeTimeout (15 min) first;
//   - rmqClient.Start.func1.1 and func1.4: name-server refresh and offset
//     persistence sleep 10 s first;
//   - rmqClient.PullMessage: a long-polling pull in flight is not failed by
//     Shutdown and waits for its own timeout (gone within 30 s);
//   - remotingClient.receiveResponse: each producer and consumer opens a
//     name-server connection through a remoting client that Shutdown never
//     closes; it ends when the name server drops the idle connection;
//   - rmqClient.RebalanceImmediately: a rebalance started by Start can
//     still wait for the client's lock after Shutdown.
//
// The list is kept in internal/testenv, shared with the other packages
// whose tests use RocketMQ.
var clientLeaks = testenv.RocketMQLeaks()

// testLogger logs to stderr when MQRPC_TEST_LOG names a level (debug,
// info, warn, error); otherwise it is nil and nothing is logged.
func testLogger() *slog.Logger {
	var level slog.Level
	if err := level.UnmarshalText([]byte(os.Getenv("MQRPC_TEST_LOG"))); err != nil {
		return nil
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
}

// realBroker returns the name server address for a test against the real
// RocketMQ, or skips it under the race detector (testenv.RocketMQNoRace).
//
// rocketmq-client-go v2.1.2 has data races in its own goroutines (among
// others: remotingClient.processCMD writing a ResponseFuture that the
// InvokeAsync callback reads; pushConsumer.messageQueueChanged writing
// SubscriptionData that rmqClient.UpdateTopicRouteInfo clones), and -race
// fails any test during which one fires, whoever caused it. Under -race,
// TestRealBrokerConformanceWithoutRace runs these tests again in a child `go test`
// without the race detector, so `go test -race ./...` still covers them;
// mqrpc's own code is race-checked by the fake-producer tests.
func realBroker(t testing.TB) string {
	t.Helper()
	return testenv.RocketMQNoRace(t)
}

// realTests selects the tests realBroker guards, for the child run.
const realTests = "^(TestConformance|TestReal.*|TestRegression.*|TestUpstream.*|Example.*)$"

func TestRealBrokerConformanceWithoutRace(t *testing.T) {
	// Pass the parent's -run through (scripts/test -run Conformance runs
	// TestConformance in the child); by default run every real-broker test.
	pattern := realTests
	if f := flag.Lookup("test.run"); f != nil && f.Value.String() != "" {
		pattern = f.Value.String()
		// A pattern that names only this test means "all of them".
		top, _, _ := strings.Cut(pattern, "/")
		if re, err := regexp.Compile(top); err == nil && !re.MatchString("TestConformance") {
			pattern = realTests
		}
	}
	testenv.RerunWithoutRace(t, pattern)
}

// restartFunc restarts the broker (not the name server) through
// scripts/brokers, keeping its store, when the tests run against the broker
// that script manages; otherwise it returns nil and the suite skips its
// restart test.
func restartFunc(t testing.TB) func(testing.TB) {
	script, err := filepath.Abs(filepath.Join("..", "..", "scripts", "brokers"))
	require.NoError(t, err)
	if v := os.Getenv(testenv.EnvRocketMQ); v != "" && v != testenv.DefaultRocketMQ {
		return nil
	}
	if exec.Command(script, "status", "rocketmq").Run() != nil {
		return nil // not the script's broker
	}
	return func(t testing.TB) {
		for _, cmd := range []string{"down", "up"} {
			c := exec.Command(script, cmd, "rocketmq")
			c.Env = append(os.Environ(), "MQRPC_ROCKETMQ_KEEP_STORE=1")
			out, err := c.CombinedOutput()
			require.NoError(t, err, "scripts/brokers %s rocketmq: %s", cmd, out)
		}
	}
}

func newBroker(t testing.TB) *rocketmq.Broker {
	t.Helper()
	addr := realBroker(t)
	b, err := rocketmq.New(addr, rocketmq.WithLogger(testLogger()))
	require.NoError(t, err)
	return b
}

func TestConformance(t *testing.T) {
	realBroker(t)
	brokertest.Run(t, brokertest.Features{
		// RocketMQ stores a request while no consumer runs; it has no
		// "nobody listens" signal short of a missing topic.
		NoResponders: false,
		Durable:      true,
		// Served on broker/kernel, with cancel notices on ControlTopic.
		Kernel: true,
		// Consumer-group rebalancing assigns queues to a new consumer
		// asynchronously after it starts.
		ServeSettle: 3 * time.Second,
		Timeout:     20 * time.Second,
		LeakOptions: clientLeaks,
		Restart:     restartFunc(t),
	}, func(t testing.TB) broker.Broker { return newBroker(t) })
}
