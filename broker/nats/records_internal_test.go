package nats

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/broker/nats/embedded"
)

// Opening the bucket of delivery records waits at most bucketOpenWait,
// and for bucketRetry after a failed attempt a redelivery does not ask
// again: while a cluster elects the leaders a lookup needs, nobody
// answers it, and every redelivery would otherwise hold its handler slot
// for its whole ctx, one after another on the bucket's lock. Here a
// subscriber that never answers stands in for the JetStream API.
func TestDeliveryBucketOpenIsBounded(t *testing.T) {
	srv, err := embedded.Start(embedded.WithoutJetStream())
	require.NoError(t, err)
	t.Cleanup(srv.Close)
	nc, err := natsgo.Connect(srv.URL())
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	var asked atomic.Int64
	sub, err := nc.Subscribe("$JS.API.>", func(*natsgo.Msg) { asked.Add(1) })
	require.NoError(t, err)
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	require.NoError(t, nc.Flush())
	jsc, err := jetstream.New(nc)
	require.NoError(t, err)
	b := newJetStream(JetStreamConfig{}.withDefaults(), jsc, slog.New(slog.NewTextHandler(io.Discard, nil)))

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	begin := time.Now()
	_, err = b.deliveries(ctx)
	took := time.Since(begin)
	require.Error(t, err)
	assert.Less(t, took, 10*time.Second, "the lookup waited out its caller's ctx: %v", err)
	assert.Positive(t, asked.Load(), "the lookup went out")

	n := asked.Load()
	_, err = b.deliveries(ctx)
	assert.True(t, errors.Is(err, errBucketPaused), "right after a failed attempt: %v", err)
	require.NoError(t, nc.Flush())
	assert.Equal(t, n, asked.Load(), "a redelivery right after a failed attempt asked again")
}
