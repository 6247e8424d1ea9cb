package thrift_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	mqthrift "github.com/mqrpc/mqrpc/adapters/thrift"
	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/amqp"
	"github.com/mqrpc/mqrpc/broker/nats"
	"github.com/mqrpc/mqrpc/examples/thrift-calculator/calculator"
	"github.com/mqrpc/mqrpc/internal/testenv"
	"github.com/mqrpc/mqrpc/rpc"
)

// TestRealBrokers makes Thrift calls, in each protocol, over RabbitMQ and
// NATS: with a Client, with a Transport, and oneway.
func TestRealBrokers(t *testing.T) {
	brokers := []struct {
		name string
		open func(t *testing.T) broker.Broker
	}{
		{"rabbitmq", func(t *testing.T) broker.Broker {
			b, err := amqp.New(testenv.AMQPURL(t))
			require.NoError(t, err)
			return b
		}},
		{"nats", func(t *testing.T) broker.Broker {
			b, err := nats.New(testenv.NATSURL(t))
			require.NoError(t, err)
			return b
		}},
	}
	for _, bt := range brokers {
		t.Run(bt.name, func(t *testing.T) {
			b := bt.open(t)
			defer b.Close()
			subject := "mqrpc.test.thrift." + broker.NewID()
			h := newCalc()
			sub, err := b.Serve(subject, mqthrift.NewServer(calculator.NewCalculatorProcessor(h)))
			require.NoError(t, err)
			defer sub.Stop(context.Background())

			for _, p := range protocols {
				tr := mqthrift.NewTransport(b, subject, mqthrift.WithProtocol(p), mqthrift.WithOneway("record"))
				clients := map[string]*calculator.CalculatorClient{
					"Client":    calculator.NewCalculatorClient(mqthrift.NewClient(b, subject, mqthrift.WithProtocol(p))),
					"Transport": calculator.NewCalculatorClientFactory(tr, p.Factory(nil)),
				}
				for kind, c := range clients {
					t.Run(p.String()+"/"+kind, func(t *testing.T) {
						ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
						defer cancel()
						total, err := c.CalcSum(ctx, []float64{1, 2, 3, 4.5})
						require.NoError(t, err)
						assert.Equal(t, 10.5, total)

						_, err = c.Divide(ctx, 1, 0)
						var io *calculator.InvalidOperation
						require.ErrorAs(t, err, &io)

						_, err = c.Divide(ctx, 1, divNotFound)
						require.Error(t, err)
						assert.Equal(t, "Internal error processing divide: not_found: no such divisor", err.Error())
						if kind == "Client" {
							// The status header crossed the broker.
							assert.Equal(t, rpc.NotFound, rpc.CodeOf(err))
						}

						require.NoError(t, c.Record(ctx, bt.name+" "+p.String()+" "+kind))
						select {
						case note := <-h.notes:
							assert.Equal(t, bt.name+" "+p.String()+" "+kind, note)
						case <-ctx.Done():
							t.Fatal("the oneway call never arrived")
						}
					})
				}
			}
		})
	}
}
