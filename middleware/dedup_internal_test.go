package middleware

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/broker"
)

func TestMemoryDedupStore(t *testing.T) {
	ctx := context.Background()
	now := time.Unix(1000, 0)
	s := NewMemoryDedupStore(2, time.Minute)
	s.now = func() time.Time { return now }
	msg := func(body string) *broker.Message {
		return &broker.Message{Header: broker.Header{"h": body}, Body: []byte(body)}
	}

	t.Run("copies in and out", func(t *testing.T) {
		in := msg("a")
		require.NoError(t, s.Store(ctx, "a", in))
		in.Body[0], in.Header["h"] = 'x', "x"
		got, ok, err := s.Load(ctx, "a")
		require.NoError(t, err)
		require.True(t, ok)
		assert.Equal(t, "a", string(got.Body))
		assert.Equal(t, "a", got.Header.Get("h"))
		got.Body[0] = 'y'
		again, _, _ := s.Load(ctx, "a")
		assert.Equal(t, "a", string(again.Body))
	})
	t.Run("one-way outcome", func(t *testing.T) {
		require.NoError(t, s.Store(ctx, "n", nil))
		got, ok, err := s.Load(ctx, "n")
		require.NoError(t, err)
		assert.True(t, ok)
		assert.Nil(t, got)
	})
	t.Run("least recently used is evicted", func(t *testing.T) {
		// "a" and "n" are stored; reading "a" makes "n" the oldest.
		_, ok, _ := s.Load(ctx, "a")
		require.True(t, ok)
		require.NoError(t, s.Store(ctx, "b", msg("b")))
		assert.Equal(t, 2, s.Len())
		_, ok, _ = s.Load(ctx, "n")
		assert.False(t, ok)
		_, ok, _ = s.Load(ctx, "a")
		assert.True(t, ok)
	})
	t.Run("expired", func(t *testing.T) {
		now = now.Add(time.Minute)
		_, ok, err := s.Load(ctx, "a")
		require.NoError(t, err)
		assert.False(t, ok)
		assert.Equal(t, 1, s.Len(), "dropped when read")
	})
	t.Run("missing", func(t *testing.T) {
		_, ok, err := s.Load(ctx, "nope")
		require.NoError(t, err)
		assert.False(t, ok)
	})
	t.Run("defaults", func(t *testing.T) {
		d := NewMemoryDedupStore(0, 0)
		for i := range DefaultDedupSize + 1 {
			require.NoError(t, d.Store(ctx, strconv.Itoa(i), nil))
		}
		assert.Equal(t, DefaultDedupSize, d.Len())
		assert.Equal(t, DefaultDedupTTL, d.ttl)
	})
}
