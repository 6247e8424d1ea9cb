package harness

import (
	"math"
	"strings"
	"testing"
	"time"
)

func TestRatioIsTheMedianOfPairedRounds(t *testing.T) {
	r := &Results{
		Cases: []Case{{Group: "g", Name: "raw", Role: RoleRaw}, {Group: "g", Name: "mq", Role: RoleMQRPC}},
		Cells: map[Key]*Cell{},
	}
	raw := &Cell{Key: Key{Group: "g", Name: "raw", Conc: 1, Size: 64}, Role: RoleRaw,
		Calls: 3000, Elapsed: 3 * time.Second, PerRound: []float64{1000, 1000, 1000}}
	// One round hit by a burst (200 calls/s): the median ignores it, the
	// ratio of the totals would not.
	mq := &Cell{Key: Key{Group: "g", Name: "mq", Conc: 1, Size: 64}, Role: RoleMQRPC,
		Calls: 2100, Elapsed: 3 * time.Second, PerRound: []float64{950, 200, 950}}
	r.Cells[raw.Key], r.Cells[mq.Key] = raw, mq

	got, ok := r.Ratio(mq)
	if !ok || math.Abs(got-0.95) > 1e-9 {
		t.Fatalf("Ratio = %v, %v; want the median 0.95", got, ok)
	}
	if _, ok := r.Ratio(raw); ok {
		t.Fatal("the baseline has a ratio to itself")
	}
	// Even number of rounds: the mean of the middle two.
	raw.PerRound, mq.PerRound = []float64{1000, 1000, 1000, 1000}, []float64{800, 900, 1000, 100}
	if got, _ := r.Ratio(mq); math.Abs(got-0.85) > 1e-9 {
		t.Fatalf("Ratio = %v, want 0.85", got)
	}
	// One round: the ratio of the totals.
	raw.PerRound, mq.PerRound = []float64{1000}, []float64{700}
	if got, _ := r.Ratio(mq); math.Abs(got-0.7) > 1e-9 {
		t.Fatalf("Ratio = %v, want 0.7", got)
	}
}

func TestFailures(t *testing.T) {
	r := &Results{Cells: map[Key]*Cell{}}
	ok := &Cell{Key: Key{Group: "g", Name: "fine", Conc: 1, Size: 64}, Calls: 10}
	r.Cells[ok.Key] = ok
	if err := r.Failures(); err != nil {
		t.Fatalf("Failures = %v with every call fine", err)
	}
	bad := &Cell{Key: Key{Group: "g", Name: "bad", Conc: 64, Size: 4096}, Calls: 10, Errors: 2, FirstErr: "boom"}
	r.Cells[bad.Key] = bad
	r.Skipped = append(r.Skipped, Skipped{Group: "h", Name: "gone", Reason: "no broker"})
	err := r.Failures()
	if err == nil {
		t.Fatal("Failures = nil with a skipped case and failed calls")
	}
	for _, want := range []string{"h/gone skipped: no broker", "g/bad c=64 4096 B: 2 failed calls, the first: boom"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Failures = %q, want it to contain %q", err, want)
		}
	}
}

// The details table has one row per case and size, with the calls/s of
// every concurrency and the lowest and highest concurrency's latency.
func TestMarkdownDetails(t *testing.T) {
	r := &Results{
		Config: Config{Concurrency: []int{1, 64}, Sizes: []int{64}, Rounds: 1, Slice: time.Second},
		Cases:  []Case{{Group: "g", Name: "raw", Role: RoleRaw}},
		Cells:  map[Key]*Cell{},
	}
	for _, c := range []int{1, 64} {
		cell := &Cell{Key: Key{Group: "g", Name: "raw", Conc: c, Size: 64}, Role: RoleRaw,
			Calls: uint64(1000 * c), Elapsed: time.Second, PerRound: []float64{float64(1000 * c)}}
		cell.Hist.Record(time.Duration(c) * time.Millisecond)
		r.Cells[cell.Key] = cell
	}
	md := (&Report{Results: r, Command: "x"}).Markdown("", "")
	if !strings.Contains(md, "| g | raw | 64 B | 1000 · 64000 |") {
		t.Fatalf("no details row in:\n%s", md)
	}
	if n := strings.Count(md, "| g | raw |"); n != 1 {
		t.Fatalf("%d rows for one case and size, want 1:\n%s", n, md)
	}
}
