package memory_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/memory"
)

// counting serves subject on b and counts handler runs.
func counting(t *testing.T, b *memory.Broker, subject string) *atomic.Int64 {
	t.Helper()
	var n atomic.Int64
	_, err := b.Serve(subject, broker.HandlerFunc(func(_ context.Context, req *broker.Message) (*broker.Message, error) {
		n.Add(1)
		return &broker.Message{Body: req.Body}, nil
	}))
	require.NoError(t, err)
	return &n
}

func shortCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	t.Cleanup(cancel)
	return ctx
}

func TestFaults(t *testing.T) {
	defer goleak.VerifyNone(t)
	tests := []struct {
		name      string
		faults    memory.Faults
		wantErr   error
		wantRuns  int64
		wantReply bool
	}{
		{"DropRequest", memory.Faults{DropRequests: 1}, broker.ErrTimeout, 0, false},
		{"DropReply", memory.Faults{DropReplies: 1}, broker.ErrTimeout, 1, false},
		{"Duplicate", memory.Faults{Duplicates: 1}, nil, 2, true},
		{"Delay", memory.Faults{Delay: 20 * time.Millisecond}, nil, 1, true},
		{"DelayPastDeadline", memory.Faults{Delay: time.Second}, broker.ErrTimeout, 0, false},
		{"AlwaysDropRate", memory.Faults{DropRequestRate: 1}, broker.ErrTimeout, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := memory.New()
			defer b.Close()
			runs := counting(t, b, "s")
			b.SetFaults(tt.faults)
			reply, err := b.Request(shortCtx(t), &broker.Message{Subject: "s", Body: []byte("x")})
			if tt.wantErr != nil {
				assert.ErrorIs(t, err, tt.wantErr)
			} else {
				require.NoError(t, err)
			}
			assert.Equal(t, tt.wantReply, reply != nil)
			// Duplicates may still be running: wait for the count to settle.
			require.Eventually(t, func() bool { return runs.Load() == tt.wantRuns }, time.Second, time.Millisecond)
			time.Sleep(20 * time.Millisecond)
			assert.Equal(t, tt.wantRuns, runs.Load(), "handler runs")

			// Counters are consumed: the next call is clean.
			b.SetFaults(memory.Faults{})
			_, err = b.Request(shortCtx(t), &broker.Message{Subject: "s"})
			require.NoError(t, err)
		})
	}
}

func TestFaultCountersAreConsumed(t *testing.T) {
	b := memory.New()
	defer b.Close()
	runs := counting(t, b, "s")
	b.SetFaults(memory.Faults{DropReplies: 2})
	for i, wantErr := range []bool{true, true, false} {
		_, err := b.Request(shortCtx(t), &broker.Message{Subject: "s"})
		assert.Equal(t, wantErr, err != nil, "call %d", i)
	}
	assert.Equal(t, int64(3), runs.Load())
}

func TestDisconnect(t *testing.T) {
	b := memory.New()
	defer b.Close()
	release := make(chan struct{})
	started := make(chan struct{})
	_, err := b.Serve("slow", broker.HandlerFunc(func(ctx context.Context, _ *broker.Message) (*broker.Message, error) {
		close(started)
		select {
		case <-release:
		case <-ctx.Done():
		}
		return &broker.Message{}, nil
	}))
	require.NoError(t, err)
	errc := make(chan error, 1)
	go func() {
		_, err := b.Request(context.Background(), &broker.Message{Subject: "slow", Deadline: time.Now().Add(10 * time.Second)})
		errc <- err
	}()
	<-started
	b.Disconnect()
	select {
	case err := <-errc:
		assert.ErrorIs(t, err, broker.ErrDisconnected)
	case <-time.After(5 * time.Second):
		t.Fatal("Disconnect did not fail the call in flight")
	}
	close(release)
	// The connection recovers: later calls work.
	counting(t, b, "fast")
	_, err = b.Request(shortCtx(t), &broker.Message{Subject: "fast"})
	require.NoError(t, err)
}

// Closing one connection is a crashed process: its servers go away, the
// other connections go on.
func TestConnectionsAreIndependent(t *testing.T) {
	defer goleak.VerifyNone(t)
	client := memory.New()
	defer client.Close()
	s1, s2 := client.Connect(), client.Connect()
	defer s2.Close()
	r1, r2 := counting(t, s1, "svc"), counting(t, s2, "svc")
	for i := 0; i < 20; i++ {
		_, err := client.Request(shortCtx(t), &broker.Message{Subject: "svc"})
		require.NoError(t, err)
	}
	require.NoError(t, s1.Close())
	before := r1.Load()
	for i := 0; i < 20; i++ {
		_, err := client.Request(shortCtx(t), &broker.Message{Subject: "svc"})
		require.NoError(t, err, "the surviving server must take over")
	}
	assert.Equal(t, before, r1.Load(), "a closed connection served a request")
	assert.Equal(t, int64(40), r1.Load()+r2.Load())
	require.NoError(t, s2.Close())
	_, err := client.Request(shortCtx(t), &broker.Message{Subject: "svc"})
	assert.ErrorIs(t, err, broker.ErrNoResponders)
}

func TestBackpressure(t *testing.T) {
	b := memory.New(memory.WithBuffer(1))
	defer b.Close()
	release := make(chan struct{})
	_, err := b.Serve("s", broker.HandlerFunc(func(ctx context.Context, _ *broker.Message) (*broker.Message, error) {
		select {
		case <-release:
		case <-ctx.Done():
		}
		return nil, nil
	}), broker.WithConcurrency(1))
	require.NoError(t, err)
	ctx := shortCtx(t)
	// One in the handler, one in the buffer, the third one waits and
	// gives up at its deadline instead of queueing without bound.
	var errs []error
	for i := 0; i < 3; i++ {
		errs = append(errs, b.Send(ctx, &broker.Message{Subject: "s"}))
	}
	assert.NoError(t, errs[0])
	assert.ErrorIs(t, errs[2], broker.ErrTimeout)
	close(release)
}

func TestHeaderNamesLowerCased(t *testing.T) {
	b := memory.New()
	defer b.Close()
	got := make(chan broker.Header, 1)
	_, err := b.Serve("s", broker.HandlerFunc(func(_ context.Context, req *broker.Message) (*broker.Message, error) {
		got <- req.Header.Clone() // the broker reuses req once the handler returned
		return &broker.Message{}, nil
	}))
	require.NoError(t, err)
	_, err = b.Request(shortCtx(t), &broker.Message{Subject: "s", Header: broker.Header{"X-Mixed-Case": "v"}})
	require.NoError(t, err)
	assert.Equal(t, broker.Header{"x-mixed-case": "v"}, <-got)
}
