package jsonrpc_test

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/mqrpc/mqrpc/broker"
)

// FuzzServer feeds arbitrary bodies to the request decoder and dispatcher:
// the server must never fail the delivery or panic, and every reply must be
// valid JSON: a response object of either dialect or an array of 2.0
// response objects, each with an id member; a response to a single 2.0
// request object with a readable id echoes that id byte for byte.
func FuzzServer(f *testing.F) {
	for _, s := range []string{
		`{"jsonrpc":"2.0","method":"add","params":{"a":1,"b":2},"id":1}`,
		`{"jsonrpc":"2.0","method":"add","params":[1,2],"id":"x"}`,
		`{"jsonrpc":"2.0","method":"sum","params":[1,2,3.5],"id":2}`,
		`{"jsonrpc":"2.0","method":"pair","params":["a","b"],"id":null}`,
		`{"jsonrpc":"2.0","method":"hello","params":["bob"],"id":1.5e3}`,
		`{"jsonrpc":"2.0","method":"log","params":["n"]}`,
		`{"jsonrpc":"2.0","method":"fail","params":["panic"],"id":3}`,
		`{"jsonrpc":"2.0","method":"fail","params":["custom"],"id":3}`,
		`[{"jsonrpc":"2.0","method":"add","params":[1,2],"id":1},{"jsonrpc":"2.0","method":"log","params":["x"]},1]`,
		`{"id":null,"method":"system.describe","version":"1.1","params":[]}`,
		`{"id":7,"method":"add","version":"1.1","params":[40,2]}`,
		`[]`, `{}`, `42`, `{"jsonrpc":"2.0","method":1,"id":{}}`,
	} {
		f.Add([]byte(s))
	}
	srv := testServer(f, nil)
	f.Fuzz(func(t *testing.T, body []byte) {
		reply, err := srv.ServeMessage(context.Background(), &broker.Message{Body: body})
		if err != nil {
			t.Fatalf("delivery failed: %v", err)
		}
		if reply == nil {
			return // notifications only
		}
		if !json.Valid(reply.Body) {
			t.Fatalf("reply is not JSON: %q", reply.Body)
		}
		type resp struct {
			JSONRPC *string         `json:"jsonrpc"`
			Version *string         `json:"version"`
			ID      json.RawMessage `json:"id"`
			Result  json.RawMessage `json:"result"`
			Error   json.RawMessage `json:"error"`
		}
		check := func(r resp, batch bool) {
			switch {
			case r.JSONRPC != nil && *r.JSONRPC == "2.0":
				if r.ID == nil {
					t.Fatalf("2.0 response without id: %s", reply.Body)
				}
			case r.Version != nil && *r.Version == "1.1" && !batch:
			default:
				t.Fatalf("response of no dialect: %s", reply.Body)
			}
			if (r.Result == nil) == (r.Error == nil) {
				t.Fatalf("response needs exactly one of result and error: %s", reply.Body)
			}
		}
		if bytes.HasPrefix(reply.Body, []byte("[")) {
			var rs []resp
			if err := json.Unmarshal(reply.Body, &rs); err != nil || len(rs) == 0 {
				t.Fatalf("bad batch response %s: %v", reply.Body, err)
			}
			for _, r := range rs {
				check(r, true)
			}
			return
		}
		var r resp
		if err := json.Unmarshal(reply.Body, &r); err != nil {
			t.Fatalf("bad response %s: %v", reply.Body, err)
		}
		check(r, false)
		var req struct {
			JSONRPC string          `json:"jsonrpc"`
			ID      json.RawMessage `json:"id"`
			Method  string          `json:"method"`
		}
		trimmed := bytes.TrimSpace(body)
		if len(trimmed) > 0 && trimmed[0] == '{' && json.Unmarshal(body, &req) == nil &&
			req.JSONRPC == "2.0" && len(req.ID) > 0 && strings.IndexByte(`"-0123456789n`, req.ID[0]) >= 0 &&
			!bytes.Equal(r.ID, req.ID) {
			t.Fatalf("id %s answered as %s", req.ID, r.ID)
		}
	})
}
