package kernel_test

import (
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/kernel"
)

// TestReplies: a Gather's wait is over when fn returns false or max
// replies (max > 0) were handed to fn; with max 0 or less only fn ends it.
func TestReplies(t *testing.T) {
	for _, tc := range []struct {
		name   string
		max    int
		stopAt int // fn returns false on this reply (1-based); 0: never
		overAt int // Take reports over on this reply; 0: never within 5
	}{
		{name: "no max", max: 0, overAt: 0},
		{name: "negative max is no max", max: -1, overAt: 0},
		{name: "max 1", max: 1, overAt: 1},
		{name: "max 3", max: 3, overAt: 3},
		{name: "fn stops first", max: 3, stopAt: 2, overAt: 2},
		{name: "fn stops without max", max: 0, stopAt: 4, overAt: 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var seen []string
			r := kernel.NewReplies(tc.max, func(m *broker.Message) bool {
				seen = append(seen, string(m.Body))
				return len(seen) != tc.stopAt
			})
			over := 0
			for i := 1; i <= 5 && over == 0; i++ {
				if r.Take(&broker.Message{Body: []byte{'0' + byte(i)}}) {
					over = i
				}
			}
			assert.Equal(t, tc.overAt, over)
			n := 5
			if over > 0 {
				n = over
			}
			assert.Equal(t, n, r.Taken())
			assert.Len(t, seen, n, "fn got every reply taken, in order")
			if n > 0 {
				assert.Equal(t, "1", seen[0])
			}
		})
	}
}

// TestEachTable: subscriptions are found by their subject only, Remove
// takes out one (and nothing else, also when it is not there), All lists
// every subject's, and the table is safe for concurrent use.
func TestEachTable(t *testing.T) {
	var tb kernel.EachTable[int]
	of := func(subject string) []int {
		var got []int
		tb.Range(subject, func(s int) { got = append(got, s) })
		return got
	}
	assert.Empty(t, of("a"), "the zero value is an empty table")
	assert.Empty(t, tb.All())
	tb.Add("a", 1)
	tb.Add("a", 2)
	tb.Add("b", 3)
	tb.Add("a", 2) // again: still once
	assert.ElementsMatch(t, []int{1, 2}, of("a"))
	assert.ElementsMatch(t, []int{3}, of("b"))
	assert.Empty(t, of("c"))
	assert.ElementsMatch(t, []int{1, 2, 3}, tb.All())
	tb.Remove("a", 1)
	tb.Remove("b", 1) // not under b: nothing happens
	tb.Remove("c", 9) // unknown subject: nothing happens
	assert.ElementsMatch(t, []int{2}, of("a"))
	assert.ElementsMatch(t, []int{3}, of("b"))
	tb.Remove("a", 2)
	assert.Empty(t, of("a"))
	assert.ElementsMatch(t, []int{3}, tb.All())
	tb.Add("a", 4) // a subject emptied and used again
	assert.ElementsMatch(t, []int{4}, of("a"))

	done := make(chan struct{})
	for g := 0; g < 4; g++ {
		go func() {
			defer func() { done <- struct{}{} }()
			for i := 0; i < 200; i++ {
				s := 100 + g*1000 + i
				tb.Add("x", s)
				tb.Range("x", func(int) {})
				_ = tb.All()
				tb.Remove("x", s)
			}
		}()
	}
	for g := 0; g < 4; g++ {
		<-done
	}
	assert.Empty(t, of("x"))
	assert.ElementsMatch(t, []int{3, 4}, tb.All())
}
