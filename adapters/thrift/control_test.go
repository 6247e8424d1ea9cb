package thrift_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	mqthrift "github.com/mqrpc/mqrpc/adapters/thrift"
	"github.com/mqrpc/mqrpc/broker/memory"
	"github.com/mqrpc/mqrpc/examples/thrift-calculator/calculator"
	"github.com/mqrpc/mqrpc/rpc/control"
)

// TestControlPlane serves a generated Thrift processor with
// control.Serve: INFO lists its method names, STATS counts a generated
// client's call by method.
func TestControlPlane(t *testing.T) {
	b := memory.New()
	defer b.Close()
	svc, err := control.Serve(b, "Calculator", mqthrift.NewServer(calculator.NewCalculatorProcessor(newCalc())))
	require.NoError(t, err)
	defer svc.Stop(context.Background()) //nolint:errcheck

	calc := calculator.NewCalculatorClient(mqthrift.NewClient(b, "Calculator"))
	_, err = calc.CalcSum(context.Background(), []float64{1, 2})
	require.NoError(t, err)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	infos, err := control.Discover[control.InfoResponse](ctx, b, "Calculator", svc.ID())
	require.NoError(t, err)
	require.Len(t, infos, 1)
	var names []string
	for _, ep := range infos[0].Endpoints {
		names = append(names, ep.Name)
		assert.Equal(t, "thrift", ep.Metadata["protocol"])
	}
	assert.Equal(t, []string{"add", "calcSum", "divide", "ping", "record"}, names)

	for _, ep := range svc.Stats().Endpoints {
		if ep.Name == "calcSum" {
			assert.Equal(t, 1, ep.NumRequests)
			return
		}
	}
	t.Fatal("no stats for calcSum")
}
