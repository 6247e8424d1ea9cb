package amqp_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/amqp"
)

// TestStopReturnsOnceChannelsClosed pins Serve's promise that Stop
// returns once the subscription's channels are closed: at that moment
// RabbitMQ has taken the consumers off the queues and put the requests
// that were prefetched but not started back in the queue, for other
// servers. Checked with a plain client right after Stop returns, on a
// durable classic queue (which outlives its consumers).
func TestStopReturnsOnceChannelsClosed(t *testing.T) {
	url, _ := vhostURL(t)
	_, ch := rawChannel(t, url)
	inspect := func(t *testing.T, queue string) (messages, consumers int) {
		t.Helper()
		q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
		require.NoError(t, err)
		return q.Messages, q.Consumers
	}

	t.Run("idle", func(t *testing.T) {
		// Nothing in flight: the channels close on a goroutine of Stop's.
		b := open(t, url, amqp.WithDurable(amqp.ClassicQueue))
		for i := range 5 {
			subj := fmt.Sprintf("stop-idle-%d-%s", i, broker.NewID())
			sub, err := b.Serve(subj, broker.HandlerFunc(echo))
			require.NoError(t, err)
			require.NoError(t, sub.Stop(ctxT(t, 30*time.Second)))
			_, consumers := inspect(t, subj)
			assert.Equal(t, 0, consumers, "consumers of %s right after Stop", subj)
			_, consumers = inspect(t, subj+".suspect")
			assert.Equal(t, 0, consumers, "consumers of %s.suspect right after Stop", subj)
		}
	})

	t.Run("prefetched requests go back", func(t *testing.T) {
		// One handler at a time and a prefetch of 10: while the first
		// request runs, RabbitMQ has handed the other four to the server.
		const n = 5
		srv := open(t, url, amqp.WithDurable(amqp.ClassicQueue), amqp.WithPrefetch(10))
		subj := "stop-prefetched-" + broker.NewID()
		started := make(chan string, n)
		release := make(chan struct{})
		sub, err := srv.Serve(subj, broker.HandlerFunc(func(_ context.Context, req *broker.Message) (*broker.Message, error) {
			started <- req.ID
			<-release
			return nil, nil
		}), broker.WithConcurrency(1))
		require.NoError(t, err)
		client := open(t, url, amqp.WithDurable(amqp.ClassicQueue))
		for i := range n {
			require.NoError(t, client.Send(ctxT(t, 30*time.Second), &broker.Message{Subject: subj, Body: []byte{byte(i)}}))
		}
		select {
		case <-started:
		case <-time.After(30 * time.Second):
			t.Fatal("the first request did not start")
		}
		require.Eventually(t, func() bool {
			ready, _ := inspect(t, subj)
			return ready == 0
		}, 30*time.Second, 20*time.Millisecond, "RabbitMQ did not hand the requests to the server")

		stopped := make(chan error, 1)
		go func() { stopped <- sub.Stop(ctxT(t, 30*time.Second)) }()
		time.Sleep(200 * time.Millisecond) // Stop has cancelled the consumer and waits for the handler
		close(release)
		select {
		case err := <-stopped:
			require.NoError(t, err)
		case <-time.After(40 * time.Second):
			t.Fatal("Stop did not return")
		}
		ready, consumers := inspect(t, subj)
		assert.Equal(t, n-1, ready, "requests back in the queue right after Stop")
		assert.Equal(t, 0, consumers)
		assert.Empty(t, started, "a prefetched request started after Stop began")
	})
	t.Run("drain takes no more", func(t *testing.T) {
		// While a handler runs, Stop has cancelled the consumer: a request
		// sent during the drain stays in the queue for other servers
		// instead of being prefetched by the stopping one (and handed
		// back only when it stops, redelivered, hence a suspect).
		srv := open(t, url, amqp.WithDurable(amqp.ClassicQueue), amqp.WithPrefetch(10))
		subj := "stop-drain-" + broker.NewID()
		started := make(chan string, 2)
		release := make(chan struct{})
		sub, err := srv.Serve(subj, broker.HandlerFunc(func(_ context.Context, req *broker.Message) (*broker.Message, error) {
			started <- req.ID
			<-release
			return nil, nil
		}), broker.WithConcurrency(1))
		require.NoError(t, err)
		client := open(t, url, amqp.WithDurable(amqp.ClassicQueue))
		require.NoError(t, client.Send(ctxT(t, 30*time.Second), &broker.Message{Subject: subj}))
		select {
		case <-started:
		case <-time.After(30 * time.Second):
			t.Fatal("the first request did not start")
		}
		stopped := make(chan error, 1)
		go func() { stopped <- sub.Stop(ctxT(t, 60*time.Second)) }()
		defer func() {
			close(release)
			require.NoError(t, <-stopped)
		}()
		require.Eventually(t, func() bool {
			_, consumers := inspect(t, subj)
			return consumers == 0
		}, 20*time.Second, 20*time.Millisecond, "the draining server still consumes the queue")
		require.NoError(t, client.Send(ctxT(t, 30*time.Second), &broker.Message{Subject: subj}))
		ready, _ := inspect(t, subj)
		assert.Equal(t, 1, ready, "the request sent during the drain waits in the queue")
	})
	t.Run("fast mode calls in flight get their replies", func(t *testing.T) {
		// Fast mode's queue is auto-delete: cancelling its last consumer at
		// the start of the drain deletes it, while three handlers still
		// run; their replies and acknowledgements still go out.
		const n = 3
		srv := open(t, url)
		subj := "stop-fast-" + broker.NewID()
		started := make(chan struct{}, n)
		release := make(chan struct{})
		sub, err := srv.Serve(subj, broker.HandlerFunc(func(_ context.Context, req *broker.Message) (*broker.Message, error) {
			started <- struct{}{}
			<-release
			return &broker.Message{Body: req.Body}, nil
		}), broker.WithConcurrency(n))
		require.NoError(t, err)
		client := open(t, url)
		replies := make(chan error, n)
		for i := range n {
			go func() {
				m, err := client.Request(ctxT(t, 30*time.Second), &broker.Message{Subject: subj, Body: []byte{byte(i)}})
				if err == nil && (len(m.Body) != 1 || m.Body[0] != byte(i)) {
					err = fmt.Errorf("reply %v to request %d", m.Body, i)
				}
				replies <- err
			}()
		}
		for range n {
			select {
			case <-started:
			case <-time.After(30 * time.Second):
				t.Fatal("the requests did not start")
			}
		}
		stopped := make(chan error, 1)
		go func() { stopped <- sub.Stop(ctxT(t, 30*time.Second)) }()
		require.Eventually(t, func() bool {
			_, err := client.Request(ctxT(t, time.Second), &broker.Message{Subject: subj})
			return errors.Is(err, broker.ErrNoResponders)
		}, 20*time.Second, 50*time.Millisecond, "the queue outlived the drain's start")
		close(release)
		for range n {
			assert.NoError(t, <-replies)
		}
		require.NoError(t, <-stopped)
	})
}
