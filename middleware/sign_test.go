package middleware_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/memory"
	"github.com/mqrpc/mqrpc/middleware"
	"github.com/mqrpc/mqrpc/rpc"
)

type signIn struct{ Amount int }
type signOut struct{ OK bool }

func signedServer(t *testing.T, b broker.Broker, s *middleware.HMACSigner, runs *int) {
	t.Helper()
	srv := rpc.NewServer(rpc.WithServerMiddleware(s.Server()))
	require.NoError(t, rpc.Handle(srv, "Pay", func(_ context.Context, in *signIn) (*signOut, error) {
		*runs++
		return &signOut{OK: true}, nil
	}))
	_, err := b.Serve("bank", srv, broker.WithConcurrency(1))
	require.NoError(t, err)
}

func TestHMACSigning(t *testing.T) {
	key := []byte("0123456789abcdef0123456789abcdef")
	ctx := context.Background()

	t.Run("SignedCallWorks", func(t *testing.T) {
		b := memory.New()
		defer b.Close()
		runs := 0
		s := middleware.NewHMACSigner("k1", key)
		signedServer(t, b, s, &runs)
		var out signOut
		require.NoError(t, rpc.NewClient(b, rpc.WithClientMiddleware(s.Client())).Call(ctx, "bank", "Pay", &signIn{Amount: 5}, &out))
		assert.True(t, out.OK)
		assert.Equal(t, 1, runs)
	})

	forged := []struct {
		name   string
		client rpc.Middleware
	}{
		{"Unsigned", nil},
		{"WrongKey", middleware.NewHMACSigner("k1", []byte("another key, same id........")).Client()},
		{"UnknownKeyID", middleware.NewHMACSigner("k9", key).Client()},
		{"Stale", middleware.NewHMACSigner("k1", key, middleware.WithSignClock(func() time.Time { return time.Now().Add(-time.Hour) })).Client()},
		{"AlteredBody", tamper(middleware.NewHMACSigner("k1", key).Client(), func(m *broker.Message) { m.Body = []byte(`{"Amount":5000}`) })},
		{"AlteredMethod", tamper(middleware.NewHMACSigner("k1", key).Client(), func(m *broker.Message) { m.Header.Set(broker.HeaderMethod, "Refund") })},
	}
	for _, tt := range forged {
		t.Run("Refuses"+tt.name, func(t *testing.T) {
			b := memory.New()
			defer b.Close()
			runs := 0
			signedServer(t, b, middleware.NewHMACSigner("k1", key), &runs)
			var opts []rpc.ClientOption
			if tt.client != nil {
				opts = append(opts, rpc.WithClientMiddleware(tt.client))
			}
			err := rpc.NewClient(b, opts...).Call(ctx, "bank", "Pay", &signIn{Amount: 5}, &signOut{})
			require.Error(t, err)
			assert.Equal(t, rpc.Unauthenticated, rpc.CodeOf(err))
			assert.Equal(t, 0, runs, "a forged request reached the method")
		})
	}

	t.Run("ClientRefusesForgedReply", func(t *testing.T) {
		b := memory.New()
		defer b.Close()
		_, err := b.Serve("bank", broker.HandlerFunc(func(_ context.Context, _ *broker.Message) (*broker.Message, error) {
			return &broker.Message{Header: broker.Header{"content-type": "application/json"}, Body: []byte(`{"OK":true}`)}, nil
		}))
		require.NoError(t, err)
		err = rpc.NewClient(b, rpc.WithClientMiddleware(middleware.NewHMACSigner("k1", key).Client())).
			Call(ctx, "bank", "Pay", &signIn{}, &signOut{})
		assert.Equal(t, rpc.Unauthenticated, rpc.CodeOf(err))
		assert.ErrorIs(t, err, middleware.ErrBadSignature)
	})

	t.Run("KeyRotation", func(t *testing.T) {
		b := memory.New()
		defer b.Close()
		runs := 0
		newKey := []byte("fedcba9876543210fedcba9876543210")
		server := middleware.NewHMACSigner("k2", newKey, middleware.WithVerifyKey("k1", key))
		signedServer(t, b, server, &runs)
		client := middleware.NewHMACSigner("k1", key, middleware.WithVerifyKey("k2", newKey))
		require.NoError(t, rpc.NewClient(b, rpc.WithClientMiddleware(client.Client())).Call(ctx, "bank", "Pay", &signIn{}, &signOut{}))
		assert.Equal(t, 1, runs)
	})
}

// tamper wraps a signing client middleware with a step that alters the
// signed message on its way to the broker, as an attacker on the bus would.
func tamper(sign rpc.Middleware, alter func(*broker.Message)) rpc.Middleware {
	return func(next broker.Handler) broker.Handler {
		return sign(broker.HandlerFunc(func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
			alter(req)
			return next.ServeMessage(ctx, req)
		}))
	}
}

func TestAuthorize(t *testing.T) {
	b := memory.New()
	defer b.Close()
	srv := rpc.NewServer(rpc.WithServerMiddleware(middleware.Authorize(middleware.AllowCallers("mqrpc-caller", map[string][]string{
		"Pay": {"teller"},
		"*":   {"admin"},
	}))))
	for _, m := range []string{"Pay", "Close"} {
		require.NoError(t, rpc.Handle(srv, m, func(_ context.Context, _ *signIn) (*signOut, error) { return &signOut{OK: true}, nil }))
	}
	_, err := b.Serve("bank", srv)
	require.NoError(t, err)
	c := rpc.NewClient(b)
	tests := []struct {
		caller, method string
		want           rpc.Code
	}{
		{"teller", "Pay", rpc.OK},
		{"teller", "Close", rpc.PermissionDenied},
		{"admin", "Close", rpc.OK},
		{"", "Pay", rpc.Unauthenticated},
		{"intruder", "Pay", rpc.PermissionDenied},
	}
	for _, tt := range tests {
		t.Run(tt.caller+"_"+tt.method, func(t *testing.T) {
			var opts []rpc.CallOption
			if tt.caller != "" {
				opts = append(opts, rpc.WithHeader("mqrpc-caller", tt.caller))
			}
			err := c.Call(context.Background(), "bank", tt.method, &signIn{}, &signOut{}, opts...)
			assert.Equal(t, tt.want, rpc.CodeOf(err), "%v", err)
		})
	}
}
