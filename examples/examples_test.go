// Package examples holds no code of its own: its test runs every example
// program against the brokers mqrpc ships.
package examples

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/examples/internal/exampletest"
	"github.com/mqrpc/mqrpc/internal/testenv"
)

// Every example runs on every broker it offers: each program (every
// directory here with a main.go) is built once, run with -broker memory,
// then with -broker naming the shared NATS and RabbitMQ and, for the
// programs that link broker/rocketmq (a module of its own: those with a
// go.mod here), RocketMQ (examples/rocketmq's
// TestMainModuleExamplesOnRocketMQ runs the others there); each run prints
// the same (but for its "broker:" line). The programs are built without the race detector, so RocketMQ's
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
		require.Contains(t, exampletest.Want, p, "a new example: add the line it prints to exampletest.Want")
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
			if exampletest.OnlyOn[p] == "rabbitmq" {
				got := exampletest.Run(t, program, "-url", testenv.AMQPURL(t))
				assert.Contains(t, strings.Split(got, "\n"), exampletest.Want[p], "on RabbitMQ")
				return
			}
			ref := exampletest.Run(t, program, "-broker", "memory")
			assert.Contains(t, strings.Split(ref, "\n"), exampletest.Want[p], "on memory")
			nets := []network{{"nats", testenv.NATSURL}, {"rabbitmq", testenv.AMQPURL}}
			if _, err := os.Stat(filepath.Join(p, "go.mod")); err == nil {
				nets = append(nets, rocket)
			}
			for _, b := range nets {
				t.Run(b.name, func(t *testing.T) {
					got := exampletest.Run(t, program, "-broker", b.url(t))
					assert.Equal(t, ref, got, "prints what it prints on memory")
				})
			}
		})
	}
}
