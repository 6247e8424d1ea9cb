package brokertest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/stream"
)

// streamHeartbeat is the heartbeat interval of the stream cases: short,
// so the liveness cases run quickly, long enough for a loaded machine.
const streamHeartbeat = time.Second

// RunStreams runs the stream cases alone (they are part of Run too): for
// brokers whose full suite cannot run on a shared server. A broker that is
// no broker.Streamer skips them.
func RunStreams(t *testing.T, f Features, newBroker NewBroker) {
	if f.Timeout == 0 {
		f.Timeout = 10 * time.Second
	}
	s := &suite{f: f, newBroker: newBroker}
	s.testStreams(t)
}

// testStreams checks the stream engine (broker/stream) on the broker's
// inboxes, with the server and the caller on separate connections.
func (s *suite) testStreams(t *testing.T) {
	if _, ok := s.open(t).(broker.Streamer); !ok {
		t.Skip("the broker has no inboxes (broker.Streamer)")
	}
	for _, tc := range []struct {
		name string
		fn   func(t *testing.T)
	}{
		{"Order", s.testStreamOrder},
		{"ClientOrder", s.testStreamClientOrder},
		{"Bidi", s.testStreamBidi},
		{"EndTrailers", s.testStreamEnd},
		{"GapDataLoss", s.testStreamLoss(false, 5)},
		{"LastLostDataLoss", s.testStreamLoss(false, 20)},
		{"DuplicateDataLoss", s.testStreamLoss(true, 5)},
		{"BatchOrder", s.testStreamBatchOrder},
		{"BatchGapDataLoss", s.testStreamBatchRule(stream.ErrDataLoss, 3, func(int) []*broker.Message {
			return []*broker.Message{batchFrame(1, batchRange(1, 3)...), batchFrame(5, batchRange(5, 6)...)}
		})},
		{"BatchDuplicateDataLoss", s.testStreamBatchRule(stream.ErrDataLoss, 3, func(int) []*broker.Message {
			return []*broker.Message{batchFrame(1, batchRange(1, 3)...), batchFrame(3, batchRange(3, 4)...)}
		})},
		{"BatchBeyondCredit", s.testStreamBatchRule(stream.ErrProtocol, 0, func(credit int) []*broker.Message {
			// The first frame: the caller cannot have granted more yet.
			return []*broker.Message{batchFrame(1, batchRange(1, credit+1)...)}
		})},
		{"BatchMalformed", s.testStreamBatchRule(stream.ErrProtocol, 2, func(int) []*broker.Message {
			f := batchFrame(3, batchRange(3, 4)...)
			f.Body = f.Body[:len(f.Body)-1]
			return []*broker.Message{batchFrame(1, batchRange(1, 2)...), f}
		})},
		{"BatchUndeclaredGetsData", s.testStreamBatchUndeclared},
		{"PingsDuringTraffic", s.testStreamPingsDuringTraffic},
		{"FlowControl", s.testStreamFlow},
		{"CallerCancels", s.testStreamCallerCancels},
		{"HandlerCancels", s.testStreamHandlerCancels},
		{"DeadlineBoundsStream", s.testStreamDeadline},
		{"HandlerGone", s.testStreamGone(true)},
		{"CallerGone", s.testStreamGone(false)},
	} {
		t.Run(tc.name, tc.fn)
	}
}

// faulty wraps a Streamer and can drop, duplicate or cut the frames posted
// through it.
type faulty struct {
	broker.Streamer
	mu     sync.Mutex
	t      testing.TB
	data   int            // data messages posted so far
	drop   map[int]bool   // numbers of data messages to drop (with their batch frame)
	dup    map[int]bool   // numbers of data messages to post twice (with their batch frame)
	cut    atomic.Bool    // drop everything
	posted map[string]int // frames posted, by kind
}

func (f *faulty) Post(ctx context.Context, addr string, m *broker.Message) error {
	if f.cut.Load() {
		return nil
	}
	kind := m.Header.Get(stream.HeaderFrame)
	f.mu.Lock()
	if f.posted == nil {
		f.posted = map[string]int{}
	}
	f.posted[kind]++
	drop, dup := false, false
	if kind == stream.FrameData || kind == stream.FrameBatch {
		// A batch frame is dropped or repeated whole when one of its
		// messages is to be.
		k := 1
		if kind == stream.FrameBatch {
			k = len(decodeBatchBody(f.t, m.Body))
		}
		for i := f.data + 1; i <= f.data+k; i++ {
			drop, dup = drop || f.drop[i], dup || f.dup[i]
		}
		f.data += k
	}
	f.mu.Unlock()
	if drop {
		return nil
	}
	if dup {
		cp := *m
		cp.Header = m.Header.Clone()
		if err := f.Streamer.Post(ctx, addr, &cp); err != nil {
			return err
		}
	}
	return f.Streamer.Post(ctx, addr, m)
}

// streamServer serves subj on b with fn as the handler's side of each
// stream; fn's header goes on the reply with the stream's count. wrap, if
// not nil, wraps the handler's Streamer.
func (s *suite) streamServer(t *testing.T, b broker.Broker, subj string, window int, wrap func(broker.Streamer) broker.Streamer,
	fn func(ctx context.Context, st *stream.Stream, req *broker.Message) broker.Header) {
	t.Helper()
	s.serve(t, b, subj, func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
		if wrap != nil {
			sm, ok := broker.StreamerFromContext(ctx)
			if !ok {
				return &broker.Message{Header: broker.Header{"x-error": "no streamer in ctx"}}, nil
			}
			ctx = broker.ContextWithStreamer(ctx, wrap(sm))
		}
		st, err := stream.Accept(ctx, req, window)
		if err != nil {
			return &broker.Message{Header: broker.Header{"x-error": err.Error()}}, nil
		}
		h := fn(st.Context(), st, req)
		for k, v := range st.Finish() {
			if h == nil {
				h = broker.Header{}
			}
			h[k] = v
		}
		return &broker.Message{Header: h}, nil
	})
}

// openStream opens the caller's side of a stream to subj on b (wrapped by
// w when not nil) and sends the opening request with body.
func (s *suite) openStream(t *testing.T, ctx context.Context, b broker.Broker, w broker.Streamer, subj string, cfg stream.Config, body []byte) *stream.Stream {
	t.Helper()
	sm := w
	if sm == nil {
		sm = b.(broker.Streamer)
	}
	st, err := stream.Open(ctx, sm, cfg)
	require.NoError(t, err)
	req := &broker.Message{Subject: subj, Body: body}
	st.Prepare(req)
	done := make(chan struct{})
	go func() {
		defer close(done)
		rep, err := b.Request(st.Context(), req)
		st.Finished(rep, err)
	}()
	t.Cleanup(func() {
		st.Close()
		<-done
	})
	return st
}

func (s *suite) streamPair(t *testing.T) (srv, cli broker.Broker, subj string) {
	srv, cli = s.open(t), s.open(t)
	warmInboxes(t, srv)
	warmInboxes(t, cli)
	return srv, cli, subject(t)
}

// warmInboxes opens and closes an inbox on b, so that the time a broker
// takes to set its inboxes up (RocketMQ starts a consumer) is not counted
// in the timings of a case. A stream opened first pays it, once per
// connection.
func warmInboxes(t testing.TB, b broker.Broker) {
	t.Helper()
	in, err := b.(broker.Streamer).OpenInbox(func(*broker.Message) {})
	require.NoError(t, err)
	require.NoError(t, in.Close())
}

func dataMsg(i int) *broker.Message {
	return &broker.Message{Header: broker.Header{"x-i": strconv.Itoa(i)}, Body: []byte(strconv.Itoa(i))}
}

// testStreamOrder: the handler's messages arrive in order, with their
// headers, then the end.
func (s *suite) testStreamOrder(t *testing.T) {
	srv, cli, subj := s.streamPair(t)
	const n = 1000
	s.streamServer(t, srv, subj, 0, nil, func(_ context.Context, st *stream.Stream, req *broker.Message) broker.Header {
		count, _ := strconv.Atoi(string(req.Body))
		for i := 1; i <= count; i++ {
			if err := st.Send(dataMsg(i)); err != nil {
				return broker.Header{"x-error": err.Error()}
			}
		}
		return nil
	})
	st := s.openStream(t, s.ctx(t), cli, nil, subj, stream.Config{Window: 16}, []byte(strconv.Itoa(n)))
	for i := 1; i <= n; i++ {
		m, err := st.Recv()
		require.NoError(t, err, "message %d", i)
		require.Equal(t, strconv.Itoa(i), string(m.Body))
		require.Equal(t, strconv.Itoa(i), m.Header.Get("x-i"))
		require.Empty(t, m.Header.Get(stream.HeaderSeq), "frame headers are the engine's")
	}
	_, err := st.Recv()
	require.ErrorIs(t, err, io.EOF)
	require.Empty(t, st.End().Header.Get("x-error"))
}

// testStreamClientOrder: the caller's messages reach the handler in order,
// and CloseSend ends them.
func (s *suite) testStreamClientOrder(t *testing.T) {
	srv, cli, subj := s.streamPair(t)
	s.streamServer(t, srv, subj, 8, nil, func(_ context.Context, st *stream.Stream, _ *broker.Message) broker.Header {
		for i := 1; ; i++ {
			m, err := st.Recv()
			if err == io.EOF {
				return broker.Header{"x-count": strconv.Itoa(i - 1)}
			}
			if err != nil {
				return broker.Header{"x-error": err.Error()}
			}
			if string(m.Body) != strconv.Itoa(i) {
				return broker.Header{"x-error": fmt.Sprintf("message %d is %q", i, m.Body)}
			}
		}
	})
	st := s.openStream(t, s.ctx(t), cli, nil, subj, stream.Config{}, nil)
	const n = 500
	for i := 1; i <= n; i++ {
		require.NoError(t, st.Send(dataMsg(i)))
	}
	require.NoError(t, st.CloseSend())
	_, err := st.Recv()
	require.ErrorIs(t, err, io.EOF)
	assert.Empty(t, st.End().Header.Get("x-error"))
	assert.Equal(t, strconv.Itoa(n), st.End().Header.Get("x-count"))
}

// testStreamBidi: the handler echoes each message while the caller sends,
// with windows small enough that both sides wait for credit.
func (s *suite) testStreamBidi(t *testing.T) {
	srv, cli, subj := s.streamPair(t)
	s.streamServer(t, srv, subj, 4, nil, func(_ context.Context, st *stream.Stream, _ *broker.Message) broker.Header {
		for {
			m, err := st.Recv()
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return broker.Header{"x-error": err.Error()}
			}
			if err := st.Send(&broker.Message{Body: append([]byte("echo "), m.Body...)}); err != nil {
				return broker.Header{"x-error": err.Error()}
			}
		}
	})
	st := s.openStream(t, s.ctx(t), cli, nil, subj, stream.Config{Window: 4}, nil)
	const n = 300
	errc := make(chan error, 1)
	go func() {
		for i := 1; i <= n; i++ {
			if err := st.Send(dataMsg(i)); err != nil {
				errc <- err
				return
			}
		}
		errc <- st.CloseSend()
	}()
	for i := 1; i <= n; i++ {
		m, err := st.Recv()
		require.NoError(t, err)
		require.Equal(t, "echo "+strconv.Itoa(i), string(m.Body))
	}
	require.NoError(t, <-errc)
	_, err := st.Recv()
	require.ErrorIs(t, err, io.EOF)
	assert.Empty(t, st.End().Header.Get("x-error"))
}

// testStreamEnd: the end carries the handler's status headers and
// trailers, after every message; an error ends a stream midway with its
// status.
func (s *suite) testStreamEnd(t *testing.T) {
	srv, cli, subj := s.streamPair(t)
	s.streamServer(t, srv, subj, 0, nil, func(_ context.Context, st *stream.Stream, req *broker.Message) broker.Header {
		for i := 1; i <= 3; i++ {
			_ = st.Send(dataMsg(i))
		}
		if string(req.Body) == "fail" {
			return broker.Header{broker.HeaderStatus: "13", broker.HeaderStatusMessage: "broken midway"}
		}
		return broker.Header{"x-trailer": "t1", broker.HeaderStatus: "0"}
	})
	for _, body := range []string{"ok", "fail"} {
		st := s.openStream(t, s.ctx(t), cli, nil, subj, stream.Config{}, []byte(body))
		for i := 1; i <= 3; i++ {
			m, err := st.Recv()
			require.NoError(t, err)
			require.Equal(t, strconv.Itoa(i), string(m.Body))
		}
		_, err := st.Recv()
		require.ErrorIs(t, err, io.EOF)
		end := st.End()
		if body == "fail" {
			assert.Equal(t, "13", end.Header.Get(broker.HeaderStatus))
			assert.Equal(t, "broken midway", end.Header.Get(broker.HeaderStatusMessage))
		} else {
			assert.Equal(t, "0", end.Header.Get(broker.HeaderStatus))
			assert.Equal(t, "t1", end.Header.Get("x-trailer"))
		}
	}
}

// testStreamLoss: a data frame of the handler's lost (number n of 20) or
// posted twice ends the caller's stream with ErrDataLoss, never a silent
// gap or repeat; a lost last frame too, by the count on the end.
func (s *suite) testStreamLoss(dup bool, n int) func(t *testing.T) {
	return func(t *testing.T) {
		srv, cli, subj := s.streamPair(t)
		f := &faulty{t: t, drop: map[int]bool{}, dup: map[int]bool{}}
		if dup {
			f.dup[n] = true
		} else {
			f.drop[n] = true
		}
		wrap := func(sm broker.Streamer) broker.Streamer { f.Streamer = sm; return f }
		s.streamServer(t, srv, subj, 0, wrap, func(_ context.Context, st *stream.Stream, _ *broker.Message) broker.Header {
			for i := 1; i <= 20; i++ {
				if st.Send(dataMsg(i)) != nil {
					break
				}
				if dup && i == n {
					// Let message n go out before the next: a repeat in
					// the last frame could come after the end, when
					// nothing is read any more (and so nothing repeated).
					time.Sleep(100 * time.Millisecond)
				}
			}
			return nil
		})
		st := s.openStream(t, s.ctx(t), cli, nil, subj, stream.Config{Heartbeat: streamHeartbeat}, nil)
		var err error
		got := 0
		for got < 25 {
			var m *broker.Message
			if m, err = st.Recv(); err != nil {
				break
			}
			got++
			require.Equal(t, strconv.Itoa(got), string(m.Body), "a message out of order")
		}
		require.ErrorIs(t, err, stream.ErrDataLoss, "after %d messages", got)
		if dup {
			assert.LessOrEqual(t, got, 20)
		} else {
			assert.Less(t, got, n, "messages past the lost one")
		}
	}
}

// testStreamFlow: a caller reading one message a second while the handler
// would send 100,000 makes the handler wait, and the heap stays bounded.
func (s *suite) testStreamFlow(t *testing.T) {
	srv, cli, subj := s.streamPair(t)
	const window = 16
	var sent atomic.Int64
	body := make([]byte, 1024)
	s.streamServer(t, srv, subj, 0, nil, func(_ context.Context, st *stream.Stream, _ *broker.Message) broker.Header {
		for i := 0; i < 100_000; i++ {
			if st.Send(&broker.Message{Body: body}) != nil {
				break
			}
			sent.Add(1)
		}
		return nil
	})
	heap0 := heapInUse()
	st := s.openStream(t, s.ctx(t), cli, nil, subj, stream.Config{Window: window}, nil)
	var peak uint64
	const reads = 4
	for i := 0; i < reads; i++ {
		_, err := st.Recv()
		require.NoError(t, err)
		time.Sleep(time.Second)
		if h := heapInUse(); h > peak {
			peak = h
		}
		// The handler may be ahead of the reader by its credit: the window
		// granted at the start plus what the reader's grants added.
		require.LessOrEqual(t, sent.Load(), int64(2*window+i+1), "the handler did not wait for credit")
	}
	growth := int64(peak) - int64(heap0)
	t.Logf("handler sent %d of 100000 while the caller read %d; heap growth %d KiB", sent.Load(), reads, growth>>10)
	assert.Less(t, growth, int64(64<<20), "heap growth")
}

func heapInUse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

// testStreamCallerCancels: the caller closing its stream stops the
// handler within 1s.
func (s *suite) testStreamCallerCancels(t *testing.T) {
	srv, cli, subj := s.streamPair(t)
	stopped := make(chan error, 1)
	s.streamServer(t, srv, subj, 0, nil, func(ctx context.Context, st *stream.Stream, _ *broker.Message) broker.Header {
		for st.Send(&broker.Message{Body: []byte("x")}) == nil {
			time.Sleep(5 * time.Millisecond)
		}
		<-ctx.Done()
		stopped <- st.Err()
		return nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st := s.openStream(t, ctx, cli, nil, subj, stream.Config{}, nil)
	_, err := st.Recv()
	require.NoError(t, err)
	start := time.Now()
	cancel()
	select {
	case err := <-stopped:
		t.Logf("handler stopped %v after the cancel: %v", time.Since(start), err)
		assert.Error(t, err)
	case <-time.After(time.Second):
		t.Fatal("the handler did not stop within 1s of the caller's cancel")
	}
	_, err = st.Recv()
	assert.ErrorIs(t, err, context.Canceled)
}

// testStreamHandlerCancels: the handler abandoning a stream (Close, while
// it goes on running) stops the caller's Recv within 1s.
func (s *suite) testStreamHandlerCancels(t *testing.T) {
	srv, cli, subj := s.streamPair(t)
	release := make(chan struct{})
	defer close(release)
	var closedAt atomic.Int64
	read := make(chan struct{})
	s.streamServer(t, srv, subj, 0, nil, func(ctx context.Context, st *stream.Stream, _ *broker.Message) broker.Header {
		_ = st.Send(&broker.Message{Body: []byte("x")})
		select { // the caller is reading (a cancel would overtake the message)
		case <-read:
		case <-time.After(s.f.Timeout):
		}
		closedAt.Store(time.Now().UnixNano())
		st.Close()
		select {
		case <-release:
		case <-time.After(s.f.Timeout):
		}
		return nil
	})
	st := s.openStream(t, s.ctx(t), cli, nil, subj, stream.Config{}, nil)
	_, err := st.Recv()
	require.NoError(t, err)
	close(read)
	_, err = st.Recv()
	elapsed := time.Since(time.Unix(0, closedAt.Load()))
	require.ErrorIs(t, err, stream.ErrCanceled)
	t.Logf("caller stopped %v after the handler's cancel", elapsed)
	assert.Less(t, elapsed, time.Second)
}

// testStreamDeadline: the caller's deadline bounds the whole stream, on
// both sides.
func (s *suite) testStreamDeadline(t *testing.T) {
	srv, cli, subj := s.streamPair(t)
	handlerErr := make(chan error, 1)
	s.streamServer(t, srv, subj, 0, nil, func(ctx context.Context, st *stream.Stream, _ *broker.Message) broker.Header {
		for st.Send(&broker.Message{Body: []byte("tick")}) == nil {
			time.Sleep(50 * time.Millisecond)
		}
		<-ctx.Done()
		handlerErr <- ctx.Err()
		return broker.Header{broker.HeaderStatus: "4"} // DeadlineExceeded
	})
	const d = 1500 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	start := time.Now()
	st := s.openStream(t, ctx, cli, nil, subj, stream.Config{}, nil)
	var err error
	for i := 0; i < 1000; i++ {
		if _, err = st.Recv(); err != nil {
			break
		}
	}
	elapsed := time.Since(start)
	if err == io.EOF {
		// The handler's end, sent as its ctx reached the same deadline,
		// came in just before the caller's own: it says so.
		require.Equal(t, "4", st.End().Header.Get(broker.HeaderStatus))
	} else {
		require.ErrorIs(t, err, context.DeadlineExceeded)
	}
	assert.Less(t, elapsed, d+time.Second)
	select {
	case err := <-handlerErr:
		assert.Error(t, err)
	case <-time.After(2 * time.Second):
		t.Fatal("the handler ran on past the stream's deadline")
	}
}

// testStreamGone: a side that goes silent (its frames and reply all lost,
// as when its process dies) is noticed by the other within the heartbeat
// interval: ErrPeerGone.
func (s *suite) testStreamGone(handlerGone bool) func(t *testing.T) {
	return func(t *testing.T) {
		srv, cli, subj := s.streamPair(t)
		hf := &faulty{t: t}
		cf := &faulty{t: t, Streamer: cli.(broker.Streamer)}
		received := make(chan struct{})
		handlerErr := make(chan error, 1)
		release := make(chan struct{})
		defer close(release)
		s.streamServer(t, srv, subj, 0, func(sm broker.Streamer) broker.Streamer { hf.Streamer = sm; return hf },
			func(ctx context.Context, st *stream.Stream, _ *broker.Message) broker.Header {
				_ = st.Send(&broker.Message{Body: []byte("x")})
				if handlerGone {
					select { // Send queued it: cut once it arrived
					case <-received:
					case <-release:
					}
					hf.cut.Store(true)
					select { // a hung process: no frames, no reply
					case <-release:
					case <-time.After(s.f.Timeout):
					}
					return nil
				}
				_, err := st.Recv()
				handlerErr <- err
				return nil
			})
		st := s.openStream(t, s.ctx(t), cli, cf, subj, stream.Config{Heartbeat: streamHeartbeat}, nil)
		_, err := st.Recv()
		require.NoError(t, err)
		close(received)
		start := time.Now()
		if handlerGone {
			_, err = st.Recv()
		} else {
			cf.cut.Store(true)
			select {
			case err = <-handlerErr:
			case <-time.After(s.f.Timeout):
				t.Fatal("the handler never noticed")
			}
		}
		elapsed := time.Since(start)
		require.True(t, errors.Is(err, stream.ErrPeerGone), "got %v", err)
		t.Logf("noticed after %v (heartbeat %v)", elapsed, streamHeartbeat)
		// Within the interval; the margin is for a loaded machine.
		assert.Less(t, elapsed, streamHeartbeat+500*time.Millisecond)
	}
}
