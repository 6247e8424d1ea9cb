// Package storetest is the conformance suite for middleware.DedupClaimer
// implementations: the contract middleware.Dedup relies on to run a
// request once across the server processes that share a store. The
// stores of middleware/dedupstore and middleware.MemoryDedupStore pass it;
// a store of your own (a database, another key-value system) should too:
//
//	func TestConformance(t *testing.T) {
//		storetest.Run(t, func(t *testing.T) middleware.DedupClaimer {
//			return mystore.New(connect(t)) // a new client on the same storage
//		})
//	}
package storetest

import (
	"context"
	"crypto/rand"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/middleware"
)

// Run checks the store that newStore returns. newStore is called several
// times in one test: every call must return a handle on the same storage
// (as server processes sharing it would have), ideally with a client of
// its own. Keys are random, so the storage may hold other data and
// outlive the test. The store's outcome TTL must be at least a minute.
//
// The suite waits for real leases to expire (about a second each, with
// generous margins for loaded machines), so it takes several seconds.
func Run(t *testing.T, newStore func(t *testing.T) middleware.DedupClaimer) {
	t.Helper()
	run := rand.Text()[:10] // keys of this run
	key := func(t *testing.T, suffix string) string {
		return "storetest/" + run + "/" + t.Name() + "/" + suffix
	}
	ctx := context.Background()
	const long = time.Minute // a lease that cannot expire during a test

	t.Run("ClaimNewKey", func(t *testing.T) {
		s := newStore(t)
		c, err := s.Claim(ctx, key(t, "k"), long)
		require.NoError(t, err)
		require.NotNil(t, c.Lease, "a key with nothing stored is claimed")
		assert.False(t, c.Done)
	})

	t.Run("ClaimedKeyIsBusy", func(t *testing.T) {
		a, b := newStore(t), newStore(t)
		k := key(t, "k")
		c, err := a.Claim(ctx, k, long)
		require.NoError(t, err)
		require.NotNil(t, c.Lease)
		for _, s := range []middleware.DedupClaimer{a, b} {
			again, err := s.Claim(ctx, k, long)
			require.NoError(t, err)
			assert.Nil(t, again.Lease, "a live claim is not given twice")
			assert.False(t, again.Done, "a claim is not an outcome")
		}
		_, ok, err := b.Load(ctx, k)
		require.NoError(t, err)
		assert.False(t, ok, "Load: a claimed key has no outcome")
	})

	t.Run("CommitThenDone", func(t *testing.T) {
		a, b := newStore(t), newStore(t)
		k := key(t, "k")
		c, err := a.Claim(ctx, k, long)
		require.NoError(t, err)
		require.NotNil(t, c.Lease)
		reply := &broker.Message{Header: broker.Header{"mqrpc-status": "0", "x-a": "1"}, Body: []byte("the reply")}
		require.NoError(t, c.Lease.Commit(ctx, reply))
		reply.Body[0], reply.Header["x-a"] = 'X', "changed" // the store keeps a copy

		got, err := b.Claim(ctx, k, long)
		require.NoError(t, err)
		assert.Nil(t, got.Lease, "a key with an outcome is not claimed")
		require.True(t, got.Done)
		require.NotNil(t, got.Reply)
		assert.Equal(t, "the reply", string(got.Reply.Body))
		assert.Equal(t, "1", got.Reply.Header.Get("x-a"))
		assert.Equal(t, "0", got.Reply.Header.Get("mqrpc-status"))
		got.Reply.Body[0] = 'Y' // the caller's copy

		loaded, ok, err := b.Load(ctx, k)
		require.NoError(t, err)
		require.True(t, ok)
		assert.Equal(t, "the reply", string(loaded.Body))
	})

	t.Run("OneWayOutcome", func(t *testing.T) {
		s := newStore(t)
		k := key(t, "k")
		c, err := s.Claim(ctx, k, long)
		require.NoError(t, err)
		require.NotNil(t, c.Lease)
		require.NoError(t, c.Lease.Commit(ctx, nil))
		got, err := newStore(t).Claim(ctx, k, long)
		require.NoError(t, err)
		assert.True(t, got.Done)
		assert.Nil(t, got.Reply)
		assert.Nil(t, got.Lease)
	})

	t.Run("EmptyReply", func(t *testing.T) {
		s := newStore(t)
		k := key(t, "k")
		require.NoError(t, s.Store(ctx, k, &broker.Message{}))
		got, err := s.Claim(ctx, k, long)
		require.NoError(t, err)
		require.True(t, got.Done)
		require.NotNil(t, got.Reply, "an empty reply is not the outcome of a one-way request")
		assert.Empty(t, got.Reply.Body)
	})

	t.Run("ReleaseLetsClaimAgain", func(t *testing.T) {
		a, b := newStore(t), newStore(t)
		k := key(t, "k")
		c, err := a.Claim(ctx, k, long)
		require.NoError(t, err)
		require.NotNil(t, c.Lease)
		require.NoError(t, c.Lease.Release(ctx))
		again, err := b.Claim(ctx, k, long)
		require.NoError(t, err)
		require.NotNil(t, again.Lease, "a released key is claimed at once")
		require.NoError(t, c.Lease.Release(ctx), "releasing a claim no longer held is no error")
		busy, err := a.Claim(ctx, k, long)
		require.NoError(t, err)
		assert.Nil(t, busy.Lease, "a stale Release does not drop the next claim")
		assert.False(t, busy.Done)
	})

	t.Run("ReleaseAfterCommitKeepsOutcome", func(t *testing.T) {
		s := newStore(t)
		k := key(t, "k")
		c, err := s.Claim(ctx, k, long)
		require.NoError(t, err)
		require.NotNil(t, c.Lease)
		require.NoError(t, c.Lease.Commit(ctx, &broker.Message{Body: []byte("r")}))
		require.NoError(t, c.Lease.Release(ctx))
		got, err := s.Claim(ctx, k, long)
		require.NoError(t, err)
		assert.True(t, got.Done)
	})

	t.Run("RenewAfterCommitIsLost", func(t *testing.T) {
		s := newStore(t)
		k := key(t, "k")
		c, err := s.Claim(ctx, k, long)
		require.NoError(t, err)
		require.NotNil(t, c.Lease)
		require.NoError(t, c.Lease.Renew(ctx))
		require.NoError(t, c.Lease.Commit(ctx, &broker.Message{Body: []byte("r")}))
		assert.ErrorIs(t, c.Lease.Renew(ctx), middleware.ErrDedupLeaseLost)
		got, err := s.Claim(ctx, k, long)
		require.NoError(t, err)
		assert.True(t, got.Done, "a late Renew does not turn the outcome back into a claim")
	})

	// A claim that is not renewed expires after its lease (its process
	// died), and another process then claims the key.
	t.Run("UnrenewedClaimExpires", func(t *testing.T) {
		a, b := newStore(t), newStore(t)
		k := key(t, "k")
		const lease = 2 * time.Second
		c, err := a.Claim(ctx, k, lease)
		require.NoError(t, err)
		require.NotNil(t, c.Lease)
		taken := claimWithin(t, b, k, lease, 30*time.Second)
		require.NotNil(t, taken, "an expired claim is taken over")
		assert.ErrorIs(t, c.Lease.Renew(ctx), middleware.ErrDedupLeaseLost, "the old claim knows it is lost")
		require.NoError(t, c.Lease.Release(ctx))
		busy, err := a.Claim(ctx, k, long)
		require.NoError(t, err)
		assert.Nil(t, busy.Lease, "the old claim's Release does not drop the new one")
	})

	// A claim renewed more often than its lease stays claimed well past
	// that lease.
	t.Run("RenewedClaimHolds", func(t *testing.T) {
		a, b := newStore(t), newStore(t)
		k := key(t, "k")
		const lease = 2 * time.Second
		c, err := a.Claim(ctx, k, lease)
		require.NoError(t, err)
		require.NotNil(t, c.Lease)
		end := time.Now().Add(2 * lease)
		for time.Now().Before(end) {
			require.NoError(t, c.Lease.Renew(ctx))
			got, err := b.Claim(ctx, k, lease)
			require.NoError(t, err)
			require.Nil(t, got.Lease, "a renewed claim is not taken over")
			time.Sleep(lease / 10) // renewal interval of the test
		}
	})

	// Of many callers racing for a key, on handles of their own, one
	// gets the claim: fresh keys, released keys (a claim after a delete)
	// and expired claims alike.
	t.Run("OneClaimPerRace", func(t *testing.T) {
		const racers, rounds = 8, 20
		stores := make([]middleware.DedupClaimer, racers)
		for i := range stores {
			stores[i] = newStore(t)
		}
		race := func(k string) []middleware.DedupLease {
			var mu sync.Mutex
			var won []middleware.DedupLease
			var wg sync.WaitGroup
			start := make(chan struct{})
			for _, s := range stores {
				wg.Go(func() {
					<-start
					c, err := s.Claim(ctx, k, long)
					assert.NoError(t, err)
					if c.Lease != nil {
						mu.Lock()
						won = append(won, c.Lease)
						mu.Unlock()
					}
				})
			}
			close(start)
			wg.Wait()
			return won
		}
		for i := range rounds {
			k := key(t, string(rune('a'+i%26))+strings.Repeat("x", i))
			won := race(k)
			require.Len(t, won, 1, "fresh key, round %d", i)
			require.NoError(t, won[0].Release(ctx))
			won = race(k)
			require.Len(t, won, 1, "released key, round %d", i)
		}
	})

	t.Run("OddKeys", func(t *testing.T) {
		s := newStore(t)
		keys := []string{
			key(t, "a.b"), key(t, "a_b"), key(t, "a b"), key(t, "a*>"), key(t, "ключ"),
			key(t, "tab\tnul\x00"), key(t, strings.Repeat("long", 500)),
		}
		for i, k := range keys {
			require.NoError(t, s.Store(ctx, k, &broker.Message{Body: []byte{byte(i)}}), "key %q", k)
		}
		for i, k := range keys {
			got, ok, err := s.Load(ctx, k)
			require.NoError(t, err, "key %q", k)
			require.True(t, ok, "key %q", k)
			assert.Equal(t, []byte{byte(i)}, got.Body, "keys do not collide: %q", k)
		}
	})

	t.Run("LoadStore", func(t *testing.T) {
		s := newStore(t)
		k := key(t, "k")
		_, ok, err := s.Load(ctx, k)
		require.NoError(t, err)
		assert.False(t, ok, "missing")
		body := make([]byte, 64<<10)
		_, _ = rand.Read(body)
		require.NoError(t, s.Store(ctx, k, &broker.Message{Header: broker.Header{"h": "v"}, Body: body}))
		got, ok, err := newStore(t).Load(ctx, k)
		require.NoError(t, err)
		require.True(t, ok)
		assert.Equal(t, body, got.Body, "a 64 KiB body")
		assert.Equal(t, "v", got.Header.Get("h"))
	})

	t.Run("BadLease", func(t *testing.T) {
		_, err := newStore(t).Claim(ctx, key(t, "k"), 0)
		assert.Error(t, err, "a lease of 0 is refused")
	})
}

// claimWithin claims k on s, which must find it claimed at first, until it
// gets the claim or within passes, and returns the claim (nil when it got
// none).
func claimWithin(t *testing.T, s middleware.DedupClaimer, k string, lease, within time.Duration) middleware.DedupLease {
	t.Helper()
	ctx := context.Background()
	first, err := s.Claim(ctx, k, lease)
	require.NoError(t, err)
	require.Nil(t, first.Lease, "the claim has not expired yet")
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond) // poll interval of a bounded wait
		c, err := s.Claim(ctx, k, lease)
		if err != nil && !errors.Is(err, context.DeadlineExceeded) {
			require.NoError(t, err)
		}
		if c.Lease != nil {
			return c.Lease
		}
	}
	return nil
}
