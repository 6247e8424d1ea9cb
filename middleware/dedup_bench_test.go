package middleware_test

import (
	"context"
	"strconv"
	"testing"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/middleware"
)

// BenchmarkDedup is the cost Dedup adds on the default in-memory store:
// a new request (claim, run, commit) and a repeat (answered from the
// store). The memory store is golang-lru's simplelru with an expiry per
// entry (see MemoryDedupStore).
func BenchmarkDedup(b *testing.B) {
	next := broker.HandlerFunc(func(context.Context, *broker.Message) (*broker.Message, error) {
		return &broker.Message{Body: []byte("ok")}, nil
	})
	ctx := context.Background()
	ids := make([]string, 1<<16)
	for i := range ids {
		ids[i] = "id-" + strconv.Itoa(i)
	}
	b.Run("new", func(b *testing.B) {
		h := middleware.Dedup()(next)
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			req := &broker.Message{ID: ids[i%len(ids)] + "-" + strconv.Itoa(i/len(ids))}
			if _, err := h.ServeMessage(ctx, req); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
	b.Run("repeat", func(b *testing.B) {
		h := middleware.Dedup()(next)
		for _, id := range ids[:1000] {
			_, _ = h.ServeMessage(ctx, &broker.Message{ID: id})
		}
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			if _, err := h.ServeMessage(ctx, &broker.Message{ID: ids[i%1000]}); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
	b.Run("parallel-new", func(b *testing.B) {
		h := middleware.Dedup()(next)
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := h.ServeMessage(ctx, &broker.Message{ID: broker.NewID()}); err != nil {
					b.Fatal(err)
				}
			}
		})
	})
}
