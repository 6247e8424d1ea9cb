package stream_test

import (
	"context"
	"fmt"
	"io"
	"maps"
	"strconv"
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

// copyingStreamer is a Streamer whose Post copies the body (as
// broker/nats's, into the connection's buffer) and says so: the engine
// then reuses its frames and batch buffers.
type copyingStreamer struct{ broker.Streamer }

func (c copyingStreamer) Post(ctx context.Context, addr string, m *broker.Message) error {
	cp := *m
	cp.Body = append([]byte(nil), m.Body...)
	return c.Streamer.Post(ctx, addr, &cp)
}

func (copyingStreamer) PostCopiesBody() bool { return true }

// TestReusedFramesCarryOwnHeaders: on a BodyCopier the engine reuses one
// frame for every data and batch frame it posts; each message still
// arrives with its own headers and body, never a previous one's.
func TestReusedFramesCarryOwnHeaders(t *testing.T) {
	b := memory.New()
	defer b.Close()
	const n = 2000
	want := func(i int) broker.Header {
		h := broker.Header{}
		if i%3 == 0 {
			h["x-three"] = strconv.Itoa(i)
		}
		if i%5 == 0 {
			h["x-five"] = strconv.Itoa(i)
		}
		return h
	}
	got := make(chan error, 1)
	_, err := b.Serve("reuse", broker.HandlerFunc(func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
		st, err := stream.Accept(ctx, req, 0)
		if err != nil {
			return nil, err
		}
		got <- func() error {
			for i := 0; ; i++ {
				m, err := st.Recv()
				if err == io.EOF {
					if i != n {
						return fmt.Errorf("%d of %d messages", i, n)
					}
					return nil
				}
				if err != nil {
					return err
				}
				if string(m.Body) != fmt.Sprint("m", i) {
					return fmt.Errorf("message %d: body %q", i, m.Body)
				}
				if w := want(i); !maps.Equal(w, m.Header) {
					return fmt.Errorf("message %d: headers %v, want %v", i, m.Header, w)
				}
			}
		}()
		return &broker.Message{Header: st.Finish()}, nil
	}))
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := stream.Open(ctx, copyingStreamer{b}, stream.Config{})
	require.NoError(t, err)
	defer st.Close()
	req := &broker.Message{Subject: "reuse"}
	st.Prepare(req)
	done := make(chan error, 1)
	go func() {
		rep, err := b.Request(st.Context(), req)
		st.Finished(rep, err)
		done <- err
	}()
	for i := 0; i < n; i++ {
		require.NoError(t, st.Send(&broker.Message{Header: want(i), Body: fmt.Append(nil, "m", i)}))
		if i%50 < 4 {
			time.Sleep(time.Millisecond) // runs of lone data frames as well as batches
		}
	}
	require.NoError(t, st.CloseSend())
	require.NoError(t, <-got)
	require.NoError(t, <-done)
}
