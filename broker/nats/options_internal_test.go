package nats

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestConfigDefaults(t *testing.T) {
	c, err := newConfig("", nil)
	require.NoError(t, err)
	assert.Equal(t, []string{DefaultURL}, c.urls)
	assert.Equal(t, "mqrpc", c.name)
	assert.NotNil(t, c.logger)
	assert.Nil(t, c.js, "core mode by default")

	c, err = newConfig("nats://a:4222, nats://b:4222,, tls://c:4443", []Option{
		WithName(""), WithLogger(nil), WithReconnectWait(-1),
		WithJetStream(JetStreamConfig{SubjectPrefix: "jobs."}),
	})
	require.NoError(t, err)
	assert.Equal(t, []string{"nats://a:4222", "nats://b:4222", "tls://c:4443"}, c.urls)
	assert.Equal(t, "mqrpc", c.name, "empty name keeps the default")
	assert.Equal(t, 250*time.Millisecond, c.reconnectWait)
	assert.Equal(t, JetStreamConfig{
		Stream: "MQRPC", SubjectPrefix: "jobs", MaxDeliver: 5, AckWait: 30 * time.Second,
		DeadLetterPrefix: "mqrpc.dead", DeadLetterStream: "MQRPC_DEAD",
		DuplicateWindow: 2 * time.Minute, InactiveThreshold: time.Hour, Replicas: 1,
		DeliveryBucket: "MQRPC_DELIVERIES", PublishAttempt: time.Second,
	}, *c.js)

	c, err = newConfig("", []Option{WithJetStream(JetStreamConfig{Stream: "jobs:v1"})})
	require.NoError(t, err)
	assert.Equal(t, "jobs_v1_DELIVERIES", c.js.DeliveryBucket, "a bucket name cannot hold ':'")
}

func TestConfigErrors(t *testing.T) {
	tests := []struct {
		name string
		opt  Option
		want string
	}{
		{"MissingNkeyFile", WithNkeyFile(filepath.Join(t.TempDir(), "none.nk")), "nkey seed"},
		{"OverlappingPrefixes", WithJetStream(JetStreamConfig{SubjectPrefix: "a", DeadLetterPrefix: "a.dead"}), "overlap"},
		{"SameStreams", WithJetStream(JetStreamConfig{Stream: "S", DeadLetterStream: "S"}), "both"},
		{"TooManyReplicas", WithJetStream(JetStreamConfig{Replicas: 6}), "at most 5"},
		{"BadBucket", WithJetStream(JetStreamConfig{DeliveryBucket: "a.b"}), "delivery bucket"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New("", tt.opt)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.want)
		})
	}
}

func TestSubjectTokenAndConsumerName(t *testing.T) {
	assert.True(t, subjectToken("0a1b-2c"))
	for _, bad := range []string{"", "a.b", "a*", "a>", "a b", "tab\t", "ü"} {
		assert.False(t, subjectToken(bad), bad)
	}
	assert.Equal(t, "calc_add_v1", consumerName("calc.add.v1"))
	assert.Equal(t, "a_b_c", consumerName("a*b>c"))
}
