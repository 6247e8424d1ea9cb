package stream_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"strconv"
	"strings"
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
	st := openStream(t, b, "big")
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
// frame for every data and batch frame it posts, and the buffers of
// SendAppend (on every Streamer, once copied into a batch frame; on a
// BodyCopier once posted); each message still arrives with its own
// headers and body, never a previous or a later one's.
func TestReusedFramesCarryOwnHeaders(t *testing.T) {
	for _, tc := range []struct {
		name    string
		copying bool
		append  bool
	}{
		{"Send, BodyCopier", true, false},
		{"SendAppend, BodyCopier", true, true},
		{"SendAppend, shared bodies", false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := memory.New()
			defer b.Close()
			var s broker.Streamer = b
			if tc.copying {
				s = copyingStreamer{b}
			}
			testReuse(t, b, s, tc.append)
		})
	}
}

// testReuse streams messages from a caller on s to a handler on b and
// checks each.
func testReuse(t *testing.T, b broker.Broker, s broker.Streamer, useAppend bool) {
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
	// Bodies of varied sizes, so reused buffers grow and shrink.
	body := func(dst []byte, i int) []byte {
		return append(fmt.Append(dst, "m", i, "-"), strings.Repeat("x", i%97)...)
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
				if w := body(nil, i); string(m.Body) != string(w) {
					return fmt.Errorf("message %d: body %q, want %q", i, m.Body, w)
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
	st, err := stream.Open(ctx, s, stream.Config{})
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
		if useAppend {
			require.NoError(t, st.SendAppend(want(i), func(buf []byte) ([]byte, error) { return body(buf, i), nil }))
		} else {
			require.NoError(t, st.Send(&broker.Message{Header: want(i), Body: body(nil, i)}))
		}
		if i%50 < 4 {
			time.Sleep(time.Millisecond) // runs of lone data frames as well as batches
		}
	}
	require.NoError(t, st.CloseSend())
	require.NoError(t, <-got)
	require.NoError(t, <-done)
}

// TestSendAppendError: an error of SendAppend's encode is returned as it
// is and sends nothing: the stream goes on with the next message.
func TestSendAppendError(t *testing.T) {
	b := memory.New()
	defer b.Close()
	got := make(chan []string, 1)
	_, err := b.Serve("enc", broker.HandlerFunc(func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
		st, err := stream.Accept(ctx, req, 0)
		if err != nil {
			return nil, err
		}
		var bodies []string
		for {
			m, err := st.Recv()
			if err != nil {
				break
			}
			bodies = append(bodies, string(m.Body))
		}
		got <- bodies
		return &broker.Message{Header: st.Finish()}, nil
	}))
	require.NoError(t, err)
	st := openStream(t, b, "enc")
	errEnc := errors.New("cannot encode")
	require.NoError(t, st.SendAppend(nil, func(buf []byte) ([]byte, error) { return append(buf, "a"...), nil }))
	require.ErrorIs(t, st.SendAppend(nil, func(buf []byte) ([]byte, error) { return append(buf, "half"...), errEnc }), errEnc)
	require.NoError(t, st.SendAppend(nil, func(buf []byte) ([]byte, error) { return append(buf, "b"...), nil }))
	require.NoError(t, st.CloseSend())
	require.Equal(t, []string{"a", "b"}, <-got)
}

// openStream opens a stream to the handler of subject on b, its opening
// request under way; the stream closes when the test ends.
func openStream(t *testing.T, b *memory.Broker, subject string) *stream.Stream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	st, err := stream.Open(ctx, b, stream.Config{})
	require.NoError(t, err)
	t.Cleanup(st.Close)
	req := &broker.Message{Subject: subject}
	st.Prepare(req)
	go func() {
		rep, err := b.Request(st.Context(), req)
		st.Finished(rep, err)
	}()
	return st
}
