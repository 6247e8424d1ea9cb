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
