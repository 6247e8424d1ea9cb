package jsonrpc_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/adapters/jsonrpc"
	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/memory"
)

type pair struct{ X, Y int }

// The client options reach the wire and the server sees them through
// RequestMessage; Help and ParamNames show in system.describe.
func TestClientAndMethodOptions(t *testing.T) {
	b := memory.New()
	defer b.Close()
	srv := jsonrpc.NewServer()
	require.NoError(t, jsonrpc.Register(srv, "mul", func(ctx context.Context, p pair) (int, error) {
		m := jsonrpc.RequestMessage(ctx)
		if m == nil || m.Header.Get("x-tenant") != "acme" || m.Deadline.IsZero() {
			return 0, &jsonrpc.Error{Code: 42, Message: "missing header or deadline"}
		}
		return p.X * p.Y, nil
	}, jsonrpc.Help("multiplies x by y"), jsonrpc.ParamNames("a", "b")))
	sub, err := b.Serve("calc", srv)
	require.NoError(t, err)
	defer sub.Stop(context.Background())
	assert.Nil(t, jsonrpc.RequestMessage(context.Background()), "outside a method")

	var seen atomic.Int32
	count := func(next broker.Handler) broker.Handler {
		return broker.HandlerFunc(func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
			seen.Add(1)
			return next.ServeMessage(ctx, req)
		})
	}
	c := jsonrpc.NewClient(b, "calc", jsonrpc.WithTimeout(time.Minute), jsonrpc.WithMiddleware(count),
		jsonrpc.WithHeader("X-Tenant", "acme"))
	got, err := jsonrpc.Invoke[int](context.Background(), c, "mul", pair{X: 6, Y: 7})
	require.NoError(t, err)
	assert.Equal(t, 42, got)
	assert.Equal(t, int32(1), seen.Load())

	d, err := jsonrpc.Invoke[jsonrpc.ServiceDescription](context.Background(), c, "system.describe", nil)
	require.NoError(t, err)
	var mul *jsonrpc.ProcedureDescription
	for i := range d.Procs {
		if d.Procs[i].Name == "mul" {
			mul = &d.Procs[i]
		}
	}
	require.NotNil(t, mul)
	assert.Equal(t, "multiplies x by y", mul.Help)
	require.Len(t, mul.Params, 2)
	assert.Equal(t, "a", mul.Params[0].Name)
	assert.Equal(t, "b", mul.Params[1].Name)
}
