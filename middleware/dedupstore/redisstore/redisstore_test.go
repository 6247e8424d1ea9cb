package redisstore_test

import (
	"context"
	"errors"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/internal/testenv"
	"github.com/mqrpc/mqrpc/middleware"
	"github.com/mqrpc/mqrpc/middleware/dedupstore/redisstore"
	"github.com/mqrpc/mqrpc/middleware/dedupstore/storetest"
	"github.com/mqrpc/mqrpc/rpc"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// client returns a new client on the test Redis, closed when t ends.
func client(t *testing.T) *redis.Client {
	t.Helper()
	opts, err := redis.ParseURL(testenv.RedisURL(t))
	require.NoError(t, err)
	c := redis.NewClient(opts)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) middleware.DedupClaimer {
		return redisstore.New(client(t), redisstore.WithPrefix("mqrpctest:dedup:"))
	})
}

func TestTTL(t *testing.T) {
	ctx := context.Background()
	c := client(t)
	s := redisstore.New(c, redisstore.WithPrefix("mqrpctest:ttl:"), redisstore.WithTTL(42*time.Second))
	key := "ttl-" + broker.NewID()
	require.NoError(t, s.Store(ctx, key, nil))
	ttl, err := c.PTTL(ctx, "mqrpctest:ttl:"+key).Result()
	require.NoError(t, err)
	assert.InDelta(t, 42*time.Second, ttl, float64(5*time.Second), "the outcome expires after WithTTL")

	cl, err := s.Claim(ctx, "claim-"+key, 7*time.Second)
	require.NoError(t, err)
	require.NotNil(t, cl.Lease)
	ttl, err = c.PTTL(ctx, "mqrpctest:ttl:claim-"+key).Result()
	require.NoError(t, err)
	assert.InDelta(t, 7*time.Second, ttl, float64(3*time.Second), "the claim expires after its lease")

	d := redisstore.New(c, redisstore.WithPrefix("mqrpctest:ttl:"))
	require.NoError(t, d.Store(ctx, "default-"+key, nil))
	ttl, err = c.PTTL(ctx, "mqrpctest:ttl:default-"+key).Result()
	require.NoError(t, err)
	assert.InDelta(t, middleware.DefaultDedupTTL, ttl, float64(10*time.Second), "default TTL")
}

// TestForeignValue: a key of the store's that holds something else is an
// error, not an outcome.
func TestForeignValue(t *testing.T) {
	ctx := context.Background()
	c := client(t)
	s := redisstore.New(c, redisstore.WithPrefix("mqrpctest:foreign:"))
	key := broker.NewID()
	require.NoError(t, c.Set(ctx, "mqrpctest:foreign:"+key, "hello", time.Minute).Err())
	_, err := s.Claim(ctx, key, time.Minute)
	assert.ErrorContains(t, err, "not a dedup record")
	_, _, err = s.Load(ctx, key)
	assert.ErrorContains(t, err, "not a dedup record")
}

// TestUnreachable: when Redis cannot be reached, Dedup refuses the request
// with Unavailable and does not run the method; a durable broker
// redelivers it, a client retries it.
func TestUnreachable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	require.NoError(t, l.Close()) // nothing listens there now
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialTimeout: time.Second})
	defer c.Close()

	var runs, storeErrs atomic.Int32
	h := middleware.Dedup(
		middleware.WithDedupStore(redisstore.New(c)),
		middleware.OnStoreError(func(context.Context, *broker.Message, error) { storeErrs.Add(1) }),
	)(broker.HandlerFunc(func(context.Context, *broker.Message) (*broker.Message, error) {
		runs.Add(1)
		return &broker.Message{}, nil
	}))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = h.ServeMessage(ctx, &broker.Message{ID: "unreachable"})
	require.Error(t, err)
	assert.Equal(t, rpc.Unavailable, rpc.CodeOf(err))
	assert.ErrorContains(t, err, "redisstore: claim")
	var opErr *net.OpError
	assert.True(t, errors.As(err, &opErr), "the cause is kept: %v", err)
	assert.Zero(t, runs.Load(), "the method did not run unguarded")
	assert.Zero(t, storeErrs.Load())
}
