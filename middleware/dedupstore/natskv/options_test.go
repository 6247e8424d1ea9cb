package natskv_test

import (
	"context"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/internal/testenv"
	"github.com/mqrpc/mqrpc/middleware/dedupstore/natskv"
)

// WithMemoryStorage and WithReplicas set the bucket New creates.
func TestStorageOptions(t *testing.T) {
	ctx := context.Background()
	js := connect(t, testenv.NATSURL(t))
	name := bucket(t, js)
	_, err := natskv.New(ctx, js, name, natskv.WithMemoryStorage(), natskv.WithReplicas(1))
	require.NoError(t, err)
	s, err := js.Stream(ctx, "KV_"+name)
	require.NoError(t, err)
	cfg := s.CachedInfo().Config
	assert.Equal(t, jetstream.MemoryStorage, cfg.Storage)
	assert.Equal(t, 1, cfg.Replicas)
}
