package rpc_test

import (
	"context"
	"reflect"
	"strconv"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/rpc"
)

// headerBroker records the header of every request and answers with an
// empty reply.
type headerBroker struct {
	mu   sync.Mutex
	seen []broker.Header
}

func (b *headerBroker) Request(_ context.Context, req *broker.Message) (*broker.Message, error) {
	b.mu.Lock()
	b.seen = append(b.seen, req.Header)
	b.mu.Unlock()
	return &broker.Message{}, nil
}

func (b *headerBroker) Send(ctx context.Context, msg *broker.Message) error {
	_, err := b.Request(ctx, msg)
	return err
}

func (b *headerBroker) Serve(string, broker.Handler, ...broker.ServeOption) (broker.Subscription, error) {
	panic("not used")
}

func (b *headerBroker) Close() error { return nil }

func (b *headerBroker) last(t *testing.T, n int) []broker.Header {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	require.GreaterOrEqual(t, len(b.seen), n)
	return b.seen[len(b.seen)-n:]
}

func sameMap(a, b broker.Header) bool {
	return reflect.ValueOf(a).Pointer() == reflect.ValueOf(b).Pointer()
}

// TestSharedRequestHeader checks which calls share one request header: a
// client without middleware shares one per method among calls without
// options (brokers treat it as read-only), and every other call gets a
// header of its own, which middleware may change.
func TestSharedRequestHeader(t *testing.T) {
	ctx := context.Background()
	t.Run("Plain", func(t *testing.T) {
		b := &headerBroker{}
		c := rpc.NewClient(b)
		for range 2 {
			require.NoError(t, c.Call(ctx, "svc", "A", 1, nil))
		}
		require.NoError(t, c.Call(ctx, "svc", "B", 1, nil))
		require.NoError(t, c.Call(ctx, "svc", "A", 1, nil, rpc.WithHeader("x-k", "v")))
		require.NoError(t, c.Notify(ctx, "svc", "A", 1))
		h := b.last(t, 5)
		want := broker.Header{broker.HeaderMethod: "A", broker.HeaderContentType: "application/json"}
		assert.Equal(t, want, h[0])
		assert.True(t, sameMap(h[0], h[1]), "two calls of A share the header")
		assert.Equal(t, broker.Header{broker.HeaderMethod: "B", broker.HeaderContentType: "application/json"}, h[2])
		wantOpt := broker.Header{broker.HeaderMethod: "A", broker.HeaderContentType: "application/json", "x-k": "v"}
		assert.Equal(t, wantOpt, h[3], "a call with a header option")
		assert.False(t, sameMap(h[0], h[3]), "a call with options has its own header")
		assert.True(t, sameMap(h[0], h[4]), "a one-way call of A shares it too")
		assert.Equal(t, want, h[0], "the shared header is unchanged")
	})
	t.Run("ManyMethods", func(t *testing.T) {
		b := &headerBroker{}
		c := rpc.NewClient(b)
		const n = 300 // more than a client shares
		for i := range n {
			require.NoError(t, c.Call(ctx, "svc", "M"+strconv.Itoa(i), 1, nil))
		}
		for i, h := range b.last(t, n) {
			assert.Equal(t, "M"+strconv.Itoa(i), h.Get(broker.HeaderMethod), "call %d", i)
		}
	})
	t.Run("Middleware", func(t *testing.T) {
		b := &headerBroker{}
		mark := func(next broker.Handler) broker.Handler {
			return broker.HandlerFunc(func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
				req.Header.Set("x-n", strconv.Itoa(len(req.Header)))
				return next.ServeMessage(ctx, req)
			})
		}
		c := rpc.NewClient(b, rpc.WithClientMiddleware(mark))
		for range 2 {
			require.NoError(t, c.Call(ctx, "svc", "A", 1, nil))
		}
		h := b.last(t, 2)
		assert.False(t, sameMap(h[0], h[1]), "with middleware every call has its own header")
		for _, hh := range h {
			assert.Equal(t, "2", hh.Get("x-n"), "the middleware saw a fresh header")
		}
	})
}

// TestSharedHeaderServerChanges runs calls sharing a header over the
// memory broker while server middleware changes the request header it is
// given: the broker hands each delivery a copy (run with -race).
func TestSharedHeaderServerChanges(t *testing.T) {
	touch := func(next broker.Handler) broker.Handler {
		return broker.HandlerFunc(func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
			req.Header.Set("x-seen", "1")
			return next.ServeMessage(ctx, req)
		})
	}
	_, c, _ := newPair(t, []rpc.ServerOption{rpc.WithServerMiddleware(touch)})
	var wg sync.WaitGroup
	for i := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var out addRes
			if assert.NoError(t, c.Call(context.Background(), "calc", "Add", &addReq{A: i, B: 1}, &out)) {
				assert.Equal(t, i+1, out.Sum)
			}
		}()
	}
	wg.Wait()
}

// WithHeader refuses the names of the wire protocol, in any case, before
// anything is sent; other names, middleware ones included, pass.
func TestWithHeaderReserved(t *testing.T) {
	_, c, _ := newPair(t, nil)
	ctx := context.Background()
	for _, name := range []string{"mqrpc-method", "Content-Type", "MQRPC-Deadline", "mqrpc-status", "mqrpc-message", "mqrpc-details", "mqrpc-reply"} {
		err := c.Call(ctx, "calc", "Add", &addReq{}, nil, rpc.WithHeader(name, "x"))
		assert.ErrorIs(t, err, rpc.ErrReservedHeader, name)
		assert.Equal(t, rpc.InvalidArgument, rpc.CodeOf(err), name)
	}
	var out addRes
	require.NoError(t, c.Call(ctx, "calc", "Add", &addReq{A: 1, B: 1}, &out, rpc.WithHeader("mqrpc-version", "v2"), rpc.WithHeader("x-tenant", "a")))
	assert.Equal(t, 2, out.Sum)
}

// RequestMessage gives a handler the request it serves (ID, subject,
// deadline), and nil outside a handler.
func TestRequestMessage(t *testing.T) {
	srv, c, _ := newPair(t, nil)
	require.NoError(t, rpc.Handle(srv, "Who", func(ctx context.Context, _ *addReq) (*string, error) {
		m := rpc.RequestMessage(ctx)
		s := m.ID + " " + m.Subject + " " + strconv.FormatBool(!m.Deadline.IsZero())
		return &s, nil
	}))
	var out string
	require.NoError(t, c.Call(context.Background(), "calc", "Who", &addReq{}, &out, rpc.WithMessageID("id-7")))
	assert.Equal(t, "id-7 calc true", out)
	assert.Nil(t, rpc.RequestMessage(context.Background()))
}
