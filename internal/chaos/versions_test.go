package chaos_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/internal/chaos"
)

// scripts/brokers (bash, sourcing scripts/versions.env) and the chaos
// launcher (Versions) read the same values, and the nats-server that
// scripts/brokers may build is the one go.mod requires (the embedded one).
func TestVersionsEnv(t *testing.T) {
	vars, err := chaos.Versions()
	require.NoError(t, err)
	root := filepath.Join("..", "..")
	keys := []string{"ROCKETMQ_VERSION", "NATS_SERVER_VERSION", "ROCKETMQ_NAMESRV_HEAP", "ROCKETMQ_BROKER_HEAP", "ROCKETMQ_JVM_FLAGS"}
	script := "source scripts/versions.env"
	for _, k := range keys {
		require.NotEmpty(t, vars[k], k)
		script += `; printf '%s\n' "$` + k + `"`
	}
	cmd := exec.Command("bash", "-c", script)
	cmd.Dir = root
	out, err := cmd.Output()
	require.NoError(t, err)
	got := strings.Split(strings.TrimSuffix(string(out), "\n"), "\n")
	require.Len(t, got, len(keys))
	for i, k := range keys {
		assert.Equal(t, got[i], vars[k], "%s as bash reads it", k)
	}

	gomod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	require.NoError(t, err)
	assert.Contains(t, string(gomod), "github.com/nats-io/nats-server/v2 "+vars["NATS_SERVER_VERSION"]+"\n",
		"NATS_SERVER_VERSION is go.mod's nats-server")
}
