package thrift_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/apache/thrift/lib/go/thrift"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	mqthrift "github.com/mqrpc/mqrpc/adapters/thrift"
	"github.com/mqrpc/mqrpc/broker"
)

// WithMiddleware wraps every call of both client kinds; WithTimeout puts a
// deadline on calls whose ctx has none; calls work with a Thrift
// configuration of their own (WithConfiguration).
func TestClientOptions(t *testing.T) {
	var calls atomic.Int32
	var deadlines atomic.Int32
	watch := func(next broker.Handler) broker.Handler {
		return broker.HandlerFunc(func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
			calls.Add(1)
			if !req.Deadline.IsZero() {
				deadlines.Add(1)
			}
			return next.ServeMessage(ctx, req)
		})
	}
	b := serve(t, &calc{})
	for name, c := range clients(b, mqthrift.Binary, mqthrift.WithMiddleware(watch), mqthrift.WithTimeout(time.Minute),
		mqthrift.WithConfiguration(&thrift.TConfiguration{MaxMessageSize: 1 << 20})) {
		sum, err := c.Add(context.Background(), 2, 3)
		require.NoError(t, err, name)
		assert.Equal(t, int32(5), sum, name)
	}
	assert.GreaterOrEqual(t, calls.Load(), int32(2))
	assert.Equal(t, calls.Load(), deadlines.Load(), "every call got the default timeout")
}
