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
