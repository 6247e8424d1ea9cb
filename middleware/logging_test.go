package middleware_test

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/middleware"
	"github.com/mqrpc/mqrpc/rpc"
)

func TestLoggingServer(t *testing.T) {
	log := newObsLog()
	c, _ := obsCalc(t, []rpc.Middleware{
		middleware.Logging(log.logger(slog.LevelDebug), middleware.WithLoggedHeaders("x-request-id")),
		obsRefuse("Secret", rpc.Errorf(rpc.PermissionDenied, "not for you")),
		obsRefuse("Drop", errors.New("store unavailable")),
	})
	in := &obsReq{A: 2, B: 3}
	tests := []struct {
		name   string
		method string
		in     *obsReq
		want   map[string]any
	}{
		{"OK", "Add", in, map[string]any{
			"level": "INFO", "code": "ok", "reply_bytes": obsSize(t, obsRes{Sum: 5}),
		}},
		{"CallerError", "Fail", &obsReq{A: int(rpc.NotFound)}, map[string]any{
			"level": "WARN", "code": "not_found", "reply_bytes": 0.0, "error": "not_found: failed with 5",
		}},
		{"ServerError", "Fail", &obsReq{A: int(rpc.Internal)}, map[string]any{
			"level": "ERROR", "code": "internal", "reply_bytes": 0.0, "error": "internal: failed with 13",
		}},
		{"RefusedByMiddleware", "Secret", in, map[string]any{
			"level": "WARN", "code": "permission_denied", "reply_bytes": 0.0, "error": "permission_denied: not for you",
		}},
		{"DeliveryFailure", "Drop", in, map[string]any{
			"level": "ERROR", "code": "unknown", "reply_bytes": 0.0, "error": "store unavailable", "failed": true,
		}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			if tt.method == "Drop" {
				// A failed delivery gets no reply: the caller times out.
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, 200*time.Millisecond)
				defer cancel()
			}
			_ = c.Call(ctx, "calc", tt.method, tt.in, &obsRes{},
				rpc.WithMessageID(tt.name), rpc.WithHeader("x-request-id", "r-"+tt.name),
				rpc.WithHeader("authorization", "Bearer secret"))
			rec := log.wait(t, i+1)[i]
			assert.Contains(t, rec, "duration")
			delete(rec, "duration")
			want := map[string]any{
				"msg": "mqrpc call", "side": "server", "method": tt.method, "subject": "calc", "id": tt.name,
				"request_bytes": obsSize(t, tt.in), "header": map[string]any{"x-request-id": "r-" + tt.name},
			}
			for k, v := range tt.want {
				want[k] = v
			}
			assert.Equal(t, want, rec, "no body, no credentials")
		})
	}
}

func TestLoggingClient(t *testing.T) {
	log := newObsLog()
	c, _ := obsCalc(t, nil, middleware.Logging(log.logger(slog.LevelInfo)))
	ctx := context.Background()

	var out obsRes
	require.NoError(t, c.Call(ctx, "calc", "Add", &obsReq{A: 2, B: 3}, &out, rpc.WithMessageID("c1")))
	err := c.Call(ctx, "calc", "Fail", &obsReq{A: int(rpc.AlreadyExists)}, nil, rpc.WithMessageID("c2"))
	require.Equal(t, rpc.AlreadyExists, rpc.CodeOf(err))
	err = c.Call(ctx, "nobody", "Add", &obsReq{}, nil, rpc.WithMessageID("c3"))
	require.Equal(t, rpc.Unavailable, rpc.CodeOf(err))
	require.NoError(t, c.Notify(ctx, "calc", "Add", &obsReq{}, rpc.WithMessageID("c4")))

	recs := log.wait(t, 4)
	for _, r := range recs {
		assert.Contains(t, r, "duration")
		delete(r, "duration")
	}
	assert.Equal(t, []map[string]any{
		{"level": "INFO", "msg": "mqrpc call", "side": "client", "service": "calc", "method": "Add", "subject": "calc",
			"id": "c1", "code": "ok", "request_bytes": obsSize(t, obsReq{A: 2, B: 3}), "reply_bytes": obsSize(t, out)},
		{"level": "WARN", "msg": "mqrpc call", "side": "client", "service": "calc", "method": "Fail", "subject": "calc",
			"id": "c2", "code": "already_exists", "request_bytes": obsSize(t, obsReq{A: 6}), "reply_bytes": 0.0,
			"error": "already_exists: failed with 6"},
		{"level": "ERROR", "msg": "mqrpc call", "side": "client", "service": "nobody", "method": "Add", "subject": "nobody",
			"id": "c3", "code": "unavailable", "request_bytes": obsSize(t, obsReq{}), "reply_bytes": 0.0,
			"error": "memory: request nobody: broker: no responders", "failed": true},
		{"level": "INFO", "msg": "mqrpc call", "side": "client", "service": "calc", "method": "Add", "subject": "calc",
			"id": "c4", "code": "ok", "request_bytes": obsSize(t, obsReq{}), "reply_bytes": 0.0},
	}, recs)
}

func TestLoggingLevels(t *testing.T) {
	tests := []struct {
		name    string
		opts    []middleware.LoggingOption
		min     slog.Level
		records int
	}{
		{"DefaultInfoShown", nil, slog.LevelInfo, 1},
		{"DefaultInfoFiltered", nil, slog.LevelWarn, 0},
		{"CustomLevel", []middleware.LoggingOption{middleware.WithLogLevel(func(rpc.Code) slog.Level { return slog.LevelDebug })},
			slog.LevelInfo, 0},
		{"NilLevelIsDefault", []middleware.LoggingOption{middleware.WithLogLevel(nil)}, slog.LevelInfo, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			log := newObsLog()
			c, _ := obsCalc(t, nil, middleware.Logging(log.logger(tt.min), tt.opts...))
			require.NoError(t, c.Call(context.Background(), "calc", "Add", &obsReq{}, nil))
			assert.Len(t, log.records(t), tt.records)
		})
	}
}

func TestLoggingNilLogger(t *testing.T) {
	c, _ := obsCalc(t, []rpc.Middleware{middleware.Logging(nil)}, middleware.Logging(nil))
	var out obsRes
	require.NoError(t, c.Call(context.Background(), "calc", "Add", &obsReq{A: 1, B: 1}, &out))
	assert.Equal(t, 2, out.Sum)
}

func TestDefaultLogLevel(t *testing.T) {
	want := map[rpc.Code]slog.Level{
		rpc.OK: slog.LevelInfo, rpc.NotFound: slog.LevelWarn, rpc.InvalidArgument: slog.LevelWarn,
		rpc.PermissionDenied: slog.LevelWarn, rpc.Canceled: slog.LevelWarn, rpc.ResourceExhausted: slog.LevelWarn,
		rpc.Internal: slog.LevelError, rpc.Unknown: slog.LevelError, rpc.Unavailable: slog.LevelError,
		rpc.DeadlineExceeded: slog.LevelError, rpc.Unimplemented: slog.LevelError, rpc.DataLoss: slog.LevelError,
	}
	for code, level := range want {
		assert.Equal(t, level, middleware.DefaultLogLevel(code), code.String())
	}
}
