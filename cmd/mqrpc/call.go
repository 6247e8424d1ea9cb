package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/mqrpc/mqrpc/broker"
	jsoncodec "github.com/mqrpc/mqrpc/codec/json"
	msgpackcodec "github.com/mqrpc/mqrpc/codec/msgpack"
	"github.com/mqrpc/mqrpc/rpc"
	"github.com/mqrpc/mqrpc/rpc/control"
)

// callFlags are the flags call and bench share.
type callFlags struct {
	headers []string
	codec   string
}

func (f *callFlags) register(c *cobra.Command) {
	c.Flags().StringArrayVarP(&f.headers, "header", "H", nil, `request header "Name: value" (repeatable)`)
	c.Flags().StringVar(&f.codec, "codec", "auto", "wire codec: json; msgpack or proto (the JSON converted); auto asks the service's INFO: proto for gRPC methods, msgpack for services that take it and not JSON, else json")
}

// target is a parsed call: where to, and the request in JSON.
type target struct {
	service, method string
	body            []byte // JSON
	header          map[string]string
}

// parseTarget checks everything about a call that can be checked before
// connecting: a bad argument is InvalidArgument and nothing is sent.
func parseTarget(args []string, stdin io.Reader, f *callFlags) (*target, error) {
	svc, method, ok := cut(args[0])
	if !ok {
		return nil, fail(rpc.InvalidArgument, "want SERVICE.METHOD, got %q", args[0])
	}
	t := &target{service: svc, method: method, body: []byte("{}")}
	if len(args) > 1 {
		t.body = []byte(args[1])
		if args[1] == "-" {
			b, err := io.ReadAll(stdin)
			if err != nil {
				return nil, fail(rpc.InvalidArgument, "read request from stdin: %v", err)
			}
			t.body = b
		}
	}
	if !json.Valid(t.body) {
		var v any
		err := json.Unmarshal(t.body, &v)
		return nil, fail(rpc.InvalidArgument, "request is not valid JSON (%v); nothing was sent", err)
	}
	for _, h := range f.headers {
		name, value, ok := strings.Cut(h, ":")
		if !ok {
			name, value, ok = strings.Cut(h, "=")
		}
		name = strings.TrimSpace(name)
		if !ok || name == "" {
			return nil, fail(rpc.InvalidArgument, `header %q: want "Name: value"`, h)
		}
		if t.header == nil {
			t.header = map[string]string{}
		}
		t.header[name] = strings.TrimSpace(value)
	}
	switch f.codec {
	case "auto", "json", "msgpack", "proto":
	default:
		return nil, fail(rpc.InvalidArgument, "unknown codec %q (want auto, json, msgpack or proto)", f.codec)
	}
	return t, nil
}

// cut splits SERVICE.METHOD at the last dot (service names may have
// dots), or SERVICE./pkg.Service/Method (a gRPC method's full name) at the
// "./".
func cut(s string) (service, method string, ok bool) {
	if i := strings.Index(s, "./"); i > 0 {
		return s[:i], s[i+1:], len(s) > i+2
	}
	i := strings.LastIndexByte(s, '.')
	if i <= 0 || i == len(s)-1 {
		return "", "", false
	}
	return s[:i], s[i+1:], true
}

// wire is a codec that passes bytes already encoded in its content type.
type wire string

func (w wire) Name() string { return string(w) }
func (w wire) Marshal(v any) ([]byte, error) {
	b, ok := v.([]byte)
	if !ok {
		return nil, fmt.Errorf("wire codec: %T is not []byte", v)
	}
	return b, nil
}
func (w wire) Unmarshal(data []byte, v any) error {
	*(v.(*[]byte)) = bytes.Clone(data)
	return nil
}

// codecCall is a call in JSON or msgpack.
type codecCall struct {
	client *rpc.Client
	t      *target
	cd     wire
	req    []byte
	opts   []rpc.CallOption
}

// caller makes calls of one target, JSON in and out.
type caller interface {
	call(ctx context.Context) ([]byte, error)
}

// newCaller chooses how to call t: for --codec auto (the default) it asks
// the service's INFO, and calls a gRPC method (one with proto descriptors)
// in protobuf, a service that takes msgpack and not JSON in msgpack, and
// anything else in JSON.
func (a *app) newCaller(b broker.Broker, t *target, f *callFlags) (caller, error) {
	var info *control.InfoResponse
	if f.codec == "auto" || f.codec == "proto" {
		info = a.info(b, t.service)
		if m, err := findProtoMethod(info, t.method); err != nil || m != nil {
			if err != nil {
				return nil, err
			}
			return newProtoCall(b, t, m)
		}
		if f.codec == "proto" {
			return nil, fail(rpc.InvalidArgument, "--codec proto: %s.%s has no proto descriptors in its INFO", t.service, t.method)
		}
	}
	cd := wire(jsoncodec.Codec{}.Name())
	if f.codec == "msgpack" || (f.codec == "auto" && prefersMsgpack(info)) {
		cd = wire(msgpackcodec.Name)
	}
	req := t.body
	if cd == wire(msgpackcodec.Name) {
		var err error
		if req, err = jsonToMsgpack(t.body); err != nil {
			return nil, fail(rpc.InvalidArgument, "convert the request to msgpack: %v", err)
		}
	}
	c := &codecCall{client: rpc.NewClient(b, rpc.WithCodec(cd)), t: t, cd: cd, req: req}
	for k, v := range t.header {
		c.opts = append(c.opts, rpc.WithHeader(k, v))
	}
	return c, nil
}

// info returns the INFO of one instance of service, or nil when none
// answered within a second (or --timeout, if shorter).
func (a *app) info(b broker.Broker, service string) *control.InfoResponse {
	ctx, cancel := withTimeout(min(a.timeout, time.Second))
	defer cancel()
	infos, err := control.Discover[control.InfoResponse](ctx, b, control.Name(service), "")
	if err != nil || len(infos) == 0 {
		return nil
	}
	return &infos[0]
}

// prefersMsgpack reports whether a service takes msgpack and not JSON.
func prefersMsgpack(info *control.InfoResponse) bool {
	if info == nil {
		return false
	}
	json, mp := false, false
	for _, c := range info.Codecs {
		json = json || c == jsoncodec.Codec{}.Name()
		mp = mp || c == msgpackcodec.Name
	}
	return mp && !json
}

// call makes one call and returns the reply as JSON.
func (c *codecCall) call(ctx context.Context) ([]byte, error) {
	var out []byte
	if err := c.client.Call(ctx, c.t.service, c.t.method, c.req, &out, c.opts...); err != nil {
		return nil, err
	}
	if c.cd == wire(msgpackcodec.Name) {
		return msgpackToJSON(out)
	}
	return out, nil
}

func (a *app) callCmd() *cobra.Command {
	var f callFlags
	c := &cobra.Command{
		Use:   "call SERVICE.METHOD [JSON|-]",
		Short: "Call a method with a JSON request and print the JSON reply",
		Long: `call sends one request and prints the reply as JSON. The request is the
JSON argument ("-" reads it from stdin; default {}); it is checked before
anything is sent. With --codec auto (the default) call asks the service's INFO
how to send it: a gRPC method (served through adapters/grpc) gets protobuf,
converted with the method's descriptors, a service that takes msgpack and not
JSON gets msgpack, and the reply is converted back to JSON.

The exit status is the status code of the reply (0 OK, 3 InvalidArgument,
4 DeadlineExceeded, 5 NotFound, 12 Unimplemented, 14 Unavailable, ...), with
the code and message on stderr.`,
		Example: `  mqrpc call Calculator.Add '{"a":2,"b":40}'
  echo '{"a":2,"b":40}' | mqrpc call Calculator.Add -
  mqrpc call Calculator.Add '{"a":1,"b":2}' -H 'traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01' --timeout 2s`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			t, err := parseTarget(args, cmd.InOrStdin(), &f)
			if err != nil {
				return err
			}
			b, err := a.connect()
			if err != nil {
				return err
			}
			defer closeBroker(b)
			cl, err := a.newCaller(b, t, &f)
			if err != nil {
				return err
			}
			ctx, cancel := withTimeout(a.timeout)
			defer cancel()
			out, err := cl.call(ctx)
			if err != nil {
				return callError(t, err)
			}
			var pretty bytes.Buffer
			if json.Indent(&pretty, out, "", "  ") != nil {
				pretty.Reset()
				pretty.Write(out) // not JSON (a raw method): as it is
			}
			pretty.WriteByte('\n')
			_, err = a.out.Write(pretty.Bytes())
			return err
		},
	}
	f.register(c)
	return c
}

// callError is the exit error of a failed call: the status code, and
// its message, or for a local error the reason.
func callError(t *target, err error) error {
	code := rpc.CodeOf(err)
	msg := err.Error()
	var e *rpc.Error
	switch {
	case errors.Is(err, broker.ErrNoResponders):
		msg = fmt.Sprintf("no instance of service %q is serving (%v)", t.service, errText(err))
	case errors.Is(err, context.DeadlineExceeded):
		msg = fmt.Sprintf("no reply from %s.%s within the timeout (%v)", t.service, t.method, err)
	case errors.Is(err, broker.ErrDisconnected):
		msg = fmt.Sprintf("cannot reach the broker (%v)", errText(err))
	case errors.As(err, &e) && e.Message() != "":
		msg = e.Message()
	}
	return &exitError{code: code, err: errors.New(msg)}
}

// jsonToMsgpack re-encodes a JSON document as msgpack, with integers as
// integers.
func jsonToMsgpack(b []byte) ([]byte, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	return msgpack.Marshal(numbers(v))
}

func numbers(v any) any {
	switch x := v.(type) {
	case json.Number:
		if i, err := x.Int64(); err == nil {
			return i
		}
		f, _ := x.Float64()
		return f
	case map[string]any:
		for k, e := range x {
			x[k] = numbers(e)
		}
	case []any:
		for i, e := range x {
			x[i] = numbers(e)
		}
	}
	return v
}

// msgpackToJSON re-encodes a msgpack document as JSON.
func msgpackToJSON(b []byte) ([]byte, error) {
	if len(b) == 0 {
		return []byte("null"), nil
	}
	var v any
	if err := msgpack.Unmarshal(b, &v); err != nil {
		return nil, fmt.Errorf("reply is not msgpack: %w", err)
	}
	return json.Marshal(stringKeys(v))
}

func stringKeys(v any) any {
	switch x := v.(type) {
	case map[any]any:
		m := make(map[string]any, len(x))
		for k, e := range x {
			m[fmt.Sprint(k)] = stringKeys(e)
		}
		return m
	case map[string]any:
		for k, e := range x {
			x[k] = stringKeys(e)
		}
	case []any:
		for i, e := range x {
			x[i] = stringKeys(e)
		}
	case []byte:
		return x // JSON: base64
	}
	return v
}
