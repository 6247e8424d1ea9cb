package main

import (
	"strings"
	"testing"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/internal/testenv"
)

// The example runs on the real RabbitMQ in both modes, each on a service
// of its own. Durable mode declares a quorum queue that outlives the
// program: the test deletes it.
func TestRun(t *testing.T) {
	url := testenv.AMQPURL(t)
	for _, durable := range []bool{false, true} {
		t.Run(map[bool]string{false: "fast", true: "durable"}[durable], func(t *testing.T) {
			service := "rabbitmq_example_" + strings.ReplaceAll(broker.NewID(), "-", "_")
			if durable {
				t.Cleanup(func() { deleteQueue(t, url, service) })
			}
			require.NoError(t, run(url, service, durable))
		})
	}
}

func deleteQueue(t *testing.T, url, name string) {
	conn, err := amqp091.Dial(url)
	require.NoError(t, err)
	defer conn.Close()
	ch, err := conn.Channel()
	require.NoError(t, err)
	_, err = ch.QueueDelete(name, false, false, false)
	require.NoError(t, err)
}
