// Package brokertest is the conformance suite every broker.Broker must pass,
// whether it ships with mqrpc or is your own:
//
//	func TestConformance(t *testing.T) {
//		brokertest.Run(t, brokertest.Features{NoResponders: true},
//			func(t testing.TB) broker.Broker { return mybroker.New(...) })
//	}
//
// Features says what a broker can promise; the suite tests every promise
// made and skips (with a reason) only what a broker honestly cannot do.
// Every test uses fresh, uniquely named subjects, so several runs can share
// one real broker server at once.
package brokertest

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/mqrpc/mqrpc/broker"
)

// Features tells the suite what a broker can promise.
type Features struct {
	// NoResponders: Request returns broker.ErrNoResponders quickly (well
	// before the deadline) when nobody serves the subject.
	NoResponders bool
	// Durable: a request sent while no server runs is kept and served once
	// a server starts.
	Durable bool
	// MaxBodySize is the largest body the suite round-trips. Zero means
	// 1 MiB.
	MaxBodySize int
	// Restart, when set, restarts the broker server (or drops every
	// connection to it). The suite then checks that clients and servers
	// recover by themselves.
	Restart func(t testing.TB)
	// ServeSettle is how long to wait after Serve before traffic is routed
	// to the new server (consumer-group rebalancing, for instance).
	ServeSettle time.Duration
	// Timeout bounds each call the suite makes. Zero means 10s.
	Timeout time.Duration
	// Kernel: the broker is built on broker/kernel and keeps its promises
	// of one meaning everywhere: a caller's cancel reaches the handler (a
	// cancel notice) and the caller's error says canceled, not timeout;
	// Stop past its drain ctx, or Close of the server's connection, with
	// calls in flight answers their callers at once with the handler's
	// reply to an Unavailable rejection (broker.Rejecter). Every broker
	// of mqrpc sets it once it moved onto the kernel.
	Kernel bool
	// LeakOptions are passed to goleak when checking that Close leaks no
	// goroutine, for goroutines a third-party client leaves behind by
	// design (name each one and say why at the call site).
	LeakOptions []goleak.Option
}

// NewBroker returns a new, connected broker client. The suite closes it.
type NewBroker func(t testing.TB) broker.Broker

// Run runs the conformance suite.
func Run(t *testing.T, f Features, newBroker NewBroker) {
	if f.MaxBodySize == 0 {
		f.MaxBodySize = 1 << 20
	}
	if f.Timeout == 0 {
		f.Timeout = 10 * time.Second
	}
	s := &suite{f: f, newBroker: newBroker}
	tests := []struct {
		name string
		fn   func(t *testing.T)
	}{
		{"RoundTrip", s.testRoundTrip},
		{"HeadersNotCarriedOver", s.testHeadersNotCarriedOver},
		{"SharedHeaderReadOnly", s.testSharedHeaderReadOnly},
		{"HandlerContext", s.testHandlerContext},
		{"OneWay", s.testOneWay},
		{"ConcurrentCalls", s.testConcurrentCalls},
		{"ConcurrencyLimit", s.testConcurrencyLimit},
		{"CompetingServers", s.testCompetingServers},
		{"QueueGroups", s.testQueueGroups},
		{"NoResponders", s.testNoResponders},
		{"ExpiredNotServed", s.testExpiredNotServed},
		{"CancelReturnsPromptly", s.testCancel},
		{"DeadlineReturnsPromptly", s.testDeadline},
		{"StopDrains", s.testStopDrains},
		{"StopByDeadline", s.testStopByDeadline},
		{"CancelReachesHandler", s.testCancelReachesHandler},
		{"StopPastDrainUnavailable", s.testAbortUnavailable(false)},
		{"CloseUnavailable", s.testAbortUnavailable(true)},
		{"Close", s.testClose},
		{"Streams", s.testStreams},
		{"Durable", s.testDurable},
		{"Restart", s.testRestart},
	}
	for _, tt := range tests {
		t.Run(tt.name, tt.fn)
	}
}

type suite struct {
	f         Features
	newBroker NewBroker
}

// subject returns a fresh subject name valid on every broker (RocketMQ
// topics allow only [%|a-zA-Z0-9_-]).
func subject(t testing.TB) string {
	name := strings.NewReplacer("/", "_", " ", "_").Replace(t.Name())
	if len(name) > 60 {
		name = name[len(name)-60:]
	}
	return "mqrpctest_" + name + "_" + broker.NewID()
}

func (s *suite) open(t testing.TB) broker.Broker {
	t.Helper()
	b := s.newBroker(t)
	require.NotNil(t, b)
	t.Cleanup(func() { _ = b.Close() })
	return b
}

func (s *suite) serve(t testing.TB, b broker.Broker, subj string, h broker.HandlerFunc, opts ...broker.ServeOption) broker.Subscription {
	t.Helper()
	sub, err := b.Serve(subj, h, opts...)
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

func (s *suite) ctx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), s.f.Timeout)
	t.Cleanup(cancel)
	return ctx
}

func echo(_ context.Context, req *broker.Message) (*broker.Message, error) {
	h := req.Header.Clone()
	if h == nil {
		h = broker.Header{}
	}
	h.Set("x-echo", "1")
	return &broker.Message{Header: h, Body: req.Body}, nil
}

func randomBytes(t testing.TB, n int) []byte {
	b := make([]byte, n)
	_, err := rand.Read(b)
	require.NoError(t, err)
	return b
}

func (s *suite) testRoundTrip(t *testing.T) {
	b := s.open(t)
	subj := subject(t)
	var seen sync.Map // ID -> *broker.Message as the server saw it
	s.serve(t, b, subj, func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
		cp := *req
		cp.Header = req.Header.Clone()
		cp.Body = bytes.Clone(req.Body)
		seen.Store(req.ID, &cp)
		return echo(ctx, req)
	})
	allBytes := make([]byte, 256)
	for i := range allBytes {
		allBytes[i] = byte(i)
	}
	cases := []struct {
		name   string
		header broker.Header
		body   []byte
	}{
		{"Empty", nil, nil},
		{"Text", broker.Header{"x-a": "1", "x-b": "two words", "content-type": "text/plain"}, []byte("hello")},
		{"Binary", broker.Header{"x-unicode": "héllo wörld ✓", "x-symbols": "a=b; c,d \"q\""}, allBytes},
		{"ManyHeaders", manyHeaders(32), []byte{0}},
		{"Large", broker.Header{"x-size": strconv.Itoa(s.f.MaxBodySize)}, randomBytes(t, s.f.MaxBodySize)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			id := broker.NewID()
			req := &broker.Message{ID: id, Subject: subj, Header: c.header.Clone(), Body: bytes.Clone(c.body)}
			reply, err := b.Request(s.ctx(t), req)
			require.NoError(t, err)
			require.NotNil(t, reply)
			assert.True(t, bytes.Equal(c.body, reply.Body), "reply body differs: sent %d bytes, got %d", len(c.body), len(reply.Body))
			want := c.header.Clone()
			if want == nil {
				want = broker.Header{}
			}
			want.Set("x-echo", "1")
			assert.Equal(t, want, reply.Header, "reply headers")

			v, ok := seen.Load(id)
			require.True(t, ok, "server did not see message ID %q", id)
			got := v.(*broker.Message)
			assert.Equal(t, subj, got.Subject, "subject seen by server")
			assert.True(t, bytes.Equal(c.body, got.Body), "request body seen by server differs")
			wantReq := c.header.Clone()
			if len(wantReq) == 0 {
				assert.Empty(t, got.Header, "request headers seen by server")
			} else {
				assert.Equal(t, wantReq, got.Header, "request headers seen by server")
			}
		})
	}
}

// testHeadersNotCarriedOver checks that a handler sees exactly its own
// request's headers: brokers may reuse a request message and its header
// map once its handler returned (broker.Handler), and must then start
// every request clean.
func (s *suite) testHeadersNotCarriedOver(t *testing.T) {
	b := s.open(t)
	subj := subject(t)
	s.serve(t, b, subj, func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
		return &broker.Message{Body: []byte(strings.Join(slices.Sorted(maps.Keys(req.Header)), ","))}, nil
	})
	sets := []broker.Header{{"x-a": "1", "x-b": "2"}, nil, {"x-c": "3"}, manyHeaders(3)}
	for i := range 12 {
		h := sets[i%len(sets)]
		reply, err := b.Request(s.ctx(t), &broker.Message{Subject: subj, Header: h.Clone()})
		require.NoError(t, err, "request %d", i)
		want := strings.Join(slices.Sorted(maps.Keys(h)), ",")
		require.Equal(t, want, string(reply.Body), "request %d: header names the handler saw", i)
	}
}

// testSharedHeaderReadOnly checks the other side of broker.Broker's
// ownership rule: concurrent requests share one Header map and one Body,
// as rpc.Client's calls do, while their handlers change the header they
// were given. Every handler must see the shared values, and the shared map
// must come out unchanged (under -race, also untouched).
func (s *suite) testSharedHeaderReadOnly(t *testing.T) {
	b := s.open(t)
	subj := subject(t)
	s.serve(t, b, subj, func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
		seen := req.Header.Get("x-shared") + "," + req.Header.Get("x-other") + "," + string(req.Body)
		req.Header.Set("x-shared", "changed by the handler")
		req.Header.Del("x-other")
		req.Header.Set("x-added", "1")
		return &broker.Message{Body: []byte(seen)}, nil
	}, broker.WithConcurrency(4))
	shared := broker.Header{"x-shared": "s", "x-other": "o"}
	body := []byte("body")
	const calls = 16
	errs := make(chan error, calls)
	var wg sync.WaitGroup
	for i := range calls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			reply, err := b.Request(s.ctx(t), &broker.Message{Subject: subj, Header: shared, Body: body})
			switch {
			case err != nil:
				errs <- fmt.Errorf("call %d: %w", i, err)
			case string(reply.Body) != "s,o,body":
				errs <- fmt.Errorf("call %d: the handler saw %q, want %q", i, reply.Body, "s,o,body")
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	assert.Equal(t, broker.Header{"x-shared": "s", "x-other": "o"}, shared, "the callers' shared header after the calls")
	assert.Equal(t, "body", string(body), "the callers' shared body after the calls")
}

func manyHeaders(n int) broker.Header {
	h := make(broker.Header, n)
	for i := 0; i < n; i++ {
		h.Set("x-h"+strconv.Itoa(i), strings.Repeat("v", i+1))
	}
	return h
}

// testHandlerContext checks that the deadline travels with the request:
// the server sees Message.Deadline and a ctx with that deadline.
func (s *suite) testHandlerContext(t *testing.T) {
	b := s.open(t)
	subj := subject(t)
	type seenDeadline struct{ msg, ctx time.Time }
	got := make(chan seenDeadline, 1)
	s.serve(t, b, subj, func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
		d, _ := ctx.Deadline()
		select {
		case got <- seenDeadline{req.Deadline, d}:
		default:
		}
		return &broker.Message{}, nil
	})
	deadline := time.Now().Add(s.f.Timeout)
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	_, err := b.Request(ctx, &broker.Message{Subject: subj})
	require.NoError(t, err)
	sd := <-got
	assert.WithinDuration(t, deadline, sd.msg, 2*time.Millisecond, "Message.Deadline seen by the server")
	assert.WithinDuration(t, deadline, sd.ctx, 2*time.Millisecond, "handler ctx deadline")
	assert.False(t, sd.ctx.Before(deadline.Truncate(time.Millisecond)), "deadline must never move earlier than the caller's")
}

func (s *suite) testOneWay(t *testing.T) {
	b := s.open(t)
	subj := subject(t)
	got := make(chan *broker.Message, 1)
	s.serve(t, b, subj, func(_ context.Context, req *broker.Message) (*broker.Message, error) {
		got <- &broker.Message{ID: req.ID, Header: req.Header.Clone(), Body: bytes.Clone(req.Body)}
		return nil, nil
	})
	err := b.Send(s.ctx(t), &broker.Message{ID: "oneway-1", Subject: subj, Header: broker.Header{"x-k": "v"}, Body: []byte("fire")})
	require.NoError(t, err)
	select {
	case m := <-got:
		assert.Equal(t, "oneway-1", m.ID)
		assert.Equal(t, "v", m.Header.Get("x-k"))
		assert.Equal(t, []byte("fire"), m.Body)
	case <-time.After(s.f.Timeout):
		t.Fatal("one-way message not delivered")
	}
	// A nil reply must not break the subscription.
	select {
	case <-got:
		t.Fatal("one-way message delivered twice")
	case <-time.After(100 * time.Millisecond):
	}
}

func (s *suite) testConcurrentCalls(t *testing.T) {
	const n = 1000
	b := s.open(t)
	subj := subject(t)
	s.serve(t, b, subj, echo)
	ctx := s.ctx(t)
	var wg sync.WaitGroup
	var failed atomic.Int64
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			body := []byte("call-" + strconv.Itoa(i))
			reply, err := b.Request(ctx, &broker.Message{Subject: subj, Header: broker.Header{"x-i": strconv.Itoa(i)}, Body: body})
			if err == nil && (!bytes.Equal(reply.Body, body) || reply.Header.Get("x-i") != strconv.Itoa(i)) {
				err = fmt.Errorf("call %d got the reply %q meant for another caller", i, reply.Body)
			}
			if err != nil {
				failed.Add(1)
				errs <- err
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
		break
	}
	assert.Zero(t, failed.Load(), "failed calls out of %d", n)
}

// testConcurrencyLimit checks WithConcurrency both ways: handlers that wait
// for each other all run at once up to the limit, and never more than the
// limit run at once.
func (s *suite) testConcurrencyLimit(t *testing.T) {
	const limit, n = 4, 12
	b := s.open(t)
	subj := subject(t)
	var running, peak atomic.Int32
	full := make(chan struct{})
	var fullOnce sync.Once
	s.serve(t, b, subj, func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
		now := running.Add(1)
		defer running.Add(-1)
		for {
			old := peak.Load()
			if now <= old || peak.CompareAndSwap(old, now) {
				break
			}
		}
		if now == limit {
			fullOnce.Do(func() { close(full) })
		}
		// Wait (bounded) until limit handlers run at once, then give
		// the other requests time to show they are held back.
		select {
		case <-full:
		case <-time.After(s.f.Timeout / 2):
		case <-ctx.Done():
		}
		time.Sleep(20 * time.Millisecond)
		return echo(ctx, req)
	}, broker.WithConcurrency(limit))
	ctx := s.ctx(t)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := b.Request(ctx, &broker.Message{Subject: subj, Body: []byte("x")})
			assert.NoError(t, err)
		}()
	}
	wg.Wait()
	assert.Equal(t, int32(limit), peak.Load(), "handlers running at once with WithConcurrency(%d)", limit)
}

func (s *suite) testCompetingServers(t *testing.T) {
	const n = 200
	client := s.open(t)
	subj := subject(t)
	var counts [2]atomic.Int64
	for i := range counts {
		srv := s.open(t)
		s.serve(t, srv, subj, func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
			counts[i].Add(1)
			time.Sleep(time.Millisecond) // let the other server win some
			return echo(ctx, req)
		}, broker.WithConcurrency(4))
	}
	ctx := s.ctx(t)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for i := 0; i < n; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			_, err := client.Request(ctx, &broker.Message{Subject: subj, Body: []byte("x")})
			assert.NoError(t, err)
		}()
	}
	wg.Wait()
	a, c := counts[0].Load(), counts[1].Load()
	assert.Equal(t, int64(n), a+c, "every request served exactly once")
	assert.GreaterOrEqual(t, a, int64(n/10), "server 1 got too few of %d requests (server 2 got %d)", n, c)
	assert.GreaterOrEqual(t, c, int64(n/10), "server 2 got too few of %d requests (server 1 got %d)", n, a)
}

// testQueueGroups checks that two servers in one queue group share the
// messages and that one-way messages are not duplicated within the group.
func (s *suite) testQueueGroups(t *testing.T) {
	const n = 50
	b := s.open(t)
	subj := subject(t)
	var total atomic.Int64
	for i := 0; i < 2; i++ {
		s.serve(t, b, subj, func(_ context.Context, _ *broker.Message) (*broker.Message, error) {
			total.Add(1)
			return nil, nil
		}, broker.WithQueue(subj+"_workers"))
	}
	for i := 0; i < n; i++ {
		require.NoError(t, b.Send(s.ctx(t), &broker.Message{Subject: subj, Body: []byte{byte(i)}}))
	}
	deadline := time.Now().Add(s.f.Timeout)
	for total.Load() < n && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond) // duplicates would show up by now
	assert.Equal(t, int64(n), total.Load(), "one-way messages handled once each within a queue group")
}

func (s *suite) testNoResponders(t *testing.T) {
	if !s.f.NoResponders {
		t.Skip("broker does not promise a quick no-responders error (Features.NoResponders)")
	}
	b := s.open(t)
	start := time.Now()
	_, err := b.Request(s.ctx(t), &broker.Message{Subject: subject(t), Body: []byte("anyone?")})
	elapsed := time.Since(start)
	require.Error(t, err)
	assert.ErrorIs(t, err, broker.ErrNoResponders)
	assert.Less(t, elapsed, s.f.Timeout/2, "no responders must not wait for the deadline")
}

// testExpiredNotServed checks that a request whose deadline passed while it
// waited in the queue never reaches a handler, and that one sent already
// expired fails without being served.
func (s *suite) testExpiredNotServed(t *testing.T) {
	b := s.open(t)
	subj := subject(t)
	release := make(chan struct{})
	var served sync.Map
	s.serve(t, b, subj, func(_ context.Context, req *broker.Message) (*broker.Message, error) {
		served.Store(string(req.Body), true)
		if string(req.Body) == "blocker" {
			<-release
		}
		return &broker.Message{Body: req.Body}, nil
	}, broker.WithConcurrency(1))

	ctx := s.ctx(t)
	blockerDone := make(chan error, 1)
	go func() {
		_, err := b.Request(ctx, &broker.Message{Subject: subj, Body: []byte("blocker")})
		blockerDone <- err
	}()
	require.Eventually(t, func() bool { _, ok := served.Load("blocker"); return ok }, s.f.Timeout, 5*time.Millisecond)

	// Queued behind the blocker; its deadline passes while it waits.
	shortCtx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err := b.Request(shortCtx, &broker.Message{Subject: subj, Body: []byte("expires-in-queue")})
	require.Error(t, err)
	assert.ErrorIs(t, err, broker.ErrTimeout)

	// Sent with a deadline already in the past.
	_, err = b.Request(ctx, &broker.Message{Subject: subj, Body: []byte("already-expired"), Deadline: time.Now().Add(-time.Second)})
	require.Error(t, err)
	assert.ErrorIs(t, err, broker.ErrTimeout)

	time.Sleep(300 * time.Millisecond) // the expired ones now sit at the head of the queue
	close(release)
	require.NoError(t, <-blockerDone)
	// A fresh request still works and proves the queue was drained past
	// the expired ones.
	_, err = b.Request(ctx, &broker.Message{Subject: subj, Body: []byte("fresh")})
	require.NoError(t, err)
	_, ok := served.Load("expires-in-queue")
	assert.False(t, ok, "a request whose deadline passed in the queue reached the handler")
	_, ok = served.Load("already-expired")
	assert.False(t, ok, "a request sent already expired reached the handler")
}

func (s *suite) testCancel(t *testing.T) {
	b := s.open(t)
	subj := subject(t)
	release := make(chan struct{})
	defer close(release)
	started := make(chan struct{}, 1)
	s.serve(t, b, subj, func(ctx context.Context, _ *broker.Message) (*broker.Message, error) {
		select {
		case started <- struct{}{}:
		default:
		}
		select {
		case <-release:
		case <-ctx.Done():
		}
		return &broker.Message{}, nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := b.Request(ctx, &broker.Message{Subject: subj, Deadline: time.Now().Add(s.f.Timeout)})
		errc <- err
	}()
	select {
	case <-started:
	case <-time.After(s.f.Timeout):
		t.Fatal("request never reached the server")
	}
	cancel()
	select {
	case err := <-errc:
		require.Error(t, err)
		assert.ErrorIs(t, err, context.Canceled)
		if s.f.Kernel {
			assert.NotErrorIs(t, err, broker.ErrTimeout, "a cancel is no timeout")
			assert.Contains(t, err.Error(), "cancel")
			assert.NotContains(t, err.Error(), "timeout")
		} else {
			assert.ErrorIs(t, err, broker.ErrTimeout)
		}
	case <-time.After(time.Second):
		t.Fatal("Request did not return within 1s of ctx cancel")
	}
}

func (s *suite) testDeadline(t *testing.T) {
	b := s.open(t)
	subj := subject(t)
	s.serve(t, b, subj, func(ctx context.Context, _ *broker.Message) (*broker.Message, error) {
		<-ctx.Done() // never answers in time
		return nil, ctx.Err()
	})
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := b.Request(ctx, &broker.Message{Subject: subj})
	elapsed := time.Since(start)
	require.Error(t, err)
	assert.ErrorIs(t, err, broker.ErrTimeout)
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Less(t, elapsed, 1300*time.Millisecond, "Request must return within 1s after its deadline")

	// Message.Deadline alone (no ctx deadline) bounds the wait too.
	start = time.Now()
	_, err = b.Request(context.Background(), &broker.Message{Subject: subj, Deadline: time.Now().Add(300 * time.Millisecond)})
	elapsed = time.Since(start)
	require.Error(t, err)
	assert.ErrorIs(t, err, broker.ErrTimeout)
	assert.Less(t, elapsed, 1300*time.Millisecond, "Message.Deadline must bound Request")
}

func (s *suite) testStopDrains(t *testing.T) {
	b := s.open(t)
	subj := subject(t)
	started := make(chan struct{}, 1)
	var finished atomic.Bool
	sub := s.serve(t, b, subj, func(_ context.Context, req *broker.Message) (*broker.Message, error) {
		started <- struct{}{}
		time.Sleep(300 * time.Millisecond)
		finished.Store(true)
		return &broker.Message{Body: req.Body}, nil
	})
	type res struct {
		m   *broker.Message
		err error
	}
	resc := make(chan res, 1)
	go func() {
		m, err := b.Request(s.ctx(t), &broker.Message{Subject: subj, Body: []byte("in-flight")})
		resc <- res{m, err}
	}()
	<-started
	stopCtx, cancel := context.WithTimeout(context.Background(), s.f.Timeout)
	defer cancel()
	require.NoError(t, sub.Stop(stopCtx))
	assert.True(t, finished.Load(), "Stop returned before the handler in flight finished")
	r := <-resc
	require.NoError(t, r.err, "the request in flight during Stop must get its reply")
	assert.Equal(t, []byte("in-flight"), r.m.Body)
	require.NoError(t, sub.Stop(stopCtx), "Stop is idempotent")

	// After Stop, nothing is served by the stopped subscription.
	ctx, cancel2 := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel2()
	_, err := b.Request(ctx, &broker.Message{Subject: subj})
	require.Error(t, err, "a stopped subscription served a request")
	select {
	case <-started:
		t.Fatal("a stopped subscription's handler ran")
	default:
	}
}

func (s *suite) testClose(t *testing.T) {
	opts := append([]goleak.Option{goleak.IgnoreCurrent()}, s.f.LeakOptions...)
	func() {
		b := s.newBroker(t)
		subj := subject(t)
		_, err := b.Serve(subj, broker.HandlerFunc(echo))
		require.NoError(t, err)
		if s.f.ServeSettle > 0 {
			time.Sleep(s.f.ServeSettle)
		}
		_, err = b.Request(s.ctx(t), &broker.Message{Subject: subj, Body: []byte("x")})
		require.NoError(t, err)

		// A call in flight when Close runs fails with ErrClosed.
		blocked := subject(t)
		_, err = b.Serve(blocked, broker.HandlerFunc(func(ctx context.Context, _ *broker.Message) (*broker.Message, error) {
			<-ctx.Done()
			return nil, ctx.Err()
		}))
		require.NoError(t, err)
		if s.f.ServeSettle > 0 {
			time.Sleep(s.f.ServeSettle)
		}
		errc := make(chan error, 1)
		go func() {
			_, err := b.Request(s.ctx(t), &broker.Message{Subject: blocked})
			errc <- err
		}()
		time.Sleep(200 * time.Millisecond)
		require.NoError(t, b.Close())
		select {
		case err := <-errc:
			require.Error(t, err)
			assert.ErrorIs(t, err, broker.ErrClosed, "a call in flight at Close")
		case <-time.After(5 * time.Second):
			t.Fatal("a call in flight did not return within 5s of Close")
		}
		require.NoError(t, b.Close(), "Close is idempotent")
		_, err = b.Request(s.ctx(t), &broker.Message{Subject: subj})
		assert.ErrorIs(t, err, broker.ErrClosed)
		assert.ErrorIs(t, b.Send(s.ctx(t), &broker.Message{Subject: subj}), broker.ErrClosed)
		_, err = b.Serve(subj, broker.HandlerFunc(echo))
		assert.ErrorIs(t, err, broker.ErrClosed)
	}()
	goleak.VerifyNone(t, opts...)
}

func (s *suite) testDurable(t *testing.T) {
	if !s.f.Durable {
		t.Skip("broker does not keep requests while no server runs (Features.Durable)")
	}
	client := s.open(t)
	subj := subject(t)
	// Declare the subject durably first where a broker needs a server to
	// have existed, then take the server away.
	srv := s.open(t)
	sub := s.serve(t, srv, subj, echo)
	stopCtx, cancel := context.WithTimeout(context.Background(), s.f.Timeout)
	defer cancel()
	require.NoError(t, sub.Stop(stopCtx))

	errc := make(chan error, 1)
	var reply *broker.Message
	go func() {
		var err error
		reply, err = client.Request(s.ctx(t), &broker.Message{Subject: subj, Body: []byte("kept")})
		errc <- err
	}()
	time.Sleep(500 * time.Millisecond)
	select {
	case err := <-errc:
		t.Fatalf("request returned while no server ran: %v", err)
	default:
	}
	s.serve(t, s.open(t), subj, echo)
	require.NoError(t, <-errc)
	assert.Equal(t, []byte("kept"), reply.Body)
}

func (s *suite) testRestart(t *testing.T) {
	if s.f.Restart == nil {
		t.Skip("no way to restart the broker server given (Features.Restart)")
	}
	client := s.open(t)
	srv := s.open(t)
	subj := subject(t)
	s.serve(t, srv, subj, echo)
	_, err := client.Request(s.ctx(t), &broker.Message{Subject: subj, Body: []byte("before")})
	require.NoError(t, err)

	s.f.Restart(t)

	// Both sides must recover by themselves: retry for a bounded time.
	deadline := time.Now().Add(60 * time.Second)
	var lastErr error
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		reply, err := client.Request(ctx, &broker.Message{Subject: subj, Body: []byte("after")})
		cancel()
		if err == nil {
			assert.Equal(t, []byte("after"), reply.Body)
			return
		}
		lastErr = err
		time.Sleep(250 * time.Millisecond)
	}
	t.Fatalf("no successful call within 60s after the broker restarted; last error: %v", lastErr)
}

// ErrorIsAny reports whether err matches any of targets; a convenience for
// broker tests that accept one of several sentinels.
func ErrorIsAny(err error, targets ...error) bool {
	for _, t := range targets {
		if errors.Is(err, t) {
			return true
		}
	}
	return false
}

// testStopByDeadline: Stop returns by its ctx's deadline although a
// handler ignores its ctx and never returns by itself.
func (s *suite) testStopByDeadline(t *testing.T) {
	b := s.open(t)
	subj := subject(t)
	release := make(chan struct{})
	started := make(chan struct{}, 1)
	sub, err := b.Serve(subj, broker.HandlerFunc(func(context.Context, *broker.Message) (*broker.Message, error) {
		select {
		case started <- struct{}{}:
		default:
		}
		<-release // ignores ctx
		return &broker.Message{}, nil
	}))
	require.NoError(t, err)
	s.settle()
	go func() { _, _ = b.Request(s.ctx(t), &broker.Message{Subject: subj}) }()
	select {
	case <-started:
	case <-time.After(s.f.Timeout):
		close(release)
		t.Fatal("request never reached the server")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	stopped := make(chan error, 1)
	go func() { stopped <- sub.Stop(ctx) }()
	defer close(release)
	select {
	case err := <-stopped:
		assert.ErrorIs(t, err, context.DeadlineExceeded, "Stop past its ctx says so")
	case <-time.After(200*time.Millisecond + time.Second):
		t.Error("Stop did not return by its ctx's deadline (+1s)")
	}
}

func (s *suite) settle() {
	if s.f.ServeSettle > 0 {
		time.Sleep(s.f.ServeSettle)
	}
}

// testCancelReachesHandler: a caller that cancels its ctx (no deadline)
// has the handler's ctx cancelled within 1s, on another connection.
func (s *suite) testCancelReachesHandler(t *testing.T) {
	if !s.f.Kernel {
		t.Skip("the broker sends no cancel notice (Features.Kernel)")
	}
	server, caller := s.open(t), s.open(t)
	subj := subject(t)
	started := make(chan struct{}, 1)
	seen := make(chan error, 1)
	s.serve(t, server, subj, func(ctx context.Context, _ *broker.Message) (*broker.Message, error) {
		started <- struct{}{}
		select {
		case <-ctx.Done():
			seen <- ctx.Err()
		case <-time.After(s.f.Timeout):
			seen <- nil
		}
		return nil, ctx.Err()
	})
	s.settle()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := caller.Request(ctx, &broker.Message{Subject: subj})
		errc <- err
	}()
	select {
	case <-started:
	case <-time.After(s.f.Timeout):
		cancel()
		t.Fatal("request never reached the server")
	}
	cancel()
	select {
	case err := <-seen:
		assert.ErrorIs(t, err, context.Canceled, "the handler's ctx says canceled")
	case <-time.After(time.Second):
		t.Fatal("the caller's cancel did not reach the handler within 1s")
	}
	err := <-errc
	assert.ErrorIs(t, err, context.Canceled)
	assert.NotErrorIs(t, err, broker.ErrTimeout)
}

// rejecter is a handler that blocks, ignoring its ctx, until released,
// and answers rejections with the reason in the body, as rpc.Server
// answers them with a status.
type rejecter struct {
	started chan struct{}
	release chan struct{}
}

func (r rejecter) ServeMessage(context.Context, *broker.Message) (*broker.Message, error) {
	r.started <- struct{}{}
	<-r.release
	return &broker.Message{Body: []byte("late")}, nil
}

func (rejecter) Reject(_ *broker.Message, rj *broker.Rejection) *broker.Message {
	return &broker.Message{Body: []byte("rejected: " + rj.Reason.String())}
}

// testAbortUnavailable: Stop past its drain ctx (or Close of the server's
// connection) with a call in flight answers the caller within 1s with the
// handler's reply to an Unavailable rejection.
func (s *suite) testAbortUnavailable(byClose bool) func(t *testing.T) {
	return func(t *testing.T) {
		if !s.f.Kernel {
			t.Skip("the broker does not answer calls it abandons (Features.Kernel)")
		}
		server, caller := s.newBroker(t), s.open(t)
		t.Cleanup(func() { _ = server.Close() })
		subj := subject(t)
		h := rejecter{started: make(chan struct{}, 1), release: make(chan struct{})}
		var once sync.Once
		release := func() { once.Do(func() { close(h.release) }) }
		defer release() // the handler returns after the test
		sub, err := server.Serve(subj, h)
		require.NoError(t, err)
		s.settle()
		type res struct {
			m   *broker.Message
			err error
		}
		got := make(chan res, 1)
		go func() {
			m, err := caller.Request(s.ctx(t), &broker.Message{Subject: subj})
			got <- res{m, err}
		}()
		select {
		case <-h.started:
		case <-time.After(s.f.Timeout):
			t.Fatal("request never reached the server")
		}
		closed := make(chan error, 1)
		if byClose {
			// Close may wait for the handler, which ignores its ctx.
			go func() { closed <- server.Close() }()
		} else {
			ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
			defer cancel()
			assert.ErrorIs(t, sub.Stop(ctx), context.DeadlineExceeded)
		}
		select {
		case r := <-got:
			require.NoError(t, r.err)
			assert.Equal(t, "rejected: unavailable", string(r.m.Body))
		case <-time.After(time.Second):
			t.Error("the caller got no answer within 1s")
		}
		release()
		if byClose {
			assert.NoError(t, <-closed)
		}
	}
}
