package memory_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/memory"
)

// WithSeed makes probabilistic faults repeatable: the same seed drops the
// same requests.
func TestWithSeedRepeats(t *testing.T) {
	run := func(seed uint64) []bool {
		b := memory.New(memory.WithSeed(seed))
		defer b.Close()
		sub, err := b.Serve("s", broker.HandlerFunc(func(context.Context, *broker.Message) (*broker.Message, error) {
			return &broker.Message{}, nil
		}))
		require.NoError(t, err)
		defer sub.Stop(context.Background())
		b.SetFaults(memory.Faults{DropRequestRate: 0.5})
		var got []bool
		for range 20 {
			ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond) // a dropped request times out
			_, err := b.Request(ctx, &broker.Message{Subject: "s"})
			cancel()
			got = append(got, err == nil)
		}
		return got
	}
	a := run(7)
	assert.Equal(t, a, run(7), "same seed, same drops")
	assert.Contains(t, a, true)
	assert.Contains(t, a, false)
}
