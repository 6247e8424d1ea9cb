// Package rpctest is the rpc-level conformance suite: what a call means on
// top of any broker (status codes, errors.Is, a server that stops). It
// complements broker/brokertest, which cannot speak of status codes:
//
//	func TestRPCConformance(t *testing.T) {
//		rpctest.Run(t, rpctest.Features{}, func(t testing.TB) broker.Broker { return mybroker.New() })
//	}
package rpctest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/rpc"
)

// Features tells the suite what a broker can promise; the fields mean what
// they mean in brokertest.Features.
type Features struct {
	// ServeSettle is how long to wait after Serve before calling.
	ServeSettle time.Duration
	// Kernel: the broker is built on broker/kernel (brokertest.Features
	// Kernel): callers of a server that stops past its drain hear
	// Unavailable, and a cancel reaches the handler.
	Kernel bool
}

// NewBroker returns a new, connected broker client. The suite closes it.
type NewBroker func(t testing.TB) broker.Broker

type suite struct {
	f   Features
	new NewBroker
}

// Run runs the suite.
func Run(t *testing.T, f Features, newBroker NewBroker) {
	s := &suite{f: f, new: newBroker}
	t.Run("MiddlewareErrorIsAReply", s.testMiddlewareError)
	t.Run("DeliveryFailureOnlyOnPurpose", s.testDeliveryFailure)
	t.Run("ContextErrorsIs", s.testContextErrors)
	t.Run("StopPastDrainUnavailable", s.testAbort(false))
	t.Run("CloseUnavailable", s.testAbort(true))
	t.Run("CancelReachesHandler", s.testCancel)
	t.Run("Streams", s.testStreams)
}

func (s *suite) open(t testing.TB) broker.Broker {
	b := s.new(t)
	t.Cleanup(func() { _ = b.Close() })
	return b
}

// service returns a fresh service name that every broker accepts.
func service(testing.TB) string { return "rpctest_" + broker.NewID() }

type msg struct {
	S string `json:"s"`
}

// serve serves srv on a fresh service and returns the subscription.
func (s *suite) serve(t testing.TB, b broker.Broker, svc string, srv *rpc.Server) broker.Subscription {
	sub, err := b.Serve(svc, srv)
	require.NoError(t, err)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = sub.Stop(ctx)
	})
	if s.f.ServeSettle > 0 {
		time.Sleep(s.f.ServeSettle)
	}
	return sub
}

func echo(_ context.Context, in *msg) (*msg, error) { return in, nil }

// testMiddlewareError: a plain error from server middleware reaches the
// caller as a reply with Unknown (an *rpc.Error's own code) within 1s.
func (s *suite) testMiddlewareError(t *testing.T) {
	b := s.open(t)
	mw := func(next broker.Handler) broker.Handler {
		return broker.HandlerFunc(func(ctx context.Context, m *broker.Message) (*broker.Message, error) {
			switch m.Header.Get(broker.HeaderMethod) {
			case "Plain":
				return nil, errors.New("store unavailable")
			case "Coded":
				return nil, rpc.Errorf(rpc.PermissionDenied, "not for you")
			}
			return next.ServeMessage(ctx, m)
		})
	}
	srv := rpc.NewServer(rpc.WithServerMiddleware(mw))
	require.NoError(t, rpc.Handle(srv, "Echo", echo))
	svc := service(t)
	s.serve(t, b, svc, srv)
	c := rpc.NewClient(b)
	for method, code := range map[string]rpc.Code{"Plain": rpc.Unknown, "Coded": rpc.PermissionDenied} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		t0 := time.Now()
		err := c.Call(ctx, svc, method, &msg{}, nil)
		cancel()
		assert.Equal(t, code, rpc.CodeOf(err), "%s: %v", method, err)
		assert.Less(t, time.Since(t0), time.Second, "%s: the caller hears at once, not at its deadline", method)
	}
}

// testDeliveryFailure: only an error wrapping broker.ErrDeliveryFailed
// fails a delivery (no reply: the caller waits to its deadline).
func (s *suite) testDeliveryFailure(t *testing.T) {
	b := s.open(t)
	mw := func(next broker.Handler) broker.Handler {
		return broker.HandlerFunc(func(ctx context.Context, m *broker.Message) (*broker.Message, error) {
			return nil, fmt.Errorf("not now: %w", broker.ErrDeliveryFailed)
		})
	}
	srv := rpc.NewServer(rpc.WithServerMiddleware(mw))
	require.NoError(t, rpc.Handle(srv, "Echo", echo))
	svc := service(t)
	s.serve(t, b, svc, srv)
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	err := rpc.NewClient(b).Call(ctx, svc, "Echo", &msg{}, nil)
	assert.Equal(t, rpc.DeadlineExceeded, rpc.CodeOf(err), "%v", err)
}

// testContextErrors: errors.Is(err, context.DeadlineExceeded) and
// errors.Is(err, context.Canceled) hold for the matching codes, whether
// the code came over the wire or from this process.
func (s *suite) testContextErrors(t *testing.T) {
	b := s.open(t)
	srv := rpc.NewServer()
	block := make(chan struct{})
	defer close(block)
	require.NoError(t, rpc.Handle(srv, "Wire", func(_ context.Context, in *msg) (*msg, error) {
		if in.S == "deadline" {
			return nil, rpc.Errorf(rpc.DeadlineExceeded, "downstream too slow")
		}
		return nil, rpc.Errorf(rpc.Canceled, "downstream canceled")
	}))
	require.NoError(t, rpc.Handle(srv, "Block", func(ctx context.Context, in *msg) (*msg, error) {
		select {
		case <-block:
			return in, nil
		case <-ctx.Done():
			return nil, ctx.Err() // the same code, should this reply win the race
		}
	}))
	svc := service(t)
	s.serve(t, b, svc, srv)
	c := rpc.NewClient(b)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	err := c.Call(ctx, svc, "Wire", &msg{S: "deadline"}, nil)
	require.Equal(t, rpc.DeadlineExceeded, rpc.CodeOf(err), "%v", err)
	assert.ErrorIs(t, err, context.DeadlineExceeded, "wire DeadlineExceeded")
	assert.NotErrorIs(t, err, context.Canceled)
	err = c.Call(ctx, svc, "Wire", &msg{S: "canceled"}, nil)
	require.Equal(t, rpc.Canceled, rpc.CodeOf(err), "%v", err)
	assert.ErrorIs(t, err, context.Canceled, "wire Canceled")
	assert.NotErrorIs(t, err, context.DeadlineExceeded)

	short, cancelShort := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancelShort()
	err = c.Call(short, svc, "Block", &msg{}, nil)
	assert.Equal(t, rpc.DeadlineExceeded, rpc.CodeOf(err), "%v", err)
	assert.ErrorIs(t, err, context.DeadlineExceeded, "local DeadlineExceeded")

	cctx, ccancel := context.WithCancel(context.Background())
	time.AfterFunc(300*time.Millisecond, ccancel)
	err = c.Call(cctx, svc, "Block", &msg{}, nil)
	assert.Equal(t, rpc.Canceled, rpc.CodeOf(err), "%v", err)
	assert.ErrorIs(t, err, context.Canceled, "local Canceled")
}

// testAbort: a server that stops past its drain ctx, or whose broker
// connection closes, with a call in flight: the caller gets Unavailable
// within 1s.
func (s *suite) testAbort(byClose bool) func(t *testing.T) {
	return func(t *testing.T) {
		if !s.f.Kernel {
			t.Skip("the broker does not answer calls it abandons (Features.Kernel)")
		}
		server, caller := s.new(t), s.open(t)
		t.Cleanup(func() { _ = server.Close() })
		started, release := make(chan struct{}, 1), make(chan struct{})
		var once sync.Once
		unblock := func() { once.Do(func() { close(release) }) }
		defer unblock()
		srv := rpc.NewServer()
		require.NoError(t, rpc.Handle(srv, "Block", func(_ context.Context, in *msg) (*msg, error) {
			started <- struct{}{}
			<-release // ignores ctx
			return in, nil
		}))
		svc := service(t)
		sub := s.serve(t, server, svc, srv)
		errc := make(chan error, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			errc <- rpc.NewClient(caller).Call(ctx, svc, "Block", &msg{}, nil)
		}()
		select {
		case <-started:
		case <-time.After(10 * time.Second):
			t.Fatal("the call never reached the server")
		}
		closed := make(chan error, 1)
		if byClose {
			go func() { closed <- server.Close() }()
		} else {
			ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
			defer cancel()
			assert.ErrorIs(t, sub.Stop(ctx), context.DeadlineExceeded)
		}
		select {
		case err := <-errc:
			assert.Equal(t, rpc.Unavailable, rpc.CodeOf(err), "%v", err)
		case <-time.After(time.Second):
			t.Error("the caller got no answer within 1s")
		}
		unblock()
		if byClose {
			assert.NoError(t, <-closed)
		}
	}
}

// testCancel: a caller that cancels (no deadline) sees Canceled, and the
// handler's ctx is cancelled within 1s.
func (s *suite) testCancel(t *testing.T) {
	if !s.f.Kernel {
		t.Skip("the broker sends no cancel notice (Features.Kernel)")
	}
	server, caller := s.open(t), s.open(t)
	started := make(chan struct{}, 1)
	seen := make(chan error, 1)
	srv := rpc.NewServer()
	require.NoError(t, rpc.Handle(srv, "Block", func(ctx context.Context, in *msg) (*msg, error) {
		started <- struct{}{}
		select {
		case <-ctx.Done():
			seen <- ctx.Err()
		case <-time.After(10 * time.Second):
			seen <- nil
		}
		return in, nil
	}))
	svc := service(t)
	s.serve(t, server, svc, srv)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- rpc.NewClient(caller).Call(ctx, svc, "Block", &msg{}, nil) }()
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		cancel()
		t.Fatal("the call never reached the server")
	}
	cancel()
	select {
	case err := <-seen:
		assert.ErrorIs(t, err, context.Canceled)
	case <-time.After(time.Second):
		t.Fatal("the cancel did not reach the handler within 1s")
	}
	err := <-errc
	assert.Equal(t, rpc.Canceled, rpc.CodeOf(err), "%v", err)
	assert.ErrorIs(t, err, context.Canceled)
	assert.NotContains(t, err.Error(), "timeout", "the caller's error says canceled")
}
