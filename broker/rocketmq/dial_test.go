package rocketmq_test

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/dial"
	"github.com/mqrpc/mqrpc/broker/rocketmq"
	"github.com/mqrpc/mqrpc/internal/controltest"
)

// openURL is what a program gives dial for rocketmq:// URLs.
func openURL(u string) (broker.Broker, error) {
	return rocketmq.New(u, rocketmq.WithLogger(testLogger()))
}

// TestRealDial opens RocketMQ through broker/dial's WithScheme with the
// URLs dial documents: one name server, and a list whose first node does
// not listen (the client fails over to the next).
func TestRealDial(t *testing.T) {
	addr := realBroker(t)
	for name, url := range map[string]string{
		"one":        "rocketmq://" + addr,
		"list":       "rocketmq://" + closedAddr(t) + ",rocketmq://" + addr,
		"short-list": "rocketmq://" + closedAddr(t) + "," + addr,
	} {
		t.Run(name, func(t *testing.T) {
			b, err := dial.Open(url, dial.WithScheme("rocketmq", openURL))
			require.NoError(t, err)
			defer b.Close()
			subj := "dialtest_" + strings.ReplaceAll(broker.NewID(), "-", "_")
			sub, err := b.Serve(subj, broker.HandlerFunc(func(_ context.Context, req *broker.Message) (*broker.Message, error) {
				return &broker.Message{Body: append([]byte("re: "), req.Body...)}, nil
			}))
			require.NoError(t, err)
			defer sub.Stop(context.Background())
			// A consumer group takes a moment to be routed to: retry
			// for a bounded time.
			var reply *broker.Message
			deadline := time.Now().Add(60 * time.Second)
			for {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				reply, err = b.Request(ctx, &broker.Message{Subject: subj, Body: []byte("hi")})
				cancel()
				if err == nil || time.Now().After(deadline) {
					break
				}
				time.Sleep(500 * time.Millisecond)
			}
			require.NoError(t, err)
			assert.Equal(t, "re: hi", string(reply.Body))
		})
	}
}

// TestRealControlPlane runs rpc/control's conformance cases on RocketMQ.
func TestRealControlPlane(t *testing.T) {
	realBroker(t)
	controltest.Run(t, func(t *testing.T) broker.Broker {
		b, err := rocketmq.New(realBroker(t), rocketmq.WithLogger(testLogger()))
		require.NoError(t, err)
		t.Cleanup(func() { _ = b.Close() })
		return b
	})
}

// closedAddr returns a loopback host:port nobody listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	require.NoError(t, l.Close())
	return addr
}
