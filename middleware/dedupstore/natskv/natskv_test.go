package natskv_test

import (
	"context"
	"crypto/rand"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/nats/embedded"
	"github.com/mqrpc/mqrpc/internal/testenv"
	"github.com/mqrpc/mqrpc/middleware"
	"github.com/mqrpc/mqrpc/middleware/dedupstore/natskv"
	"github.com/mqrpc/mqrpc/middleware/dedupstore/storetest"
	"github.com/mqrpc/mqrpc/rpc"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// connect returns JetStream on a new connection to url, closed when t ends.
func connect(t *testing.T, url string) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(url)
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	return js
}

// bucket returns a fresh bucket name, whose bucket is deleted when t ends.
func bucket(t *testing.T, js jetstream.JetStream) string {
	name := "mqrpctest_dedup_" + strings.ToLower(rand.Text()[:10])
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = js.DeleteKeyValue(ctx, name)
	})
	return name
}

func TestConformance(t *testing.T) {
	url := testenv.NATSURL(t)
	name := bucket(t, connect(t, url))
	storetest.Run(t, func(t *testing.T) middleware.DedupClaimer {
		s, err := natskv.New(context.Background(), connect(t, url), name)
		require.NoError(t, err)
		return s
	})
}

func TestBucket(t *testing.T) {
	ctx := context.Background()
	js := connect(t, testenv.NATSURL(t))
	name := bucket(t, js)
	_, err := natskv.New(ctx, js, name, natskv.WithTTL(42*time.Second))
	require.NoError(t, err)
	kv, err := js.KeyValue(ctx, name)
	require.NoError(t, err)
	st, err := kv.Status(ctx)
	require.NoError(t, err)
	assert.Equal(t, 42*time.Second, st.TTL(), "created with WithTTL")
	assert.Equal(t, int64(1), st.History())

	info := st.(*jetstream.KeyValueBucketStatus).StreamInfo()
	assert.Equal(t, jetstream.FileStorage, info.Config.Storage, "files by default")
	assert.Equal(t, 1, info.Config.Replicas)

	mem := bucket(t, js)
	_, err = natskv.New(ctx, js, mem, natskv.WithMemoryStorage(), natskv.WithReplicas(1))
	require.NoError(t, err)
	memKV, err := js.KeyValue(ctx, mem)
	require.NoError(t, err)
	memSt, err := memKV.Status(ctx)
	require.NoError(t, err)
	assert.Equal(t, jetstream.MemoryStorage, memSt.(*jetstream.KeyValueBucketStatus).StreamInfo().Config.Storage)
	_, err = natskv.New(ctx, js, bucket(t, js), natskv.WithReplicas(3))
	assert.Error(t, err, "3 replicas on a single server")

	_, err = natskv.New(ctx, js, name)
	assert.NoError(t, err, "an existing bucket is opened as it is")
	_, err = natskv.New(ctx, js, name, natskv.WithTTL(time.Minute))
	assert.ErrorContains(t, err, "exists with TTL 42s, not 1m0s", "a TTL that differs is refused")
	_, err = natskv.New(ctx, js, "no spaces allowed")
	assert.Error(t, err, "a bad bucket name")
	_, err = natskv.New(ctx, js, name+"x", natskv.WithTTL(0))
	assert.ErrorContains(t, err, "not positive")

	// A key holding something else is an error, not an outcome.
	s, err := natskv.New(ctx, js, name)
	require.NoError(t, err)
	require.NoError(t, s.Store(ctx, "k", nil))
	keys, err := kv.ListKeys(ctx)
	require.NoError(t, err)
	var stored string
	for k := range keys.Keys() {
		stored = k
	}
	require.NotEmpty(t, stored)
	_, err = kv.Put(ctx, stored, []byte("hello"))
	require.NoError(t, err)
	_, err = s.Claim(ctx, "k", time.Minute)
	assert.ErrorContains(t, err, "not a dedup record")
}

// TestUnreachable: when the NATS server is down, Dedup refuses the request
// with Unavailable and does not run the method; a durable broker
// redelivers it, a client retries it.
func TestUnreachable(t *testing.T) {
	srv, err := embedded.Start()
	require.NoError(t, err)
	nc, err := nats.Connect(srv.URL(), nats.MaxReconnects(-1))
	require.NoError(t, err)
	defer nc.Close()
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	store, err := natskv.New(context.Background(), js, "dedup")
	require.NoError(t, err)
	srv.Stop()

	var runs atomic.Int32
	h := middleware.Dedup(middleware.WithDedupStore(store))(broker.HandlerFunc(func(context.Context, *broker.Message) (*broker.Message, error) {
		runs.Add(1)
		return &broker.Message{}, nil
	}))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err = h.ServeMessage(ctx, &broker.Message{ID: "unreachable"})
	require.Error(t, err)
	assert.Equal(t, rpc.Unavailable, rpc.CodeOf(err))
	assert.ErrorContains(t, err, "natskv: claim")
	assert.Zero(t, runs.Load(), "the method did not run unguarded")
}

// TestDeadClaimExpiresOnServer: a claim nobody renews any more (its
// process died) is dropped by the NATS server a lease after its last
// renewal, so a process that looks at the key only then claims it at once,
// instead of watching the dead claim for another lease. Before it is
// dropped, nobody else gets it.
func TestDeadClaimExpiresOnServer(t *testing.T) {
	ctx := context.Background()
	url := testenv.NATSURL(t)
	js := connect(t, url)
	name := bucket(t, js)
	dead, err := natskv.New(ctx, js, name)
	require.NoError(t, err)
	kv, err := js.KeyValue(ctx, name)
	require.NoError(t, err)
	st, err := kv.Status(ctx)
	require.NoError(t, err)
	require.True(t, st.(*jetstream.KeyValueBucketStatus).StreamInfo().Config.AllowMsgTTL, "New makes buckets with per-message TTLs")

	const lease = 2 * time.Second
	c, err := dead.Claim(ctx, "k", lease)
	require.NoError(t, err)
	require.NotNil(t, c.Lease)
	renewed := time.Now() // no later than the server's time of the renewal
	require.NoError(t, c.Lease.Renew(ctx), "a renewal carries the TTL too")
	// The process dies here: no renewal, no release.

	other, err := natskv.New(ctx, connect(t, url), name)
	require.NoError(t, err)
	busy, err := other.Claim(ctx, "k", lease)
	require.NoError(t, err)
	require.Nil(t, busy.Lease, "a live claim is not taken")

	// Wait (bounded) until the server has dropped the claim: the process
	// that looks now has never seen it.
	gone := false
	for end := time.Now().Add(30 * time.Second); !gone && time.Now().Before(end); {
		time.Sleep(100 * time.Millisecond) // poll interval of a bounded wait
		keys, err := kv.Keys(ctx)
		gone = errors.Is(err, jetstream.ErrNoKeysFound) || err == nil && len(keys) == 0
	}
	require.True(t, gone, "the server never dropped the unrenewed claim")
	assert.GreaterOrEqual(t, time.Since(renewed), lease, "dropped before its lease had passed")

	fresh, err := natskv.New(ctx, connect(t, url), name)
	require.NoError(t, err)
	got, err := fresh.Claim(ctx, "k", lease)
	require.NoError(t, err)
	require.NotNil(t, got.Lease, "the first look after the server dropped a dead claim claims the key")
	assert.ErrorIs(t, c.Lease.Renew(ctx), middleware.ErrDedupLeaseLost, "the dead claim is lost")
	again, err := other.Claim(ctx, "k", lease)
	require.NoError(t, err)
	assert.Nil(t, again.Lease, "the new claim is held")
}
