package main

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/internal/testenv"
)

// The example runs on the real RocketMQ (without -race: rocketmq-client-go
// races internally, see testenv.RocketMQNoRace) and, as dial's other
// schemes still work, on the memory broker.
func TestRun(t *testing.T) {
	for name, url := range map[string]func(testing.TB) string{
		"rocketmq": func(t testing.TB) string { return "rocketmq://" + testenv.RocketMQNoRace(t) },
		"memory":   func(testing.TB) string { return "memory:" },
	} {
		t.Run(name, func(t *testing.T) { require.NoError(t, run(url(t))) })
	}
}

func TestRocketMQWithoutRace(t *testing.T) { testenv.RerunWithoutRace(t, "^TestRun$/^rocketmq$") }
