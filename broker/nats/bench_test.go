package nats_test

import (
	"context"
	"runtime"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/internal/testenv"
)

// BenchmarkRequest compares an mqrpc call over NATS with a raw nats.go
// request against the same server, in the same run, at 1 and 64 callers.
// Both sides send the same 128-byte body and the same two headers, and
// both servers echo; the raw one is a plain queue subscription.
//
//	go test -run '^$' -bench BenchmarkRequest -benchtime 3s ./broker/nats/
func BenchmarkRequest(b *testing.B) {
	url := testenv.NATSURL(b)
	body := make([]byte, 128)
	for _, c := range []int{1, 64} {
		b.Run("c="+strconv.Itoa(c)+"/mqrpc", func(b *testing.B) {
			srv := newBroker(b, url)
			client := newBroker(b, url)
			subj := uniqueSubject(b)
			_, err := srv.Serve(subj, broker.HandlerFunc(echoHandler))
			if err != nil {
				b.Fatal(err)
			}
			parallel(b, c, func() error {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				_, err := client.Request(ctx, &broker.Message{
					Subject: subj,
					Header:  broker.Header{broker.HeaderMethod: "Echo", broker.HeaderContentType: "application/octet-stream"},
					Body:    body,
				})
				return err
			})
		})
		b.Run("c="+strconv.Itoa(c)+"/raw", func(b *testing.B) {
			srv, err := natsgo.Connect(url)
			if err != nil {
				b.Fatal(err)
			}
			defer srv.Close()
			client, err := natsgo.Connect(url)
			if err != nil {
				b.Fatal(err)
			}
			defer client.Close()
			subj := uniqueSubject(b)
			if _, err := srv.QueueSubscribe(subj, subj, func(m *natsgo.Msg) {
				_ = m.RespondMsg(&natsgo.Msg{Header: m.Header, Data: m.Data})
			}); err != nil {
				b.Fatal(err)
			}
			if err := srv.Flush(); err != nil {
				b.Fatal(err)
			}
			parallel(b, c, func() error {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				m := &natsgo.Msg{Subject: subj, Header: natsgo.Header{
					broker.HeaderMethod:      {"Echo"},
					broker.HeaderContentType: {"application/octet-stream"},
				}, Data: body}
				_, err := client.RequestMsgWithContext(ctx, m)
				return err
			})
		})
	}
}

// parallel runs call b.N times from c goroutines.
func parallel(b *testing.B, c int, call func() error) {
	b.ReportAllocs()
	if c == 1 {
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if err := call(); err != nil {
				b.Fatal(err)
			}
		}
		return
	}
	b.SetParallelism((c + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := call(); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkRatio alternates an mqrpc call and a raw nats.go call in the
// same loop (same server, same goroutines, same moment), so that a busy or
// noisy machine slows both alike, and reports the mean latency of each and
// their ratio mqrpc/raw. At c=64, 64 goroutines each alternate.
//
//	go test -run '^$' -bench BenchmarkRatio -benchtime 5000x ./broker/nats/
func BenchmarkRatio(b *testing.B) {
	url := testenv.NATSURL(b)
	body := make([]byte, 128)
	for _, c := range []int{1, 64} {
		b.Run("c="+strconv.Itoa(c), func(b *testing.B) {
			srv := newBroker(b, url)
			client := newBroker(b, url)
			subj := uniqueSubject(b)
			if _, err := srv.Serve(subj, broker.HandlerFunc(echoHandler)); err != nil {
				b.Fatal(err)
			}
			rawSrv, err := natsgo.Connect(url)
			if err != nil {
				b.Fatal(err)
			}
			defer rawSrv.Close()
			rawClient, err := natsgo.Connect(url)
			if err != nil {
				b.Fatal(err)
			}
			defer rawClient.Close()
			rawSubj := uniqueSubject(b)
			if _, err := rawSrv.QueueSubscribe(rawSubj, rawSubj, func(m *natsgo.Msg) {
				_ = m.RespondMsg(&natsgo.Msg{Header: m.Header, Data: m.Data})
			}); err != nil {
				b.Fatal(err)
			}
			if err := rawSrv.Flush(); err != nil {
				b.Fatal(err)
			}
			var mqrpcNs, rawNs atomic.Int64
			pair := func() error {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				t0 := time.Now()
				_, err := client.Request(ctx, &broker.Message{
					Subject: subj,
					Header:  broker.Header{broker.HeaderMethod: "Echo", broker.HeaderContentType: "application/octet-stream"},
					Body:    body,
				})
				if err != nil {
					return err
				}
				t1 := time.Now()
				_, err = rawClient.RequestMsgWithContext(ctx, &natsgo.Msg{Subject: rawSubj, Header: natsgo.Header{
					broker.HeaderMethod:      {"Echo"},
					broker.HeaderContentType: {"application/octet-stream"},
				}, Data: body})
				t2 := time.Now()
				mqrpcNs.Add(int64(t1.Sub(t0)))
				rawNs.Add(int64(t2.Sub(t1)))
				return err
			}
			parallel(b, c, pair)
			b.StopTimer()
			m, r := float64(mqrpcNs.Load())/float64(b.N), float64(rawNs.Load())/float64(b.N)
			b.ReportMetric(m, "mqrpc-ns/call")
			b.ReportMetric(r, "raw-ns/call")
			b.ReportMetric(m/r, "mqrpc/raw")
		})
	}
}
