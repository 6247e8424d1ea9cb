package testenv

import (
	"flag"
	"go/build"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

// childEnv marks the child go test that RerunWithoutRace starts.
const childEnv = "MQRPC_NORACE_CHILD"

// RocketMQNoRace is RocketMQNameServer for tests that use
// rocketmq-client-go, which has data races in its own goroutines (see
// broker/rocketmq's tests for the list): under -race any test during which
// one fires fails, whoever caused it. So under -race it skips, and the
// package's test that calls RerunWithoutRace runs the test again in a child
// go test without the race detector; `go test -race` of the package (scripts/test:
// `go test -race github.com/mqrpc/mqrpc/...`) still runs it.
func RocketMQNoRace(tb testing.TB) string {
	tb.Helper()
	SkipUnderRace(tb)
	return RocketMQNameServer(tb)
}

// SkipUnderRace skips a test that uses rocketmq-client-go under -race,
// unless it runs in the child that RerunWithoutRace starts.
func SkipUnderRace(tb testing.TB) {
	tb.Helper()
	if Race && os.Getenv(childEnv) == "" {
		tb.Skip("uses rocketmq-client-go, which races internally: run without -race by RerunWithoutRace")
	}
}

// RerunWithoutRace runs the tests matching pattern in the current package
// again, in a child `go test` without the race detector, and fails if they
// fail. Without -race it does nothing (the tests ran directly).
func RerunWithoutRace(t *testing.T, pattern string) {
	t.Helper()
	if !Race {
		t.Skip("only under -race: without it the tests ran directly")
	}
	RocketMQNameServer(t) // skip locally / fail under CI before building
	if os.Getenv(childEnv) != "" {
		t.Fatal("recursive child run")
	}
	goBin := filepath.Join(build.Default.GOROOT, "bin", "go") // the toolchain running this test
	if _, err := os.Stat(goBin); err != nil {
		goBin = "go"
	}
	args := []string{"test", "-count=1", "-run", pattern}
	// The child gets this run's timeout (scripts/test gives 40m), not go
	// test's default 10m: broker/rocketmq's real tests take about that.
	if f := flag.Lookup("test.timeout"); f != nil {
		args = append(args, "-timeout", f.Value.String())
	}
	if testing.Verbose() {
		args = append(args, "-v")
	}
	cmd := exec.Command(goBin, append(args, ".")...)
	// GOFLAGS may carry -race; the child must run without it.
	var flags []string
	for _, f := range strings.Fields(os.Getenv("GOFLAGS")) {
		if f != "-race" && f != "--race" && f != "-race=true" {
			flags = append(flags, f)
		}
	}
	cmd.Env = append(os.Environ(), childEnv+"=1", "GOFLAGS="+strings.Join(flags, " "))
	out, err := cmd.CombinedOutput()
	t.Logf("go %s .\n%s", strings.Join(args, " "), out)
	if err != nil {
		t.Fatalf("tests %s without -race failed: %v", pattern, err)
	}
}

// RocketMQLeaks are goleak options for the goroutines rocketmq-client-go
// v2 leaves running after Shutdown (upstream defects, each ending by itself
// within about 30 s; broker/rocketmq's tests say which and why).
func RocketMQLeaks() []goleak.Option {
	return []goleak.Option{
		goleak.IgnoreAnyFunction("github.com/apache/rocketmq-client-go/v2/consumer.(*statsItemSet).init.func4"),
		goleak.IgnoreAnyFunction("github.com/apache/rocketmq-client-go/v2/consumer.(*statsItemSet).init.func5"),
		goleak.IgnoreAnyFunction("github.com/apache/rocketmq-client-go/v2/consumer.(*statsItemSet).init.func6"),
		goleak.IgnoreAnyFunction("github.com/apache/rocketmq-client-go/v2/consumer.(*pushConsumer).Start.func1.2"),
		goleak.IgnoreAnyFunction("github.com/apache/rocketmq-client-go/v2/internal.(*rmqClient).Start.func1.1"),
		goleak.IgnoreAnyFunction("github.com/apache/rocketmq-client-go/v2/internal.(*rmqClient).Start.func1.3"),
		goleak.IgnoreAnyFunction("github.com/apache/rocketmq-client-go/v2/internal.(*rmqClient).Start.func1.4"),
		goleak.IgnoreAnyFunction("github.com/apache/rocketmq-client-go/v2/internal.(*rmqClient).PullMessage"),
		goleak.IgnoreAnyFunction("github.com/apache/rocketmq-client-go/v2/internal.(*rmqClient).RebalanceImmediately"),
		goleak.IgnoreAnyFunction("github.com/apache/rocketmq-client-go/v2/internal/remote.(*remotingClient).receiveResponse"),
		goleak.IgnoreAnyFunction("github.com/apache/rocketmq-client-go/v2/internal/remote.(*ResponseFuture).waitResponse"),
		goleak.IgnoreAnyFunction("github.com/patrickmn/go-cache.(*janitor).Run"),
	}
}
