package jsonrpc

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/codec"
	"github.com/mqrpc/mqrpc/rpc"
)

// ContentType is the content type of JSON-RPC messages.
const ContentType = "application/json"

// Server is a JSON-RPC server and a broker.Handler: serve it on a subject
// of any broker.
//
//	srv := jsonrpc.NewServer()
//	jsonrpc.Register(srv, "add", func(ctx context.Context, p [2]int) (int, error) { return p[0] + p[1], nil })
//	sub, err := b.Serve("calc", srv)
//
// It answers JSON-RPC 2.0 requests, notifications and batches, and the
// JSON-RPC 1.1 requests of the RabbitMQ Java client (see the package
// documentation). Methods may be registered at any time. A Server is safe
// for concurrent use.
type Server struct {
	cfg serverConfig

	mu      sync.Mutex // serializes registration
	methods atomic.Pointer[map[string]*method]
}

type method struct {
	call func(ctx context.Context, params json.RawMessage) (any, error)
	desc ProcedureDescription
}

type serverConfig struct {
	info     ServiceDescription
	maxBatch int
}

// ServerOption configures a Server.
type ServerOption func(*serverConfig)

// WithServiceInfo sets the name, id, version, summary and help that
// system.describe reports (its Procs are ignored: they come from the
// registered methods). Default: all empty.
func WithServiceInfo(d ServiceDescription) ServerOption {
	return func(c *serverConfig) { c.info = d }
}

// WithMaxBatch sets the largest batch the server accepts; a larger one is
// answered with an invalid request error. Default 100; values below 1
// select the default.
func WithMaxBatch(n int) ServerOption { return func(c *serverConfig) { c.maxBatch = n } }

// NewServer returns a server with no methods.
func NewServer(opts ...ServerOption) *Server {
	var cfg serverConfig
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.maxBatch < 1 {
		cfg.maxBatch = 100
	}
	cfg.info.Procs = nil
	s := &Server{cfg: cfg}
	empty := map[string]*method{}
	s.methods.Store(&empty)
	return s
}

var _ broker.Handler = (*Server)(nil)

// MethodOption describes a method in system.describe.
type MethodOption func(*ProcedureDescription)

// Summary sets the method's summary.
func Summary(s string) MethodOption { return func(p *ProcedureDescription) { p.Summary = s } }

// Help sets the method's help text.
func Help(s string) MethodOption { return func(p *ProcedureDescription) { p.Help = s } }

// Idempotent marks the method as safe to call more than once.
func Idempotent() MethodOption { return func(p *ProcedureDescription) { p.Idempotent = true } }

// ParamNames renames the described parameters, in order. Parameters are
// otherwise named after the struct fields of P (their JSON names), or
// param0, param1, ...
func ParamNames(names ...string) MethodOption {
	return func(p *ProcedureDescription) {
		for i := range p.Params {
			if i < len(names) {
				p.Params[i].Name = names[i]
			}
		}
	}
}

// ErrDuplicateMethod is returned when a method name is registered twice.
var ErrDuplicateMethod = errors.New("jsonrpc: method already registered")

// ErrReservedMethod is returned for method names JSON-RPC reserves (names
// starting with "rpc.") and for system.describe, which the server answers.
var ErrReservedMethod = errors.New("jsonrpc: reserved method name")

// Register registers fn as the method name of s.
//
// The request's params are decoded into P: a JSON object by name (P a
// struct or map), a JSON array by position (P an array or slice, a struct
// whose exported fields take the positions in order, or any other type
// taking a one-element array), and absent params as the zero P. Params
// that do not fit are answered with an invalid params error (-32602). The
// result R is encoded with encoding/json.
//
// system.describe lists the positional parameters: the fields of a struct
// P, the elements of an array P, one for any other non-container P, and
// none for a slice, map or interface P (any number). The RabbitMQ Java
// client finds a procedure by name and number of parameters, so it can
// call a method whose P is a slice only without arguments; give such
// methods a struct P.
//
// fn returns an *Error to choose the JSON-RPC error, an *rpc.Error to
// choose the mqrpc status (mapped with CodeFromStatus), or any other error
// (answered as rpc.CodeOf(err), Unknown for most). A panic is answered with
// an internal error (-32603).
func Register[P, R any](s *Server, name string, fn func(ctx context.Context, params P) (R, error), opts ...MethodOption) error {
	shape := shapeOf(reflect.TypeFor[P]())
	desc := ProcedureDescription{
		Name:           name,
		Params:         append([]ParameterDescription{}, shape.params...),
		Return:         jsonType(reflect.TypeFor[R]()),
		JavaReturnType: javaType(reflect.TypeFor[R]()),
	}
	if desc.Params == nil {
		desc.Params = []ParameterDescription{}
	}
	for _, o := range opts {
		o(&desc)
	}
	return s.register(name, &method{
		desc: desc,
		call: func(ctx context.Context, raw json.RawMessage) (any, error) {
			var p P
			if err := decodeParams(raw, &p, &shape); err != nil {
				return nil, &Error{Code: CodeInvalidParams, Message: "invalid params for " + name + ": " + err.Error()}
			}
			return fn(ctx, p)
		},
	})
}

func (s *Server) register(name string, m *method) error {
	if name == "" {
		return errors.New("jsonrpc: empty method name")
	}
	if strings.HasPrefix(name, "rpc.") || name == "system.describe" {
		return fmt.Errorf("%w: %q", ErrReservedMethod, name)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	old := *s.methods.Load()
	if _, dup := old[name]; dup {
		return fmt.Errorf("%w: %q", ErrDuplicateMethod, name)
	}
	next := make(map[string]*method, len(old)+1)
	for k, v := range old {
		next[k] = v
	}
	next[name] = m
	s.methods.Store(&next)
	return nil
}

// Describe returns the service description that system.describe answers:
// the service info and the registered methods, sorted by name.
func (s *Server) Describe() ServiceDescription {
	d := s.cfg.info
	m := *s.methods.Load()
	d.Procs = make([]ProcedureDescription, 0, len(m))
	for _, p := range m {
		d.Procs = append(d.Procs, p.desc)
	}
	sort.Slice(d.Procs, func(i, j int) bool { return d.Procs[i].Name < d.Procs[j].Name })
	return d
}

type requestKey struct{}

// RequestMessage returns the broker message a method registered on a
// Server is serving (its headers, ID and deadline), or nil outside one. It
// must not be modified or retained after the method returns.
func RequestMessage(ctx context.Context) *broker.Message {
	m, _ := ctx.Value(requestKey{}).(*broker.Message)
	return m
}

// acceptedTypes are the content types the server reads as JSON.
var acceptedTypes = map[string]bool{
	"": true, ContentType: true, "application/json-rpc": true, "application/jsonrequest": true,
	"text/json": true, "text/plain": true,
}

// ServeMessage implements broker.Handler. It never returns an error: every
// failure is answered with a JSON-RPC error response or, for a message that
// is not JSON-RPC at all (unknown content type, expired deadline), with an
// mqrpc status reply. Notifications and batches of notifications get no
// reply. A single error response also carries its status in the
// mqrpc-status header (StatusFromCode of its code).
func (s *Server) ServeMessage(ctx context.Context, req *broker.Message) (*broker.Message, error) {
	if req.Expired(time.Now()) {
		return rpc.ErrorReply(rpc.Errorf(rpc.DeadlineExceeded, "jsonrpc: deadline passed before the request was served")), nil
	}
	if ct := codec.MediaType(req.Header.Get(broker.HeaderContentType)); !acceptedTypes[ct] {
		return rpc.ErrorReply(rpc.Errorf(rpc.InvalidArgument, "jsonrpc: unsupported content type %q (want %s)", ct, ContentType)), nil
	}
	ctx = context.WithValue(ctx, requestKey{}, req)
	body := bytes.TrimLeft(req.Body, " \t\r\n")
	var out any
	var status *Error // of a single response
	if len(body) > 0 && body[0] == '[' {
		out, status = s.serveBatch(ctx, body)
	} else {
		r := s.serveOne(ctx, body, true)
		if r != nil {
			out, status = r, r.err
		}
	}
	if out == nil {
		return nil, nil
	}
	b, err := json.Marshal(out)
	if err != nil { // results were checked when encoded: cannot happen
		b, _ = json.Marshal(errorResponse(v2, nil, newError(CodeInternalError, "encode response: "+err.Error())))
	}
	reply := &broker.Message{Header: broker.Header{broker.HeaderContentType: ContentType}, Body: b}
	if status != nil {
		reply.Header[broker.HeaderStatus] = strconv.Itoa(int(StatusFromCode(status.Code)))
		reply.Header[broker.HeaderStatusMessage] = status.Message
	}
	return reply, nil
}

func (s *Server) serveBatch(ctx context.Context, body []byte) (any, *Error) {
	var elems []json.RawMessage
	if err := json.Unmarshal(body, &elems); err != nil {
		r := errorResponse(v2, nil, newError(CodeParseError, "parse error: "+err.Error()))
		return r, r.err
	}
	if len(elems) == 0 {
		r := errorResponse(v2, nil, newError(CodeInvalidRequest, "invalid request: empty batch"))
		return r, r.err
	}
	if len(elems) > s.cfg.maxBatch {
		r := errorResponse(v2, nil, newError(CodeInvalidRequest,
			fmt.Sprintf("invalid request: batch of %d requests exceeds the limit of %d", len(elems), s.cfg.maxBatch)))
		return r, r.err
	}
	var out []*response
	for _, e := range elems {
		if r := s.serveOne(ctx, e, false); r != nil {
			out = append(out, r)
		}
	}
	if len(out) == 0 {
		return nil, nil // only notifications
	}
	return out, nil
}

// dialect is the JSON-RPC version of a request.
type dialect int

const (
	v2  dialect = iota // JSON-RPC 2.0
	v11                // JSON-RPC 1.1, as RabbitMQ's Java client speaks it
)

// request is a decoded request object. ID is nil when the member is
// absent and "null" when it is null.
type request struct {
	JSONRPC *string         `json:"jsonrpc"`
	Version *string         `json:"version"`
	ID      json.RawMessage `json:"id"`
	Method  *string         `json:"method"`
	Params  json.RawMessage `json:"params"`
}

// parseRequest decodes one request object. On failure it returns the error
// to answer with and whatever id and dialect it could read.
func parseRequest(raw []byte, top bool) (*request, dialect, *Error) {
	raw = bytes.TrimSpace(raw)
	if top && !json.Valid(raw) {
		return nil, v2, newError(CodeParseError, "parse error: the body is not valid JSON")
	}
	if len(raw) == 0 || raw[0] != '{' {
		return nil, v2, newError(CodeInvalidRequest, "invalid request: not a JSON object")
	}
	var r request
	if err := json.Unmarshal(raw, &r); err != nil {
		// A member of the wrong type: salvage the id and dialect.
		var probe struct {
			JSONRPC any             `json:"jsonrpc"`
			Version any             `json:"version"`
			ID      json.RawMessage `json:"id"`
		}
		_ = json.Unmarshal(raw, &probe)
		r = request{ID: probe.ID}
		d := v2
		if probe.JSONRPC == nil && probe.Version == "1.1" {
			d = v11
		}
		return &r, d, newError(CodeInvalidRequest, "invalid request: "+err.Error())
	}
	switch {
	case r.JSONRPC != nil:
		if *r.JSONRPC != "2.0" {
			return &r, v2, newError(CodeInvalidRequest, fmt.Sprintf("invalid request: jsonrpc must be \"2.0\", not %q", *r.JSONRPC))
		}
		if !validID(r.ID) {
			r.ID = nil
			return &r, v2, newError(CodeInvalidRequest, "invalid request: id must be a string, a number or null")
		}
	case r.Version != nil:
		if *r.Version != "1.1" {
			return &r, v11, newError(CodeInvalidRequest, fmt.Sprintf("invalid request: version %q is not supported (want \"1.1\")", *r.Version))
		}
		if !validID(r.ID) {
			r.ID = nil
			return &r, v11, newError(CodeInvalidRequest, "invalid request: id must be a string, a number or null")
		}
		return &r, v11, checkMethod(&r)
	default:
		if !validID(r.ID) {
			r.ID = nil
		}
		return &r, v2, newError(CodeInvalidRequest, "invalid request: no jsonrpc \"2.0\" (or version \"1.1\") member")
	}
	return &r, v2, checkMethod(&r)
}

func checkMethod(r *request) *Error {
	if r.Method == nil || *r.Method == "" {
		return newError(CodeInvalidRequest, "invalid request: no method")
	}
	if len(r.Params) > 0 && r.Params[0] != '[' && r.Params[0] != '{' && !bytes.Equal(r.Params, []byte("null")) {
		return newError(CodeInvalidParams, "invalid params: params must be an array or an object")
	}
	return nil
}

// validID reports whether id is absent, null, a string or a number.
func validID(id json.RawMessage) bool {
	if len(id) == 0 {
		return true
	}
	switch c := id[0]; {
	case c == '"', c == '-', c >= '0' && c <= '9':
		return true
	}
	return bytes.Equal(id, []byte("null"))
}

// serveOne answers one request object; nil means no response (a
// notification).
func (s *Server) serveOne(ctx context.Context, raw []byte, top bool) *response {
	r, d, perr := parseRequest(raw, top)
	var id json.RawMessage
	if r != nil {
		id = r.ID
	}
	if perr != nil {
		return errorResponse(d, id, perr)
	}
	notification := d == v2 && id == nil
	result, err := s.call(ctx, *r.Method, r.Params)
	if notification {
		return nil
	}
	if err != nil {
		return errorResponse(d, id, errorOf(err))
	}
	b, merr := json.Marshal(result)
	if merr != nil {
		return errorResponse(d, id, newError(CodeInternalError, "internal error: encode result of "+*r.Method+": "+merr.Error()))
	}
	return resultResponse(d, id, b)
}

// call runs a method, recovering a panic into an internal error.
func (s *Server) call(ctx context.Context, name string, params json.RawMessage) (result any, err error) {
	if name == "system.describe" {
		return s.Describe(), nil
	}
	m, ok := (*s.methods.Load())[name]
	if !ok {
		return nil, newError(CodeMethodNotFound, "method not found: "+name)
	}
	defer func() {
		if r := recover(); r != nil {
			result, err = nil, newError(CodeInternalError, fmt.Sprintf("internal error: panic in %s: %v", name, r))
		}
	}()
	return m.call(ctx, params)
}

// response is a response object in either dialect.
type response struct {
	JSONRPC string          `json:"jsonrpc,omitempty"`
	Version string          `json:"version,omitempty"`
	ID      json.RawMessage `json:"id,omitempty"`
	Result  json.RawMessage `json:"result,omitempty"`
	Error   any             `json:"error,omitempty"`

	err *Error // the error, for the status header
}

// errorObject11 is the error object of RabbitMQ's Java JsonRpcServer.
type errorObject11 struct {
	Name    string          `json:"name"`
	Code    int             `json:"code"`
	Message string          `json:"message"`
	Error   json.RawMessage `json:"error"`
}

func resultResponse(d dialect, id json.RawMessage, result json.RawMessage) *response {
	r := newResponse(d, id)
	r.Result = result
	return r
}

func errorResponse(d dialect, id json.RawMessage, e *Error) *response {
	r := newResponse(d, id)
	r.err = e
	if d == v11 {
		r.Error = errorObject11{Name: "JSONRPCError", Code: e.Code, Message: e.Message, Error: e.Data}
	} else {
		r.Error = e
	}
	return r
}

func newResponse(d dialect, id json.RawMessage) *response {
	if d == v11 {
		// The Java server leaves a null id out.
		if bytes.Equal(id, []byte("null")) {
			id = nil
		}
		return &response{Version: "1.1", ID: id}
	}
	if id == nil {
		id = json.RawMessage("null") // 2.0: id is required, null when unknown
	}
	return &response{JSONRPC: "2.0", ID: id}
}

// decodeParams decodes raw params into p (see Register).
func decodeParams(raw json.RawMessage, p any, shape *paramShape) error {
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return nil
	}
	if raw[0] == '{' {
		switch shape.kind {
		case reflect.Struct, reflect.Map, reflect.Interface:
			return json.Unmarshal(raw, p)
		}
		return errors.New("params must be an array")
	}
	switch shape.kind {
	case reflect.Slice, reflect.Interface:
		return json.Unmarshal(raw, p)
	}
	var elems []json.RawMessage
	if err := json.Unmarshal(raw, &elems); err != nil {
		return err
	}
	switch shape.kind {
	case reflect.Array:
		if want := len(shape.params); len(elems) != want {
			return fmt.Errorf("want %d params, got %d", want, len(elems))
		}
		return json.Unmarshal(raw, p)
	case reflect.Struct:
		if len(elems) > len(shape.fields) {
			return fmt.Errorf("want at most %d params, got %d", len(shape.fields), len(elems))
		}
		v := reflect.ValueOf(p).Elem()
		for v.Kind() == reflect.Pointer {
			if v.IsNil() {
				v.Set(reflect.New(v.Type().Elem()))
			}
			v = v.Elem()
		}
		for i, e := range elems {
			f, err := v.FieldByIndexErr(shape.fields[i])
			if err != nil {
				return err
			}
			if err := json.Unmarshal(e, f.Addr().Interface()); err != nil {
				return fmt.Errorf("param %d (%s): %w", i, shape.params[i].Name, err)
			}
		}
		return nil
	case reflect.Map:
		return errors.New("params must be an object")
	}
	if len(elems) != 1 {
		return fmt.Errorf("want 1 param, got %d", len(elems))
	}
	return json.Unmarshal(elems[0], p)
}
