package rpc_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/protobuf/proto"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/amqp"
	"github.com/mqrpc/mqrpc/broker/memory"
	natsbroker "github.com/mqrpc/mqrpc/broker/nats"
	jsoncodec "github.com/mqrpc/mqrpc/codec/json"
	protocodec "github.com/mqrpc/mqrpc/codec/proto"
	"github.com/mqrpc/mqrpc/internal/testenv"
	"github.com/mqrpc/mqrpc/rpc"
)

type outOfStock struct {
	SKU  string
	Left int
}

const outOfStockType = "example.com/inventory.OutOfStock"

// detailServer serves "Take", which fails with NotFound and two details:
// a JSON one and a protobuf one.
func detailServer(t *testing.T) *rpc.Server {
	t.Helper()
	srv := rpc.NewServer()
	require.NoError(t, rpc.Handle(srv, "Take", func(_ context.Context, in *outOfStock) (*outOfStock, error) {
		d1, err := rpc.NewErrorDetail(outOfStockType, jsoncodec.Codec{}, &outOfStock{SKU: in.SKU, Left: 0})
		if err != nil {
			return nil, err
		}
		d2, err := rpc.NewErrorDetail("type.googleapis.com/google.rpc.BadRequest", protocodec.Codec{},
			&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: "sku", Description: "unknown"}}})
		if err != nil {
			return nil, err
		}
		return nil, rpc.Errorf(rpc.NotFound, "no stock of %s", in.SKU).WithDetails(d1, d2)
	}))
	return srv
}

// checkDetails asserts err is the error detailServer's Take returns.
func checkDetails(t *testing.T, err error) {
	t.Helper()
	var e *rpc.Error
	require.ErrorAs(t, fmt.Errorf("wrapped: %w", err), &e)
	assert.True(t, e.Wire())
	assert.Equal(t, rpc.NotFound, e.Code())
	assert.Equal(t, "no stock of A1", e.Message())
	require.Len(t, e.Details(), 2)

	d := e.Details()[0]
	assert.Equal(t, outOfStockType, d.Type)
	assert.Equal(t, "application/json", d.ContentType)
	var oos outOfStock
	require.NoError(t, d.Unmarshal(jsoncodec.Codec{}, &oos))
	assert.Equal(t, outOfStock{SKU: "A1"}, oos)
	assert.Error(t, d.Unmarshal(protocodec.Codec{}, &errdetails.BadRequest{}), "a JSON detail is not decoded as protobuf")

	var br errdetails.BadRequest
	require.NoError(t, e.Details()[1].Unmarshal(protocodec.Codec{}, &br))
	assert.Equal(t, "sku", br.GetFieldViolations()[0].GetField())
}

// Details travel with the error on the in-process broker and on real ones,
// whatever codec the call uses.
func TestErrorDetails(t *testing.T) {
	brokers := map[string]func(t *testing.T) broker.Broker{
		"memory": func(*testing.T) broker.Broker { return memory.New() },
		"nats": func(t *testing.T) broker.Broker {
			b, err := natsbroker.New(testenv.NATSURL(t))
			require.NoError(t, err)
			return b
		},
		"rabbitmq": func(t *testing.T) broker.Broker {
			b, err := amqp.New(testenv.AMQPURL(t))
			require.NoError(t, err)
			return b
		},
	}
	for name, open := range brokers {
		t.Run(name, func(t *testing.T) {
			b := open(t)
			defer b.Close()
			subject := "rpcdetails-" + broker.NewID()
			sub, err := b.Serve(subject, detailServer(t))
			require.NoError(t, err)
			defer sub.Stop(context.Background())
			_, err = rpc.Invoke[outOfStock, outOfStock](context.Background(), rpc.NewClient(b), subject, "Take", &outOfStock{SKU: "A1"})
			checkDetails(t, err)
		})
	}
}

// The details header is JSON a foreign client reads without mqrpc: type,
// content type and the value in standard base64.
func TestErrorDetailsWire(t *testing.T) {
	srv := detailServer(t)
	reply, err := srv.ServeMessage(context.Background(), &broker.Message{
		Header: broker.Header{"mqrpc-method": "Take"}, Body: []byte(`{"SKU":"A1"}`)})
	require.NoError(t, err)
	assert.Equal(t, "5", reply.Header.Get("mqrpc-status"))
	var entries []struct {
		Type        string `json:"type"`
		ContentType string `json:"content-type"`
		Value       string `json:"value"`
	}
	require.NoError(t, json.Unmarshal([]byte(reply.Header.Get("mqrpc-details")), &entries))
	require.Len(t, entries, 2)
	assert.Equal(t, outOfStockType, entries[0].Type)
	assert.Equal(t, "application/json", entries[0].ContentType)
	v, err := base64.StdEncoding.DecodeString(entries[0].Value)
	require.NoError(t, err)
	assert.JSONEq(t, `{"SKU":"A1","Left":0}`, string(v))
	assert.Equal(t, "application/protobuf", entries[1].ContentType)
	v, err = base64.StdEncoding.DecodeString(entries[1].Value)
	require.NoError(t, err)
	var br errdetails.BadRequest
	require.NoError(t, proto.Unmarshal(v, &br))
	assert.Equal(t, "unknown", br.GetFieldViolations()[0].GetDescription())

	// An error without details sends no header.
	plain := rpc.ErrorReply(rpc.Errorf(rpc.NotFound, "gone"))
	assert.NotContains(t, plain.Header, "mqrpc-details")
}

// A reply from a foreign server with unpadded values decodes; a malformed
// header keeps the code and message and says what was wrong.
func TestErrorDetailsFromForeignReply(t *testing.T) {
	reply := &broker.Message{Header: broker.Header{
		"mqrpc-status":  "9",
		"mqrpc-message": "not ready",
		"mqrpc-details": `[{"type":"t","value":"` + base64.RawStdEncoding.EncodeToString([]byte("ab")) + `"}]`,
	}}
	var e *rpc.Error
	require.ErrorAs(t, rpc.ErrorFromReply(reply), &e)
	require.Len(t, e.Details(), 1)
	assert.Equal(t, rpc.ErrorDetail{Type: "t", Value: []byte("ab")}, e.Details()[0])

	reply.Header["mqrpc-details"] = `{not json`
	require.ErrorAs(t, rpc.ErrorFromReply(reply), &e)
	assert.Equal(t, rpc.FailedPrecondition, e.Code())
	assert.Empty(t, e.Details())
	assert.Contains(t, e.Message(), "not ready (malformed mqrpc-details header: ")
}

// WithDetails returns a copy: the original is unchanged, and two copies
// made from one error do not share their added details.
func TestWithDetailsCopies(t *testing.T) {
	base := rpc.NewError(rpc.Aborted, errors.New("conflict")).WithDetails(rpc.ErrorDetail{Type: "a"})
	x := base.WithDetails(rpc.ErrorDetail{Type: "x"})
	y := base.WithDetails(rpc.ErrorDetail{Type: "y"})
	assert.Len(t, base.Details(), 1)
	assert.Equal(t, "x", x.Details()[1].Type)
	assert.Equal(t, "y", y.Details()[1].Type)
	assert.Equal(t, rpc.Aborted, rpc.CodeOf(x))

	_, err := rpc.NewErrorDetail("", jsoncodec.Codec{}, 1)
	assert.Error(t, err, "a detail needs a type")
	_, err = rpc.NewErrorDetail("t", protocodec.Codec{}, 1)
	assert.Error(t, err, "an encoding failure is reported")
}
