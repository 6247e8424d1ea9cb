package main

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// The quickstart is the first thing a user runs: keep it working on both
// zero-setup brokers.
func TestQuickstart(t *testing.T) {
	for _, b := range []string{"embedded", "memory"} {
		t.Run(b, func(t *testing.T) {
			old := *brokerFlag
			defer func() { *brokerFlag = old }()
			*brokerFlag = b
			require.NoError(t, run())
		})
	}
}
