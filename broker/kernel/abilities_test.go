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

// durable is a fake with the optional abilities of a durable driver: it
// refuses to admit bodies "refuse" (settling them itself), and records the
// handler errors (kernel.CauseSettler) and the abandoned deliveries.
type durable struct {
	*fake
	mu        sync.Mutex
	admitted  []string
	failures  []error
	abandoned []string
	expire    bool // Admit lets the deadline pass
}

func (d *durable) Admit(_ context.Context, m *broker.Message, req *broker.Message) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if string(req.Body) == "refuse" {
		return false
	}
	if d.expire {
		req.Deadline = time.Now().Add(-time.Millisecond)
	}
	d.admitted = append(d.admitted, m.ID)
	return true
}

func (d *durable) SettleCause(m *broker.Message, o kernel.Outcome, cause error) {
	if o == kernel.Failed {
		d.mu.Lock()
		d.failures = append(d.failures, cause)
		d.mu.Unlock()
	}
	d.Settle(m, o)
}

func (d *durable) Abandon(m *broker.Message) {
	d.mu.Lock()
	d.abandoned = append(d.abandoned, m.ID)
	d.mu.Unlock()
	d.Settle(nil, kernel.Failed)
}

func TestDurableAbilities(t *testing.T) {
	d := &durable{fake: newFake()}
	release := make(chan struct{})
	started := make(chan struct{}, 1)
	s := kernel.Serve[*broker.Message](d, "s", broker.HandlerFunc(func(_ context.Context, m *broker.Message) (*broker.Message, error) {
		switch string(m.Body) {
		case "fail":
			return nil, errors.New("the handler's error")
		case "block":
			started <- struct{}{}
			<-release
		}
		return &broker.Message{}, nil
	}), broker.NewServeConfig("s"), kernel.Options{Name: "fake"})

	d.ch <- &broker.Message{ID: "r", Body: []byte("refuse")}
	d.ch <- &broker.Message{ID: "f", Body: []byte("fail")}
	_, outs := d.wait(t, 1)
	assert.Equal(t, []kernel.Outcome{kernel.Failed}, outs, "a refused delivery is not settled by the kernel")
	d.mu.Lock()
	assert.Equal(t, []string{"f"}, d.admitted)
	require.Len(t, d.failures, 1)
	d.mu.Unlock()

	d.mu.Lock()
	d.expire = true
	d.mu.Unlock()
	d.ch <- &broker.Message{ID: "e"}
	_, outs = d.wait(t, 2)
	assert.Equal(t, kernel.Dropped, outs[1], "expired while admitted: dropped, not served")
	d.mu.Lock()
	d.expire = false
	d.mu.Unlock()

	d.ch <- &broker.Message{ID: "b", Body: []byte("block")}
	<-started
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	assert.ErrorIs(t, s.Stop(ctx), context.DeadlineExceeded)
	close(release)
	s.Wait()
	d.mu.Lock()
	assert.Equal(t, []string{"b"}, d.abandoned, "the delivery the abort answered is abandoned, not done")
	d.mu.Unlock()
	_, outs = d.wait(t, 3)
	assert.Len(t, outs, 3)
}
