package harness

import (
	"context"
	"runtime/pprof"
	"sync"
	"testing"
	"time"
)

// labelTarget records the profiler label "case" of its setup's context
// and of every call's.
type labelTarget struct {
	setup string
	mu    sync.Mutex
	seen  map[string]int // calls by label
}

func (t *labelTarget) Call(ctx context.Context, _ []byte) error {
	l, _ := pprof.Label(ctx, "case")
	t.mu.Lock()
	t.seen[l]++
	t.mu.Unlock()
	return nil
}

func (t *labelTarget) Close() error { return nil }

func TestRunLabelsEachCaseForTheProfiler(t *testing.T) {
	targets := map[string]*labelTarget{}
	mk := func(name, role string) Case {
		return Case{Group: "g", Name: name, Role: role, Setup: func(ctx context.Context) (Target, error) {
			tg := &labelTarget{seen: map[string]int{}}
			tg.setup, _ = pprof.Label(ctx, "case")
			targets[name] = tg
			return tg, nil
		}}
	}
	// Warmup and the first call (the probe) included.
	cfg := Config{Rounds: 2, Warmup: 20 * time.Millisecond, Sizes: []int{8}, Concurrency: []int{2}, Slice: 20 * time.Millisecond, CallTimeout: time.Second}
	if _, err := Run(context.Background(), cfg, []Case{mk("raw", RoleRaw), mk("mq", RoleMQRPC)}); err != nil {
		t.Fatal(err)
	}
	for name, tg := range targets {
		want := "g/" + name
		if got := tg.setup; got != want {
			t.Errorf("setup of %s ran with label %q, want %q", name, got, want)
		}
		tg.mu.Lock()
		for l, n := range tg.seen {
			if l != want {
				t.Errorf("%s: %d calls with label %q, want %q", name, n, l, want)
			}
		}
		if tg.seen[want] == 0 {
			t.Errorf("%s: no call was labelled %q", name, want)
		}
		tg.mu.Unlock()
	}
}

// countTarget counts its calls and the payload sizes it saw.
type countTarget struct {
	mu    sync.Mutex
	sizes map[int]int
}

func (t *countTarget) Call(_ context.Context, p []byte) error {
	t.mu.Lock()
	t.sizes[len(p)]++
	t.mu.Unlock()
	time.Sleep(time.Millisecond)
	return nil
}

func (t *countTarget) Close() error { return nil }

// A stream case runs at Config.Streams, not Config.Concurrency, and its
// cells count messages: Msgs per call.
func TestRunStreamCaseCountsMessages(t *testing.T) {
	tg := &countTarget{sizes: map[int]int{}}
	c := Case{Group: "s", Name: "st", Role: RoleMQRPC, Msgs: 100,
		Setup: func(context.Context) (Target, error) { return tg, nil }}
	cfg := Config{Rounds: 2, Sizes: []int{8}, Concurrency: []int{1, 64}, Streams: []int{2, 3},
		Slice: 20 * time.Millisecond, CallTimeout: time.Second}
	res, err := Run(context.Background(), cfg, []Case{c})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Cells) != 2 {
		t.Fatalf("%d cells, want 2 (one per number of streams): %v", len(res.Cells), res.Cells)
	}
	var calls int
	for _, n := range []int{2, 3} {
		cell := res.Cells[Key{Group: "s", Name: "st", Conc: n, Size: 8}]
		if cell == nil {
			t.Fatalf("no cell at %d streams", n)
		}
		if cell.Calls == 0 || cell.Calls%100 != 0 {
			t.Errorf("%d streams: %d messages, want a multiple of 100", n, cell.Calls)
		}
		calls += int(cell.Calls / 100)
		var sum float64
		for _, x := range cell.PerRound {
			sum += x
		}
		// Every round's rate counts messages too: about the cell's.
		if avg := sum / float64(len(cell.PerRound)); avg < cell.Throughput()/2 || avg > cell.Throughput()*2 {
			t.Errorf("%d streams: rounds at %v msgs/s on average, the cell at %v", n, avg, cell.Throughput())
		}
	}
	tg.mu.Lock()
	defer tg.mu.Unlock()
	// The probe (16 bytes) and the measured calls; no warmup configured.
	if got := tg.sizes[8]; got != calls {
		t.Errorf("%d calls of 8 bytes, the cells count %d", got, calls)
	}
}
