package thrift_test

import (
	"bytes"
	"context"
	"testing"

	"github.com/apache/thrift/lib/go/thrift"

	mqthrift "github.com/mqrpc/mqrpc/adapters/thrift"
	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/examples/thrift-calculator/calculator"
	"github.com/mqrpc/mqrpc/rpc"
)

// fuzzCalc never blocks: any input must be answered.
type fuzzCalc struct{ *calc }

func (fuzzCalc) Divide(_ context.Context, a, b int32) (int32, error) {
	if b == 0 {
		return 0, &calculator.InvalidOperation{Why: "zero"}
	}
	if b == divPanic {
		panic("boom")
	}
	return a / b, nil
}

func (fuzzCalc) Record(context.Context, string) error { return nil }

var fuzzContentTypes = []string{"", mqthrift.ContentTypeBinary, mqthrift.ContentTypeCompact, mqthrift.ContentTypeJSON}

// FuzzServer feeds arbitrary bodies, in each protocol, through the server's
// message path: it must never fail the delivery or panic, must answer every
// request that is not a ONEWAY message, and every reply must be either a
// status with no body or a Thrift message in the request's protocol.
func FuzzServer(f *testing.F) {
	for _, p := range protocols {
		for _, m := range []struct {
			name string
			typ  thrift.TMessageType
			args thrift.TStruct
		}{
			{"add", thrift.CALL, &calculator.CalculatorAddArgs{A: 1, B: 2}},
			{"calcSum", thrift.CALL, &calculator.CalculatorCalcSumArgs{Numbers: []float64{1, 2.5}}},
			{"divide", thrift.CALL, &calculator.CalculatorDivideArgs{A: 1, B: 0}},
			{"record", thrift.ONEWAY, &calculator.CalculatorRecordArgs{Note: "n"}},
			{"nope", thrift.CALL, &calculator.CalculatorPingArgs{}},
		} {
			f.Add(encode(f, p, m.name, m.typ, m.args), uint8(p)+1)
		}
	}
	srv := mqthrift.NewServer(calculator.NewCalculatorProcessor(fuzzCalc{newCalc()}))
	f.Fuzz(func(t *testing.T, body []byte, ct uint8) {
		req := &broker.Message{ID: "f", Subject: "Calculator", Body: body}
		contentType := fuzzContentTypes[int(ct)%len(fuzzContentTypes)]
		if contentType != "" {
			req.SetHeader(broker.HeaderContentType, contentType)
		}
		reply, err := srv.ServeMessage(context.Background(), req)
		if err != nil {
			t.Fatalf("delivery failed: %v", err)
		}
		if reply == nil {
			return // a ONEWAY message, or a request the handler abandoned
		}
		if len(reply.Body) == 0 {
			return // a status reply, or the acknowledgement of a oneway CALL
		}
		p, ok := mqthrift.ProtocolOf(reply.Header.Get(broker.HeaderContentType))
		if !ok {
			t.Fatalf("reply content type %q", reply.Header.Get(broker.HeaderContentType))
		}
		_, typ, _, err := p.Factory(nil).GetProtocol(&thrift.TMemoryBuffer{Buffer: bytesBuffer(reply.Body)}).ReadMessageBegin(context.Background())
		if err != nil {
			t.Fatalf("reply is not a %s message: %v", p, err)
		}
		if (typ == thrift.EXCEPTION) != (rpc.ErrorFromReply(reply) != nil) {
			t.Fatalf("reply type %d with status %v", typ, rpc.ErrorFromReply(reply))
		}
	})
}

func bytesBuffer(b []byte) *bytes.Buffer { return bytes.NewBuffer(b) }
