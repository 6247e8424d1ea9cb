package rocketmq_test

import (
	"context"
	"io"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/apache/rocketmq-client-go/v2/primitive"
	"github.com/apache/rocketmq-client-go/v2/producer"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/rocketmq"
)

// twoMasters is a fake cluster: topic svc has two queues on each of
// broker-a and broker-b. A fake producer picks a queue with the Broker's
// selector, as rocketmq-client-go does, and fails the send as the client
// would when the master is down.
type twoMasters struct {
	mu     sync.Mutex
	sel    producer.QueueSelector
	queues []*primitive.MessageQueue
	down   map[string]error // master -> the send's error
	sent   map[string]int   // sends per master (failed ones included)
}

func newTwoMasters() *twoMasters {
	c := &twoMasters{down: map[string]error{}, sent: map[string]int{}}
	c.setRoute("broker-a", "broker-b")
	return c
}

// setRoute replaces the topic's route with two queues on each master, as
// the client does when the name server's route changed.
func (c *twoMasters) setRoute(masters ...string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.queues = nil
	for _, m := range masters {
		for q := range 2 {
			c.queues = append(c.queues, &primitive.MessageQueue{Topic: "svc", BrokerName: m, QueueId: q})
		}
	}
}

// send picks msg's queue and returns the error of its master.
func (c *twoMasters) send(msg *primitive.Message) error {
	c.mu.Lock()
	queues := c.queues
	c.mu.Unlock()
	q := c.sel.Select(msg, queues, "")
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sent[q.BrokerName]++
	return c.down[q.BrokerName]
}

func (c *twoMasters) sends(master string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sent[master]
}

// refused is the error rocketmq-client-go returns for a send to a master
// that is not listening: nothing was written.
var refused = &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}

func (c *twoMasters) broker(t *testing.T, now func() time.Time) *rocketmq.Broker {
	f := &fakeProducer{
		request: func(_ context.Context, _ time.Duration, cb func(context.Context, *primitive.Message, error), msg *primitive.Message) error {
			if err := c.send(msg); err != nil {
				return err
			}
			go cb(context.Background(), replyTo(msg, "pong", nil), nil)
			return nil
		},
		send: func(_ context.Context, msgs ...*primitive.Message) (*primitive.SendResult, error) {
			if err := c.send(msgs[0]); err != nil {
				return nil, err
			}
			return &primitive.SendResult{Status: primitive.SendOK}, nil
		},
	}
	b := newFake(t, f)
	c.sel = rocketmq.Selector(b, now)
	return b
}

func request(t *testing.T, b *rocketmq.Broker) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := b.Request(ctx, &broker.Message{Subject: "svc", Body: []byte("ping")})
	return err
}

// A request or one-way send the first master refused (so it stored
// nothing) goes to the other master at once, and the refusing master gets
// no more messages for a while: without it, a client keeps choosing the
// dead master's queues until its next route poll (30 s).
func TestFailoverToOtherMaster(t *testing.T) {
	c := newTwoMasters()
	b := c.broker(t, nil)
	c.down["broker-a"] = refused
	for range 20 {
		require.NoError(t, request(t, b))
		require.NoError(t, b.Send(context.Background(), &broker.Message{Subject: "svc", Body: []byte("note")}))
	}
	assert.Equal(t, 1, c.sends("broker-a"), "sends to the refusing master")
	assert.Equal(t, 40, c.sends("broker-b"))
}

// A send whose outcome is unknown (the master may have stored it) is not
// resent: that is the caller's choice, with the message's ID.
func TestNoFailoverWhenOutcomeUnknown(t *testing.T) {
	c := newTwoMasters()
	b := c.broker(t, nil)
	// Written, then the connection broke before the answer.
	c.down["broker-a"] = &net.OpError{Op: "read", Net: "tcp", Err: io.EOF}
	c.down["broker-b"] = c.down["broker-a"]
	err := b.Send(context.Background(), &broker.Message{Subject: "svc", Body: []byte("note")})
	require.ErrorIs(t, err, broker.ErrDisconnected)
	assert.Equal(t, 1, c.sends("broker-a")+c.sends("broker-b"), "sends")
}

// With every master refusing, a send fails (Unavailable to rpc) after one
// try of each, not in a loop.
func TestFailoverAllMastersDown(t *testing.T) {
	c := newTwoMasters()
	b := c.broker(t, nil)
	c.down["broker-a"], c.down["broker-b"] = refused, refused
	require.ErrorIs(t, request(t, b), broker.ErrDisconnected)
	assert.Equal(t, 1, c.sends("broker-a"))
	assert.Equal(t, 1, c.sends("broker-b"))
}

// A refusing master is tried again after rocketmq.AvoidFor; and a master
// that dropped out of the route (the name server dropped it when it died)
// and came back is avoided as long: the servers' consumers may not pull its
// queues yet, and a request stored there would wait.
func TestAvoidedMasterReturns(t *testing.T) {
	var mu sync.Mutex
	now := time.Now()
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }

	c := newTwoMasters()
	b := c.broker(t, clock)
	c.down["broker-a"] = refused
	require.NoError(t, request(t, b))
	require.Equal(t, 1, c.sends("broker-a"))
	delete(c.down, "broker-a")
	advance(rocketmq.AvoidFor - time.Millisecond)
	for range 4 {
		require.NoError(t, request(t, b))
	}
	assert.Equal(t, 1, c.sends("broker-a"), "sends to broker-a while avoided")
	advance(time.Millisecond)
	for range 4 {
		require.NoError(t, request(t, b))
	}
	assert.Equal(t, 3, c.sends("broker-a"), "sends to broker-a after rocketmq.AvoidFor (round robin)")

	// broker-a leaves the route, and comes back.
	c.setRoute("broker-b")
	require.NoError(t, request(t, b))
	c.setRoute("broker-a", "broker-b")
	for range 4 {
		require.NoError(t, request(t, b))
	}
	assert.Equal(t, 3, c.sends("broker-a"), "sends to broker-a just back in the route")
	advance(rocketmq.AvoidFor)
	for range 4 {
		require.NoError(t, request(t, b))
	}
	assert.Equal(t, 5, c.sends("broker-a"), "sends to broker-a once back for rocketmq.AvoidFor")
}
