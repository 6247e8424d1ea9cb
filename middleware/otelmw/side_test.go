package otelmw_test

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/broker/memory"
	"github.com/mqrpc/mqrpc/middleware/otelmw"
	"github.com/mqrpc/mqrpc/rpc"
)

// Client spans belong on clients and server spans on servers: the other
// side refuses them when it is made.
func TestSides(t *testing.T) {
	in, err := otelmw.New()
	require.NoError(t, err)
	b := memory.New()
	defer b.Close()
	assert.Panics(t, func() { rpc.NewServer(rpc.WithServerMiddleware(in.Client())) })
	assert.Panics(t, func() { rpc.NewClient(b, rpc.WithClientMiddleware(in.Server())) })
	assert.NotPanics(t, func() {
		rpc.NewClient(b, rpc.WithClientMiddleware(in.Client()))
		rpc.NewServer(rpc.WithServerMiddleware(in.Server()))
	})
}
