package middleware_test

import (
	"context"
	"testing"
	"time"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/middleware"
)

var noop = broker.HandlerFunc(func(context.Context, *broker.Message) (*broker.Message, error) { return nil, nil })

// BenchmarkConcurrencyLimit: free slots (the common case), and one slot
// shared by every goroutine with a wait (the contended case).
func BenchmarkConcurrencyLimit(b *testing.B) {
	for _, bc := range []struct {
		name string
		max  int
	}{{"free", 1 << 20}, {"contended", 1}} {
		b.Run(bc.name, func(b *testing.B) {
			h := middleware.ConcurrencyLimit(bc.max, middleware.WithMaxWait(time.Minute))(noop)
			ctx := context.Background()
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				req := &broker.Message{}
				for pb.Next() {
					if _, err := h.ServeMessage(ctx, req); err != nil {
						b.Error(err)
					}
				}
			})
		})
	}
}
