package rpctest

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/stream"
	"github.com/mqrpc/mqrpc/rpc"
)

// RunStreams runs the stream cases alone (they are part of Run too). A
// broker that is no broker.Streamer skips them.
func RunStreams(t *testing.T, f Features, newBroker NewBroker) {
	s := &suite{f: f, new: newBroker}
	s.testStreams(t)
}

func (s *suite) testStreams(t *testing.T) {
	if _, ok := s.open(t).(broker.Streamer); !ok {
		t.Skip("the broker has no inboxes (broker.Streamer)")
	}
	t.Run("ServerStream", s.testServerStream)
	t.Run("ClientStream", s.testClientStream)
	t.Run("Bidi", s.testBidi)
	t.Run("MidStreamError", s.testMidStreamError)
	t.Run("DataLoss", s.testStreamDataLoss)
	t.Run("CallerCancels", s.testStreamCancel)
	t.Run("Deadline", s.testStreamDeadline)
	t.Run("ServerGoneUnavailable", s.testStreamServerGone)
	t.Run("NotAStream", s.testNotAStream)
}

type count struct {
	N int `json:"n"`
}

// streamPair serves srv on a fresh service on one connection and returns
// a client on another.
func (s *suite) streamPair(t *testing.T, srv *rpc.Server, copts ...rpc.ClientOption) (*rpc.Client, string) {
	svc := service(t)
	sb, cb := s.open(t), s.open(t)
	// Set the inboxes up first (RocketMQ starts a consumer), so that it
	// is not counted in the timings of a case.
	for _, b := range []broker.Broker{sb, cb} {
		in, err := b.(broker.Streamer).OpenInbox(func(*broker.Message) {})
		require.NoError(t, err)
		require.NoError(t, in.Close())
	}
	s.serve(t, sb, svc, srv)
	return rpc.NewClient(cb, copts...), svc
}

func (s *suite) streamCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// testServerStream: the replies arrive in order, then the end with the
// trailers; the middleware of both sides sees the start and the end.
func (s *suite) testServerStream(t *testing.T) {
	var events []string
	var mu sync.Mutex
	note := func(e string) { mu.Lock(); events = append(events, e); mu.Unlock() }
	mw := func(side string) rpc.Middleware {
		return func(next broker.Handler) broker.Handler {
			return broker.HandlerFunc(func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
				note(side + " start " + req.Header.Get(broker.HeaderMethod))
				rep, err := next.ServeMessage(ctx, req)
				note(side + " end " + rpc.CodeOf(err).String())
				return rep, err
			})
		}
	}
	srv := rpc.NewServer(rpc.WithServerMiddleware(mw("server")))
	require.NoError(t, rpc.HandleServerStream(srv, "Count", func(ctx context.Context, in *count, send func(*count) error) error {
		for i := 1; i <= in.N; i++ {
			if err := send(&count{N: i}); err != nil {
				return err
			}
		}
		rpc.SetReplyHeader(ctx, "x-total", strconv.Itoa(in.N))
		return nil
	}))
	c, svc := s.streamPair(t, srv, rpc.WithClientMiddleware(mw("client")), rpc.WithStreamWindow(8))
	var trailer broker.Header
	got := 0
	for res, err := range rpc.InvokeServerStream[count, count](s.streamCtx(t), c, svc, "Count", &count{N: 200}, rpc.WithReplyHeader(&trailer)) {
		require.NoError(t, err)
		got++
		require.Equal(t, got, res.N)
	}
	assert.Equal(t, 200, got)
	assert.Equal(t, "200", trailer.Get("x-total"))
	assert.Empty(t, trailer.Get(stream.HeaderSeq))
	mu.Lock()
	defer mu.Unlock()
	assert.Equal(t, []string{"client start Count", "server start Count", "server end ok", "client end ok"}, events)
}

// testClientStream: the server reads every message the client sent, in
// order, and its one reply ends the stream.
func (s *suite) testClientStream(t *testing.T) {
	srv := rpc.NewServer(rpc.WithStreamWindow(4))
	require.NoError(t, rpc.HandleClientStream(srv, "Sum", func(ctx context.Context, st *rpc.ServerStream[count, count]) (*count, error) {
		sum, n := 0, 0
		for {
			in, err := st.Recv()
			if err == io.EOF {
				rpc.SetReplyHeader(ctx, "x-count", strconv.Itoa(n))
				return &count{N: sum}, nil
			}
			if err != nil {
				return nil, err
			}
			n++
			if in.N != n {
				return nil, rpc.Errorf(rpc.Internal, "message %d is %d", n, in.N)
			}
			sum += in.N
		}
	}))
	c, svc := s.streamPair(t, srv)
	st, err := rpc.OpenStream[count, count](s.streamCtx(t), c, svc, "Sum")
	require.NoError(t, err)
	defer st.Close()
	for i := 1; i <= 100; i++ {
		require.NoError(t, st.Send(&count{N: i}))
	}
	res, err := st.CloseAndRecv()
	require.NoError(t, err)
	assert.Equal(t, 5050, res.N)
	assert.Equal(t, "100", st.Trailer().Get("x-count"))
}

// testBidi: the server answers each message as it comes.
func (s *suite) testBidi(t *testing.T) {
	srv := rpc.NewServer(rpc.WithStreamWindow(2))
	require.NoError(t, rpc.HandleBidiStream(srv, "Double", func(_ context.Context, st *rpc.ServerStream[count, count]) error {
		for {
			in, err := st.Recv()
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return err
			}
			if err := st.Send(&count{N: 2 * in.N}); err != nil {
				return err
			}
		}
	}))
	c, svc := s.streamPair(t, srv, rpc.WithStreamWindow(2))
	st, err := rpc.OpenStream[count, count](s.streamCtx(t), c, svc, "Double")
	require.NoError(t, err)
	defer st.Close()
	for i := 1; i <= 50; i++ {
		require.NoError(t, st.Send(&count{N: i}))
		res, err := st.Recv()
		require.NoError(t, err)
		require.Equal(t, 2*i, res.N)
	}
	require.NoError(t, st.CloseSend())
	_, err = st.Recv()
	require.ErrorIs(t, err, io.EOF)
}

// testMidStreamError: an error ends the stream with its code, after the
// messages sent before it, and with the trailers set.
func (s *suite) testMidStreamError(t *testing.T) {
	srv := rpc.NewServer()
	require.NoError(t, rpc.HandleServerStream(srv, "Count", func(ctx context.Context, in *count, send func(*count) error) error {
		for i := 1; i <= in.N; i++ {
			_ = send(&count{N: i})
		}
		rpc.SetReplyHeader(ctx, "x-sent", strconv.Itoa(in.N))
		return rpc.Errorf(rpc.Aborted, "stopped after %d", in.N)
	}))
	c, svc := s.streamPair(t, srv)
	var trailer broker.Header
	got := 0
	var last error
	for res, err := range rpc.InvokeServerStream[count, count](s.streamCtx(t), c, svc, "Count", &count{N: 3}, rpc.WithReplyHeader(&trailer)) {
		if err != nil {
			last = err
			break
		}
		got++
		require.Equal(t, got, res.N)
	}
	assert.Equal(t, 3, got)
	assert.Equal(t, rpc.Aborted, rpc.CodeOf(last), "%v", last)
	assert.Contains(t, last.Error(), "stopped after 3")
	assert.Equal(t, "3", trailer.Get("x-sent"))
}

// batchCount counts the messages of a batch frame's body
// (docs/PROTOCOL.md, "Batch frames").
func batchCount(b []byte) int64 {
	skip := func() bool { // a uvarint length and as many bytes
		v, n := binary.Uvarint(b)
		if n <= 0 || v > uint64(len(b)-n) {
			return false
		}
		b = b[n+int(v):]
		return true
	}
	var count int64
	for len(b) > 0 {
		nh, n := binary.Uvarint(b)
		if n <= 0 {
			return count
		}
		b = b[n:]
		for i := uint64(0); i < 2*nh+1; i++ {
			if !skip() {
				return count
			}
		}
		count++
	}
	return count
}

// dropping is a Streamer that drops the data message n (the frame that carries it), or every frame
// once cut.
type dropping struct {
	broker.Streamer
	n    int
	data atomic.Int64
	cut  atomic.Bool
}

func (d *dropping) Post(ctx context.Context, addr string, m *broker.Message) error {
	if d.cut.Load() {
		return nil
	}
	k := int64(0)
	switch m.Header.Get(stream.HeaderFrame) {
	case stream.FrameData:
		k = 1
	case stream.FrameBatch:
		k = batchCount(m.Body)
	}
	if last := d.data.Add(k); k > 0 && last >= int64(d.n) && last-k < int64(d.n) {
		return nil // a batch frame goes with its message
	}
	return d.Streamer.Post(ctx, addr, m)
}

// wrapStreamer is server middleware that makes the handler's stream post
// through d.
func wrapStreamer(d *dropping) rpc.Middleware {
	return func(next broker.Handler) broker.Handler {
		return broker.HandlerFunc(func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
			if sm, ok := broker.StreamerFromContext(ctx); ok {
				d.Streamer = sm
				ctx = broker.ContextWithStreamer(ctx, d)
			}
			return next.ServeMessage(ctx, req)
		})
	}
}

// testStreamDataLoss: a lost message ends the stream with DataLoss.
func (s *suite) testStreamDataLoss(t *testing.T) {
	d := &dropping{n: 3}
	srv := rpc.NewServer(rpc.WithServerMiddleware(wrapStreamer(d)))
	require.NoError(t, rpc.HandleServerStream(srv, "Count", func(_ context.Context, in *count, send func(*count) error) error {
		for i := 1; i <= in.N; i++ {
			if err := send(&count{N: i}); err != nil {
				return err
			}
		}
		return nil
	}))
	c, svc := s.streamPair(t, srv)
	got := 0
	var last error
	for res, err := range rpc.InvokeServerStream[count, count](s.streamCtx(t), c, svc, "Count", &count{N: 10}) {
		if err != nil {
			last = err
			break
		}
		got++
		require.Equal(t, got, res.N)
	}
	assert.LessOrEqual(t, got, 2, "messages after the lost one")
	assert.Equal(t, rpc.DataLoss, rpc.CodeOf(last), "%v", last)
}

// testStreamCancel: a caller that stops reading (breaks out of the loop)
// stops the handler within 1s, its send failing.
func (s *suite) testStreamCancel(t *testing.T) {
	stopped := make(chan error, 1)
	srv := rpc.NewServer()
	require.NoError(t, rpc.HandleServerStream(srv, "Forever", func(ctx context.Context, _ *count, send func(*count) error) error {
		for i := 1; ; i++ {
			if err := send(&count{N: i}); err != nil {
				stopped <- err
				return err
			}
			time.Sleep(5 * time.Millisecond)
		}
	}))
	c, svc := s.streamPair(t, srv)
	for range rpc.InvokeServerStream[count, count](s.streamCtx(t), c, svc, "Forever", &count{}) {
		break
	}
	start := time.Now()
	select {
	case err := <-stopped:
		t.Logf("the handler stopped %v after the caller: %v", time.Since(start), err)
		assert.Error(t, err)
	case <-time.After(time.Second):
		t.Fatal("the handler did not stop within 1s of the caller's cancel")
	}
}

// testStreamDeadline: the caller's deadline bounds the stream:
// DeadlineExceeded on the caller, the handler's ctx ended.
func (s *suite) testStreamDeadline(t *testing.T) {
	handlerDone := make(chan error, 1)
	srv := rpc.NewServer()
	require.NoError(t, rpc.HandleServerStream(srv, "Slow", func(ctx context.Context, _ *count, send func(*count) error) error {
		for i := 1; ; i++ {
			if send(&count{N: i}) != nil {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		<-ctx.Done()
		handlerDone <- ctx.Err()
		return ctx.Err()
	}))
	c, svc := s.streamPair(t, srv)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	var last error
	for _, err := range rpc.InvokeServerStream[count, count](ctx, c, svc, "Slow", &count{}) {
		if err != nil {
			last = err
		}
	}
	assert.Equal(t, rpc.DeadlineExceeded, rpc.CodeOf(last), "%v", last)
	assert.True(t, errors.Is(last, context.DeadlineExceeded))
	select {
	case err := <-handlerDone:
		assert.Error(t, err)
	case <-time.After(2 * time.Second):
		t.Fatal("the handler outlived the stream's deadline")
	}
}

// testStreamServerGone: a server that goes silent mid-stream (a hung or
// dead process) makes the caller's stream fail with Unavailable within
// the heartbeat interval.
func (s *suite) testStreamServerGone(t *testing.T) {
	const hb = time.Second
	d := &dropping{}
	release := make(chan struct{})
	defer close(release)
	received := make(chan struct{})
	srv := rpc.NewServer(rpc.WithServerMiddleware(wrapStreamer(d)))
	require.NoError(t, rpc.HandleServerStream(srv, "Hang", func(ctx context.Context, _ *count, send func(*count) error) error {
		_ = send(&count{N: 1})
		select { // send queued it: cut once it arrived
		case <-received:
		case <-release:
		}
		d.cut.Store(true)
		select {
		case <-release:
		case <-time.After(20 * time.Second):
		}
		return nil
	}))
	c, svc := s.streamPair(t, srv, rpc.WithHeartbeat(hb))
	var start time.Time
	var last error
	for _, err := range rpc.InvokeServerStream[count, count](s.streamCtx(t), c, svc, "Hang", &count{}) {
		if err != nil {
			last = err
			break
		}
		start = time.Now()
		close(received)
	}
	elapsed := time.Since(start)
	assert.Equal(t, rpc.Unavailable, rpc.CodeOf(last), "%v", last)
	t.Logf("Unavailable %v after the last message (heartbeat %v)", elapsed, hb)
	assert.Less(t, elapsed, hb+500*time.Millisecond)
}

// testNotAStream: a stream to a unary method, and a unary call to a
// stream method, fail with a clear code.
func (s *suite) testNotAStream(t *testing.T) {
	srv := rpc.NewServer()
	require.NoError(t, rpc.Handle(srv, "Echo", echo))
	require.NoError(t, rpc.HandleServerStream(srv, "Count", func(context.Context, *count, func(*count) error) error { return nil }))
	c, svc := s.streamPair(t, srv)
	var last error
	for _, err := range rpc.InvokeServerStream[msg, msg](s.streamCtx(t), c, svc, "Echo", &msg{S: "x"}) {
		last = err
	}
	assert.Equal(t, rpc.Unimplemented, rpc.CodeOf(last), "%v", last)
	_, err := rpc.Invoke[count, count](s.streamCtx(t), c, svc, "Count", &count{})
	assert.Equal(t, rpc.FailedPrecondition, rpc.CodeOf(err), "%v", err)
}
