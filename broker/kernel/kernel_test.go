package kernel_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/kernel"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestPrepare(t *testing.T) {
	now := time.Now()
	ctx, cancel := context.WithDeadline(context.Background(), now.Add(time.Hour))
	defer cancel()

	m := &broker.Message{}
	got, c, err := kernel.Prepare(ctx, m, "op")
	defer c()
	require.NoError(t, err)
	assert.NotEmpty(t, m.ID, "an empty ID is filled")
	assert.Equal(t, ctx, got, "the ctx deadline governs: no new ctx")
	d, _ := ctx.Deadline()
	assert.Equal(t, d, m.Deadline, "the message carries the ctx deadline")

	m = &broker.Message{ID: "x", Deadline: now.Add(time.Minute)}
	got, c, err = kernel.Prepare(ctx, m, "op")
	defer c()
	require.NoError(t, err)
	assert.Equal(t, "x", m.ID)
	gd, _ := got.Deadline()
	assert.Equal(t, now.Add(time.Minute), gd, "the earlier message deadline bounds the wait")

	m = &broker.Message{Deadline: now.Add(-time.Second)}
	_, c, err = kernel.Prepare(context.Background(), m, "op")
	defer c()
	assert.ErrorIs(t, err, broker.ErrTimeout)
	assert.ErrorIs(t, err, context.DeadlineExceeded)

	cctx, ccancel := context.WithCancel(context.Background())
	ccancel()
	_, c, err = kernel.Prepare(cctx, &broker.Message{}, "op")
	defer c()
	assert.ErrorIs(t, err, context.Canceled, "a ctx cancelled already: nothing is sent")
	assert.NotErrorIs(t, err, broker.ErrTimeout)
}

func TestTTL(t *testing.T) {
	now := time.Now()
	assert.Zero(t, kernel.TTL(time.Time{}, now), "no deadline: no TTL")
	assert.Equal(t, time.Millisecond, kernel.TTL(now.Add(-time.Hour), now), "past: the smallest TTL, never zero")
	assert.Equal(t, 1500*time.Millisecond, kernel.TTL(now.Add(1500*time.Millisecond), now))
	assert.Equal(t, 2*time.Millisecond, kernel.TTL(now.Add(1001*time.Microsecond), now), "rounded up")
	far := time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC)
	assert.Equal(t, kernel.MaxTTL, kernel.TTL(far, now), "a far-future deadline is clamped, not overflowed")
	assert.Equal(t, kernel.MaxTTL, kernel.TTL(time.Unix(1<<62, 0), now))
	assert.Equal(t, int64(1<<31-1), kernel.MaxTTL.Milliseconds())
}

func TestMapName(t *testing.T) {
	rule := kernel.NameRule{MaxLen: 20, Allowed: func(r rune) bool {
		return r < unicode.MaxASCII && (unicode.IsLetter(r) || unicode.IsDigit(r) || r == '_' || r == '-')
	}}
	assert.Equal(t, "Greeter", kernel.MapName("Greeter", rule), "an accepted name stays")
	a := kernel.MapName("helloworld.Greeter", rule)
	assert.True(t, strings.HasPrefix(a, "helloworld_"), a)
	assert.NotEqual(t, a, kernel.MapName("helloworld_Greeter", rule), "names that differ map apart")
	assert.Equal(t, a, kernel.MapName("helloworld.Greeter", rule), "the same name maps the same way")
	long := kernel.MapName(strings.Repeat("é", 40), rule)
	assert.LessOrEqual(t, len(long), 20)
	for _, n := range []string{a, long, kernel.MapName("", rule)} {
		for _, r := range n {
			assert.True(t, rule.Allowed(r), "%q in %q", r, n)
		}
		assert.NotEmpty(t, n)
	}
}

// fake is a Driver fed by a channel; it records replies and outcomes.
type fake struct {
	ch   chan *broker.Message
	quit chan struct{}
	once sync.Once

	mu       sync.Mutex
	replies  []*broker.Message
	outcomes []kernel.Outcome
	tooLarge bool // the first reply fails as too large
}

func newFake() *fake { return &fake{ch: make(chan *broker.Message, 16), quit: make(chan struct{})} }

func (f *fake) Next(ctx context.Context) (*broker.Message, bool) {
	select {
	case m := <-f.ch:
		return m, true
	case <-f.quit:
	case <-ctx.Done():
	}
	return nil, false
}

func (f *fake) Decode(d *broker.Message, m *broker.Message) error {
	m.ID = d.ID
	if d.Header.Get("bad") != "" {
		return &broker.HeaderError{Name: "bad", Value: d.Header.Get("bad")}
	}
	m.Body, m.Deadline = d.Body, d.Deadline
	return nil
}

func (f *fake) Reply(_ *broker.Message, rep *broker.Message) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.tooLarge {
		f.tooLarge = false
		return broker.ErrMessageTooLarge
	}
	f.replies = append(f.replies, rep)
	return nil
}

func (f *fake) Settle(_ *broker.Message, o kernel.Outcome) {
	f.mu.Lock()
	f.outcomes = append(f.outcomes, o)
	f.mu.Unlock()
}

func (f *fake) Drain() { f.once.Do(func() { close(f.quit) }) }
func (f *fake) Abort() { f.Drain() }

func (f *fake) wait(t *testing.T, n int) ([]*broker.Message, []kernel.Outcome) {
	t.Helper()
	var reps []*broker.Message
	var outs []kernel.Outcome
	require.Eventually(t, func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		reps, outs = append([]*broker.Message(nil), f.replies...), append([]kernel.Outcome(nil), f.outcomes...)
		return len(outs) >= n
	}, 5*time.Second, time.Millisecond)
	return reps, outs
}

// rejecter is a handler that answers rejections with their reason.
type rejecter struct{ broker.HandlerFunc }

func (rejecter) Reject(req *broker.Message, r *broker.Rejection) *broker.Message {
	return &broker.Message{Body: []byte(req.ID + " " + r.Reason.String())}
}

func serve(t *testing.T, f *fake, h broker.Handler) *kernel.Subscription[*broker.Message] {
	s := kernel.Serve[*broker.Message](f, "s", h, broker.NewServeConfig("s"), kernel.Options{Name: "fake"})
	t.Cleanup(func() { _ = s.Stop(context.Background()) })
	return s
}

func TestPipeline(t *testing.T) {
	echo := func(_ context.Context, m *broker.Message) (*broker.Message, error) {
		switch string(m.Body) {
		case "panic":
			panic("boom")
		case "fail":
			return nil, errors.New("fail")
		}
		return &broker.Message{Body: append([]byte("re "), m.Body...)}, nil
	}
	t.Run("served", func(t *testing.T) {
		f := newFake()
		serve(t, f, rejecter{echo})
		f.ch <- &broker.Message{ID: "1", Body: []byte("x")}
		reps, outs := f.wait(t, 1)
		assert.Equal(t, []kernel.Outcome{kernel.Done}, outs)
		assert.Equal(t, "re x", string(reps[0].Body))
	})
	t.Run("malformed is rejected and dropped", func(t *testing.T) {
		f := newFake()
		serve(t, f, rejecter{echo})
		f.ch <- &broker.Message{ID: "1", Header: broker.Header{"bad": "v"}}
		reps, outs := f.wait(t, 1)
		assert.Equal(t, []kernel.Outcome{kernel.Dropped}, outs)
		require.Len(t, reps, 1)
		assert.Equal(t, "1 malformed", string(reps[0].Body), "the handler's Reject builds the reply")
	})
	t.Run("malformed without a Rejecter: no reply", func(t *testing.T) {
		f := newFake()
		serve(t, f, broker.HandlerFunc(echo))
		f.ch <- &broker.Message{ID: "1", Header: broker.Header{"bad": "v"}}
		reps, outs := f.wait(t, 1)
		assert.Equal(t, []kernel.Outcome{kernel.Dropped}, outs)
		assert.Empty(t, reps)
	})
	t.Run("expired is dropped unserved", func(t *testing.T) {
		f := newFake()
		serve(t, f, rejecter{echo})
		f.ch <- &broker.Message{ID: "1", Body: []byte("x"), Deadline: time.Now().Add(-time.Second)}
		reps, outs := f.wait(t, 1)
		assert.Equal(t, []kernel.Outcome{kernel.Dropped}, outs)
		assert.Empty(t, reps)
	})
	t.Run("error and panic fail the delivery", func(t *testing.T) {
		f := newFake()
		serve(t, f, rejecter{echo})
		f.ch <- &broker.Message{ID: "1", Body: []byte("panic")}
		f.ch <- &broker.Message{ID: "2", Body: []byte("fail")}
		reps, outs := f.wait(t, 2)
		assert.Equal(t, []kernel.Outcome{kernel.Failed, kernel.Failed}, outs)
		assert.Empty(t, reps)
	})
	t.Run("a reply too large is replaced by the rejection reply", func(t *testing.T) {
		f := newFake()
		f.tooLarge = true
		serve(t, f, rejecter{echo})
		f.ch <- &broker.Message{ID: "1", Body: []byte("x")}
		reps, outs := f.wait(t, 1)
		assert.Equal(t, []kernel.Outcome{kernel.Done}, outs)
		require.Len(t, reps, 1)
		assert.Equal(t, "1 too large", string(reps[0].Body))
	})
	t.Run("the handler gets the deadline", func(t *testing.T) {
		f := newFake()
		dl := time.Now().Add(time.Hour).Truncate(time.Millisecond)
		got := make(chan time.Time, 1)
		serve(t, f, broker.HandlerFunc(func(ctx context.Context, _ *broker.Message) (*broker.Message, error) {
			d, _ := ctx.Deadline()
			got <- d
			return nil, nil
		}))
		f.ch <- &broker.Message{ID: "1", Deadline: dl}
		assert.Equal(t, dl, <-got)
	})
}

func TestStopPastDrainAborts(t *testing.T) {
	f := newFake()
	started := make(chan struct{})
	s := kernel.Serve[*broker.Message](f, "s", broker.HandlerFunc(func(ctx context.Context, _ *broker.Message) (*broker.Message, error) {
		close(started)
		<-ctx.Done()
		return nil, ctx.Err()
	}), broker.NewServeConfig("s"), kernel.Options{Name: "fake"})
	f.ch <- &broker.Message{ID: "1"}
	<-started
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	t0 := time.Now()
	err := s.Stop(ctx)
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Less(t, time.Since(t0), 2*time.Second, "Stop returns by ctx's deadline")
	s.Wait() // the handler saw its ctx cancelled
	_, outs := f.wait(t, 1)
	assert.Equal(t, []kernel.Outcome{kernel.Failed}, outs)
}

func TestPrepareSend(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	m := &broker.Message{}
	require.NoError(t, kernel.PrepareSend(ctx, m, "op"))
	assert.NotEmpty(t, m.ID)
	assert.True(t, m.Deadline.IsZero(), "ctx bounds the send only, not the one-way message's life")
	err := kernel.PrepareSend(ctx, &broker.Message{Deadline: time.Now().Add(-time.Second)}, "op")
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	cancel()
	err = kernel.PrepareSend(ctx, &broker.Message{}, "op")
	assert.ErrorIs(t, err, context.Canceled)
}
