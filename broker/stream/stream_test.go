package stream_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/memory"
	"github.com/mqrpc/mqrpc/broker/stream"
)

// TestLargeMessagesGetLessCredit: with the default window, a reader of
// 1 MiB messages that stops reading holds about 8 MiB of them, not the
// 1024 messages of the window; before the first message it grants 32.
func TestLargeMessagesGetLessCredit(t *testing.T) {
	b := memory.New()
	defer b.Close()
	var sent atomic.Int64
	body := make([]byte, 1<<20)
	_, err := b.Serve("big", broker.HandlerFunc(func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
		st, err := stream.Accept(ctx, req, 0)
		if err != nil {
			return nil, err
		}
		for i := 0; i < 10_000; i++ {
			if st.Send(&broker.Message{Body: body}) != nil {
				break
			}
			sent.Add(1)
		}
		return &broker.Message{Header: st.Finish()}, nil
	}))
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := stream.Open(ctx, b, stream.Config{})
	require.NoError(t, err)
	defer st.Close()
	req := &broker.Message{Subject: "big"}
	st.Prepare(req)
	go func() {
		rep, err := b.Request(st.Context(), req)
		st.Finished(rep, err)
	}()
	for i := 0; i < 40; i++ { // past the first credit: the grants are now 8 at a time
		_, err := st.Recv()
		require.NoError(t, err)
	}
	time.Sleep(300 * time.Millisecond) // the handler sends what it may
	// Read 40, granted 40 + 8 (8 MiB of 1 MiB messages) at most.
	require.LessOrEqual(t, sent.Load(), int64(48), "credit for large messages")
	require.GreaterOrEqual(t, sent.Load(), int64(40))
}
