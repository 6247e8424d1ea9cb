package brokertest_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/brokertest"
)

func TestErrorIsAny(t *testing.T) {
	err := fmt.Errorf("call: %w", broker.ErrTimeout)
	if !brokertest.ErrorIsAny(err, broker.ErrClosed, broker.ErrTimeout) {
		t.Error("a wrapped ErrTimeout matches")
	}
	if brokertest.ErrorIsAny(err, broker.ErrClosed) || brokertest.ErrorIsAny(errors.New("x")) {
		t.Error("no target matches")
	}
}
