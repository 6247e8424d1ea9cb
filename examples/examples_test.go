// Package examples holds no code of its own: its test runs every example
// program against the brokers mqrpc ships.
package examples

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/internal/testenv"
)

// want is a line each example prints when it works, whatever the broker.
var want = map[string]string{
	"custom-broker":     "hello, tcp",
	"grpc-greeter":      "Greeting: Hello world",
	"grpc-routeguide":   `GetFeature: "Patriots Path"`,
	"jsonrpc":           "calcSum([10 20]) over JSON-RPC 1.1 = 30",
	"quickstart":        "100 concurrent calls: all correct",
	"rabbitmq":          "Add(2, 40) = 42",
	"rocketmq":          "Add(2, 40) = 42",
	"thrift-calculator": "add(2, 40) = 42",
}

// onlyOn are the examples of one broker's own options (broker/amqp's, not
// broker/dial's): they take -url instead of -broker and run on that broker
// alone.
var onlyOn = map[string]string{"rabbitmq": "rabbitmq"}

// Every example runs on every broker it offers: each program (every
// directory here with a main.go) is built once, run with -broker memory,
// then with -broker naming the shared NATS and RabbitMQ and, for the
// programs that link broker/rocketmq (a module of its own: those with a
// go.mod here), RocketMQ; each run prints the same (but for its "broker:"
// line). The programs are built without the race detector, so RocketMQ's
// client runs in them under `go test -race` too. Under CI=true a missing
// broker fails the test.
func TestEveryExampleOnEveryBroker(t *testing.T) {
	type network struct {
		name string
		url  func(testing.TB) string
	}
	rocket := network{"rocketmq", func(t testing.TB) string { return "rocketmq://" + testenv.RocketMQNameServer(t) }}
	entries, err := os.ReadDir(".")
	require.NoError(t, err)
	var programs []string
	for _, e := range entries {
		if _, err := os.Stat(filepath.Join(e.Name(), "main.go")); e.IsDir() && err == nil {
			programs = append(programs, e.Name())
		}
	}
	for _, p := range programs {
		require.Contains(t, want, p, "a new example: add the line it prints to want")
	}
	bin := t.TempDir()
	args := []string{"build", "-o", bin + string(filepath.Separator)}
	for _, p := range programs {
		args = append(args, "./"+p)
	}
	out, err := exec.Command("go", args...).CombinedOutput()
	require.NoError(t, err, "go build: %s", out)

	for _, p := range programs {
		t.Run(p, func(t *testing.T) {
			program := filepath.Join(bin, p)
			if onlyOn[p] == "rabbitmq" {
				got := runExample(t, program, "-url", testenv.AMQPURL(t))
				assert.Contains(t, strings.Split(got, "\n"), want[p], "on RabbitMQ")
				return
			}
			ref := runExample(t, program, "-broker", "memory")
			assert.Contains(t, strings.Split(ref, "\n"), want[p], "on memory")
			nets := []network{{"nats", testenv.NATSURL}, {"rabbitmq", testenv.AMQPURL}}
			if _, err := os.Stat(filepath.Join(p, "go.mod")); err == nil {
				nets = append(nets, rocket)
			}
			for _, b := range nets {
				t.Run(b.name, func(t *testing.T) {
					got := runExample(t, program, "-broker", b.url(t))
					assert.Equal(t, ref, got, "prints what it prints on memory")
				})
			}
		})
	}
}

// runExample runs program with args and returns its output without the
// line that names the broker.
func runExample(t *testing.T, program string, args ...string) string {
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
