// Package exampletest is what the tests of the example programs share
// (examples' TestEveryExampleOnEveryBroker and examples/rocketmq's
// TestMainModuleExamplesOnRocketMQ): the line each program prints when it
// works, and how to run one.
package exampletest

import (
	"bytes"
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Want is a line each example prints when it works, whatever the broker.
var Want = map[string]string{
	"custom-broker":     "hello, tcp",
	"grpc-greeter":      "Greeting: Hello world",
	"grpc-routeguide":   `GetFeature: "Patriots Path"`,
	"jsonrpc":           "calcSum([10 20]) over JSON-RPC 1.1 = 30",
	"quickstart":        "100 concurrent calls: all correct",
	"rabbitmq":          "Add(2, 40) = 42",
	"rocketmq":          "Add(2, 40) = 42",
	"thrift-calculator": "add(2, 40) = 42",
}

// OnlyOn are the examples of one broker's own options (broker/amqp's, not
// broker/dial's): they take -url instead of -broker and run on that broker
// alone.
var OnlyOn = map[string]string{"rabbitmq": "rabbitmq"}

// Run runs program with args and returns its output without the line that
// names the broker.
func Run(t *testing.T, program string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, program, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	require.NoError(t, err, "%s %s\nstdout:\n%s\nstderr:\n%s", filepath.Base(program), strings.Join(args, " "), stdout.String(), stderr.String())
	t.Logf("%s %s: %v", filepath.Base(program), strings.Join(args, " "), time.Since(start).Round(time.Millisecond))
	var lines []string
	for _, l := range strings.Split(strings.TrimRight(stdout.String(), "\n"), "\n") {
		if !strings.HasPrefix(l, "broker: ") {
			lines = append(lines, l)
		}
	}
	return strings.Join(lines, "\n")
}
