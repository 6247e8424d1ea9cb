package main

import (
	"encoding/json"
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

// registerRocketMQ is the file the build adds to each program: the one
// line a program of mqrpc's main module needs for rocketmq:// URLs.
const registerRocketMQ = `package main

import _ "github.com/mqrpc/mqrpc/broker/rocketmq/dialrocketmq"
`

// The example programs of mqrpc's main module (every directory beside this
// one with a main.go and no go.mod, except those of one broker's own
// options) run on RocketMQ once they import dialrocketmq: each is built
// with `go build -overlay` adding one file with that blank import (their
// own module does not require broker/rocketmq, so they cannot hold it
// themselves) in the repository's workspace (go.work), run with -broker memory, then
// with -broker rocketmq://<the shared name server>, and prints the same
// (but for its "broker:" line), including the line
// TestEveryExampleOnEveryBroker wants of it. The programs are built without
// the race detector, so RocketMQ's client runs in them under -race too.
// Under CI=true a missing RocketMQ fails the test.
func TestMainModuleExamplesOnRocketMQ(t *testing.T) {
	ns := testenv.RocketMQNameServer(t)
	examples, err := filepath.Abs("..")
	require.NoError(t, err)
	entries, err := os.ReadDir(examples)
	require.NoError(t, err)
	tmp := t.TempDir()
	added := filepath.Join(tmp, "dialrocketmq.go")
	require.NoError(t, os.WriteFile(added, []byte(registerRocketMQ), 0o644))
	overlay := map[string]map[string]string{"Replace": {}}
	var programs []string
	for _, e := range entries {
		dir := filepath.Join(examples, e.Name())
		if _, err := os.Stat(filepath.Join(dir, "main.go")); !e.IsDir() || err != nil {
			continue
		}
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			continue // a module of its own: TestEveryExampleOnEveryBroker runs it on RocketMQ
		}
		if exampletest.OnlyOn[e.Name()] != "" {
			continue
		}
		require.Contains(t, exampletest.Want, e.Name(), "a new example: add the line it prints to exampletest.Want")
		programs = append(programs, e.Name())
		overlay["Replace"][filepath.Join(dir, "zz_dialrocketmq.go")] = added
	}
	require.Contains(t, programs, "grpc-greeter") // issue 18's example
	js, err := json.Marshal(overlay)
	require.NoError(t, err)
	overlayFile := filepath.Join(tmp, "overlay.json")
	require.NoError(t, os.WriteFile(overlayFile, js, 0o644))

	bin := filepath.Join(tmp, "bin")
	args := []string{"build", "-overlay", overlayFile, "-o", bin + string(filepath.Separator)}
	for _, p := range programs {
		args = append(args, "../"+p)
	}
	cmd := exec.Command("go", args...)
	// -race in GOFLAGS would build the programs with the race detector,
	// under which rocketmq-client-go's own races kill them.
	var flags []string
	for _, f := range strings.Fields(os.Getenv("GOFLAGS")) {
		if f != "-race" && f != "--race" && f != "-race=true" {
			flags = append(flags, f)
		}
	}
	// This module's go.sum lacks what the examples need (gRPC, Thrift...):
	// build them in the repository's workspace (go.work), even when the
	// test runs with GOWORK=off.
	cmd.Env = append(os.Environ(), "GOFLAGS="+strings.Join(flags, " "),
		"GOWORK="+filepath.Join(examples, "..", "go.work"))
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "go %s: %s", strings.Join(args, " "), out)

	for _, p := range programs {
		t.Run(p, func(t *testing.T) {
			program := filepath.Join(bin, p)
			ref := exampletest.Run(t, program, "-broker", "memory")
			assert.Contains(t, strings.Split(ref, "\n"), exampletest.Want[p], "on memory")
			got := exampletest.Run(t, program, "-broker", "rocketmq://"+ns)
			assert.Equal(t, ref, got, "prints on RocketMQ what it prints on memory")
		})
	}
}
