package depstest

import (
	"go/build"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// rocketmqAndOld are rocketmq-client-go and the old modules it brings
// (logrus 1.4, golang/mock, lumberjack; x/lint came with them before).
var rocketmqAndOld = []string{
	"github.com/apache/rocketmq-client-go/v2",
	"github.com/sirupsen/logrus",
	"github.com/golang/mock",
	"golang.org/x/lint",
	"gopkg.in/natefinch/lumberjack.v2",
}

// otel is OpenTelemetry's SDK: only middleware/otelmw, a module of its
// own, brings it.
const otel = "go.opentelemetry.io/otel/sdk"

// core is what every program below imports: mqrpc's core packages.
const core = `
	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/memory"
	"github.com/mqrpc/mqrpc/codec/json"
	"github.com/mqrpc/mqrpc/middleware"
	"github.com/mqrpc/mqrpc/rpc"
`

const coreUse = `
	var b broker.Broker = memory.New()
	_ = rpc.NewClient(b, rpc.WithCodec(json.Codec{}), rpc.WithClientMiddleware(middleware.Timeout(0)))
`

func TestDependencies(t *testing.T) {
	if testing.Short() {
		t.Skip("builds programs with the go command")
	}
	const (
		nats     = "github.com/nats-io/nats.go"
		amqp     = "github.com/rabbitmq/amqp091-go"
		rocketmq = "github.com/apache/rocketmq-client-go/v2"
	)
	tests := []struct {
		name, imports, use string
		modules            []string // the mqrpc modules the program requires
		links, notLinks    []string // modules whose packages it links, or not
		hasRocketMQ        bool     // rocketmq-client-go & co. in go list -m all
	}{
		{name: "core", links: []string{}, notLinks: []string{nats, amqp, rocketmq}},
		{
			name: "nats", imports: `"github.com/mqrpc/mqrpc/broker/nats"`,
			use:   `_, _ = nats.New("nats://127.0.0.1:4222")`,
			links: []string{nats}, notLinks: []string{amqp, rocketmq},
		},
		{
			name: "rabbitmq", imports: `"github.com/mqrpc/mqrpc/broker/amqp"`,
			use:   `_, _ = amqp.New("amqp://127.0.0.1:5672/")`,
			links: []string{amqp}, notLinks: []string{nats, rocketmq},
		},
		{
			name: "dial", imports: `"github.com/mqrpc/mqrpc/broker/dial"`,
			use:   `_, _ = dial.Open("memory:")`,
			links: []string{nats, amqp}, notLinks: []string{rocketmq},
		},
		{
			// The check can fail: a program that imports broker/rocketmq
			// gets rocketmq-client-go and its old dependencies.
			name: "rocketmq", imports: `"github.com/mqrpc/mqrpc/broker/rocketmq"`,
			use:     `_, _ = rocketmq.New("127.0.0.1:9876")`,
			modules: []string{"broker/rocketmq"},
			links:   []string{rocketmq}, notLinks: []string{nats, amqp}, hasRocketMQ: true,
		},
	}
	root := repoRoot(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			gomod := "module example.com/prog\n\ngo 1.26.0\n\nrequire github.com/mqrpc/mqrpc v0.0.0-00010101000000-000000000000\n\nreplace github.com/mqrpc/mqrpc => " + root + "\n"
			for _, m := range tt.modules {
				gomod += "\nrequire github.com/mqrpc/mqrpc/" + m + " v0.0.0-00010101000000-000000000000\n\nreplace github.com/mqrpc/mqrpc/" + m + " => " + filepath.Join(root, m) + "\n"
			}
			src := "package main\n\nimport (" + core + "\t" + tt.imports + "\n)\n\nfunc main() {" + coreUse + "\t" + tt.use + "\n}\n"
			require.NoError(t, os.WriteFile(filepath.Join(dir, "go.mod"), []byte(gomod), 0o644))
			require.NoError(t, os.WriteFile(filepath.Join(dir, "main.go"), []byte(src), 0o644))
			goCmd(t, dir, "mod", "tidy")

			all := strings.Fields(goCmd(t, dir, "list", "-m", "-f", "{{.Path}}", "all"))
			assert.False(t, slices.Contains(all, otel), "go list -m all holds %s", otel)
			for _, m := range rocketmqAndOld {
				if tt.hasRocketMQ {
					if m != "golang.org/x/lint" {
						assert.True(t, slices.Contains(all, m), "go list -m all lacks %s", m)
					}
				} else {
					assert.False(t, slices.Contains(all, m), "go list -m all holds %s", m)
				}
			}
			linked := strings.Fields(goCmd(t, dir, "list", "-deps", "-f", "{{with .Module}}{{.Path}}{{end}}", "."))
			for _, m := range tt.links {
				assert.True(t, slices.Contains(linked, m), "links no package of %s", m)
			}
			for _, m := range tt.notLinks {
				assert.False(t, slices.Contains(linked, m), "links a package of %s", m)
			}
			mods := map[string]bool{}
			for _, m := range linked {
				mods[m] = true
			}
			t.Logf("go list -m all: %d modules; linked: packages of %d modules", len(all), len(mods))
		})
	}
}

// goCmd runs the go command in dir in module mode (no workspace: a
// user's program has none) and returns its output.
func goCmd(t *testing.T, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command(goBin(), args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=mod")
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "go %s:\n%s", strings.Join(args, " "), out)
	return string(out)
}

// goBin is the go command of the toolchain running the test.
func goBin() string {
	if p := filepath.Join(build.Default.GOROOT, "bin", "go"); fileExists(p) {
		return p
	}
	return "go"
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// repoRoot is the checkout's root: the directory of the main module.
func repoRoot(t *testing.T) string {
	t.Helper()
	wd, err := os.Getwd()
	require.NoError(t, err)
	root := filepath.Join(wd, "..", "..")
	require.FileExists(t, filepath.Join(root, "go.mod"))
	return root
}
