package middleware_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/memory"
	"github.com/mqrpc/mqrpc/middleware"
	"github.com/mqrpc/mqrpc/rpc"
)

// govRouted returns the subject a call is sent to through mw, made with a
// client whose innermost step records the subject instead of sending.
func govRouted(t *testing.T, mw rpc.Middleware, service, method string, opts ...rpc.CallOption) (string, error) {
	t.Helper()
	var subject string
	record := func(broker.Handler) broker.Handler {
		return broker.HandlerFunc(func(_ context.Context, req *broker.Message) (*broker.Message, error) {
			subject = req.Subject
			return nil, nil
		})
	}
	b := memory.New()
	defer b.Close()
	c := rpc.NewClient(b, rpc.WithClientMiddleware(mw, record))
	err := c.Call(context.Background(), service, method, &govReq{}, nil, opts...)
	return subject, err
}

func TestRouting(t *testing.T) {
	table := middleware.RouteTable(map[string]string{"calc.Add": "calc.adders", "calc": "calc.all", "echo": "echo.eu"})
	pin := middleware.RouteByHeader(middleware.HeaderVersion, map[string]string{"v2": "calc.v2"})
	boom := func(context.Context, rpc.CallInfo, *broker.Message) (string, error) {
		return "", errors.New("boom")
	}
	denied := func(context.Context, rpc.CallInfo, *broker.Message) (string, error) {
		return "", rpc.Errorf(rpc.PermissionDenied, "not here")
	}
	tests := []struct {
		name            string
		routes          []middleware.RouteFunc
		service, method string
		opts            []rpc.CallOption
		want            string
		wantCode        rpc.Code
	}{
		{name: "table method", routes: []middleware.RouteFunc{table}, service: "calc", method: "Add", want: "calc.adders"},
		{name: "table service", routes: []middleware.RouteFunc{table}, service: "calc", method: "Sub", want: "calc.all"},
		{name: "table miss keeps the service", routes: []middleware.RouteFunc{table}, service: "other", method: "Add", want: "other"},
		{name: "header pins", routes: []middleware.RouteFunc{pin, table}, service: "calc", method: "Add",
			opts: []rpc.CallOption{rpc.WithHeader(middleware.HeaderVersion, "v2")}, want: "calc.v2"},
		{name: "unknown header value falls through", routes: []middleware.RouteFunc{pin, table}, service: "calc", method: "Add",
			opts: []rpc.CallOption{rpc.WithHeader(middleware.HeaderVersion, "v9")}, want: "calc.adders"},
		{name: "no header falls through", routes: []middleware.RouteFunc{pin, table}, service: "calc", method: "Add", want: "calc.adders"},
		{name: "service filter matches", routes: []middleware.RouteFunc{middleware.RouteService("echo", table)}, service: "echo", method: "Say", want: "echo.eu"},
		{name: "service filter skips", routes: []middleware.RouteFunc{middleware.RouteService("echo", table)}, service: "calc", method: "Add", want: "calc"},
		{name: "plain error is internal", routes: []middleware.RouteFunc{boom}, service: "calc", method: "Add", wantCode: rpc.Internal},
		{name: "status error keeps its code", routes: []middleware.RouteFunc{denied}, service: "calc", method: "Add", wantCode: rpc.PermissionDenied},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := govRouted(t, middleware.Routing(tt.routes...), tt.service, tt.method, tt.opts...)
			assert.Equal(t, tt.wantCode, rpc.CodeOf(err), "error %v", err)
			assert.Equal(t, tt.want, got)
		})
	}
}

func TestRouteWeighted(t *testing.T) {
	ctx := context.Background()
	info := rpc.CallInfo{Service: "calc", Method: "Add"}
	targets := []middleware.WeightedSubject{{"calc.v1", 90}, {"calc.v2", 10}, {"calc.off", 0}}
	t.Run("random split", func(t *testing.T) {
		r := middleware.RouteWeighted(nil, targets...)
		counts := map[string]int{}
		for range 10000 {
			s, err := r(ctx, info, &broker.Message{})
			require.NoError(t, err)
			counts[s]++
		}
		assert.Zero(t, counts["calc.off"])
		// 10% of 10000 is 1000, with a standard deviation of 30.
		assert.InDelta(t, 1000, counts["calc.v2"], 300)
		assert.Equal(t, 10000, counts["calc.v1"]+counts["calc.v2"])
	})
	t.Run("sticky by key", func(t *testing.T) {
		r := middleware.RouteWeighted(middleware.HeaderKey("user"), targets...)
		counts := map[string]int{}
		for i := range 2000 {
			req := &broker.Message{Header: broker.Header{"user": fmt.Sprint("user-", i)}}
			first, err := r(ctx, info, req)
			require.NoError(t, err)
			again, _ := r(ctx, info, req)
			require.Equal(t, first, again, "the same key gets the same subject")
			counts[first]++
		}
		assert.InDelta(t, 200, counts["calc.v2"], 100)
	})
	t.Run("no weights", func(t *testing.T) {
		s, err := middleware.RouteWeighted(nil, middleware.WeightedSubject{"x", 0})(ctx, info, &broker.Message{})
		require.NoError(t, err)
		assert.Empty(t, s)
	})
}

func TestRouteHash(t *testing.T) {
	ctx := context.Background()
	info := rpc.CallInfo{Service: "orders", Method: "Put"}
	key := middleware.HeaderKey("customer")
	shards := []string{"orders.0", "orders.1", "orders.2", "orders.3"}
	place := func(r middleware.RouteFunc, n int) []string {
		out := make([]string, n)
		for i := range out {
			s, err := r(ctx, info, &broker.Message{Header: broker.Header{"customer": fmt.Sprint("c", i)}})
			require.NoError(t, err)
			out[i] = s
		}
		return out
	}
	const keys = 4000
	four := place(middleware.RouteHash(key, shards...), keys)
	t.Run("even spread", func(t *testing.T) {
		counts := map[string]int{}
		for _, s := range four {
			counts[s]++
		}
		require.Len(t, counts, 4)
		for s, n := range counts {
			assert.InDelta(t, keys/4, n, keys/10, "shard %s", s)
		}
	})
	t.Run("stable", func(t *testing.T) {
		assert.Equal(t, four, place(middleware.RouteHash(key, shards...), keys))
		reordered := []string{shards[3], shards[1], shards[0], shards[2]}
		assert.Equal(t, four, place(middleware.RouteHash(key, reordered...), keys), "the order of subjects does not matter")
	})
	t.Run("adding a shard moves keys only to it", func(t *testing.T) {
		five := place(middleware.RouteHash(key, append(shards[:4:4], "orders.4")...), keys)
		moved := 0
		for i := range four {
			if four[i] != five[i] {
				assert.Equal(t, "orders.4", five[i])
				moved++
			}
		}
		assert.InDelta(t, keys/5, moved, keys/10)
	})
	t.Run("removing a shard moves only its keys", func(t *testing.T) {
		three := place(middleware.RouteHash(key, shards[:3]...), keys)
		for i := range four {
			if four[i] != "orders.3" {
				assert.Equal(t, four[i], three[i])
			} else {
				assert.NotEqual(t, "orders.3", three[i])
			}
		}
	})
	t.Run("no key", func(t *testing.T) {
		_, err := middleware.RouteHash(key, shards...)(ctx, info, &broker.Message{})
		assert.Equal(t, rpc.InvalidArgument, rpc.CodeOf(err))
		assert.ErrorIs(t, err, middleware.ErrNoRouteKey)
	})
	t.Run("no subjects", func(t *testing.T) {
		s, err := middleware.RouteHash(key)(ctx, info, &broker.Message{})
		require.NoError(t, err)
		assert.Empty(t, s)
	})
}
