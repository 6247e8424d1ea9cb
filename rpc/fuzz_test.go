package rpc_test

import (
	"context"
	"testing"

	"github.com/mqrpc/mqrpc/broker"
	jsoncodec "github.com/mqrpc/mqrpc/codec/json"
	msgpackcodec "github.com/mqrpc/mqrpc/codec/msgpack"
	"github.com/mqrpc/mqrpc/rpc"
)

// FuzzServer feeds the server arbitrary requests, as a hostile or broken
// peer on a shared bus would. Every request must get an answer (a reply or
// a status), never a panic or a delivery failure.
func FuzzServer(f *testing.F) {
	srv := rpc.NewServer(rpc.WithCodecs(jsoncodec.Codec{}, msgpackcodec.Codec{}))
	_ = rpc.Handle(srv, "Add", func(_ context.Context, in *addReq) (*addRes, error) {
		return &addRes{Sum: in.A + in.B}, nil
	})
	f.Add("Add", "application/json", []byte(`{"A":1,"B":2}`))
	f.Add("Add", "application/msgpack", []byte{0x82, 0xa1, 'A', 1, 0xa1, 'B', 2})
	f.Add("", "", []byte{})
	f.Add("Nope", "text/plain", []byte("x"))
	f.Add("Add", "application/json; charset=utf-8", []byte(`{"A":"x"}`))
	f.Fuzz(func(t *testing.T, method, contentType string, body []byte) {
		h := broker.Header{}
		if method != "" {
			h.Set(broker.HeaderMethod, method)
		}
		if contentType != "" {
			h.Set(broker.HeaderContentType, contentType)
		}
		reply, err := srv.ServeMessage(context.Background(), &broker.Message{Subject: "s", Header: h, Body: body})
		if err != nil {
			t.Fatalf("delivery failure for a bad request: %v", err)
		}
		if reply == nil {
			t.Fatal("no reply")
		}
		if e := rpc.ErrorFromReply(reply); e == nil && method != "Add" {
			t.Fatalf("method %q answered without error", method)
		}
	})
}
