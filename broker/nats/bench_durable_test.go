package nats_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/mqrpc/mqrpc/broker"
	natsbroker "github.com/mqrpc/mqrpc/broker/nats"
	"github.com/mqrpc/mqrpc/internal/testenv"
)

// BenchmarkRequestJetStream is BenchmarkRequest's mqrpc side in durable
// mode: every request is stored in a (memory) work-queue stream,
// delivered to a pull consumer, answered and acknowledged.
//
//	go test -run '^$' -bench BenchmarkRequestJetStream -benchtime 3s ./broker/nats/
func BenchmarkRequestJetStream(b *testing.B) {
	url := testenv.NATSURL(b)
	body := make([]byte, 128)
	for _, c := range []int{1, 64} {
		b.Run("c="+strconv.Itoa(c), func(b *testing.B) {
			js := testJetStream(b, url)
			srv := newBroker(b, url, natsbroker.WithJetStream(js))
			client := newBroker(b, url, natsbroker.WithJetStream(js))
			subj := uniqueSubject(b)
			if _, err := srv.Serve(subj, broker.HandlerFunc(echoHandler)); err != nil {
				b.Fatal(err)
			}
			parallel(b, c, func() error {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				_, err := client.Request(ctx, &broker.Message{
					Subject: subj,
					Header:  broker.Header{broker.HeaderMethod: "Echo", broker.HeaderContentType: "application/octet-stream"},
					Body:    body,
				})
				return err
			})
		})
	}
}
