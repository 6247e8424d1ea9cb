package control

import (
	"context"
	"testing"

	"github.com/mqrpc/mqrpc/broker"
)

// BenchmarkMeter is what counting costs a call: the meter around a
// handler that does nothing, next to the bare handler.
func BenchmarkMeter(b *testing.B) {
	nop := broker.HandlerFunc(func(context.Context, *broker.Message) (*broker.Message, error) { return nil, nil })
	req := &broker.Message{Header: broker.Header{broker.HeaderMethod: "Add"}}
	ctx := context.Background()
	for _, c := range []struct {
		name string
		h    broker.Handler
	}{{"bare", nop}, {"metered", newMeter(nop)}} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					_, _ = c.h.ServeMessage(ctx, req)
				}
			})
		})
	}
}

// TestMeterBoundsNames: requests naming more methods than maxCounted are
// counted together under OtherMethods, so made-up names cannot grow the
// table without end.
func TestMeterBoundsNames(t *testing.T) {
	nop := broker.HandlerFunc(func(context.Context, *broker.Message) (*broker.Message, error) { return nil, nil })
	m := newMeter(nop)
	for i := 0; i < 3*maxCounted; i++ {
		_, _ = m.ServeMessage(context.Background(), &broker.Message{Header: broker.Header{broker.HeaderMethod: "m" + string(rune('a'+i%26)) + string(rune(i))}})
	}
	stats := m.snapshot("s", "s", nil)
	if len(stats) != maxCounted+1 {
		t.Fatalf("%d names counted, want %d and %s", len(stats), maxCounted, OtherMethods)
	}
	total := 0
	for _, s := range stats {
		total += s.NumRequests
	}
	if total != 3*maxCounted {
		t.Fatalf("%d requests counted, want %d", total, 3*maxCounted)
	}
}
