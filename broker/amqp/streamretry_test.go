package amqp_test

import (
	"context"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/amqp"
	"github.com/mqrpc/mqrpc/rpc"
)

// TestRetriedStreamOpening pins what the caller of a stream sees when its
// opening request is redelivered in a durable mode (docs/PROTOCOL.md, "What
// a stream is not"), on durable RabbitMQ: the server of a stream loses its
// connection mid-stream (its TCP connection is cut, as a crash does), so
// RabbitMQ redelivers the opening request, and another server runs the
// handler again and opens a second stream towards the same caller, which
// still waits on the first. The caller's stream ends with an error
// (DataLoss: the second server's first message repeats sequence number 1;
// or Unavailable, had it noticed the first server gone before), and none
// of the second stream's messages reach it; the second stream, which no
// caller reads, ends with an error too (here the caller's cancel notice).
func TestRetriedStreamOpening(t *testing.T) {
	base, _ := vhostURL(t)
	u, err := url.Parse(base)
	require.NoError(t, err)
	proxy := newBlackholeProxy(t, u.Host)
	viaProxy := *u
	viaProxy.Host = proxy.ln.Addr().String()

	type countReq struct{ N int }
	type note struct{ S string }
	subj := "stream-retry-" + broker.NewID()
	durable := amqp.WithDurable(amqp.ClassicQueue)

	// The first server, behind the proxy: sends a1..a3, then waits.
	firstSent := make(chan struct{})
	first := open(t, viaProxy.String(), durable, amqp.WithReconnectBackoff(time.Hour, time.Hour))
	srv1 := rpc.NewServer()
	require.NoError(t, rpc.HandleServerStream(srv1, "Notes", func(ctx context.Context, _ *countReq, send func(*note) error) error {
		for _, s := range []string{"a1", "a2", "a3"} {
			if err := send(&note{S: s}); err != nil {
				return err
			}
		}
		close(firstSent)
		<-ctx.Done()
		return ctx.Err()
	}))
	sub1, err := first.Serve(subj, srv1)
	require.NoError(t, err)
	t.Cleanup(func() { _ = sub1.Stop(ctxT(t, 5*time.Second)) })

	// The caller, heartbeat 2 s.
	caller := open(t, base, durable)
	client := rpc.NewClient(caller, rpc.WithHeartbeat(2*time.Second))
	type result struct {
		got []string
		err error
	}
	done := make(chan result, 1)
	go func() {
		var r result
		for n, err := range rpc.InvokeServerStream[countReq, note](ctxT(t, 60*time.Second), client, subj, "Notes", &countReq{N: 3}) {
			if err != nil {
				r.err = err
				break
			}
			r.got = append(r.got, n.S)
		}
		done <- r
	}()
	select {
	case <-firstSent:
	case <-time.After(30 * time.Second):
		t.Fatal("the first server did not send its messages")
	}
	// Let the caller read them before the cut (they are on their way).
	time.Sleep(200 * time.Millisecond)

	// The second server, which gets the opening request again once the
	// first one's connection is gone.
	secondErr := make(chan error, 1)
	second := open(t, base, durable)
	srv2 := rpc.NewServer()
	require.NoError(t, rpc.HandleServerStream(srv2, "Notes", func(ctx context.Context, _ *countReq, send func(*note) error) error {
		for _, s := range []string{"b1", "b2", "b3"} {
			if err := send(&note{S: s}); err != nil {
				secondErr <- err
				return err
			}
		}
		<-ctx.Done() // the stream's end: nobody reads it
		secondErr <- ctx.Err()
		return ctx.Err()
	}))
	sub2, err := second.Serve(subj, srv2)
	require.NoError(t, err)
	t.Cleanup(func() { _ = sub2.Stop(ctxT(t, 5*time.Second)) })

	proxy.close() // the first server's connection is cut, and it cannot come back

	var r result
	select {
	case r = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("the caller's stream did not end")
	}
	assert.Equal(t, []string{"a1", "a2", "a3"}, r.got, "messages the caller read")
	code := rpc.CodeOf(r.err)
	assert.Contains(t, []rpc.Code{rpc.Unavailable, rpc.DataLoss}, code, "the caller's stream ended with %v", r.err)
	t.Logf("the caller's stream ended: %v", r.err)
	for _, s := range r.got {
		assert.False(t, strings.HasPrefix(s, "b"), "a message of the second stream reached the caller")
	}

	select {
	case err := <-secondErr:
		assert.Error(t, err)
		t.Logf("the second stream ended: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("the opening request was not redelivered, or its second stream did not end")
	}
}
