package amqp_test

import (
	"bytes"
	"context"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/amqp"
	"github.com/mqrpc/mqrpc/internal/testenv"
)

// BenchmarkRequest compares a request-reply round trip through mqrpc (client
// and server of this package) with the same round trip written directly on
// amqp091-go with direct reply-to (a tutorial-style server loop and a client
// that matches replies by correlation id), against the same RabbitMQ in the
// same run, sequential (c=1) and with 64 calls in flight (c=64):
//
//	go test -run '^$' -bench BenchmarkRequest -benchtime 3000x ./broker/amqp/
//
// The ratio mqrpc/raw of the ns/op columns is what the framework costs.
func BenchmarkRequest(b *testing.B) {
	url := testenv.AMQPURL(b)
	body := bytes.Repeat([]byte("x"), 128)
	for _, c := range []int{1, 64} {
		b.Run("mqrpc/c="+strconv.Itoa(c), func(b *testing.B) {
			call := mqrpcPair(b, url)
			runConcurrent(b, c, func(ctx context.Context) error { return call(ctx, body) })
		})
		b.Run("raw/c="+strconv.Itoa(c), func(b *testing.B) {
			call := rawPair(b, url)
			runConcurrent(b, c, func(ctx context.Context) error { return call(ctx, body) })
		})
		b.Run("mqrpc-durable/c="+strconv.Itoa(c), func(b *testing.B) {
			call := mqrpcPair(b, url, amqp.WithDurable(amqp.ClassicQueue))
			runConcurrent(b, c, func(ctx context.Context) error { return call(ctx, body) })
		})
	}
}

// BenchmarkRequestRatio measures the same two round trips as
// BenchmarkRequest, but in alternating phases of phase calls each within one
// benchmark, so that load from other processes on the machine hits both
// sides alike. It reports mqrpc-ns/op, raw-ns/op and their ratio
// mqrpc/raw, and the same for the CPU time of this process per call. Calls carry a deadline (as real calls do), so mqrpc requests
// also carry mqrpc-deadline and an expiration that RabbitMQ enforces; the
// raw ones carry neither:
//
//	go test -run '^$' -bench BenchmarkRequestRatio -benchtime 20000x ./broker/amqp/
func BenchmarkRequestRatio(b *testing.B) {
	url := testenv.AMQPURL(b)
	body := bytes.Repeat([]byte("x"), 128)
	for _, c := range []int{1, 64} {
		b.Run("c="+strconv.Itoa(c), func(b *testing.B) {
			calls := [2]func(context.Context, []byte) error{mqrpcPair(b, url), rawPair(b, url)}
			phase := 250 * c
			if phase > 4000 {
				phase = 4000
			}
			var spent, cpu [2]time.Duration
			var done [2]int
			b.ReportAllocs()
			b.ResetTimer()
			for side := 0; done[0]+done[1] < b.N; side = 1 - side {
				n := phase
				if left := b.N - done[0] - done[1]; n > left {
					n = left
				}
				start, startCPU := time.Now(), processCPU()
				runN(b, c, n, func(ctx context.Context) error { return calls[side](ctx, body) })
				spent[side] += time.Since(start)
				cpu[side] += processCPU() - startCPU
				done[side] += n
			}
			b.StopTimer()
			if done[0] > 0 && done[1] > 0 {
				m := float64(spent[0].Nanoseconds()) / float64(done[0])
				r := float64(spent[1].Nanoseconds()) / float64(done[1])
				b.ReportMetric(m, "mqrpc-ns/op")
				b.ReportMetric(r, "raw-ns/op")
				b.ReportMetric(m/r, "mqrpc/raw")
				// CPU of this process (both clients and both servers) per
				// call: the framework's own cost, free of RabbitMQ's and of
				// other processes' noise.
				mc := float64(cpu[0].Nanoseconds()) / float64(done[0])
				rc := float64(cpu[1].Nanoseconds()) / float64(done[1])
				b.ReportMetric(mc, "mqrpc-cpu-ns/op")
				b.ReportMetric(rc, "raw-cpu-ns/op")
				b.ReportMetric(mc/rc, "cpu-mqrpc/raw")
			}
		})
	}
}

// processCPU returns the user and system CPU time this process used so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// runN makes n calls of f from c goroutines.
func runN(b *testing.B, c, n int, f func(context.Context) error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, c)
	for i := 0; i < c; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(n) {
				if err := f(ctx); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
}

// runConcurrent runs b.N calls of f from c goroutines.
func runConcurrent(b *testing.B, c int, f func(context.Context) error) {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, c)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < c; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(b.N) {
				if err := f(ctx); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
}

func mqrpcPair(b *testing.B, url string, opts ...amqp.Option) func(context.Context, []byte) error {
	srv := open(b, url, opts...)
	client := open(b, url, opts...)
	subj := "bench-mqrpc-" + broker.NewID()
	serve(b, srv, subj, echo)
	if testing.Verbose() {
		b.Logf("subject %s", subj)
	}
	return func(ctx context.Context, body []byte) error {
		reply, err := client.Request(ctx, &broker.Message{Subject: subj, Body: body})
		if err == nil && len(reply.Body) != len(body) {
			err = errors.New("short reply")
		}
		return err
	}
}

// rawPair starts a plain amqp091-go RPC server and returns a plain client
// call, both as a careful user of the library would write them.
func rawPair(b *testing.B, url string) func(context.Context, []byte) error {
	queue := "bench-raw-" + broker.NewID()

	_, sch := rawChannel(b, url)
	_, err := sch.QueueDeclare(queue, false, true, false, false, nil)
	require.NoError(b, err)
	require.NoError(b, sch.Qos(64, 0, false))
	msgs, err := sch.Consume(queue, "", false, false, false, false, nil)
	require.NoError(b, err)
	go func() {
		for d := range msgs {
			_ = sch.Publish("", d.ReplyTo, false, false, amqp091.Publishing{CorrelationId: d.CorrelationId, Body: d.Body})
			_ = d.Ack(false)
		}
	}()

	_, cch := rawChannel(b, url)
	replies, err := cch.Consume("amq.rabbitmq.reply-to", "", true, false, false, false, nil)
	require.NoError(b, err)
	var mu sync.Mutex
	waiting := map[string]chan []byte{}
	go func() {
		for d := range replies {
			mu.Lock()
			c := waiting[d.CorrelationId]
			delete(waiting, d.CorrelationId)
			mu.Unlock()
			if c != nil {
				c <- d.Body
			}
		}
	}()
	var seq atomic.Uint64
	return func(ctx context.Context, body []byte) error {
		corr := strconv.FormatUint(seq.Add(1), 36)
		c := make(chan []byte, 1)
		mu.Lock()
		waiting[corr] = c
		mu.Unlock()
		err := cch.Publish("", queue, false, false, amqp091.Publishing{
			CorrelationId: corr, ReplyTo: "amq.rabbitmq.reply-to", Body: body,
		})
		if err != nil {
			return err
		}
		select {
		case r := <-c:
			if len(r) != len(body) {
				return errors.New("short reply")
			}
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
