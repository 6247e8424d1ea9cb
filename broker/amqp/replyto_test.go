package amqp_test

import (
	"context"
	"encoding/base64"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/amqp"
	"github.com/mqrpc/mqrpc/internal/testenv"
)

// nodeAddress is a well-formed direct reply-to address of a channel on
// node, as RabbitMQ 3.10 makes them (the node renamed reply@<its hash>).
func nodeAddress(node string) string {
	b := append([]byte{131, 88, 118, 0, byte(len(node))}, node...)
	b = append(b, 0, 0, 0x2a, 0x11, 0, 0, 0, 0, 0x65, 0x3c, 0x1f, 0x02)
	return "amq.rabbitmq.reply-to." + base64.StdEncoding.EncodeToString(b) + ".oyvwJ9+5nczD2h7KpiJN0Q=="
}

// closedAddress returns the direct reply-to address RabbitMQ gave a
// channel whose connection is closed now.
func closedAddress(t *testing.T, url string) string {
	t.Helper()
	conn, ch := rawChannel(t, url)
	_, err := ch.Consume("amq.rabbitmq.reply-to", "", true, false, false, false, nil)
	require.NoError(t, err)
	_, peek := rawChannel(t, url)
	q, err := peek.QueueDeclare("", false, true, true, false, nil)
	require.NoError(t, err)
	require.NoError(t, ch.Publish("", q.Name, false, false, amqp091.Publishing{ReplyTo: "amq.rabbitmq.reply-to"}))
	var d amqp091.Delivery
	require.Eventually(t, func() bool {
		var ok bool
		d, ok, err = peek.Get(q.Name, true)
		require.NoError(t, err)
		return ok
	}, 5*time.Second, 10*time.Millisecond)
	require.NoError(t, conn.Close())
	_, direct, ok := amqp.ReplyNode(d.ReplyTo)
	require.True(t, ok && direct, "RabbitMQ's own address %q is not read as one", d.ReplyTo)
	return d.ReplyTo
}

// tutorialCall returns a caller written like the RabbitMQ RPC tutorial's
// client: an exclusive server-named reply queue, reply_to and
// correlation_id.
func tutorialCall(t *testing.T, url, subj string) func(body string) error {
	_, ch := rawChannel(t, url)
	q, err := ch.QueueDeclare("", false, true, true, false, nil)
	require.NoError(t, err)
	replies, err := ch.Consume(q.Name, "", true, false, false, false, nil)
	require.NoError(t, err)
	return func(body string) error {
		corr := broker.NewID()
		if err := ch.Publish("", subj, false, false, amqp091.Publishing{CorrelationId: corr, ReplyTo: q.Name, Body: []byte(body)}); err != nil {
			return err
		}
		timeout := time.After(5 * time.Second)
		for {
			select {
			case d := <-replies:
				if d.CorrelationId != corr {
					continue // a late or repeated reply
				}
				if string(d.Body) != body {
					return fmt.Errorf("reply %q", d.Body)
				}
				return nil
			case <-timeout:
				return fmt.Errorf("no reply in 5s")
			}
		}
	}
}

// TestReplyToBogus: a foreign client's requests whose reply_to RabbitMQ
// cannot deliver to (a queue that does not exist, a malformed direct
// reply-to address, the address of a closed channel, one of a node that is
// not in the cluster) are served and their replies dropped, while good
// calls to the same server, in between, all succeed (an mqrpc client's,
// whose replies go out on the server's delivery channels, and a
// tutorial-style client's, whose replies go out on its reply connection):
// the server's connection and channel never close (no "connection lost",
// no "consumer lost"), and no request runs twice. On RabbitMQ 3.10 a reply
// to a node that is not running closes the connection it is published on
// (INTERNAL_ERROR, {case_clause,error} in rabbit_channel:deliver_reply):
// the server's reply connection, which it replaces.
func TestReplyToBogus(t *testing.T) {
	url := testenv.AMQPURL(t)
	conn, _ := rawChannel(t, url)
	version, _ := conn.Properties["version"].(string)
	tests := []struct {
		name    string
		replyTo string
		crashes bool // closes the connection on RabbitMQ 3.10
	}{
		{name: "no-such-queue", replyTo: "no-such-queue-" + broker.NewID()},
		{name: "one-part", replyTo: "amq.rabbitmq.reply-to.bogus"},
		{name: "not-base64", replyTo: "amq.rabbitmq.reply-to.garbage.key"}, // dropped before publishing
		{name: "closed-channel", replyTo: closedAddress(t, url)},
		{name: "unknown-node", replyTo: nodeAddress("reply@1"), crashes: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var logs testenv.LogBuffer
			srv := open(t, url, amqp.WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
			subj := "bogus-reply-" + broker.NewID()
			var mu sync.Mutex
			runs := map[string]int{}
			serve(t, srv, subj, func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
				mu.Lock()
				runs[string(req.Body)]++
				mu.Unlock()
				return echo(ctx, req)
			})
			client := open(t, url)
			_, foreign := rawChannel(t, url)

			const callers, tutorials, calls, bogus = 4, 2, 25, 40
			var wg sync.WaitGroup
			for c := range callers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := range calls {
						body := fmt.Sprintf("good-%d-%d", c, i)
						reply, err := client.Request(ctxT(t, 5*time.Second), &broker.Message{Subject: subj, Body: []byte(body)})
						if assert.NoError(t, err, body) {
							assert.Equal(t, body, string(reply.Body))
						}
					}
				}()
			}
			for c := range tutorials {
				call := tutorialCall(t, url, subj)
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := range calls {
						body := fmt.Sprintf("tutorial-%d-%d", c, i)
						assert.NoError(t, call(body), body)
					}
				}()
			}
			for i := range bogus {
				require.NoError(t, foreign.Publish("", subj, false, false, amqp091.Publishing{
					CorrelationId: fmt.Sprint(i), ReplyTo: tt.replyTo, Body: fmt.Appendf(nil, "bogus-%d", i),
				}))
				time.Sleep(2 * time.Millisecond)
			}
			wg.Wait()
			ran := func() int {
				mu.Lock()
				defer mu.Unlock()
				return len(runs)
			}
			require.Eventually(t, func() bool { return ran() == (callers+tutorials)*calls+bogus }, 10*time.Second, 10*time.Millisecond,
				"not every request ran")
			time.Sleep(300 * time.Millisecond) // a redelivery would have come by now
			mu.Lock()
			for body, n := range runs {
				assert.Equal(t, 1, n, "%s ran %d times", body, n)
			}
			mu.Unlock()
			out := logs.String()
			assert.NotContains(t, out, "amqp: connection lost", "the server's connection closed")
			assert.NotContains(t, out, "amqp: consumer lost", "the server's channel closed")
			lost := strings.Count(out, "amqp: reply connection lost")
			t.Logf("RabbitMQ %s: the reply connection closed %d times", version, lost)
			if tt.crashes && strings.HasPrefix(version, "3.10.") {
				// Once, then the replies to that node are dropped for a
				// while (5 s, longer than the test).
				assert.Equal(t, 1, lost, "reply connection losses")
				assert.Contains(t, out, "INTERNAL_ERROR")
			} else if !tt.crashes {
				assert.Zero(t, lost, "reply connection losses")
			}
		})
	}
}
