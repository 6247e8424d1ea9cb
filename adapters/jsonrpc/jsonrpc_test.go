package jsonrpc_test

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/mqrpc/mqrpc/adapters/jsonrpc"
	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/memory"
	"github.com/mqrpc/mqrpc/rpc"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// testTimeout bounds what a test waits for outside processes.
const testTimeout = 2 * time.Minute

// AddParams are the params of "add", by name or by position.
type AddParams struct {
	A int `json:"a"`
	B int `json:"b"`
}

// testServer returns a server with the test methods. notes receives the
// params of "log".
func testServer(t testing.TB, notes chan string) *jsonrpc.Server {
	srv := jsonrpc.NewServer(jsonrpc.WithServiceInfo(jsonrpc.ServiceDescription{
		Name: "calc", ID: "urn:mqrpc:calc", Version: "1.0", Summary: "A calculator", Help: "none",
	}), jsonrpc.WithMaxBatch(5))
	must := func(err error) { require.NoError(t, err) }
	must(jsonrpc.Register(srv, "add", func(_ context.Context, p AddParams) (int, error) { return p.A + p.B, nil },
		jsonrpc.Summary("adds a and b"), jsonrpc.Idempotent()))
	must(jsonrpc.Register(srv, "sum", func(_ context.Context, p []float64) (float64, error) {
		var s float64
		for _, x := range p {
			s += x
		}
		return s, nil
	}))
	must(jsonrpc.Register(srv, "pair", func(_ context.Context, p [2]string) (string, error) { return p[0] + p[1], nil }))
	must(jsonrpc.Register(srv, "hello", func(_ context.Context, name string) (string, error) { return "hello " + name, nil }))
	must(jsonrpc.Register(srv, "log", func(_ context.Context, s string) (struct{}, error) {
		if notes != nil {
			notes <- s
		}
		return struct{}{}, nil
	}))
	must(jsonrpc.Register(srv, "fail", func(_ context.Context, kind string) (any, error) {
		switch kind {
		case "notfound":
			return nil, rpc.Errorf(rpc.NotFound, "no such thing")
		case "custom":
			return nil, &jsonrpc.Error{Code: 42, Message: "custom", Data: json.RawMessage(`{"why":"because"}`)}
		case "panic":
			panic("boom")
		case "plain":
			return nil, errors.New("plain error")
		}
		return nil, nil
	}))
	must(jsonrpc.Register(srv, "unencodable", func(context.Context, any) (any, error) { return func() {}, nil }))
	return srv
}

func serve(t *testing.T, b broker.Broker, subject string, notes chan string) {
	t.Helper()
	sub, err := b.Serve(subject, testServer(t, notes))
	require.NoError(t, err)
	t.Cleanup(func() { _ = sub.Stop(context.Background()) })
}

// TestServerWire checks the exact responses to raw request bodies.
func TestServerWire(t *testing.T) {
	srv := testServer(t, make(chan string, 10))
	tests := []struct {
		name, body string
		want       string // "" means no reply
		status     rpc.Code
	}{
		{"by name", `{"jsonrpc":"2.0","method":"add","params":{"a":1,"b":2},"id":1}`, `{"jsonrpc":"2.0","result":3,"id":1}`, rpc.OK},
		{"by position into struct", `{"jsonrpc":"2.0","method":"add","params":[1,2],"id":"x"}`, `{"jsonrpc":"2.0","result":3,"id":"x"}`, rpc.OK},
		{"slice", `{"jsonrpc":"2.0","method":"sum","params":[1,2,3.5],"id":2}`, `{"jsonrpc":"2.0","result":6.5,"id":2}`, rpc.OK},
		{"array", `{"jsonrpc":"2.0","method":"pair","params":["a","b"],"id":3}`, `{"jsonrpc":"2.0","result":"ab","id":3}`, rpc.OK},
		{"scalar", `{"jsonrpc":"2.0","method":"hello","params":["bob"],"id":4}`, `{"jsonrpc":"2.0","result":"hello bob","id":4}`, rpc.OK},
		{"no params", `{"jsonrpc":"2.0","method":"add","id":5}`, `{"jsonrpc":"2.0","result":0,"id":5}`, rpc.OK},
		{"null id", `{"jsonrpc":"2.0","method":"add","params":[1,1],"id":null}`, `{"jsonrpc":"2.0","result":2,"id":null}`, rpc.OK},
		{"id echoed exactly", `{"jsonrpc":"2.0","method":"add","params":[1,1],"id":1.50e3}`, `{"jsonrpc":"2.0","result":2,"id":1.50e3}`, rpc.OK},
		{"unicode id", `{"jsonrpc":"2.0","method":"add","params":[1,1],"id":"\u00e9t\u00e9"}`, `{"jsonrpc":"2.0","result":2,"id":"été"}`, rpc.OK},
		{"notification", `{"jsonrpc":"2.0","method":"log","params":["n"]}`, ``, rpc.OK},
		{"failing notification", `{"jsonrpc":"2.0","method":"fail","params":["panic"]}`, ``, rpc.OK},
		{"unknown notification", `{"jsonrpc":"2.0","method":"nope"}`, ``, rpc.OK},
		{"parse error", `{"jsonrpc":"2.0","method":"add",`, `{"jsonrpc":"2.0","error":{"code":-32700,"message":"parse error: the body is not valid JSON"},"id":null}`, rpc.InvalidArgument},
		{"empty body", ``, `{"jsonrpc":"2.0","error":{"code":-32700,"message":"parse error: the body is not valid JSON"},"id":null}`, rpc.InvalidArgument},
		{"not an object", `42`, `{"jsonrpc":"2.0","error":{"code":-32600,"message":"invalid request: not a JSON object"},"id":null}`, rpc.InvalidArgument},
		{"no version", `{"method":"add","id":1}`, `{"jsonrpc":"2.0","error":{"code":-32600,"message":"invalid request: no jsonrpc \"2.0\" (or version \"1.1\") member"},"id":1}`, rpc.InvalidArgument},
		{"wrong version", `{"jsonrpc":"1.0","method":"add","id":1}`, `{"jsonrpc":"2.0","error":{"code":-32600,"message":"invalid request: jsonrpc must be \"2.0\", not \"1.0\""},"id":1}`, rpc.InvalidArgument},
		{"method not a string", `{"jsonrpc":"2.0","method":1,"id":9}`, `{"jsonrpc":"2.0","error":{"code":-32600,"message":"invalid request: json: cannot unmarshal number into Go struct field request.method of type string"},"id":9}`, rpc.InvalidArgument},
		{"object id", `{"jsonrpc":"2.0","method":"add","id":{}}`, `{"jsonrpc":"2.0","error":{"code":-32600,"message":"invalid request: id must be a string, a number or null"},"id":null}`, rpc.InvalidArgument},
		{"no method", `{"jsonrpc":"2.0","id":1}`, `{"jsonrpc":"2.0","error":{"code":-32600,"message":"invalid request: no method"},"id":1}`, rpc.InvalidArgument},
		{"method not found", `{"jsonrpc":"2.0","method":"nope","id":1}`, `{"jsonrpc":"2.0","error":{"code":-32601,"message":"method not found: nope"},"id":1}`, rpc.Unimplemented},
		{"scalar params", `{"jsonrpc":"2.0","method":"add","params":3,"id":1}`, `{"jsonrpc":"2.0","error":{"code":-32602,"message":"invalid params: params must be an array or an object"},"id":1}`, rpc.InvalidArgument},
		{"too many params", `{"jsonrpc":"2.0","method":"add","params":[1,2,3],"id":1}`, `{"jsonrpc":"2.0","error":{"code":-32602,"message":"invalid params for add: want at most 2 params, got 3"},"id":1}`, rpc.InvalidArgument},
		{"wrong param type", `{"jsonrpc":"2.0","method":"add","params":{"a":"x"},"id":1}`, `{"jsonrpc":"2.0","error":{"code":-32602,"message":"invalid params for add: json: cannot unmarshal string into Go struct field AddParams.a of type int"},"id":1}`, rpc.InvalidArgument},
		{"array arity", `{"jsonrpc":"2.0","method":"pair","params":["a"],"id":1}`, `{"jsonrpc":"2.0","error":{"code":-32602,"message":"invalid params for pair: want 2 params, got 1"},"id":1}`, rpc.InvalidArgument},
		{"rpc status", `{"jsonrpc":"2.0","method":"fail","params":["notfound"],"id":1}`, `{"jsonrpc":"2.0","error":{"code":-32005,"message":"no such thing"},"id":1}`, rpc.NotFound},
		{"custom error", `{"jsonrpc":"2.0","method":"fail","params":["custom"],"id":1}`, `{"jsonrpc":"2.0","error":{"code":42,"message":"custom","data":{"why":"because"}},"id":1}`, rpc.Unknown},
		{"plain error", `{"jsonrpc":"2.0","method":"fail","params":["plain"],"id":1}`, `{"jsonrpc":"2.0","error":{"code":-32002,"message":"plain error"},"id":1}`, rpc.Unknown},
		{"panic", `{"jsonrpc":"2.0","method":"fail","params":["panic"],"id":1}`, `{"jsonrpc":"2.0","error":{"code":-32603,"message":"internal error: panic in fail: boom"},"id":1}`, rpc.Internal},
		{"unencodable result", `{"jsonrpc":"2.0","method":"unencodable","id":1}`, `{"jsonrpc":"2.0","error":{"code":-32603,"message":"internal error: encode result of unencodable: json: unsupported type: func()"},"id":1}`, rpc.Internal},
		{"reserved name", `{"jsonrpc":"2.0","method":"rpc.discover","id":1}`, `{"jsonrpc":"2.0","error":{"code":-32601,"message":"method not found: rpc.discover"},"id":1}`, rpc.Unimplemented},

		// Batches.
		{"batch", `[{"jsonrpc":"2.0","method":"add","params":[1,2],"id":1},{"jsonrpc":"2.0","method":"log","params":["x"]},{"jsonrpc":"2.0","method":"nope","id":"b"},1]`,
			`[{"jsonrpc":"2.0","result":3,"id":1},{"jsonrpc":"2.0","error":{"code":-32601,"message":"method not found: nope"},"id":"b"},{"jsonrpc":"2.0","error":{"code":-32600,"message":"invalid request: not a JSON object"},"id":null}]`, rpc.OK},
		{"batch of notifications", `[{"jsonrpc":"2.0","method":"log","params":["a"]},{"jsonrpc":"2.0","method":"log","params":["b"]}]`, ``, rpc.OK},
		{"empty batch", `[]`, `{"jsonrpc":"2.0","error":{"code":-32600,"message":"invalid request: empty batch"},"id":null}`, rpc.InvalidArgument},
		{"invalid batch", `[1,2]`, `[{"jsonrpc":"2.0","error":{"code":-32600,"message":"invalid request: not a JSON object"},"id":null},{"jsonrpc":"2.0","error":{"code":-32600,"message":"invalid request: not a JSON object"},"id":null}]`, rpc.OK},
		{"broken batch", `[{"jsonrpc":"2.0","method":"add"`, `{"jsonrpc":"2.0","error":{"code":-32700,"message":"parse error: unexpected end of JSON input"},"id":null}`, rpc.InvalidArgument},
		{"batch too large", `[1,2,3,4,5,6]`, `{"jsonrpc":"2.0","error":{"code":-32600,"message":"invalid request: batch of 6 requests exceeds the limit of 5"},"id":null}`, rpc.InvalidArgument},

		// The RabbitMQ Java client's dialect.
		{"1.1 null id", `{"id":null,"method":"add","version":"1.1","params":[40,2]}`, `{"version":"1.1","result":42}`, rpc.OK},
		{"1.1 id", `{"id":7,"method":"hello","version":"1.1","params":["java"]}`, `{"version":"1.1","id":7,"result":"hello java"}`, rpc.OK},
		{"1.1 no id", `{"method":"log","version":"1.1","params":["x"]}`, `{"version":"1.1","result":{}}`, rpc.OK},
		{"1.1 error", `{"id":7,"method":"nope","version":"1.1","params":[]}`, `{"version":"1.1","id":7,"error":{"name":"JSONRPCError","code":-32601,"message":"method not found: nope","error":null}}`, rpc.Unimplemented},
		{"1.1 error data", `{"id":null,"method":"fail","version":"1.1","params":["custom"]}`, `{"version":"1.1","error":{"name":"JSONRPCError","code":42,"message":"custom","error":{"why":"because"}}}`, rpc.Unknown},
		{"1.1 wrong version", `{"id":1,"method":"add","version":"1.0"}`, `{"version":"1.1","id":1,"error":{"name":"JSONRPCError","code":-32600,"message":"invalid request: version \"1.0\" is not supported (want \"1.1\")","error":null}}`, rpc.InvalidArgument},
		{"1.1 bad member", `{"id":1,"method":["add"],"version":"1.1"}`, `{"version":"1.1","id":1,"error":{"name":"JSONRPCError","code":-32600,"message":"invalid request: json: cannot unmarshal array into Go struct field request.method of type string","error":null}}`, rpc.InvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reply, err := srv.ServeMessage(context.Background(), &broker.Message{ID: "1", Body: []byte(tt.body)})
			require.NoError(t, err)
			if tt.want == "" {
				assert.Nil(t, reply)
				return
			}
			require.NotNil(t, reply)
			assert.JSONEq(t, tt.want, string(reply.Body))
			assert.Equal(t, jsonrpc.ContentType, reply.Header.Get(broker.HeaderContentType))
			assert.Equal(t, tt.status, rpc.CodeOf(rpc.ErrorFromReply(reply)))
		})
	}
}

// Ids are echoed byte for byte, not re-encoded.
func TestServerIDBytes(t *testing.T) {
	srv := testServer(t, nil)
	for _, id := range []string{`1`, `-7`, `1.50e3`, `"a\u00e9"`, `null`, `12345678901234567890123`} {
		reply, err := srv.ServeMessage(context.Background(), &broker.Message{
			Body: []byte(`{"jsonrpc":"2.0","method":"add","params":[1,2],"id":` + id + `}`),
		})
		require.NoError(t, err)
		assert.Equal(t, `{"jsonrpc":"2.0","id":`+id+`,"result":3}`, string(reply.Body))
	}
}

func TestServerMessageLevelErrors(t *testing.T) {
	srv := testServer(t, nil)
	tests := []struct {
		name string
		msg  *broker.Message
		code rpc.Code
	}{
		{"content type", &broker.Message{Header: broker.Header{"content-type": "application/xml"}, Body: []byte(`{}`)}, rpc.InvalidArgument},
		{"expired", &broker.Message{Deadline: time.Now().Add(-time.Second), Body: []byte(`{}`)}, rpc.DeadlineExceeded},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reply, err := srv.ServeMessage(context.Background(), tt.msg)
			require.NoError(t, err)
			assert.Empty(t, reply.Body)
			assert.Equal(t, tt.code, rpc.CodeOf(rpc.ErrorFromReply(reply)))
		})
	}
	// application/json with parameters is accepted.
	reply, err := srv.ServeMessage(context.Background(), &broker.Message{
		Header: broker.Header{"content-type": "application/json; charset=utf-8"},
		Body:   []byte(`{"jsonrpc":"2.0","method":"add","params":[1,2],"id":1}`),
	})
	require.NoError(t, err)
	assert.JSONEq(t, `{"jsonrpc":"2.0","result":3,"id":1}`, string(reply.Body))
}

func TestDescribe(t *testing.T) {
	srv := testServer(t, nil)
	reply, err := srv.ServeMessage(context.Background(), &broker.Message{
		Body: []byte(`{"id":null,"method":"system.describe","version":"1.1","params":[]}`),
	})
	require.NoError(t, err)
	var resp struct {
		Version string                     `json:"version"`
		Result  jsonrpc.ServiceDescription `json:"result"`
	}
	require.NoError(t, json.Unmarshal(reply.Body, &resp))
	assert.Equal(t, "1.1", resp.Version)
	d := resp.Result
	assert.Equal(t, "calc", d.Name)
	assert.Equal(t, "urn:mqrpc:calc", d.ID)
	assert.Equal(t, "1.0", d.Version)
	assert.Equal(t, "A calculator", d.Summary)
	names := make([]string, len(d.Procs))
	for i, p := range d.Procs {
		names[i] = p.Name
	}
	assert.Equal(t, []string{"add", "fail", "hello", "log", "pair", "sum", "unencodable"}, names)
	assert.Equal(t, jsonrpc.ProcedureDescription{
		Name: "add", Summary: "adds a and b", Idempotent: true,
		Params: []jsonrpc.ParameterDescription{{Name: "a", Type: "num"}, {Name: "b", Type: "num"}},
		Return: "num", JavaReturnType: "long",
	}, d.Procs[0])
	assert.Equal(t, []jsonrpc.ParameterDescription{{Name: "param0", Type: "str"}}, d.Procs[2].Params)
	assert.Equal(t, "java.lang.String", d.Procs[2].JavaReturnType)
	assert.Equal(t, "void", d.Procs[3].JavaReturnType)
	assert.Equal(t, "nil", d.Procs[3].Return)
	assert.Equal(t, []jsonrpc.ParameterDescription{{Name: "param0", Type: "str"}, {Name: "param1", Type: "str"}}, d.Procs[4].Params)
	assert.Equal(t, []jsonrpc.ParameterDescription{}, d.Procs[5].Params)
	assert.Equal(t, "double", d.Procs[5].JavaReturnType)

	// The exact member names the Java client's bean setters read.
	var raw map[string]any
	require.NoError(t, json.Unmarshal(reply.Body, &raw))
	proc := raw["result"].(map[string]any)["procs"].([]any)[0].(map[string]any)
	for _, k := range []string{"name", "summary", "help", "idempotent", "params", "return", "javaReturnType"} {
		assert.Contains(t, proc, k)
	}
}

func TestRegisterErrors(t *testing.T) {
	srv := jsonrpc.NewServer()
	fn := func(context.Context, int) (int, error) { return 0, nil }
	require.NoError(t, jsonrpc.Register(srv, "a", fn))
	assert.ErrorIs(t, jsonrpc.Register(srv, "a", fn), jsonrpc.ErrDuplicateMethod)
	assert.ErrorIs(t, jsonrpc.Register(srv, "rpc.x", fn), jsonrpc.ErrReservedMethod)
	assert.ErrorIs(t, jsonrpc.Register(srv, "system.describe", fn), jsonrpc.ErrReservedMethod)
	assert.Error(t, jsonrpc.Register(srv, "", fn))
}

func TestCodeTables(t *testing.T) {
	for c := rpc.Canceled; c <= rpc.Unauthenticated; c++ {
		assert.Equal(t, c, jsonrpc.StatusFromCode(jsonrpc.CodeFromStatus(c)), c.String())
	}
	tests := []struct {
		code int
		want rpc.Code
	}{
		{jsonrpc.CodeParseError, rpc.InvalidArgument},
		{jsonrpc.CodeInvalidRequest, rpc.InvalidArgument},
		{jsonrpc.CodeMethodNotFound, rpc.Unimplemented},
		{jsonrpc.CodeInvalidParams, rpc.InvalidArgument},
		{jsonrpc.CodeInternalError, rpc.Internal},
		{jsonrpc.CodeServerError, rpc.Unknown},
		{-32005, rpc.NotFound},
		{-32016, rpc.Unauthenticated},
		{-32017, rpc.Unknown},
		{-32099, rpc.Unknown},
		{400, rpc.InvalidArgument},
		{403, rpc.PermissionDenied},
		{500, rpc.Internal},
		{505, rpc.Unimplemented},
		{42, rpc.Unknown},
		{0, rpc.Unknown},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, jsonrpc.StatusFromCode(tt.code), "%d", tt.code)
	}
	assert.Equal(t, jsonrpc.CodeFromStatus(rpc.Unknown), jsonrpc.CodeFromStatus(rpc.OK))
}

func newPair(t *testing.T) (*memory.Broker, chan string) {
	b := memory.New()
	t.Cleanup(func() { _ = b.Close() })
	notes := make(chan string, 16)
	serve(t, b, "calc", notes)
	return b, notes
}

func TestClient(t *testing.T) {
	b, notes := newPair(t)
	ctx := context.Background()
	for _, tt := range []struct {
		name string
		opts []jsonrpc.ClientOption
	}{{"2.0", nil}, {"1.1", []jsonrpc.ClientOption{jsonrpc.WithVersion11()}}} {
		t.Run(tt.name, func(t *testing.T) {
			c := jsonrpc.NewClient(b, "calc", tt.opts...)
			sum, err := jsonrpc.Invoke[int](ctx, c, "add", []int{40, 2})
			require.NoError(t, err)
			assert.Equal(t, 42, sum)

			var s float64
			require.NoError(t, c.Call(ctx, "sum", []float64{1, 2, 3.5}, &s))
			assert.Equal(t, 6.5, s)

			hi, err := jsonrpc.Invoke[string](ctx, c, "hello", []string{"bob"})
			require.NoError(t, err)
			assert.Equal(t, "hello bob", hi)

			d, err := jsonrpc.Invoke[jsonrpc.ServiceDescription](ctx, c, "system.describe", nil)
			require.NoError(t, err)
			assert.Equal(t, "calc", d.Name)

			// Errors keep both codes.
			err = c.Call(ctx, "fail", []string{"notfound"}, nil)
			var je *jsonrpc.Error
			require.ErrorAs(t, err, &je)
			assert.Equal(t, -32005, je.Code)
			assert.Equal(t, rpc.NotFound, rpc.CodeOf(err))
			var re *rpc.Error
			require.ErrorAs(t, err, &re)
			assert.True(t, re.Wire())

			err = c.Call(ctx, "fail", []string{"custom"}, nil)
			require.ErrorAs(t, err, &je)
			assert.Equal(t, 42, je.Code)
			assert.JSONEq(t, `{"why":"because"}`, string(je.Data))
			assert.Equal(t, rpc.Unknown, rpc.CodeOf(err))

			err = c.Call(ctx, "nope", nil, nil)
			require.ErrorAs(t, err, &je)
			assert.Equal(t, jsonrpc.CodeMethodNotFound, je.Code)
			assert.Equal(t, rpc.Unimplemented, rpc.CodeOf(err))
		})
	}
	t.Run("notify", func(t *testing.T) {
		c := jsonrpc.NewClient(b, "calc")
		require.NoError(t, c.Notify(ctx, "log", []string{"noted"}))
		assert.Equal(t, "noted", <-notes)
	})
}

func TestClientBatch(t *testing.T) {
	b, notes := newPair(t)
	c := jsonrpc.NewClient(b, "calc")
	var sum int
	var hi string
	elems := []*jsonrpc.BatchElem{
		{Method: "add", Params: AddParams{A: 1, B: 2}, Result: &sum},
		{Method: "log", Params: []string{"in a batch"}, Notification: true},
		{Method: "nope"},
		{Method: "hello", Params: []string{"batch"}, Result: &hi},
	}
	require.NoError(t, c.Batch(context.Background(), elems))
	assert.Equal(t, 3, sum)
	assert.Equal(t, "hello batch", hi)
	assert.NoError(t, elems[0].Error)
	assert.NoError(t, elems[1].Error)
	assert.Equal(t, rpc.Unimplemented, rpc.CodeOf(elems[2].Error))
	assert.Equal(t, "in a batch", <-notes)

	// Only notifications: sent one-way.
	require.NoError(t, c.Batch(context.Background(), []*jsonrpc.BatchElem{
		{Method: "log", Params: []string{"n1"}, Notification: true},
		{Method: "log", Params: []string{"n2"}, Notification: true},
	}))
	assert.ElementsMatch(t, []string{"n1", "n2"}, []string{<-notes, <-notes})

	// Too large: the whole batch fails.
	big := make([]*jsonrpc.BatchElem, 6)
	for i := range big {
		big[i] = &jsonrpc.BatchElem{Method: "add"}
	}
	err := c.Batch(context.Background(), big)
	var je *jsonrpc.Error
	require.ErrorAs(t, err, &je)
	assert.Equal(t, jsonrpc.CodeInvalidRequest, je.Code)

	assert.ErrorIs(t, jsonrpc.NewClient(b, "calc", jsonrpc.WithVersion11()).Batch(context.Background(), elems), jsonrpc.ErrBatch11)
}

func TestClientTransportErrors(t *testing.T) {
	b := memory.New()
	defer b.Close()
	c := jsonrpc.NewClient(b, "nobody")
	err := c.Call(context.Background(), "add", nil, nil)
	require.ErrorIs(t, err, broker.ErrNoResponders)
	assert.Equal(t, rpc.Unavailable, rpc.CodeOf(err))
	require.ErrorIs(t, c.Notify(context.Background(), "add", nil), broker.ErrNoResponders)

	// A status reply without a body (a server middleware said no).
	deny := rpc.Chain(rpc.ServerSide, testServer(t, nil), func(next broker.Handler) broker.Handler {
		return broker.HandlerFunc(func(context.Context, *broker.Message) (*broker.Message, error) {
			return rpc.ErrorReply(rpc.Errorf(rpc.PermissionDenied, "no")), nil
		})
	})
	sub, err := b.Serve("denied", deny)
	require.NoError(t, err)
	defer sub.Stop(context.Background())
	err = jsonrpc.NewClient(b, "denied").Call(context.Background(), "add", nil, nil)
	var je *jsonrpc.Error
	require.ErrorAs(t, err, &je)
	assert.Equal(t, -32007, je.Code)
	assert.Equal(t, rpc.PermissionDenied, rpc.CodeOf(err))
}

func TestClientConcurrent(t *testing.T) {
	b, _ := newPair(t)
	c := jsonrpc.NewClient(b, "calc")
	errs := make(chan error, 50)
	for i := 0; i < 50; i++ {
		go func() {
			sum, err := jsonrpc.Invoke[int](context.Background(), c, "add", AddParams{A: i, B: i})
			if err == nil && sum != 2*i {
				err = errors.New("wrong sum")
			}
			errs <- err
		}()
	}
	for i := 0; i < 50; i++ {
		require.NoError(t, <-errs)
	}
}
