package deliveryctx

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

type ctxKey struct{}

func TestCtx(t *testing.T) {
	t.Run("DeadlineAndValue", func(t *testing.T) {
		parent := context.WithValue(context.Background(), ctxKey{}, "v")
		d := time.Now().Add(time.Hour)
		c := New(parent, d)
		defer c.Release()
		got, ok := c.Deadline()
		assert.True(t, ok)
		assert.Equal(t, d, got)
		assert.Equal(t, "v", c.Value(ctxKey{}))
		assert.NoError(t, c.Err())
		assert.Nil(t, c.materialized(), "no timer while nobody waits")
	})
	t.Run("DoneAtDeadline", func(t *testing.T) {
		c := New(context.Background(), time.Now().Add(30*time.Millisecond))
		defer c.Release()
		select {
		case <-c.Done():
		case <-time.After(2 * time.Second):
			t.Fatal("Done not closed at the deadline")
		}
		assert.ErrorIs(t, c.Err(), context.DeadlineExceeded)
	})
	t.Run("ErrAfterDeadlineWithoutDone", func(t *testing.T) {
		c := New(context.Background(), time.Now().Add(-time.Millisecond))
		defer c.Release()
		require.ErrorIs(t, c.Err(), context.DeadlineExceeded)
		select {
		case <-c.Done():
		default:
			t.Fatal("Err is non-nil but Done is open")
		}
	})
	t.Run("ParentCancel", func(t *testing.T) {
		parent, cancel := context.WithCancel(context.Background())
		c := New(parent, time.Now().Add(time.Hour))
		defer c.Release()
		done := c.Done()
		cancel()
		<-done
		assert.ErrorIs(t, c.Err(), context.Canceled)

		parent2, cancel2 := context.WithCancel(context.Background())
		c2 := New(parent2, time.Now().Add(time.Hour))
		defer c2.Release()
		cancel2()
		assert.ErrorIs(t, c2.Err(), context.Canceled, "without Done")
	})
	t.Run("Derived", func(t *testing.T) {
		parent, cancel := context.WithCancel(context.Background())
		c := New(parent, time.Now().Add(time.Hour))
		defer c.Release()
		child, cancelChild := context.WithTimeout(c, time.Hour)
		defer cancelChild()
		d, _ := child.Deadline()
		assert.WithinDuration(t, time.Now().Add(time.Hour), d, time.Second)
		cancel()
		select {
		case <-child.Done():
		case <-time.After(2 * time.Second):
			t.Fatal("a derived context missed the parent's cancel")
		}
	})
	t.Run("EarlierParentDeadline", func(t *testing.T) {
		pd := time.Now().Add(time.Minute)
		parent, cancel := context.WithDeadline(context.Background(), pd)
		defer cancel()
		c := New(parent, time.Now().Add(time.Hour))
		d, _ := c.Deadline()
		assert.Equal(t, pd, d)
	})
}

func TestNoDeadlineAndCancel(t *testing.T) {
	parent, stop := context.WithTimeout(context.Background(), time.Hour)
	defer stop()
	c := New(parent, time.Time{})
	defer c.Release()
	pd, _ := parent.Deadline()
	d, ok := c.Deadline()
	assert.True(t, ok)
	assert.Equal(t, pd, d, "without a deadline of its own, the parent's")
	assert.NoError(t, c.Err())
	assert.Nil(t, c.materialized())
	c.Cancel()
	select {
	case <-c.Done():
	case <-time.After(2 * time.Second):
		t.Fatal("Done not closed by Cancel")
	}
	assert.ErrorIs(t, c.Err(), context.Canceled)

	n := New(context.Background(), time.Time{})
	defer n.Release()
	_, ok = n.Deadline()
	assert.False(t, ok, "no deadline anywhere")
	assert.NoError(t, n.Err())
}
