package control_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/memory"
	"github.com/mqrpc/mqrpc/rpc/control"
)

// WithMetadata, WithMethods and WithServeOptions show in INFO: the
// instance's metadata (a copy), the methods of a handler that cannot
// describe itself, and the queue group the service is served in.
func TestServeOptions(t *testing.T) {
	b := memory.New()
	defer b.Close()
	md := map[string]string{"zone": "a"}
	h := broker.HandlerFunc(func(context.Context, *broker.Message) (*broker.Message, error) { return &broker.Message{}, nil })
	s, err := control.Serve(b, "plain", h, control.WithMetadata(md),
		control.WithMethods(control.Method{Name: "Echo", RequestType: "bytes", ReplyType: "bytes"}),
		control.WithServeOptions(broker.WithQueue("plain-workers")))
	require.NoError(t, err)
	defer s.Stop(context.Background())
	md["zone"] = "changed"

	info := s.Info()
	assert.Equal(t, map[string]string{"zone": "a"}, info.Metadata)
	require.Len(t, info.Endpoints, 1)
	assert.Equal(t, "Echo", info.Endpoints[0].Name)
	assert.Equal(t, "bytes", info.Endpoints[0].RequestType)
	assert.Equal(t, "plain-workers", info.Endpoints[0].QueueGroup)
}
