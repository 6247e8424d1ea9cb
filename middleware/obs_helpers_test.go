package middleware_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/memory"
	"github.com/mqrpc/mqrpc/rpc"
)

// The helpers of the Recover, Logging and Audit tests. Names start with
// "obs" so they stay apart from the other middleware tests in this package.

type obsReq struct{ A, B int }
type obsRes struct{ Sum int }

// obsCalc starts a memory broker serving a calculator on subject "calc"
// behind the server middleware smw, and returns a client using the client
// middleware cmw. Methods: Add; Fail, which fails with code A; Panic. The
// broker is closed and goroutine leaks checked when the test ends.
func obsCalc(t *testing.T, smw []rpc.Middleware, cmw ...rpc.Middleware) (*rpc.Client, *memory.Broker) {
	t.Helper()
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
	b := memory.New()
	t.Cleanup(func() { _ = b.Close() })
	srv := rpc.NewServer(rpc.WithServerMiddleware(smw...))
	require.NoError(t, rpc.Handle(srv, "Add", func(_ context.Context, in *obsReq) (*obsRes, error) {
		return &obsRes{Sum: in.A + in.B}, nil
	}))
	require.NoError(t, rpc.Handle(srv, "Fail", func(_ context.Context, in *obsReq) (*obsRes, error) {
		return nil, rpc.Errorf(rpc.Code(in.A), "failed with %d", in.A)
	}))
	require.NoError(t, rpc.Handle(srv, "Panic", func(_ context.Context, _ *obsReq) (*obsRes, error) {
		panic("boom")
	}))
	_, err := b.Serve("calc", srv)
	require.NoError(t, err)
	return rpc.NewClient(b, rpc.WithClientMiddleware(cmw...)), b
}

// obsRefuse is a server middleware that answers requests for method with
// err instead of calling the rest of the chain.
func obsRefuse(method string, err error) rpc.Middleware {
	return func(next broker.Handler) broker.Handler {
		return broker.HandlerFunc(func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
			if req.Header.Get(broker.HeaderMethod) == method {
				return nil, err
			}
			return next.ServeMessage(ctx, req)
		})
	}
}

// obsLog collects the records of a JSON slog handler, one map per record,
// and lets a test wait for records written on other goroutines.
type obsLog struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	changed chan struct{}
}

func newObsLog() *obsLog { return &obsLog{changed: make(chan struct{}, 1)} }

func (l *obsLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	n, err := l.buf.Write(p)
	select {
	case l.changed <- struct{}{}:
	default:
	}
	return n, err
}

// logger returns a logger writing JSON records at level and above to l.
func (l *obsLog) logger(level slog.Level) *slog.Logger {
	return slog.New(slog.NewJSONHandler(l, &slog.HandlerOptions{Level: level}))
}

// records returns the records written so far, without their time.
func (l *obsLog) records(t *testing.T) []map[string]any {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(l.buf.String()), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		require.NoError(t, json.Unmarshal([]byte(line), &m), line)
		delete(m, "time")
		out = append(out, m)
	}
	return out
}

// wait waits until at least n records were written; the time limit is a
// safety net for a hung test, not a speed assertion.
func (l *obsLog) wait(t *testing.T, n int) []map[string]any {
	t.Helper()
	limit := time.After(10 * time.Second)
	for {
		if recs := l.records(t); len(recs) >= n {
			return recs
		}
		select {
		case <-l.changed:
		case <-limit:
			t.Fatalf("want %d log records, have %d", n, len(l.records(t)))
		}
	}
}

// obsSize is the size of v encoded as JSON, as the default codec sends it.
func obsSize(t *testing.T, v any) float64 {
	t.Helper()
	b, err := json.Marshal(v)
	require.NoError(t, err)
	return float64(len(b))
}
