package jsonrpc_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/adapters/jsonrpc"
	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/amqp"
	"github.com/mqrpc/mqrpc/broker/nats"
	"github.com/mqrpc/mqrpc/internal/testenv"
	"github.com/mqrpc/mqrpc/rpc"
)

// TestRealBrokers runs JSON-RPC calls, notifications and batches, in both
// dialects, over RabbitMQ and NATS.
func TestRealBrokers(t *testing.T) {
	brokers := []struct {
		name string
		open func(t *testing.T) broker.Broker
	}{
		{"rabbitmq", func(t *testing.T) broker.Broker {
			b, err := amqp.New(testenv.AMQPURL(t))
			require.NoError(t, err)
			return b
		}},
		{"nats", func(t *testing.T) broker.Broker {
			b, err := nats.New(testenv.NATSURL(t))
			require.NoError(t, err)
			return b
		}},
	}
	for _, bt := range brokers {
		t.Run(bt.name, func(t *testing.T) {
			b := bt.open(t)
			defer b.Close()
			subject := "mqrpc.test.jsonrpc." + broker.NewID()
			notes := make(chan string, 4)
			serve(t, b, subject, notes)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()

			for _, opts := range [][]jsonrpc.ClientOption{nil, {jsonrpc.WithVersion11()}} {
				c := jsonrpc.NewClient(b, subject, opts...)
				sum, err := jsonrpc.Invoke[int](ctx, c, "add", []int{40, 2})
				require.NoError(t, err)
				assert.Equal(t, 42, sum)

				err = c.Call(ctx, "fail", []string{"notfound"}, nil)
				assert.Equal(t, rpc.NotFound, rpc.CodeOf(err), "%v", err)
			}

			c := jsonrpc.NewClient(b, subject)
			require.NoError(t, c.Notify(ctx, "log", []string{bt.name}))
			select {
			case n := <-notes:
				assert.Equal(t, bt.name, n)
			case <-ctx.Done():
				t.Fatal("the notification never arrived")
			}
			var hi string
			elems := []*jsonrpc.BatchElem{{Method: "hello", Params: []string{"batch"}, Result: &hi}, {Method: "nope"}}
			require.NoError(t, c.Batch(ctx, elems))
			assert.Equal(t, "hello batch", hi)
			assert.Equal(t, rpc.Unimplemented, rpc.CodeOf(elems[1].Error))
		})
	}
}

// TestJavaClientWire plays the RabbitMQ Java client (JsonRpcClient over
// RpcClient) with a plain AMQP client: the messages it publishes (default
// exchange, routing key = queue, reply_to = direct reply-to, a
// correlation id, no content type, a 1.1 request with a null id) and what
// it reads from the replies.
func TestJavaClientWire(t *testing.T) {
	url := testenv.AMQPURL(t)
	b, err := amqp.New(url)
	require.NoError(t, err)
	defer b.Close()
	queue := "mqrpc.test.jsonrpc.java." + broker.NewID()
	serve(t, b, queue, nil)

	conn, err := amqp091.Dial(url)
	require.NoError(t, err)
	defer conn.Close()
	ch, err := conn.Channel()
	require.NoError(t, err)
	replies, err := ch.Consume("amq.rabbitmq.reply-to", "", true, false, false, false, nil)
	require.NoError(t, err)

	call := func(corrID, body string) map[string]any {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		require.NoError(t, ch.PublishWithContext(ctx, "", queue, false, false, amqp091.Publishing{
			CorrelationId: corrID, ReplyTo: "amq.rabbitmq.reply-to", Body: []byte(body),
		}))
		select {
		case d := <-replies:
			assert.Equal(t, corrID, d.CorrelationId)
			var m map[string]any
			require.NoError(t, json.Unmarshal(d.Body, &m), string(d.Body))
			return m
		case <-ctx.Done():
			t.Fatal("no reply")
			return nil
		}
	}

	// JsonRpcClient's constructor: system.describe, read with bean setters.
	d := call("1", `{"id":null,"method":"system.describe","version":"1.1","params":[]}`)
	assert.Equal(t, "1.1", d["version"])
	assert.NotContains(t, d, "id")
	desc := d["result"].(map[string]any)
	assert.Equal(t, "calc", desc["name"])
	var add map[string]any
	for _, p := range desc["procs"].([]any) {
		if p := p.(map[string]any); p["name"] == "add" {
			add = p
		}
	}
	require.NotNil(t, add)
	assert.Equal(t, "long", add["javaReturnType"]) // Class.forName-able or primitive
	assert.Equal(t, true, add["idempotent"])       // a boolean, for setIdempotent(boolean)
	assert.Len(t, add["params"], 2)                // found by name and arity

	// client.call("add", new Object[]{40, 2})
	r := call("2", `{"method":"add","id":null,"params":[40,2],"version":"1.1"}`)
	assert.Equal(t, map[string]any{"version": "1.1", "result": 42.0}, r)

	// An error: JsonRpcException(name, code, message, error).
	r = call("3", `{"method":"nope","id":null,"params":[],"version":"1.1"}`)
	assert.Equal(t, map[string]any{"version": "1.1", "error": map[string]any{
		"name": "JSONRPCError", "code": float64(jsonrpc.CodeMethodNotFound), "message": "method not found: nope", "error": nil,
	}}, r)
}
