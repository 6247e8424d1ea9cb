package control_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/mqrpc/mqrpc/broker"
	amqpbroker "github.com/mqrpc/mqrpc/broker/amqp"
	"github.com/mqrpc/mqrpc/broker/memory"
	natsbroker "github.com/mqrpc/mqrpc/broker/nats"
	"github.com/mqrpc/mqrpc/internal/controltest"
	"github.com/mqrpc/mqrpc/internal/testenv"
	"github.com/mqrpc/mqrpc/rpc"
	"github.com/mqrpc/mqrpc/rpc/control"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

type AddRequest struct {
	A int `json:"a"`
	B int `json:"b"`
}
type AddReply struct {
	Sum int `json:"sum"`
}

// opener opens a new connection to the broker under test.
type opener = func(t *testing.T) broker.Broker

func brokers() map[string]opener {
	return map[string]opener{
		"memory": func() opener {
			var hub *memory.Broker
			return func(t *testing.T) broker.Broker {
				if hub == nil {
					hub = memory.New()
					t.Cleanup(func() { _ = hub.Close() })
					return hub
				}
				c := hub.Connect()
				t.Cleanup(func() { _ = c.Close() })
				return c
			}
		}(),
		"amqp": func(t *testing.T) broker.Broker {
			b, err := amqpbroker.New(testenv.AMQPURL(t))
			require.NoError(t, err)
			t.Cleanup(func() { _ = b.Close() })
			return b
		},
		"nats": func(t *testing.T) broker.Broker {
			b, err := natsbroker.New(testenv.NATSURL(t))
			require.NoError(t, err)
			t.Cleanup(func() { _ = b.Close() })
			return b
		},
	}
}

// uniqueName returns a service name no other test run uses, for brokers
// shared among engineers.
func uniqueName(prefix string) string {
	return prefix + "-" + strings.ReplaceAll(broker.NewID(), "-", "_")
}

func newCalc(t *testing.T, block chan struct{}) *rpc.Server {
	srv := rpc.NewServer()
	require.NoError(t, rpc.Handle(srv, "Add", func(_ context.Context, in *AddRequest) (*AddReply, error) {
		return &AddReply{Sum: in.A + in.B}, nil
	}))
	require.NoError(t, rpc.Handle(srv, "Fail", func(context.Context, *AddRequest) (*AddReply, error) {
		return nil, rpc.Errorf(rpc.NotFound, "no such thing")
	}))
	require.NoError(t, rpc.Handle(srv, "Block", func(ctx context.Context, _ *AddRequest) (*AddReply, error) {
		select {
		case <-block:
		case <-ctx.Done():
		}
		return &AddReply{}, nil
	}))
	require.NoError(t, rpc.HandleRaw(srv, "Raw", func(_ context.Context, b []byte) ([]byte, error) { return b, nil }))
	return srv
}

// TestControlPlane runs the control plane's cases on every broker of the
// main module; broker/rocketmq, a module of its own, runs them on RocketMQ
// (its TestRealControlPlane).
func TestControlPlane(t *testing.T) {
	for name, open := range brokers() {
		t.Run(name, func(t *testing.T) { controltest.Run(t, open) })
	}
}

func TestNoBroadcaster(t *testing.T) {
	_, err := control.Discover[control.PingResponse](context.Background(), plainBroker{}, "x", "")
	require.True(t, errors.Is(err, control.ErrNoBroadcast))
}

type plainBroker struct{ broker.Broker }

func TestName(t *testing.T) {
	assert.Equal(t, "Calculator", control.Name("Calculator"))
	assert.Equal(t, "calc_v2_x", control.Name("calc.v2>x"))
	assert.Equal(t, "$SRV.PING", control.Subject(control.Ping, "", ""))
	assert.Equal(t, "$SRV.INFO.calc", control.Subject(control.Info, "calc", ""))
	assert.Equal(t, "$SRV.STATS.calc.ID1", control.Subject(control.Stats, "calc", "ID1"))
}

func TestInvalidID(t *testing.T) {
	_, err := control.Serve(memory.New(), "x", rpc.NewServer(), control.WithID("a.b"))
	require.ErrorIs(t, err, control.ErrInvalidID)
}
