package kernel_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/kernel"
)

// causeFake is a fake that records the cause of each outcome.
type causeFake struct {
	*fake
	cmu    sync.Mutex
	causes map[string]error // by message ID
}

func (f *causeFake) SettleCause(d *broker.Message, o kernel.Outcome, cause error) {
	f.cmu.Lock()
	f.causes[d.ID] = cause
	f.cmu.Unlock()
	f.Settle(d, o)
}

// TestSettleCause: a driver with SettleCause learns why each delivery
// ended: the handler's error or panic, the decode error, nil for an
// expired or a served one.
func TestSettleCause(t *testing.T) {
	f := &causeFake{fake: newFake(), causes: map[string]error{}}
	s := kernel.Serve[*broker.Message](f, "s", broker.HandlerFunc(func(_ context.Context, m *broker.Message) (*broker.Message, error) {
		switch string(m.Body) {
		case "panic":
			panic("boom")
		case "fail":
			return nil, errors.New("database unavailable")
		}
		return &broker.Message{}, nil
	}), broker.NewServeConfig("s"), kernel.Options{Name: "fake"})
	t.Cleanup(func() { _ = s.Stop(context.Background()) })
	f.ch <- &broker.Message{ID: "fail", Body: []byte("fail")}
	f.ch <- &broker.Message{ID: "panic", Body: []byte("panic")}
	f.ch <- &broker.Message{ID: "bad", Header: broker.Header{"bad": "v"}}
	f.ch <- &broker.Message{ID: "expired", Deadline: time.Now().Add(-time.Second)}
	f.ch <- &broker.Message{ID: "ok"}
	f.wait(t, 5)
	f.cmu.Lock()
	defer f.cmu.Unlock()
	require.Len(t, f.causes, 5)
	assert.EqualError(t, f.causes["fail"], "database unavailable")
	assert.ErrorContains(t, f.causes["panic"], "boom")
	var herr *broker.HeaderError
	assert.ErrorAs(t, f.causes["bad"], &herr)
	assert.NoError(t, f.causes["expired"])
	assert.NoError(t, f.causes["ok"])
}
