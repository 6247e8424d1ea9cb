package rocketmq_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/broker/rocketmq"
)

// WithProducerGroup is accepted; an empty name selects the default. (No
// name server runs at 127.0.0.1:1: New does not need one.)
func TestWithProducerGroup(t *testing.T) {
	for _, g := range []string{"mqrpc-test-producers", ""} {
		b, err := rocketmq.New("127.0.0.1:1", rocketmq.WithProducerGroup(g))
		require.NoError(t, err, g)
		require.NoError(t, b.Close(), g)
	}
}
