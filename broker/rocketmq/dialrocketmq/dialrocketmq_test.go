package dialrocketmq_test

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/broker/dial"
	_ "github.com/mqrpc/mqrpc/broker/rocketmq/dialrocketmq"
)

// Importing the package registers rocketmq:// with dial, and dial hands
// rocketmq.New the URL: a malformed list of name servers comes back as
// rocketmq.New's error, not as an unknown scheme. (Opening the real broker
// through the registration: examples/rocketmq's
// TestMainModuleExamplesOnRocketMQ.)
func TestRegistered(t *testing.T) {
	assert.Contains(t, dial.Schemes(), "rocketmq")
	_, err := dial.Open("rocketmq://")
	require.Error(t, err)
	assert.NotErrorIs(t, err, dial.ErrUnknownScheme)
	assert.ErrorContains(t, err, "rocketmq: ")
}
