package amqp_test

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/amqp"
	"github.com/mqrpc/mqrpc/internal/testenv"
)

// dead waits for the next message in queue's dead-letter queue.
func dead(t *testing.T, ch *amqp091.Channel, queue string) amqp091.Delivery {
	t.Helper()
	var d amqp091.Delivery
	require.Eventually(t, func() bool {
		var ok bool
		var err error
		d, ok, err = ch.Get(queue+".dead-letter", true)
		require.NoError(t, err)
		return ok
	}, 30*time.Second, 20*time.Millisecond, "nothing dead-lettered")
	return d
}

// TestFailureBackoff: a failing request is delivered again only after the
// retry delay, never in a tight loop, and is dead-lettered after
// maxDeliveries deliveries though it has a deadline far ahead.
func TestFailureBackoff(t *testing.T) {
	const maxDeliveries = 4
	const minDelay, maxDelay = 300 * time.Millisecond, time.Second
	url, _ := vhostURL(t)
	b := open(t, url, amqp.WithDurable(amqp.ClassicQueue), amqp.WithDeadLetter("", maxDeliveries),
		amqp.WithRetryBackoff(minDelay, maxDelay))
	subj := "backoff-" + broker.NewID()
	var mu sync.Mutex
	var at []time.Time
	serve(t, b, subj, func(_ context.Context, _ *broker.Message) (*broker.Message, error) {
		mu.Lock()
		at = append(at, time.Now())
		mu.Unlock()
		return nil, errors.New("always fails")
	})
	require.NoError(t, b.Send(ctxT(t, 10*time.Second), &broker.Message{ID: "slow", Subject: subj,
		Deadline: time.Now().Add(time.Hour)}))
	_, ch := rawChannel(t, url)
	d := dead(t, ch, subj)
	assert.Equal(t, "slow", d.MessageId)
	assert.EqualValues(t, maxDeliveries, d.Headers["x-mqrpc-deliveries"])
	mu.Lock()
	defer mu.Unlock()
	require.Len(t, at, maxDeliveries)
	for i := 1; i < len(at); i++ {
		// Delay i doubles from minDelay up to maxDelay; the jitter takes
		// up to half.
		want := min(minDelay<<(i-1), maxDelay) / 2
		assert.GreaterOrEqual(t, at[i].Sub(at[i-1]), want, "delivery %d came too soon", i+1)
	}
}

// TestForeignCountsIgnored: delivery counts a client sets on its request
// (ours, RabbitMQ's x-delivery-count and x-death) decide nothing: the
// request is delivered maxDeliveries times before it is dead-lettered, on
// classic and quorum queues.
func TestForeignCountsIgnored(t *testing.T) {
	for _, qt := range []amqp.QueueType{amqp.ClassicQueue, amqp.QuorumQueue} {
		t.Run(string(qt), func(t *testing.T) {
			const maxDeliveries = 3
			url, _ := vhostURL(t)
			b := open(t, url, amqp.WithDurable(qt), amqp.WithDeadLetter("", maxDeliveries),
				amqp.WithRetryBackoff(20*time.Millisecond, 50*time.Millisecond))
			subj := "foreign-count-" + broker.NewID()
			var runs atomic.Int64
			serve(t, b, subj, func(_ context.Context, _ *broker.Message) (*broker.Message, error) {
				runs.Add(1)
				return nil, errors.New("fails")
			})
			_, ch := rawChannel(t, url)
			require.NoError(t, ch.Publish("", subj, false, false, amqp091.Publishing{
				MessageId:    "forged",
				DeliveryMode: amqp091.Persistent,
				Headers: amqp091.Table{
					"x-mqrpc-deliveries": int32(99),
					"x-delivery-count":   int32(99),
					"x-death": []any{amqp091.Table{"queue": subj + ".retry-20ms", "reason": "expired",
						"count": int64(99), "exchange": "", "routing-keys": []any{subj + ".retry-20ms"}}},
				},
			}))
			d := dead(t, ch, subj)
			assert.Equal(t, "forged", d.MessageId)
			assert.Equal(t, int64(maxDeliveries), runs.Load(), "handler runs")
			assert.EqualValues(t, maxDeliveries, d.Headers["x-mqrpc-deliveries"])
		})
	}
}

// TestDeadlineOutOfRange: deadlines beyond what RabbitMQ's expiration can
// hold (ten years) or absurd ones from a foreign client are served, and a
// failing request with one is retried and dead-lettered like any other; a
// malformed deadline is dead-lettered at once, without reaching the
// handler.
func TestDeadlineOutOfRange(t *testing.T) {
	t.Run("fast", func(t *testing.T) {
		b := open(t, testenv.AMQPURL(t))
		subj := "far-deadline-" + broker.NewID()
		served := make(chan time.Time, 2)
		serve(t, b, subj, func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
			served <- req.Deadline
			return echo(ctx, req)
		})
		far := time.Now().Add(20 * 365 * 24 * time.Hour)
		// The earlier of the ctx deadline and Message.Deadline travels
		// (kernel.Prepare): a ctx without one, cancelled if stuck.
		ctx, cancel := context.WithCancel(context.Background())
		defer time.AfterFunc(10*time.Second, cancel).Stop()
		rep, err := b.Request(ctx, &broker.Message{Subject: subj, Body: []byte("far"), Deadline: far})
		require.NoError(t, err)
		assert.Equal(t, "far", string(rep.Body))
		assert.WithinDuration(t, far, <-served, time.Millisecond)
		require.NoError(t, b.Send(ctxT(t, 10*time.Second), &broker.Message{Subject: subj, Deadline: far}))
		<-served
	})
	t.Run("durable", func(t *testing.T) {
		const maxDeliveries = 3
		url, _ := vhostURL(t)
		b := open(t, url, amqp.WithDurable(amqp.ClassicQueue), amqp.WithDeadLetter("", maxDeliveries),
			amqp.WithRetryBackoff(20*time.Millisecond, 50*time.Millisecond))
		subj := "absurd-deadline-" + broker.NewID()
		runs := map[string]int{}
		var mu sync.Mutex
		serve(t, b, subj, func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
			mu.Lock()
			runs[req.ID]++
			mu.Unlock()
			if string(req.Body) == "fail" {
				return nil, errors.New("fails")
			}
			return echo(ctx, req)
		})
		rep, err := b.Request(ctxT(t, 10*time.Second), &broker.Message{Subject: subj, Body: []byte("far"),
			Deadline: time.Now().Add(20 * 365 * 24 * time.Hour)})
		require.NoError(t, err)
		assert.Equal(t, "far", string(rep.Body))

		_, ch := rawChannel(t, url)
		publish := func(id, deadline, body string) {
			require.NoError(t, ch.Publish("", subj, false, false, amqp091.Publishing{MessageId: id,
				DeliveryMode: amqp091.Persistent, Body: []byte(body),
				Headers: amqp091.Table{broker.HeaderDeadline: deadline}}))
		}
		publish("absurd", strconv.FormatInt(1<<63-1, 10), "fail")
		d := dead(t, ch, subj)
		assert.Equal(t, "absurd", d.MessageId)
		assert.EqualValues(t, maxDeliveries, d.Headers["x-mqrpc-deliveries"])

		publish("malformed", "tomorrow", "ok")
		d = dead(t, ch, subj)
		assert.Equal(t, "malformed", d.MessageId)
		assert.EqualValues(t, 1, d.Headers["x-mqrpc-deliveries"])
		assert.Contains(t, d.Headers["x-mqrpc-error"], "malformed header mqrpc-deadline")
		mu.Lock()
		defer mu.Unlock()
		assert.Equal(t, maxDeliveries, runs["absurd"])
		assert.Zero(t, runs["malformed"])
	})
}

// TestSameIDTwoServices: message IDs are the callers' business per
// service: the same ID sent to two services (one-way and as a call) runs
// on both, in fast and in durable mode. Nothing in broker/amqp deduplicates
// by ID.
func TestSameIDTwoServices(t *testing.T) {
	for _, mode := range []struct {
		name string
		opts []amqp.Option
	}{
		{"fast", nil},
		{"durable", []amqp.Option{amqp.WithDurable(amqp.ClassicQueue)}},
		{"quorum", []amqp.Option{amqp.WithDurable(amqp.QuorumQueue)}},
	} {
		t.Run(mode.name, func(t *testing.T) {
			url, _ := vhostURL(t)
			b := open(t, url, mode.opts...)
			got := make(chan string, 4)
			var subjects []string
			for _, svc := range []string{"a", "b"} {
				subj := "same-id-" + svc + "-" + broker.NewID()
				subjects = append(subjects, subj)
				serve(t, b, subj, func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
					got <- svc + ":" + req.ID + ":" + string(req.Body)
					return echo(ctx, req)
				})
			}
			for _, subj := range subjects {
				require.NoError(t, b.Send(ctxT(t, 10*time.Second), &broker.Message{ID: "same", Subject: subj, Body: []byte("send")}))
				rep, err := b.Request(ctxT(t, 10*time.Second), &broker.Message{ID: "same", Subject: subj, Body: []byte("call")})
				require.NoError(t, err)
				assert.Equal(t, "call", string(rep.Body))
			}
			seen := map[string]bool{}
			for range 4 {
				select {
				case s := <-got:
					seen[s] = true
				case <-time.After(10 * time.Second):
					t.Fatalf("served only %v", seen)
				}
			}
			assert.Equal(t, map[string]bool{"a:same:send": true, "a:same:call": true, "b:same:send": true, "b:same:call": true}, seen)
		})
	}
}

// TestSuspectNestedCall: a suspect waits for the handlers running in its
// broker, and new handlers wait for it, but neither for ever: a handler
// calling another service of the same broker completes while a suspect
// waits to run alone (a deadlock otherwise), and the suspect runs too.
func TestSuspectNestedCall(t *testing.T) {
	url, _ := vhostURL(t)
	b := open(t, url, amqp.WithDurable(amqp.ClassicQueue))
	outer, inner, victim := "outer-"+broker.NewID(), "inner-"+broker.NewID(), "victim-"+broker.NewID()
	started := make(chan struct{})
	proceed := make(chan struct{})
	serve(t, b, outer, func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
		close(started)
		<-proceed
		return b.Request(ctx, &broker.Message{Subject: inner, Body: req.Body})
	})
	serve(t, b, inner, echo)
	ranVictim := make(chan struct{}, 1)
	serve(t, b, victim, func(context.Context, *broker.Message) (*broker.Message, error) {
		ranVictim <- struct{}{}
		return nil, nil
	})

	type res struct {
		m   *broker.Message
		err error
	}
	resc := make(chan res, 1)
	go func() {
		m, err := b.Request(ctxT(t, 60*time.Second), &broker.Message{Subject: outer, Body: []byte("nested")})
		resc <- res{m, err}
	}()
	<-started
	// A suspect, as a server moves one there after a lost delivery: it
	// closes the gate and waits for the outer handler.
	_, ch := rawChannel(t, url)
	require.NoError(t, ch.Publish("", victim+".suspect", false, false, amqp091.Publishing{MessageId: "suspect",
		DeliveryMode: amqp091.Persistent, Headers: amqp091.Table{"x-mqrpc-deliveries": int32(1)}}))
	time.Sleep(500 * time.Millisecond)
	close(proceed) // the inner handler now waits at the closed gate

	select {
	case r := <-resc:
		require.NoError(t, r.err)
		assert.Equal(t, "nested", string(r.m.Body))
	case <-time.After(45 * time.Second):
		t.Fatal("a nested call deadlocked with a suspect waiting to run alone")
	}
	select {
	case <-ranVictim:
	case <-time.After(30 * time.Second):
		t.Fatal("the suspect did not run")
	}
}

// TestSuspectRunsAlone: in durable mode a suspect (a request moved to
// "<queue>.suspect" after its server was lost) starts only once the
// handler running in its broker finished, and a request that comes while
// the suspect runs starts only after it.
func TestSuspectRunsAlone(t *testing.T) {
	url, _ := vhostURL(t)
	b := open(t, url, amqp.WithDurable(amqp.ClassicQueue))
	subj := "alone-" + broker.NewID()
	var mu sync.Mutex
	var events []string
	record := func(e string) {
		mu.Lock()
		events = append(events, e)
		mu.Unlock()
	}
	started := make(chan string, 3)
	serve(t, b, subj, func(_ context.Context, req *broker.Message) (*broker.Message, error) {
		record("start " + req.ID)
		started <- req.ID
		time.Sleep(time.Second)
		record("end " + req.ID)
		return nil, nil
	}, broker.WithConcurrency(4))

	require.NoError(t, b.Send(ctxT(t, 10*time.Second), &broker.Message{ID: "before", Subject: subj}))
	require.Equal(t, "before", <-started)
	_, ch := rawChannel(t, url)
	require.NoError(t, ch.Publish("", subj+".suspect", false, false, amqp091.Publishing{MessageId: "suspect",
		DeliveryMode: amqp091.Persistent, Headers: amqp091.Table{"x-mqrpc-deliveries": int32(1)}}))
	require.Equal(t, "suspect", <-started)
	require.NoError(t, b.Send(ctxT(t, 10*time.Second), &broker.Message{ID: "after", Subject: subj}))
	require.Equal(t, "after", <-started)
	mu.Lock()
	defer mu.Unlock()
	assert.Equal(t, []string{"start before", "end before", "start suspect", "end suspect", "start after"}, events)
}
