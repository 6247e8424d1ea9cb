package middleware_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/middleware"
	"github.com/mqrpc/mqrpc/middleware/dedupstore/storetest"
	"github.com/mqrpc/mqrpc/rpc"
)

// TestMemoryDedupStoreConformance: the in-memory store keeps the claim
// contract, for the Dedup middlewares of one process that share it.
func TestMemoryDedupStoreConformance(t *testing.T) {
	s := middleware.NewMemoryDedupStore(0, 0)
	storetest.Run(t, func(*testing.T) middleware.DedupClaimer { return s })
}

// TestDedupSharedStore: two Dedup middlewares on one claiming store stand
// for two server processes sharing Redis or a NATS bucket. A repeat that
// reaches the second while the first runs waits for the first's outcome,
// even with a lease much shorter than the run (the run renews its claim).
func TestDedupSharedStore(t *testing.T) {
	defer goleak.VerifyNone(t)
	store := middleware.NewMemoryDedupStore(0, 0)
	var runs atomic.Int32
	started, release := make(chan struct{}), make(chan struct{})
	next := broker.HandlerFunc(func(context.Context, *broker.Message) (*broker.Message, error) {
		if runs.Add(1) == 1 {
			close(started)
			<-release
		}
		return &broker.Message{Body: []byte("done")}, nil
	})
	// The lease is short next to the run, but long enough that a renewal
	// every lease/3 is never late on a loaded two-core machine under -race.
	const lease = time.Second
	var waited atomic.Int32
	cfg := []middleware.DedupOption{
		middleware.WithDedupStore(store),
		middleware.WithDedupLease(lease),
		middleware.OnDuplicate(func(_ context.Context, _ *broker.Message, inFlight bool) {
			if inFlight {
				waited.Add(1)
			}
		}),
		middleware.OnStoreError(func(_ context.Context, _ *broker.Message, err error) { t.Errorf("store error: %v", err) }),
	}
	first, second := middleware.Dedup(cfg...)(next), middleware.Dedup(cfg...)(next)

	firstDone := make(chan error, 1)
	go func() {
		_, err := first.ServeMessage(context.Background(), &broker.Message{ID: "k"})
		firstDone <- err
	}()
	<-started
	secondDone := make(chan *broker.Message, 1)
	go func() {
		reply, err := second.ServeMessage(context.Background(), &broker.Message{ID: "k"})
		assert.NoError(t, err)
		secondDone <- reply
	}()
	// Several leases pass while the first runs: its renewals keep the
	// claim, so the second keeps waiting.
	time.Sleep(3 * lease) // the run's length, not a synchronisation
	assert.Equal(t, int32(1), runs.Load(), "the repeat did not run while the first ran")
	close(release)
	require.NoError(t, <-firstDone)
	reply := <-secondDone
	require.NotNil(t, reply)
	assert.Equal(t, "done", string(reply.Body))
	assert.Equal(t, "true", reply.Header.Get(middleware.HeaderReplayed))
	assert.Equal(t, int32(1), runs.Load())
	assert.Equal(t, int32(1), waited.Load())
}

// TestDedupSharedStoreTransient: a transient failure releases the claim,
// so a repeat in another process runs at once instead of waiting a lease.
func TestDedupSharedStoreTransient(t *testing.T) {
	store := middleware.NewMemoryDedupStore(0, 0)
	var runs atomic.Int32
	next := broker.HandlerFunc(func(context.Context, *broker.Message) (*broker.Message, error) {
		if runs.Add(1) == 1 {
			return nil, rpc.Errorf(rpc.Unavailable, "try again")
		}
		return &broker.Message{}, nil
	})
	cfg := []middleware.DedupOption{middleware.WithDedupStore(store), middleware.WithDedupLease(time.Hour)}
	_, err := middleware.Dedup(cfg...)(next).ServeMessage(context.Background(), &broker.Message{ID: "k"})
	assert.Equal(t, rpc.Unavailable, rpc.CodeOf(err))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = middleware.Dedup(cfg...)(next).ServeMessage(ctx, &broker.Message{ID: "k"})
	require.NoError(t, err, "the repeat ran without waiting for the hour-long lease")
	assert.Equal(t, int32(2), runs.Load())
}

// TestDedupSharedStoreGivesUp: a repeat waiting for a claim held
// elsewhere ends with its own ctx.
func TestDedupSharedStoreGivesUp(t *testing.T) {
	store := middleware.NewMemoryDedupStore(0, 0)
	c, err := store.Claim(context.Background(), "k", time.Hour) // another process holds it
	require.NoError(t, err)
	require.NotNil(t, c.Lease)
	h := middleware.Dedup(middleware.WithDedupStore(store))(broker.HandlerFunc(func(context.Context, *broker.Message) (*broker.Message, error) {
		t.Error("ran although claimed elsewhere")
		return nil, nil
	}))
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err = h.ServeMessage(ctx, &broker.Message{ID: "k"})
	assert.Equal(t, rpc.DeadlineExceeded, rpc.CodeOf(err))
}

// failingClaimer is a DedupClaimer whose claims, or whose commits, fail.
type failingClaimer struct {
	*middleware.MemoryDedupStore
	claim, commit error
}

func (s failingClaimer) Claim(ctx context.Context, key string, lease time.Duration) (middleware.DedupClaim, error) {
	if s.claim != nil {
		return middleware.DedupClaim{}, s.claim
	}
	c, err := s.MemoryDedupStore.Claim(ctx, key, lease)
	if c.Lease != nil {
		c.Lease = failingLease{c.Lease, s.commit}
	}
	return c, err
}

type failingLease struct {
	middleware.DedupLease
	commit error
}

func (l failingLease) Commit(context.Context, *broker.Message) error { return l.commit }

// flakyStore fails its first failures Loads and Claims, then works.
type flakyStore struct {
	*middleware.MemoryDedupStore
	mu       sync.Mutex
	failures int
}

func (s *flakyStore) fail() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failures > 0 {
		s.failures--
		return errors.New("no leader")
	}
	return nil
}

func (s *flakyStore) Load(ctx context.Context, key string) (*broker.Message, bool, error) {
	if err := s.fail(); err != nil {
		return nil, false, err
	}
	return s.MemoryDedupStore.Load(ctx, key)
}

func (s *flakyStore) Claim(ctx context.Context, key string, lease time.Duration) (middleware.DedupClaim, error) {
	if err := s.fail(); err != nil {
		return middleware.DedupClaim{}, err
	}
	return s.MemoryDedupStore.Claim(ctx, key, lease)
}

// flakyCommits fails the first failures commits of its claims.
type flakyCommits struct {
	*middleware.MemoryDedupStore
	mu       sync.Mutex
	failures int
}

func (s *flakyCommits) Claim(ctx context.Context, key string, lease time.Duration) (middleware.DedupClaim, error) {
	c, err := s.MemoryDedupStore.Claim(ctx, key, lease)
	if c.Lease != nil {
		c.Lease = flakyLease{c.Lease, s}
	}
	return c, err
}

type flakyLease struct {
	middleware.DedupLease
	s *flakyCommits
}

func (l flakyLease) Commit(ctx context.Context, reply *broker.Message) error {
	l.s.mu.Lock()
	fail := l.s.failures > 0
	l.s.failures--
	l.s.mu.Unlock()
	if fail {
		return errors.New("no leader")
	}
	return l.DedupLease.Commit(ctx, reply)
}

// loadOnly hides a store's claims: Dedup loads and stores.
type loadOnly struct{ s *flakyStore }

func (l loadOnly) Load(ctx context.Context, key string) (*broker.Message, bool, error) {
	return l.s.Load(ctx, key)
}

func (l loadOnly) Store(ctx context.Context, key string, reply *broker.Message) error {
	return l.s.Store(ctx, key, reply)
}

func TestDedupClaimErrors(t *testing.T) {
	var runs atomic.Int32
	next := broker.HandlerFunc(func(context.Context, *broker.Message) (*broker.Message, error) {
		runs.Add(1)
		return &broker.Message{Body: []byte("ok")}, nil
	})
	t.Run("claim fails closed", func(t *testing.T) {
		runs.Store(0)
		boom := errors.New("store down")
		h := middleware.Dedup(middleware.WithDedupStore(failingClaimer{middleware.NewMemoryDedupStore(0, 0), boom, nil}),
			middleware.WithDedupStoreWait(0))(next)
		_, err := h.ServeMessage(context.Background(), &broker.Message{ID: "1"})
		assert.Equal(t, rpc.Unavailable, rpc.CodeOf(err))
		assert.ErrorIs(t, err, boom)
		assert.ErrorIs(t, err, broker.ErrDeliveryFailed, "a refusal fails the delivery, so a durable broker keeps the request")
		assert.Zero(t, runs.Load())
		// Through a server: no reply (which a durable broker would
		// acknowledge, losing the request), the delivery fails.
		srv := rpc.NewServer(rpc.WithServerMiddleware(middleware.Dedup(
			middleware.WithDedupStore(failingClaimer{middleware.NewMemoryDedupStore(0, 0), boom, nil}),
			middleware.WithDedupStoreWait(0),
		)))
		require.NoError(t, rpc.Handle(srv, "M", func(context.Context, *struct{}) (*struct{}, error) {
			runs.Add(1)
			return &struct{}{}, nil
		}))
		req := &broker.Message{ID: "2", Header: broker.Header{}, Body: []byte("{}")}
		req.Header.Set(broker.HeaderMethod, "M")
		reply, err := srv.ServeMessage(context.Background(), req)
		assert.Nil(t, reply)
		assert.ErrorIs(t, err, broker.ErrDeliveryFailed)
		assert.Zero(t, runs.Load())
	})
	// A store that fails for less than the store wait (a replicated
	// store electing a leader) costs the request time, not a delivery:
	// a durable broker would count a failed delivery towards
	// dead-lettering it.
	t.Run("store back within the wait", func(t *testing.T) {
		runs.Store(0)
		for _, shared := range []bool{true, false} {
			var store middleware.DedupStore = &flakyStore{MemoryDedupStore: middleware.NewMemoryDedupStore(0, 0), failures: 3}
			if !shared {
				store = loadOnly{store.(*flakyStore)}
			}
			h := middleware.Dedup(middleware.WithDedupStore(store), middleware.WithDedupStoreWait(time.Minute))(next)
			reply, err := h.ServeMessage(context.Background(), &broker.Message{ID: fmt.Sprint("back-", shared)})
			require.NoError(t, err, "claiming store %v", shared)
			assert.Equal(t, "ok", string(reply.Body))
		}
		assert.Equal(t, int32(2), runs.Load(), "each request ran once")
	})
	t.Run("store wait bounded", func(t *testing.T) {
		runs.Store(0)
		boom := errors.New("store down")
		h := middleware.Dedup(middleware.WithDedupStore(failingClaimer{middleware.NewMemoryDedupStore(0, 0), boom, nil}),
			middleware.WithDedupStoreWait(300*time.Millisecond))(next)
		begin := time.Now()
		_, err := h.ServeMessage(context.Background(), &broker.Message{ID: "1"})
		assert.ErrorIs(t, err, broker.ErrDeliveryFailed)
		assert.Less(t, time.Since(begin), 10*time.Second, "the wait ends")
		assert.Zero(t, runs.Load())
		// The request's own deadline ends it sooner.
		h = middleware.Dedup(middleware.WithDedupStore(failingClaimer{middleware.NewMemoryDedupStore(0, 0), boom, nil}))(next)
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		_, err = h.ServeMessage(ctx, &broker.Message{ID: "2"})
		assert.ErrorIs(t, err, broker.ErrDeliveryFailed)
		assert.Less(t, time.Since(begin), 10*time.Second, "the deadline ends the wait, not the default 15 s")
	})
	// An outcome whose commit fails for less than the store wait is
	// stored all the same: a repeat is answered from it instead of
	// running again once the claim's lease passed.
	t.Run("commit back within the wait", func(t *testing.T) {
		runs.Store(0)
		store := &flakyCommits{MemoryDedupStore: middleware.NewMemoryDedupStore(0, 0), failures: 3}
		h := middleware.Dedup(middleware.WithDedupStore(store), middleware.WithDedupStoreWait(time.Minute),
			middleware.WithDedupLease(time.Millisecond))(next)
		_, err := h.ServeMessage(context.Background(), &broker.Message{ID: "c"})
		require.NoError(t, err)
		reply, err := h.ServeMessage(context.Background(), &broker.Message{ID: "c"})
		require.NoError(t, err)
		assert.Equal(t, "true", reply.Header.Get(middleware.HeaderReplayed), "answered from the store")
		assert.Equal(t, int32(1), runs.Load(), "the repeat did not run again")
	})
	t.Run("commit failure is reported, reply sent, claim kept", func(t *testing.T) {
		runs.Store(0)
		boom := errors.New("store full")
		store := failingClaimer{middleware.NewMemoryDedupStore(0, 0), nil, boom}
		var reported error
		h := middleware.Dedup(
			middleware.WithDedupStore(store),
			middleware.OnStoreError(func(_ context.Context, _ *broker.Message, err error) { reported = err }),
			middleware.WithDedupStoreWait(0),
		)(next)
		reply, err := h.ServeMessage(context.Background(), &broker.Message{ID: "1"})
		require.NoError(t, err)
		assert.Equal(t, "ok", string(reply.Body))
		assert.ErrorIs(t, reported, boom)
		c, err := store.Claim(context.Background(), "1", time.Minute)
		require.NoError(t, err)
		assert.Nil(t, c.Lease, "the claim stays until its lease ends, holding repeats off")
	})
}

// TestDedupPanic: a method that panics frees its key, in this process
// (the flight) and in the store (the claim), so a repeat runs at once
// instead of waiting forever or for the lease; the panic goes on to
// Recover.
func TestDedupPanic(t *testing.T) {
	for _, shared := range []bool{false, true} {
		name := map[bool]string{false: "plain store", true: "claiming store"}[shared]
		t.Run(name, func(t *testing.T) {
			var store middleware.DedupStore = middleware.NewMemoryDedupStore(0, 0)
			if !shared {
				store = govFailingStore{} // loads nothing, stores nowhere
			}
			var runs atomic.Int32
			h := middleware.Dedup(middleware.WithDedupStore(store), middleware.WithDedupLease(time.Hour))(broker.HandlerFunc(func(context.Context, *broker.Message) (*broker.Message, error) {
				if runs.Add(1) == 1 {
					panic("poison")
				}
				return &broker.Message{}, nil
			}))
			func() {
				defer func() { assert.Equal(t, "poison", recover()) }()
				_, _ = h.ServeMessage(context.Background(), &broker.Message{ID: "k"})
			}()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_, err := h.ServeMessage(ctx, &broker.Message{ID: "k"})
			require.NoError(t, err, "the repeat ran")
			assert.Equal(t, int32(2), runs.Load())
		})
	}
}
