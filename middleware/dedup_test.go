package middleware_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/memory"
	"github.com/mqrpc/mqrpc/middleware"
	"github.com/mqrpc/mqrpc/rpc"
)

// govFailingStore is a DedupStore whose reads or writes fail.
type govFailingStore struct{ load, store error }

func (s govFailingStore) Load(context.Context, string) (*broker.Message, bool, error) {
	return nil, false, s.load
}
func (s govFailingStore) Store(context.Context, string, *broker.Message) error { return s.store }

func TestDedup(t *testing.T) {
	plain := errors.New("delivery failed")
	tests := []struct {
		name     string
		id       string
		reply    *broker.Message
		err      error
		wantRuns int
		wantCode rpc.Code
	}{
		{name: "reply is replayed", id: "1", reply: &broker.Message{Body: []byte("ok")}, wantRuns: 1},
		{name: "application error is replayed", id: "1", err: rpc.Errorf(rpc.NotFound, "no such thing"), wantRuns: 1, wantCode: rpc.NotFound},
		{name: "one-way is not run twice", id: "1", wantRuns: 1},
		{name: "unavailable runs again", id: "1", err: rpc.Errorf(rpc.Unavailable, "later"), wantRuns: 2, wantCode: rpc.Unavailable},
		{name: "deadline exceeded runs again", id: "1", err: rpc.Errorf(rpc.DeadlineExceeded, "slow"), wantRuns: 2, wantCode: rpc.DeadlineExceeded},
		{name: "delivery failure runs again", id: "1", err: plain, wantRuns: 2, wantCode: rpc.Unknown},
		{name: "no ID, no dedup", id: "", reply: &broker.Message{Body: []byte("ok")}, wantRuns: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			runs := 0
			next := broker.HandlerFunc(func(context.Context, *broker.Message) (*broker.Message, error) {
				runs++
				if tt.reply == nil {
					return nil, tt.err
				}
				r := *tt.reply
				return &r, tt.err
			})
			var dups []bool
			h := middleware.Dedup(
				middleware.OnDuplicate(func(_ context.Context, _ *broker.Message, inFlight bool) { dups = append(dups, inFlight) }),
			)(next)
			for i := range 2 {
				reply, err := h.ServeMessage(context.Background(), &broker.Message{ID: tt.id})
				assert.Equal(t, tt.wantCode, rpc.CodeOf(err), "call %d", i)
				if tt.err == plain {
					assert.ErrorIs(t, err, plain)
				}
				if tt.reply != nil && tt.err == nil {
					require.NotNil(t, reply)
					assert.Equal(t, "ok", string(reply.Body))
					assert.Equal(t, i == 1 && tt.wantRuns == 1, reply.Header.Get(middleware.HeaderReplayed) == "true")
				} else {
					assert.Nil(t, reply)
				}
			}
			assert.Equal(t, tt.wantRuns, runs)
			if tt.wantRuns == 1 {
				assert.Equal(t, []bool{false}, dups)
			} else {
				assert.Empty(t, dups)
			}
		})
	}
}

func TestDedupStoreErrors(t *testing.T) {
	next := broker.HandlerFunc(func(context.Context, *broker.Message) (*broker.Message, error) {
		return &broker.Message{Body: []byte("ok")}, nil
	})
	t.Run("load fails closed", func(t *testing.T) {
		boom := errors.New("store down")
		h := middleware.Dedup(middleware.WithDedupStore(govFailingStore{load: boom}), middleware.WithDedupStoreWait(0))(next)
		_, err := h.ServeMessage(context.Background(), &broker.Message{ID: "1"})
		assert.Equal(t, rpc.Unavailable, rpc.CodeOf(err))
		assert.ErrorIs(t, err, boom)
	})
	t.Run("store failure is reported, reply sent", func(t *testing.T) {
		boom := errors.New("store full")
		var reported error
		h := middleware.Dedup(
			middleware.WithDedupStore(govFailingStore{store: boom}),
			middleware.OnStoreError(func(_ context.Context, _ *broker.Message, err error) { reported = err }),
			middleware.WithDedupStoreWait(0),
		)(next)
		reply, err := h.ServeMessage(context.Background(), &broker.Message{ID: "1"})
		require.NoError(t, err)
		assert.Equal(t, "ok", string(reply.Body))
		assert.ErrorIs(t, reported, boom)
	})
}

// TestDedupInFlight: a duplicate delivered while the first run is still
// going waits for it instead of running the method again.
func TestDedupInFlight(t *testing.T) {
	defer goleak.VerifyNone(t)
	b := memory.New()
	defer b.Close()
	release := make(chan struct{})
	var waited atomic.Int32
	dedup := middleware.Dedup(
		middleware.OnDuplicate(func(_ context.Context, _ *broker.Message, inFlight bool) {
			if inFlight && waited.Add(1) == 1 {
				close(release) // the duplicate is waiting: let the first finish
			}
		}),
	)
	runs := govCounter(t, b, func(int32) { <-release }, dedup)
	b.SetFaults(memory.Faults{Duplicates: 1})
	got, err := rpc.Invoke[govReq, govRes](context.Background(), rpc.NewClient(b), "calc", "Add", &govReq{A: 20, B: 22})
	require.NoError(t, err)
	assert.Equal(t, 42, got.Sum)
	require.NoError(t, b.Close()) // waits for the duplicate's handler too
	assert.Equal(t, int32(1), runs.Load())
	assert.Equal(t, int32(1), waited.Load())
}

// TestDedupExactlyOnce: a call that is not idempotent, retried through
// lost requests, lost replies and duplicate deliveries, runs once on a
// server with Dedup (and more than once without it).
func TestDedupExactlyOnce(t *testing.T) {
	tests := []struct {
		name     string
		faults   memory.Faults
		dedup    bool
		wantRuns int32
	}{
		{name: "dropped reply", faults: memory.Faults{DropReplies: 1}, dedup: true, wantRuns: 1},
		{name: "dropped reply without dedup runs twice", faults: memory.Faults{DropReplies: 1}, wantRuns: 2},
		{name: "duplicate", faults: memory.Faults{Duplicates: 1}, dedup: true, wantRuns: 1},
		{name: "duplicate, both replies dropped", faults: memory.Faults{Duplicates: 1, DropReplies: 2}, dedup: true, wantRuns: 1},
		{name: "dropped request", faults: memory.Faults{DropRequests: 1}, dedup: true, wantRuns: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			defer goleak.VerifyNone(t)
			b := memory.New()
			defer b.Close()
			var mw []rpc.Middleware
			if tt.dedup {
				mw = append(mw, middleware.Dedup())
			}
			runs := govCounter(t, b, nil, mw...)
			var retries atomic.Int32
			c := rpc.NewClient(b, rpc.WithClientMiddleware(middleware.Retry(
				middleware.WithMaxAttempts(5),
				middleware.WithPerAttemptTimeout(500*time.Millisecond),
				middleware.WithBackoff(time.Millisecond, 0, 0),
				middleware.WithIdempotent(middleware.AlwaysIdempotent), // the server deduplicates
				middleware.WithRetryBudget(middleware.UnlimitedRetryBudget()),
				middleware.OnRetry(func(context.Context, rpc.CallInfo, int, error, time.Duration) { retries.Add(1) }),
			)))
			b.SetFaults(tt.faults)
			got, err := rpc.Invoke[govReq, govRes](context.Background(), c, "calc", "Add", &govReq{A: 1, B: 2})
			require.NoError(t, err)
			assert.Equal(t, 3, got.Sum)
			require.NoError(t, b.Close())
			if tt.dedup {
				assert.Equal(t, tt.wantRuns, runs.Load(), "exactly once")
			} else {
				// A very slow attempt may time out too and run a third time.
				assert.GreaterOrEqual(t, runs.Load(), tt.wantRuns)
			}
			if tt.faults.DropReplies+tt.faults.DropRequests > 0 {
				assert.Positive(t, retries.Load(), "the fault forced a retry")
			}
		})
	}
}

// WithDedupKey picks the key (here a header, so two IDs with one key run
// once; no key, no dedup); WithTransientCodes replaces the codes whose
// replies are not kept.
func TestDedupOptions(t *testing.T) {
	run := func(t *testing.T, h broker.Handler, reqs ...*broker.Message) {
		t.Helper()
		for _, req := range reqs {
			_, _ = h.ServeMessage(context.Background(), req)
		}
	}
	counting := func(runs *int, err error) broker.Handler {
		return broker.HandlerFunc(func(context.Context, *broker.Message) (*broker.Message, error) {
			*runs++
			return &broker.Message{Body: []byte("ok")}, err
		})
	}
	t.Run("key", func(t *testing.T) {
		runs := 0
		h := middleware.Dedup(middleware.WithDedupKey(func(req *broker.Message) string {
			return req.Header.Get("x-operation")
		}))(counting(&runs, nil))
		op := func(id, key string) *broker.Message {
			m := &broker.Message{ID: id, Header: broker.Header{}}
			m.Header.Set("x-operation", key)
			return m
		}
		run(t, h, op("1", "pay-7"), op("2", "pay-7"), op("3", ""), op("3", ""))
		assert.Equal(t, 3, runs, "pay-7 once, the keyless request twice")
	})
	t.Run("transient codes", func(t *testing.T) {
		runs := 0
		h := middleware.Dedup(middleware.WithTransientCodes(rpc.NotFound))(counting(&runs, rpc.Errorf(rpc.NotFound, "not yet")))
		run(t, h, &broker.Message{ID: "1"}, &broker.Message{ID: "1"})
		assert.Equal(t, 2, runs, "NotFound is transient: runs again")
		runs = 0
		h = middleware.Dedup(middleware.WithTransientCodes(rpc.NotFound))(counting(&runs, rpc.Errorf(rpc.Unavailable, "down")))
		run(t, h, &broker.Message{ID: "1"}, &broker.Message{ID: "1"})
		assert.Equal(t, 1, runs, "Unavailable is no longer transient: replayed")
	})
}
