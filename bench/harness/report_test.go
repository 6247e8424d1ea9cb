package harness

import (
	"math"
	"os"
	"path/filepath"
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

// streamResults is a run of one raw and one mqrpc stream case, the mqrpc
// case at 0.5 of raw (below the target) at 64 B × 1 stream.
func streamResults() *Results {
	r := &Results{
		Config: Config{Streams: []int{1}, Sizes: []int{64}, Rounds: 1, Slice: time.Second},
		Cases: []Case{{Group: "nats-stream", Name: "raw pub", Role: RoleRaw, Msgs: 10},
			{Group: "nats-stream", Name: "mqrpc stream", Role: RoleMQRPC, Msgs: 10}},
		Cells: map[Key]*Cell{},
	}
	for name, rate := range map[string]float64{"raw pub": 200000, "mqrpc stream": 100000} {
		c := &Cell{Key: Key{Group: "nats-stream", Name: name, Conc: 1, Size: 64}, Calls: uint64(rate),
			Elapsed: time.Second, PerRound: []float64{rate}}
		r.Cells[c.Key] = c
	}
	return r
}

func TestStreamsMarkdown(t *testing.T) {
	md := (&Report{Results: streamResults(), Command: "scripts/bench -kind stream"}).StreamsMarkdown()
	for _, want := range []string{"| nats | raw pub | 200k |", "| nats | mqrpc stream | **0.50** ✗ · 100k |", "scripts/bench -kind stream"} {
		if !strings.Contains(md, want) {
			t.Errorf("no %q in:\n%s", want, md)
		}
	}
}

// A run of the stream cases alone rewrites the stream region of the page
// and keeps the request-reply one, and the other way round.
func TestWriteMarkdownKeepsTheOtherRegion(t *testing.T) {
	path := filepath.Join(t.TempDir(), "B.md")
	page := "# B\n\nintro\n\n" + BeginMarker + "\nOLD CALLS\n" + EndMarker + "\n\nmiddle\n\n" +
		StreamsBeginMarker + "\nOLD STREAMS\n" + StreamsEndMarker + "\n\nend\n"
	if err := os.WriteFile(path, []byte(page), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := (&Report{Results: streamResults(), Command: "x"}).WriteMarkdown(path, ""); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	got := string(b)
	for _, want := range []string{"intro", "OLD CALLS", "middle", "| nats | mqrpc stream |", "end\n"} {
		if !strings.Contains(got, want) {
			t.Errorf("no %q after a stream run:\n%s", want, got)
		}
	}
	if strings.Contains(got, "OLD STREAMS") {
		t.Errorf("the stream region was not rewritten:\n%s", got)
	}

	calls := &Results{
		Config: Config{Concurrency: []int{1}, Sizes: []int{64}, Rounds: 1, Slice: time.Second},
		Cases:  []Case{{Group: "g", Name: "raw", Role: RoleRaw}},
		Cells:  map[Key]*Cell{},
	}
	c := &Cell{Key: Key{Group: "g", Name: "raw", Conc: 1, Size: 64}, Calls: 5, Elapsed: time.Second, PerRound: []float64{5}}
	calls.Cells[c.Key] = c
	if err := (&Report{Results: calls, Command: "x"}).WriteMarkdown(path, ""); err != nil {
		t.Fatal(err)
	}
	b, _ = os.ReadFile(path)
	got = string(b)
	if strings.Contains(got, "OLD CALLS") || !strings.Contains(got, "| g | raw | 64 B | 5.00 |") {
		t.Errorf("the request-reply region was not rewritten:\n%s", got)
	}
	if !strings.Contains(got, "| nats | mqrpc stream |") {
		t.Errorf("a request-reply run dropped the stream region:\n%s", got)
	}
}
