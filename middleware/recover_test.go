package middleware_test

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/middleware"
	"github.com/mqrpc/mqrpc/rpc"
)

// recoverPanicky is a middleware that panics with v for every request.
func recoverPanicky(v any) rpc.Middleware {
	return func(broker.Handler) broker.Handler {
		return broker.HandlerFunc(func(context.Context, *broker.Message) (*broker.Message, error) {
			panic(v)
		})
	}
}

func TestRecoverServer(t *testing.T) {
	var (
		mu     sync.Mutex
		panics []*middleware.PanicError
		reqs   []string
	)
	handler := func(_ context.Context, req *broker.Message, p *middleware.PanicError) {
		mu.Lock()
		defer mu.Unlock()
		panics = append(panics, p)
		reqs = append(reqs, req.ID)
	}
	c, _ := obsCalc(t, []rpc.Middleware{middleware.Recover(middleware.WithPanicHandler(handler)), recoverPanicky("boom")})

	err := c.Call(context.Background(), "calc", "Add", &obsReq{A: 1}, &obsRes{}, rpc.WithMessageID("m1"))
	require.Error(t, err)
	assert.Equal(t, rpc.Internal, rpc.CodeOf(err))
	var e *rpc.Error
	require.ErrorAs(t, err, &e)
	assert.True(t, e.Wire(), "the caller gets an error reply")
	assert.Equal(t, "panic: boom", e.Message(), "the value, never the stack, reaches the caller")

	mu.Lock()
	defer mu.Unlock()
	require.Len(t, panics, 1)
	assert.Equal(t, "boom", panics[0].Value)
	assert.Contains(t, string(panics[0].Stack), "recover_test.go", "the stack shows where it panicked")
	assert.Equal(t, []string{"m1"}, reqs)
}

func TestRecoverClient(t *testing.T) {
	tests := []struct {
		name  string
		value any
		is    error  // errors.Is target, when the value is an error
		msg   string // the start of the message; the runtime words nil panics by version
	}{
		{"String", "boom", nil, "internal: panic: boom"},
		{"Error", io.ErrUnexpectedEOF, io.ErrUnexpectedEOF, "internal: panic: unexpected EOF"},
		{"Nil", nil, nil, "internal: panic: panic called with nil argument"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, _ := obsCalc(t, nil, middleware.Recover(), recoverPanicky(tt.value))
			err := c.Call(context.Background(), "calc", "Add", &obsReq{}, &obsRes{})
			require.Error(t, err)
			assert.Equal(t, rpc.Internal, rpc.CodeOf(err))
			assert.True(t, strings.HasPrefix(err.Error(), tt.msg), err.Error())
			var e *rpc.Error
			require.ErrorAs(t, err, &e)
			assert.False(t, e.Wire(), "a local error")
			var p *middleware.PanicError
			require.ErrorAs(t, err, &p)
			assert.NotEmpty(t, p.Stack)
			if tt.is != nil {
				assert.ErrorIs(t, err, tt.is)
			}
		})
	}
}

func TestRecoverLogger(t *testing.T) {
	log := newObsLog()
	c, _ := obsCalc(t, []rpc.Middleware{
		middleware.Recover(middleware.WithPanicLogger(log.logger(slog.LevelInfo))),
		recoverPanicky("boom"),
	})
	err := c.Call(context.Background(), "calc", "Add", &obsReq{}, nil, rpc.WithMessageID("m2"))
	require.Equal(t, rpc.Internal, rpc.CodeOf(err))

	recs := log.wait(t, 1)
	require.Len(t, recs, 1)
	rec := recs[0]
	assert.Contains(t, rec["stack"], "recover_test.go")
	delete(rec, "stack")
	assert.Equal(t, map[string]any{
		"level": "ERROR", "msg": "mqrpc: panic recovered", "side": "server",
		"method": "Add", "subject": "calc", "id": "m2", "panic": "boom",
	}, rec)
}

func TestRecoverPassesThrough(t *testing.T) {
	c, _ := obsCalc(t, []rpc.Middleware{middleware.Recover()}, middleware.Recover())
	var out obsRes
	require.NoError(t, c.Call(context.Background(), "calc", "Add", &obsReq{A: 2, B: 3}, &out))
	assert.Equal(t, 5, out.Sum)

	err := c.Call(context.Background(), "calc", "Fail", &obsReq{A: int(rpc.NotFound)}, nil)
	assert.Equal(t, rpc.NotFound, rpc.CodeOf(err), "errors pass unchanged")
	var p *middleware.PanicError
	assert.NotErrorAs(t, err, &p)
}
