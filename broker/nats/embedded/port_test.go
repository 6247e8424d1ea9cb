package embedded_test

import (
	"net"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/broker/nats/embedded"
)

// WithPort listens on the port given, so other processes know where.
func TestWithPort(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := l.Addr().(*net.TCPAddr).Port
	require.NoError(t, l.Close())
	s, err := embedded.Start(embedded.WithPort(port), embedded.WithoutJetStream())
	require.NoError(t, err)
	defer s.Close()
	assert.True(t, strings.HasSuffix(s.URL(), ":"+strconv.Itoa(port)), s.URL())
}
