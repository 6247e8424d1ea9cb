package embedded_test

import (
	"os"
	"testing"

	natsgo "github.com/nats-io/nats.go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/mqrpc/mqrpc/broker/nats/embedded"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestStartRestartClose(t *testing.T) {
	srv, err := embedded.Start()
	require.NoError(t, err)
	url := srv.URL()
	assert.Regexp(t, `^nats://127\.0\.0\.1:\d+$`, url)
	store := srv.NATSServer().StoreDir()
	require.DirExists(t, store)

	nc, err := natsgo.Connect(url, natsgo.MaxReconnects(-1), natsgo.ReconnectWait(10_000_000))
	require.NoError(t, err)
	defer nc.Close()
	assert.Equal(t, int64(embedded.DefaultMaxPayload), nc.MaxPayload())

	require.NoError(t, srv.Restart())
	assert.Equal(t, url, srv.URL(), "same port after a restart")
	require.NoError(t, nc.Flush(), "clients reconnect to the restarted server")

	srv.Close()
	srv.Close() // idempotent
	_, err = os.Stat(store)
	assert.True(t, os.IsNotExist(err), "the temporary store is removed")
	assert.Error(t, srv.StartAgain())
}

func TestOptions(t *testing.T) {
	dir := t.TempDir()
	srv, err := embedded.Start(embedded.WithStoreDir(dir), embedded.WithMaxPayload(1<<20))
	require.NoError(t, err)
	nc, err := natsgo.Connect(srv.URL())
	require.NoError(t, err)
	assert.Equal(t, int64(1<<20), nc.MaxPayload())
	nc.Close()
	srv.Close()
	assert.DirExists(t, dir, "a store dir of the caller's is kept")

	srv, err = embedded.Start(embedded.WithoutJetStream())
	require.NoError(t, err)
	defer srv.Close()
	assert.False(t, srv.NATSServer().JetStreamEnabled())
}
