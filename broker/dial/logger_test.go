package dial_test

import (
	"bytes"
	"log/slog"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/broker/dial"
)

// WithLogger is accepted by every scheme; the memory broker has nothing
// to log, an embedded NATS connection logs to it on events.
func TestWithLogger(t *testing.T) {
	var buf bytes.Buffer
	l := slog.New(slog.NewTextHandler(&buf, nil))
	for _, url := range []string{"memory:", "embedded:"} {
		b, err := dial.Open(url, dial.WithLogger(l), dial.WithName("logger-test"))
		require.NoError(t, err, url)
		require.NoError(t, b.Close(), url)
	}
}
