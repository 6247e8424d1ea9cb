package rocketmq

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

// New takes the name server list in both forms; a URL of another scheme
// or with a path is refused.
func TestNameServers(t *testing.T) {
	for in, want := range map[string][]string{
		"127.0.0.1:9876":                         {"127.0.0.1:9876"},
		"h1:9876;h2:9876":                        {"h1:9876", "h2:9876"},
		"rocketmq://h1:9876,h2:9876":             {"h1:9876", "h2:9876"},
		"ROCKETMQ://h1:9876,rocketmq://h2:9876/": {"h1:9876", "h2:9876"},
	} {
		got, err := nameServers(in)
		assert.NoError(t, err, in)
		assert.Equal(t, want, got, in)
	}
	for _, bad := range []string{"", " ; ", "nats://127.0.0.1:4222", "rocketmq://", "rocketmq://h:9876/x"} {
		_, err := nameServers(bad)
		assert.Error(t, err, "%q", bad)
	}
}
