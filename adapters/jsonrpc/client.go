package jsonrpc

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/rpc"
)

// Client calls a JSON-RPC service over a broker. It is safe for concurrent
// use.
type Client struct {
	b       broker.Broker
	subject string
	cfg     clientConfig
	handler broker.Handler
	nextID  atomic.Int64
}

type clientConfig struct {
	dialect    dialect
	timeout    time.Duration
	middleware []rpc.Middleware
	header     broker.Header
}

// ClientOption configures a Client.
type ClientOption func(*clientConfig)

// WithVersion11 makes the client speak JSON-RPC 1.1 as RabbitMQ's Java
// JsonRpcServer expects it ({"version":"1.1", ...}, params by position).
// 1.1 has no notifications and no batches: Notify sends a request whose
// response is dropped, and Batch is refused. Default: JSON-RPC 2.0.
func WithVersion11() ClientOption { return func(c *clientConfig) { c.dialect = v11 } }

// WithTimeout sets how long a call waits for its response when its ctx has
// no deadline. Default: 30s. Zero or less means no default timeout.
func WithTimeout(d time.Duration) ClientOption { return func(c *clientConfig) { c.timeout = d } }

// WithMiddleware wraps the broker round trip in mw, the first outermost,
// as rpc.WithClientMiddleware does: the innermost handler sends the
// request (broker Send for notifications, returning a nil reply) and turns
// a status reply into an *rpc.Error. Calling it again appends.
func WithMiddleware(mw ...rpc.Middleware) ClientOption {
	return func(c *clientConfig) { c.middleware = append(c.middleware, mw...) }
}

// WithHeader adds a broker header to every request. Names are
// case-insensitive.
func WithHeader(name, value string) ClientOption {
	return func(c *clientConfig) {
		if c.header == nil {
			c.header = make(broker.Header, 2)
		}
		c.header.Set(name, value)
	}
}

// NewClient returns a client that sends requests to subject (the service's
// queue or subject) through b. The client does not own b.
func NewClient(b broker.Broker, subject string, opts ...ClientOption) *Client {
	cfg := clientConfig{timeout: 30 * time.Second}
	for _, o := range opts {
		o(&cfg)
	}
	c := &Client{b: b, subject: subject, cfg: cfg}
	c.handler = rpc.Chain(rpc.ClientSide, broker.HandlerFunc(c.roundTrip), cfg.middleware...)
	return c
}

// roundTrip is the innermost handler: Send for notifications, Request
// otherwise.
func (c *Client) roundTrip(ctx context.Context, msg *broker.Message) (*broker.Message, error) {
	if ci, _ := rpc.CallInfoFromContext(ctx); ci.OneWay {
		return nil, c.b.Send(ctx, msg)
	}
	reply, err := c.b.Request(ctx, msg)
	if err != nil {
		return nil, err
	}
	return reply, rpc.ErrorFromReply(reply)
}

// outRequest is a request object as the client writes it.
type outRequest struct {
	JSONRPC string          `json:"jsonrpc,omitempty"`
	Version string          `json:"version,omitempty"`
	Method  string          `json:"method"`
	Params  any             `json:"params,omitempty"`
	ID      json.RawMessage `json:"id,omitempty"`
}

func (c *Client) newRequest(method string, params any, notification bool) outRequest {
	r := outRequest{Method: method, Params: params}
	if c.cfg.dialect == v11 {
		r.Version = "1.1"
		if params == nil {
			r.Params = []any{}
		}
	} else {
		r.JSONRPC = "2.0"
	}
	if !notification {
		r.ID = strconv.AppendInt(nil, c.nextID.Add(1), 10)
	}
	return r
}

// send sends body and returns the reply; a nil reply for one-way sends.
// An error reply with a body is returned as a reply: the body holds the
// error response.
func (c *Client) send(ctx context.Context, method string, body []byte, oneway bool) (*broker.Message, error) {
	h := make(broker.Header, 2+len(c.cfg.header))
	for k, v := range c.cfg.header {
		h[k] = v
	}
	h[broker.HeaderContentType] = ContentType
	if method != "" {
		h[broker.HeaderMethod] = method
	}
	msg := &broker.Message{ID: broker.NewID(), Subject: c.subject, Header: h, Body: body}
	if c.cfg.timeout > 0 {
		if _, ok := ctx.Deadline(); !ok {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, c.cfg.timeout)
			defer cancel()
		}
	}
	if d, ok := ctx.Deadline(); ok {
		msg.Deadline = d
	}
	// Client middleware (retry, logging, ...) reads what the call is.
	ctx = rpc.ContextWithCallInfo(ctx, rpc.CallInfo{Service: c.subject, Method: method, OneWay: oneway})
	reply, err := c.handler.ServeMessage(ctx, msg)
	if err != nil {
		var re *rpc.Error
		if reply != nil && len(reply.Body) > 0 && errors.As(err, &re) && re.Wire() {
			return reply, nil
		}
		if errors.As(err, &re) && re.Wire() {
			// A status reply without a body (a server middleware, an
			// expired request): an error object made from the status.
			return nil, &Error{Code: CodeFromStatus(re.Code()), Message: re.Message(), status: re}
		}
		return nil, fmt.Errorf("jsonrpc: %s: %w", method, err)
	}
	if !oneway && reply == nil {
		return nil, fmt.Errorf("jsonrpc: %s: no reply", method)
	}
	return reply, nil
}

// inResponse is a response object as the client reads it, in either
// dialect.
type inResponse struct {
	ID     json.RawMessage `json:"id"`
	Result json.RawMessage `json:"result"`
	Error  *inError        `json:"error"`
}

// inError reads the error object of either dialect.
type inError struct {
	Code    int             `json:"code"`
	Message string          `json:"message"`
	Data    json.RawMessage `json:"data"`
	Error   json.RawMessage `json:"error"` // 1.1
}

func (e *inError) toError(reply *broker.Message) *Error {
	out := &Error{Code: e.Code, Message: e.Message, Data: e.Data}
	if len(out.Data) == 0 && len(e.Error) > 0 && !bytes.Equal(e.Error, []byte("null")) {
		out.Data = e.Error
	}
	out.status = wireStatus(reply, out)
	return out
}

// Call calls method with params and decodes the result into result (nil
// to discard it). params is encoded with encoding/json: a slice or array
// gives params by position, a struct or map by name, nil none.
//
// A JSON-RPC error response is returned as an *Error; failures to deliver
// wrap the broker error, so errors.Is(err, broker.ErrNoResponders) and
// rpc.CodeOf work.
func (c *Client) Call(ctx context.Context, method string, params, result any) error {
	req := c.newRequest(method, params, false)
	body, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("jsonrpc: encode %s request: %w", method, err)
	}
	reply, err := c.send(ctx, method, body, false)
	if err != nil {
		return err
	}
	var resp inResponse
	if err := json.Unmarshal(reply.Body, &resp); err != nil {
		return fmt.Errorf("jsonrpc: %s: malformed response: %w", method, err)
	}
	if resp.Error != nil {
		return resp.Error.toError(reply)
	}
	// A 1.1 server may leave a null id out; otherwise it must match.
	if len(resp.ID) > 0 && !bytes.Equal(resp.ID, []byte("null")) && !bytes.Equal(resp.ID, req.ID) {
		return fmt.Errorf("jsonrpc: %s: response id %s does not match request id %s", method, resp.ID, req.ID)
	}
	if result != nil && len(resp.Result) > 0 {
		if err := json.Unmarshal(resp.Result, result); err != nil {
			return fmt.Errorf("jsonrpc: %s: decode result: %w", method, err)
		}
	}
	return nil
}

// Notify sends method with params as a notification: the server runs it
// and sends no response. It returns once the broker accepted the message.
func (c *Client) Notify(ctx context.Context, method string, params any) error {
	body, err := json.Marshal(c.newRequest(method, params, true))
	if err != nil {
		return fmt.Errorf("jsonrpc: encode %s notification: %w", method, err)
	}
	_, err = c.send(ctx, method, body, true)
	return err
}

// Invoke is the typed form of Call: it calls method with params and
// returns the decoded result.
func Invoke[R any](ctx context.Context, c *Client, method string, params any) (R, error) {
	var r R
	err := c.Call(ctx, method, params, &r)
	return r, err
}

// BatchElem is one request of a batch.
type BatchElem struct {
	// Method and Params are the request, as for Client.Call.
	Method string
	Params any
	// Result receives the decoded result (nil to discard it).
	Result any
	// Notification sends the element as a notification: no response,
	// and Error stays nil.
	Notification bool
	// Error is set by Batch to the element's error, an *Error for an
	// error response.
	Error error
}

// ErrBatch11 is returned by Batch on a JSON-RPC 1.1 client.
var ErrBatch11 = errors.New("jsonrpc: JSON-RPC 1.1 has no batches")

// Batch sends elems as one JSON-RPC 2.0 batch and sets each element's
// Result or Error. It returns an error only when the batch as a whole
// failed (not delivered, or answered with something else than a batch);
// then no element was decoded. A batch of notifications only is sent
// one-way.
func (c *Client) Batch(ctx context.Context, elems []*BatchElem) error {
	if c.cfg.dialect == v11 {
		return ErrBatch11
	}
	if len(elems) == 0 {
		return nil
	}
	reqs := make([]outRequest, len(elems))
	byID := make(map[string]*BatchElem, len(elems))
	oneway := true
	for i, e := range elems {
		r := c.newRequest(e.Method, e.Params, e.Notification)
		reqs[i] = r
		e.Error = nil
		if !e.Notification {
			oneway = false
			byID[string(r.ID)] = e
		}
	}
	body, err := json.Marshal(reqs)
	if err != nil {
		return fmt.Errorf("jsonrpc: encode batch: %w", err)
	}
	reply, err := c.send(ctx, "", body, oneway)
	if err != nil || oneway {
		return err
	}
	var resps []inResponse
	if err := json.Unmarshal(reply.Body, &resps); err != nil {
		// The server refused the whole batch with a single error.
		var one inResponse
		if json.Unmarshal(reply.Body, &one) == nil && one.Error != nil {
			return one.Error.toError(reply)
		}
		return fmt.Errorf("jsonrpc: batch: malformed response: %w", err)
	}
	for _, r := range resps {
		e := byID[string(r.ID)]
		if e == nil {
			continue // an error about an element whose id was unreadable
		}
		delete(byID, string(r.ID))
		if r.Error != nil {
			e.Error = r.Error.toError(nil)
			continue
		}
		if e.Result != nil && len(r.Result) > 0 {
			if err := json.Unmarshal(r.Result, e.Result); err != nil {
				e.Error = fmt.Errorf("jsonrpc: %s: decode result: %w", e.Method, err)
			}
		}
	}
	for _, e := range byID {
		missing := &Error{Code: CodeInternalError, Message: "no response to " + e.Method + " in the batch"}
		missing.status = wireStatus(nil, missing)
		e.Error = missing
	}
	return nil
}
