package grpc_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	mqgrpc "github.com/mqrpc/mqrpc/adapters/grpc"
	"github.com/mqrpc/mqrpc/adapters/grpc/internal/testpb"
	"github.com/mqrpc/mqrpc/broker/memory"
	"github.com/mqrpc/mqrpc/rpc/control"
)

// TestControlPlane serves a gRPC service with control.Serve: INFO lists
// its methods by their full names with the proto message names and
// descriptors, and STATS counts calls made through a generated stub.
func TestControlPlane(t *testing.T) {
	b := memory.New()
	defer b.Close()
	srv := mqgrpc.NewServer()
	testpb.RegisterEchoServer(srv, &echoServer{})
	svc, err := control.Serve(b, "mqrpc.grpctest.Echo", srv)
	require.NoError(t, err)
	defer svc.Stop(context.Background()) //nolint:errcheck

	client := testpb.NewEchoClient(mqgrpc.NewClientConn(b))
	_, err = client.Echo(context.Background(), &testpb.EchoRequest{})
	require.NoError(t, err)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	infos, err := control.Discover[control.InfoResponse](ctx, b, control.Name("mqrpc.grpctest.Echo"), svc.ID())
	require.NoError(t, err)
	require.Len(t, infos, 1)
	eps := infos[0].Endpoints
	require.Len(t, eps, 2)
	assert.Equal(t, "/mqrpc.grpctest.Echo/Count", eps[0].Name)
	assert.Equal(t, map[string]string{"streaming": "server"}, eps[0].Metadata)
	echo := eps[1]
	assert.Equal(t, "/mqrpc.grpctest.Echo/Echo", echo.Name)
	assert.Equal(t, "mqrpc.grpctest.EchoRequest", echo.RequestType)
	assert.Equal(t, "mqrpc.grpctest.EchoReply", echo.ReplyType)
	var desc struct {
		Name  string `json:"name"`
		Field []struct {
			Name string `json:"name"`
		} `json:"field"`
	}
	require.NoError(t, json.Unmarshal(echo.RequestSchema, &desc), "%s", echo.RequestSchema)
	assert.Equal(t, "EchoRequest", desc.Name)
	assert.NotEmpty(t, desc.Field)

	stats := svc.Stats()
	for _, ep := range stats.Endpoints {
		if ep.Name == "/mqrpc.grpctest.Echo/Echo" {
			assert.Equal(t, 1, ep.NumRequests)
			return
		}
	}
	t.Fatalf("no stats for Echo in %+v", stats.Endpoints)
}
