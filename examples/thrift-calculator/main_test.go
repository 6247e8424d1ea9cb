package main

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/internal/testenv"
)

// The example must run, and exit cleanly, on the zero-setup brokers and on
// a real one.
func TestExample(t *testing.T) {
	brokers := map[string]func(testing.TB) string{
		"embedded": func(testing.TB) string { return "embedded" },
		"memory":   func(testing.TB) string { return "memory" },
		"rabbitmq": testenv.AMQPURL,
	}
	for name, url := range brokers {
		t.Run(name, func(t *testing.T) {
			b := url(t)
			require.NoError(t, run(b, "compact"))
		})
	}
}
