package rpc_test

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/rpc"
)

// TestRejectStatus pins who writes the status of a rejected request: the
// broker reports a typed rejection and the rpc.Server builds the reply.
func TestRejectStatus(t *testing.T) {
	srv := rpc.NewServer()
	for _, tc := range []struct {
		reason broker.Reason
		code   rpc.Code
	}{
		{broker.Malformed, rpc.InvalidArgument},
		{broker.TooLarge, rpc.ResourceExhausted},
		{broker.Expired, rpc.DeadlineExceeded},
		{broker.Unavailable, rpc.Unavailable},
	} {
		t.Run(tc.reason.String(), func(t *testing.T) {
			cause := errors.New("the cause")
			rep := broker.RejectReply(srv, &broker.Message{ID: "1"}, &broker.Rejection{Reason: tc.reason, Err: cause})
			require.NotNil(t, rep)
			err := rpc.ErrorFromReply(rep)
			assert.Equal(t, tc.code, rpc.CodeOf(err))
			assert.Contains(t, err.Error(), "the cause")
		})
	}
}
