package nats_test

import (
	"testing"

	"github.com/nats-io/nats-server/v2/server"
	natsgo "github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	natsbroker "github.com/mqrpc/mqrpc/broker/nats"
	"github.com/mqrpc/mqrpc/broker/nats/embedded"
)

// WithNATSOptions passes nats.go options through: a server that wants a
// user and password refuses the broker without them and accepts it with
// nats.UserInfo.
func TestWithNATSOptions(t *testing.T) {
	s, err := embedded.Start(embedded.WithoutJetStream(), embedded.WithServerOptions(func(o *server.Options) {
		o.Username, o.Password = "app", "secret"
	}))
	require.NoError(t, err)
	defer s.Close()
	_, err = natsbroker.New(s.URL())
	require.Error(t, err, "no credentials")
	b, err := natsbroker.New(s.URL(), natsbroker.WithNATSOptions(natsgo.UserInfo("app", "secret")))
	require.NoError(t, err)
	require.NoError(t, b.Close())
}
