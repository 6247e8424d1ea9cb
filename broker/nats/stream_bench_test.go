package nats_test

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"sync"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/stream"
	"github.com/mqrpc/mqrpc/internal/testenv"
)

// BenchmarkStream compares a stream (broker/stream over NATS inboxes:
// sequence numbers, credit, heartbeats) with raw nats.go publishing the
// same messages to a plain subscription, in the same run: 64 B and 4 KiB
// messages, 1 and 16 streams at once. b.N messages in all, split over the
// streams; msgs/s is the rate the readers took them at.
//
//	go test -run '^$' -bench BenchmarkStream -benchtime 20000x ./broker/nats/
func BenchmarkStream(b *testing.B) {
	url := testenv.NATSURL(b)
	for _, size := range []int{64, 4096} {
		for _, streams := range []int{1, 16} {
			name := fmt.Sprintf("size=%d/streams=%d", size, streams)
			b.Run(name+"/mqrpc", func(b *testing.B) { benchStream(b, url, size, streams) })
			b.Run(name+"/raw", func(b *testing.B) { benchRawPublish(b, url, size, streams) })
		}
	}
}

func perStream(n, streams, i int) int {
	k := n / streams
	if i < n%streams {
		k++
	}
	return k
}

func benchStream(b *testing.B, url string, size, streams int) {
	srv := newBroker(b, url)
	cli := newBroker(b, url)
	subj := uniqueSubject(b)
	body := make([]byte, size)
	_, err := srv.Serve(subj, broker.HandlerFunc(func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
		st, err := stream.Accept(ctx, req, 0)
		if err != nil {
			return nil, err
		}
		n, _ := strconv.Atoi(string(req.Body))
		for i := 0; i < n; i++ {
			if st.Send(&broker.Message{Body: body}) != nil {
				break
			}
		}
		return &broker.Message{Header: st.Finish()}, nil
	}))
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(size))
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, streams)
	for i := 0; i < streams; i++ {
		n := perStream(b.N, streams, i)
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			st, err := stream.Open(ctx, cli, stream.Config{})
			if err != nil {
				errs <- err
				return
			}
			defer st.Close()
			req := &broker.Message{Subject: subj, Body: []byte(strconv.Itoa(n))}
			st.Prepare(req)
			go func() {
				rep, err := cli.Request(st.Context(), req)
				st.Finished(rep, err)
			}()
			for got := 0; ; got++ {
				_, err := st.Recv()
				if err == io.EOF {
					if got != n {
						errs <- fmt.Errorf("got %d of %d", got, n)
					}
					return
				}
				if err != nil {
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
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
}

func benchRawPublish(b *testing.B, url string, size, streams int) {
	pub, err := natsgo.Connect(url)
	if err != nil {
		b.Fatal(err)
	}
	defer pub.Close()
	sub, err := natsgo.Connect(url)
	if err != nil {
		b.Fatal(err)
	}
	defer sub.Close()
	body := make([]byte, size)
	type reader struct {
		subj string
		n    int
		done chan struct{}
	}
	readers := make([]*reader, streams)
	for i := range readers {
		r := &reader{subj: uniqueSubject(b), n: perStream(b.N, streams, i), done: make(chan struct{})}
		got := 0
		s, err := sub.Subscribe(r.subj, func(*natsgo.Msg) {
			got++
			if got == r.n {
				close(r.done)
			}
		})
		if err != nil {
			b.Fatal(err)
		}
		_ = s.SetPendingLimits(-1, -1)
		readers[i] = r
	}
	if err := sub.Flush(); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(size))
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for _, r := range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < r.n; i++ {
				if err := pub.Publish(r.subj, body); err != nil {
					b.Error(err)
					return
				}
			}
			if r.n > 0 {
				select {
				case <-r.done:
				case <-time.After(time.Minute):
					b.Error("raw reader timed out")
				}
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
}
