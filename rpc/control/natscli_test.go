package control_test

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/micro"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/internal/testenv"
	"github.com/mqrpc/mqrpc/rpc"
	"github.com/mqrpc/mqrpc/rpc/control"
)

// natsCLI returns the path of natscli's nats binary (v0.5.0, installed by
// scripts/test), or skips (fails under CI=true) when there is none.
func natsCLI(t *testing.T) string {
	if p, err := exec.LookPath("nats"); err == nil {
		return p
	}
	gopath, err := exec.Command("go", "env", "GOPATH").Output()
	if err == nil {
		p := filepath.Join(strings.TrimSpace(string(gopath)), "bin", "nats")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	msg := "natscli (nats) is not installed: go install github.com/nats-io/natscli/nats@v0.5.0"
	if testenv.CI() {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// TestNATSCLI lists, describes and counts an mqrpc service with natscli's
// `nats micro`, which speaks the NATS micro protocol, and reads the
// answers with nats.go micro's own types.
func TestNATSCLI(t *testing.T) {
	url := testenv.NATSURL(t)
	cli := natsCLI(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	name := uniqueName("natscli")
	open := brokers()["nats"]
	var ids []string
	for i := 0; i < 2; i++ {
		s, err := newCalc(t, nil).Serve(open(t), name, control.WithVersion("1.0.1"), control.WithDescription("a calculator"))
		require.NoError(t, err)
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_ = s.Stop(ctx)
		})
		ids = append(ids, s.ID())
	}
	c := rpc.NewClient(open(t))
	for i := 0; i < 3; i++ {
		_, err := rpc.Invoke[AddRequest, AddReply](ctx, c, name, "Add", &AddRequest{A: 1, B: 2})
		require.NoError(t, err)
	}
	run := func(args ...string) []byte {
		t.Helper()
		cmd := exec.CommandContext(ctx, cli, append([]string{"--no-context", "-s", url, "--timeout", "3s", "micro"}, args...)...)
		cmd.Env = append(os.Environ(), "HOME="+t.TempDir(), "NO_COLOR=1")
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "nats micro %v: %s", args, out)
		return out
	}

	t.Run("ls", func(t *testing.T) {
		var pings []micro.Ping
		require.NoError(t, json.Unmarshal(run("ls", name, "--json"), &pings))
		require.Len(t, pings, 2)
		got := []string{pings[0].ID, pings[1].ID}
		assert.ElementsMatch(t, ids, got)
		for _, p := range pings {
			assert.Equal(t, name, p.Name)
			assert.Equal(t, "1.0.1", p.Version)
		}
		table := string(run("ls", name))
		assert.Contains(t, table, name)
		assert.Contains(t, table, ids[0])
	})
	t.Run("info", func(t *testing.T) {
		var both struct {
			Info  micro.Info  `json:"info"`
			Stats micro.Stats `json:"stats"`
		}
		require.NoError(t, json.Unmarshal(run("info", name, ids[0], "--json"), &both))
		info := both.Info
		assert.Equal(t, ids[0], both.Stats.ID)
		assert.Equal(t, micro.InfoResponseType, info.Type)
		assert.Equal(t, "a calculator", info.Description)
		var eps []string
		for _, ep := range info.Endpoints {
			eps = append(eps, ep.Name)
			assert.Equal(t, name, ep.Subject)
		}
		assert.Equal(t, []string{"Add", "Block", "Fail", "Raw"}, eps)
		table := string(run("info", name, ids[0]))
		assert.Contains(t, table, "a calculator")
		assert.Contains(t, table, "Block")
	})
	t.Run("stats", func(t *testing.T) {
		var stats []micro.Stats
		require.NoError(t, json.Unmarshal(run("stats", name, "--json"), &stats))
		require.Len(t, stats, 2)
		n := 0
		for _, s := range stats {
			assert.Equal(t, micro.StatsResponseType, s.Type)
			for _, ep := range s.Endpoints {
				if ep.Name == "Add" {
					n += ep.NumRequests
				}
			}
		}
		assert.Equal(t, 3, n)
		table := string(run("stats", name))
		assert.Contains(t, table, "Add")
	})
}
