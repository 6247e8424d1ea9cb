package main

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/internal/testenv"
)

const want = `GetFeature: "Patriots Path"
ListFeatures: "Patriots Path"
ListFeatures: "Bluebell Lane"
ListFeatures: "Oak Hill"
RecordRoute: 4 points, 4 features, distance 60000
RouteChat: heard [first second]
interceptor: /routeguide.RouteGuide/ListFeatures: received 1, sent 3, OK
interceptor: /routeguide.RouteGuide/RecordRoute: received 4, sent 1, OK
interceptor: /routeguide.RouteGuide/RouteChat: received 4, sent 2, OK
`

// The route_guide service, its four kinds of method with the generated
// stubs unchanged, runs over every broker that has streams, and a stream
// server interceptor counts each stream's messages.
func TestRouteGuide(t *testing.T) {
	brokers := map[string]func(testing.TB) string{
		"embedded": func(testing.TB) string { return "embedded" },
		"memory":   func(testing.TB) string { return "memory" },
		"nats":     testenv.NATSURL,
		"rabbitmq": testenv.AMQPURL,
	}
	for name, url := range brokers {
		t.Run(name, func(t *testing.T) {
			var out bytes.Buffer
			require.NoError(t, run(url(t), &out))
			assert.Equal(t, want, out.String())
		})
	}
}
