package brokertest

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/stream"
)

// The batch frame's body, written here again from docs/PROTOCOL.md
// ("Batch frames"), not with the engine's code: each message is a uvarint
// count of headers, each header a uvarint length and the name, a uvarint
// length and the value, then a uvarint length and the body.

func encodeBatchBody(msgs ...*broker.Message) []byte {
	var b []byte
	str := func(s string) { b = append(binary.AppendUvarint(b, uint64(len(s))), s...) }
	for _, m := range msgs {
		b = binary.AppendUvarint(b, uint64(len(m.Header)))
		for k, v := range m.Header {
			str(k)
			str(v)
		}
		str(string(m.Body))
	}
	return b
}

func decodeBatchBody(t testing.TB, b []byte) []*broker.Message {
	num := func() int {
		v, n := binary.Uvarint(b)
		require.Positive(t, n, "a malformed batch frame")
		b = b[n:]
		return int(v)
	}
	str := func() string {
		n := num()
		require.LessOrEqual(t, n, len(b), "a malformed batch frame")
		s := string(b[:n])
		b = b[n:]
		return s
	}
	var out []*broker.Message
	for len(b) > 0 {
		m := &broker.Message{}
		if nh := num(); nh > 0 {
			m.Header = broker.Header{}
			for i := 0; i < nh; i++ {
				k := str()
				m.Header[k] = str()
			}
		}
		m.Body = []byte(str())
		out = append(out, m)
	}
	return out
}

// batchMsg is message i of the batch cases: every third without headers,
// every fifth with an empty body.
func batchMsg(i int) *broker.Message {
	m := &broker.Message{Body: []byte(strconv.Itoa(i))}
	if i%3 != 0 {
		m.Header = broker.Header{"x-i": strconv.Itoa(i), "x-two": "2"}
	}
	if i%5 == 0 {
		m.Body = nil
	}
	return m
}

// scriptedHandler serves subj on srv as a stream handler written from
// docs/PROTOCOL.md that posts the frames script returns (given the caller's
// first credit) to the caller, then answers with a count of n messages.
func (s *suite) scriptedHandler(t *testing.T, srv broker.Broker, subj string, n int, script func(credit int) []*broker.Message) {
	s.serve(t, srv, subj, func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
		sm, ok := broker.StreamerFromContext(ctx)
		if !ok {
			return nil, fmt.Errorf("no streamer in ctx")
		}
		id, addr := req.Header.Get(stream.HeaderStream), req.Header.Get(stream.HeaderInbox)
		if req.Header.Get(stream.HeaderBatch) != "1" {
			return nil, fmt.Errorf("the caller did not declare batch frames")
		}
		credit, _ := strconv.Atoi(req.Header.Get(stream.HeaderCredit))
		in, err := sm.OpenInbox(func(*broker.Message) {})
		if err != nil {
			return nil, err
		}
		defer in.Close()
		frames := append([]*broker.Message{{Header: broker.Header{stream.HeaderFrame: stream.FrameCredit,
			stream.HeaderCredit: "1000", stream.HeaderSeq: "0", stream.HeaderInbox: in.Addr(), stream.HeaderBatch: "1"}}},
			script(credit)...)
		for _, f := range frames {
			f.Header[stream.HeaderStream] = id
			if err := sm.Post(ctx, addr, f); err != nil {
				return nil, err
			}
		}
		return &broker.Message{Header: broker.Header{stream.HeaderSeq: strconv.Itoa(n)}}, nil
	})
}

func batchFrame(first int, msgs ...*broker.Message) *broker.Message {
	return &broker.Message{Header: broker.Header{stream.HeaderFrame: stream.FrameBatch, stream.HeaderSeq: strconv.Itoa(first)},
		Body: encodeBatchBody(msgs...)}
}

func batchRange(from, to int) []*broker.Message {
	var out []*broker.Message
	for i := from; i <= to; i++ {
		out = append(out, batchMsg(i))
	}
	return out
}

// recvAll reads st to its end and returns the messages and the error
// that ended it (nil for io.EOF).
func recvAll(t *testing.T, st *stream.Stream) ([]*broker.Message, error) {
	var got []*broker.Message
	for len(got) < 1000 {
		m, err := st.Recv()
		if err == io.EOF {
			return got, nil
		}
		if err != nil {
			return got, err
		}
		got = append(got, m)
	}
	t.Fatal("the stream did not end")
	return nil, nil
}

// testStreamBatchOrder: messages in batch frames and data frames arrive in
// order across the frames, each with its own headers (or none) and body.
func (s *suite) testStreamBatchOrder(t *testing.T) {
	srv, cli, subj := s.streamPair(t)
	s.scriptedHandler(t, srv, subj, 10, func(int) []*broker.Message {
		d := batchMsg(4)
		d.Header[stream.HeaderFrame], d.Header[stream.HeaderSeq] = stream.FrameData, "4"
		return []*broker.Message{batchFrame(1, batchRange(1, 3)...), d, batchFrame(5, batchRange(5, 9)...), batchFrame(10, batchMsg(10))}
	})
	st := s.openStream(t, s.ctx(t), cli, nil, subj, stream.Config{Heartbeat: streamHeartbeat}, nil)
	got, err := recvAll(t, st)
	require.NoError(t, err)
	require.Len(t, got, 10)
	for i, m := range got {
		want := batchMsg(i + 1)
		assert.Equal(t, string(want.Body), string(m.Body), "message %d", i+1)
		assert.Equal(t, len(want.Header), len(m.Header), "message %d: %v", i+1, m.Header)
		for k, v := range want.Header {
			assert.Equal(t, v, m.Header.Get(k), "message %d", i+1)
		}
	}
}

// testStreamBatchRule: a batch frame that breaks a rule ends the caller's
// stream with want, after none or some of the messages before it.
func (s *suite) testStreamBatchRule(want error, before int, script func(credit int) []*broker.Message) func(t *testing.T) {
	return func(t *testing.T) {
		srv, cli, subj := s.streamPair(t)
		s.scriptedHandler(t, srv, subj, 100, script)
		st := s.openStream(t, s.ctx(t), cli, nil, subj, stream.Config{Heartbeat: streamHeartbeat, Window: 8}, nil)
		got, err := recvAll(t, st)
		require.ErrorIs(t, err, want)
		// A failed stream drops what it had not handed out yet.
		require.LessOrEqual(t, len(got), before, "messages before the broken batch")
		for i, m := range got {
			require.Equal(t, string(batchMsg(i+1).Body), string(m.Body))
		}
	}
}

// testStreamBatchUndeclared: a caller that does not declare batch frames
// (a client written before them) gets each message as a data frame, even
// from a handler sending as fast as it can.
func (s *suite) testStreamBatchUndeclared(t *testing.T) {
	srv, cli, subj := s.streamPair(t)
	const n = 2000
	s.streamServer(t, srv, subj, 0, nil, func(_ context.Context, st *stream.Stream, _ *broker.Message) broker.Header {
		for i := 1; i <= n; i++ {
			if st.Send(dataMsg(i)) != nil {
				break
			}
		}
		return nil
	})
	var mu sync.Mutex
	kinds := map[string]int{}
	var seqs []int
	done := make(chan struct{})
	in, err := cli.(broker.Streamer).OpenInbox(func(m *broker.Message) {
		mu.Lock()
		defer mu.Unlock()
		k := m.Header.Get(stream.HeaderFrame)
		kinds[k]++
		if k == stream.FrameData {
			seq, _ := strconv.Atoi(m.Header.Get(stream.HeaderSeq))
			seqs = append(seqs, seq)
			if assert.Equal(t, strconv.Itoa(seq), string(m.Body)) && seq == n {
				close(done)
			}
		}
	})
	require.NoError(t, err)
	defer in.Close()
	req := &broker.Message{Subject: subj, Header: broker.Header{stream.HeaderStream: "undeclared-" + subj,
		stream.HeaderInbox: in.Addr(), stream.HeaderHeartbeat: "5000", stream.HeaderCredit: "1000000"}}
	_, err = cli.Request(s.ctx(t), req)
	require.NoError(t, err)
	select {
	case <-done:
	case <-time.After(s.f.Timeout):
	}
	mu.Lock()
	defer mu.Unlock()
	assert.Zero(t, kinds[stream.FrameBatch], "batch frames to a caller that did not declare them")
	require.Len(t, seqs, n, "data frames")
	for i, seq := range seqs {
		require.Equal(t, i+1, seq)
	}
}

// testStreamPingsDuringTraffic: a handler sending as fast as it can for
// two seconds (200,000 messages at most) pings meanwhile (every quarter of the heartbeat interval);
// the count on its pings never runs ahead of the data frames it posted,
// so the caller reads every message and the end.
func (s *suite) testStreamPingsDuringTraffic(t *testing.T) {
	srv, cli, subj := s.streamPair(t)
	s.streamServer(t, srv, subj, 0, nil, func(_ context.Context, st *stream.Stream, _ *broker.Message) broker.Header {
		deadline := time.Now().Add(2 * time.Second)
		i := 1
		for ; i <= 200_000 && time.Now().Before(deadline); i++ {
			if st.Send(dataMsg(i)) != nil {
				break
			}
		}
		return broker.Header{"x-sent": strconv.Itoa(i - 1)}
	})
	st := s.openStream(t, s.ctx(t), cli, nil, subj, stream.Config{Heartbeat: streamHeartbeat}, nil)
	got := 0
	for {
		m, err := st.Recv()
		if err == io.EOF {
			break
		}
		require.NoError(t, err, "after %d messages", got)
		got++
		require.Equal(t, strconv.Itoa(got), string(m.Body))
	}
	require.NotNil(t, st.End())
	assert.Equal(t, st.End().Header.Get("x-sent"), strconv.Itoa(got))
	t.Logf("%d messages in 2s", got)
}
