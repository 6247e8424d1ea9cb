package main

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/internal/testenv"
)

// The quickstart is the first thing a user runs: keep it working on both
// zero-setup brokers and on every real one (RocketMQ: examples/rocketmq).
func TestQuickstart(t *testing.T) {
	brokers := map[string]func(testing.TB) string{
		"embedded": func(testing.TB) string { return "embedded" },
		"memory":   func(testing.TB) string { return "memory" },
		"nats":     testenv.NATSURL,
		"rabbitmq": testenv.AMQPURL,
	}
	for name, url := range brokers {
		t.Run(name, func(t *testing.T) {
			old := *brokerFlag
			defer func() { *brokerFlag = old }()
			*brokerFlag = url(t)
			require.NoError(t, run())
		})
	}
}
