package middleware

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/rpc"
)

// DefaultCallerHeader is the request header Audit reads the caller's
// identity from unless WithAuditCallerHeader names another. Clients set it
// with rpc.WithHeader; a gateway or an authenticating middleware in front
// of the server can set it from verified credentials.
const DefaultCallerHeader = "mqrpc-caller"

// Redacted is the value RedactHeaders puts in place of a redacted header.
const Redacted = "[REDACTED]"

// AuditRecord is what Audit records of one request and its outcome. A sink
// owns the records it is given: their slices and maps are copies.
type AuditRecord struct {
	// Time is when the request entered the middleware.
	Time time.Time
	// Side is "server" for a delivered request and "client" for a call.
	Side string
	// ID is the message ID, the same across retries of one call.
	ID string
	// Subject is where the request was sent.
	Subject string
	// Method is the mqrpc-method header.
	Method string
	// Caller is the value of the caller header (DefaultCallerHeader unless
	// configured), "" when the request had none.
	Caller string
	// Header holds the request headers after redaction.
	Header broker.Header
	// RequestSize and ReplySize are the body sizes in bytes. ReplySize is
	// 0 when there was no reply or the reply is an error reply.
	RequestSize, ReplySize int
	// Code is the status of the outcome: OK, the code of an error reply
	// (also one given by middleware that refused the request before the
	// handler), or the code describing a failure (rpc.CodeOf).
	Code rpc.Code
	// Error is the error message, "" on success.
	Error string
	// Failed is true when no reply came out: on a server, a delivery
	// failure that the broker negatively acknowledges (or a panic that no
	// inner Recover caught); on a client, a transport error.
	Failed bool
	// Latency is the time the rest of the chain took.
	Latency time.Duration
	// RequestBody and ReplyBody are the first bytes of the bodies (at most
	// the WithAuditBodies limit), recorded only when WithAuditBodies asks.
	// They were cut when shorter than RequestSize or ReplySize.
	RequestBody, ReplyBody []byte
}

// AuditSink receives audit records. Audit calls it on the request's
// goroutine once the request is done, so it adds to the request's latency:
// a slow sink should buffer. It is called concurrently and must be safe
// for concurrent use. The ctx carries the request's values but is never
// cancelled, so a sink can finish writing a record for an expired request.
type AuditSink interface {
	Audit(ctx context.Context, rec AuditRecord)
}

// AuditSinkFunc is an adapter to allow the use of ordinary functions as
// audit sinks.
type AuditSinkFunc func(ctx context.Context, rec AuditRecord)

// Audit calls f(ctx, rec).
func (f AuditSinkFunc) Audit(ctx context.Context, rec AuditRecord) { f(ctx, rec) }

// NewSlogAuditSink returns a sink that writes each record to logger at
// level Info, with the message "mqrpc audit" and the record's fields as
// attributes: start, side, id, subject, method, caller, code, error (when
// set), failed (when true), latency, request_bytes, reply_bytes, header (a
// group) and request_body, reply_body (when recorded). A nil logger
// discards the records.
func NewSlogAuditSink(logger *slog.Logger) AuditSink {
	return slogAuditSink{logger}
}

type slogAuditSink struct{ l *slog.Logger }

func (s slogAuditSink) Audit(ctx context.Context, r AuditRecord) {
	if s.l == nil || !s.l.Enabled(ctx, slog.LevelInfo) {
		return
	}
	attrs := make([]slog.Attr, 0, 16)
	attrs = append(attrs,
		slog.Time("start", r.Time),
		slog.String("side", r.Side),
		slog.String("id", r.ID),
		slog.String("subject", r.Subject),
		slog.String("method", r.Method),
		slog.String("caller", r.Caller),
		slog.String("code", r.Code.String()),
	)
	if r.Error != "" {
		attrs = append(attrs, slog.String("error", r.Error))
	}
	if r.Failed {
		attrs = append(attrs, slog.Bool("failed", true))
	}
	attrs = append(attrs,
		slog.Duration("latency", r.Latency),
		slog.Int("request_bytes", r.RequestSize),
		slog.Int("reply_bytes", r.ReplySize),
	)
	if len(r.Header) > 0 {
		// Sorted, so text logs read the same way every time.
		names := make([]string, 0, len(r.Header))
		for k := range r.Header {
			names = append(names, k)
		}
		slices.Sort(names)
		h := make([]slog.Attr, 0, len(names))
		for _, k := range names {
			h = append(h, slog.String(k, r.Header[k]))
		}
		attrs = append(attrs, slog.Attr{Key: "header", Value: slog.GroupValue(h...)})
	}
	if r.RequestBody != nil {
		attrs = append(attrs, slog.Any("request_body", r.RequestBody))
	}
	if r.ReplyBody != nil {
		attrs = append(attrs, slog.Any("reply_body", r.ReplyBody))
	}
	s.l.LogAttrs(ctx, slog.LevelInfo, "mqrpc audit", attrs...)
}

// AuditOption configures Audit.
type AuditOption func(*auditConfig)

type auditConfig struct {
	sink     AuditSink
	caller   string
	redact   []func(*AuditRecord)
	maxBody  int
	now      func() time.Time
	noHeader bool
}

// WithAuditSink sends the records to sink instead of the logger given to
// Audit. A nil sink selects the logger again.
func WithAuditSink(sink AuditSink) AuditOption {
	return func(c *auditConfig) { c.sink = sink }
}

// WithAuditCallerHeader names the request header that identifies the
// caller. Default: DefaultCallerHeader ("mqrpc-caller"); "" selects the
// default.
func WithAuditCallerHeader(name string) AuditOption {
	return func(c *auditConfig) { c.caller = name }
}

// WithAuditRedact adds a hook that edits each record before it reaches the
// sink: blank a header, mask the caller, cut a body. Hooks run in the order
// given, after the built-in redaction of credential headers (see Audit).
// Default: none.
func WithAuditRedact(fn func(rec *AuditRecord)) AuditOption {
	return func(c *auditConfig) {
		if fn != nil {
			c.redact = append(c.redact, fn)
		}
	}
}

// WithAuditBodies records the first max bytes of the request and reply
// bodies. Default: 0, no bodies; bodies often hold personal data, so
// record them only where the audit rules ask for them, and redact.
func WithAuditBodies(max int) AuditOption {
	return func(c *auditConfig) { c.maxBody = max }
}

// WithoutAuditHeaders leaves AuditRecord.Header nil, for audits that must
// not keep request metadata. Default: headers are recorded (redacted).
func WithoutAuditHeaders() AuditOption {
	return func(c *auditConfig) { c.noHeader = true }
}

// WithAuditClock sets the clock of AuditRecord.Time and Latency. Default:
// time.Now; a nil now selects it. Tests and examples use a fixed clock.
func WithAuditClock(now func() time.Time) AuditOption {
	return func(c *auditConfig) { c.now = now }
}

// RedactHeaders returns a redaction hook for WithAuditRedact that replaces
// the values of the named headers (case-insensitive) with Redacted.
func RedactHeaders(names ...string) func(*AuditRecord) {
	return func(r *AuditRecord) {
		for k := range r.Header {
			for _, n := range names {
				if strings.EqualFold(k, n) {
					r.Header[k] = Redacted
				}
			}
		}
	}
}

// redactCredentials is the built-in redaction that always runs first:
// credentials never reach an audit sink.
func redactCredentials(r *AuditRecord) {
	for k := range r.Header {
		switch strings.ToLower(k) {
		case "authorization", "proxy-authorization", "cookie", "set-cookie":
			r.Header[k] = Redacted
		}
	}
}

// Audit returns a middleware that records every request and its outcome,
// one AuditRecord each, to a sink: by default NewSlogAuditSink(logger); a
// nil logger and no WithAuditSink discards the records.
//
// On a server, make it the outermost middleware: it is then the one
// audited ingress every request passes, and it records also the requests
// that inner middleware refuses (an *rpc.Error before the handler: a
// limit, an expired deadline, a failed check), delivery failures, and
// panics (recorded as Internal and Failed, then re-raised for an outer
// Recover or the broker). On a client it records each call, or each
// attempt when placed inside a retry middleware.
//
// The record holds the request headers with the values of Authorization,
// Proxy-Authorization, Cookie and Set-Cookie always replaced by Redacted,
// then edited by the WithAuditRedact hooks. Bodies are recorded only with
// WithAuditBodies. Audit never changes the message. It is safe for
// concurrent use.
func Audit(logger *slog.Logger, opts ...AuditOption) rpc.Middleware {
	cfg := auditConfig{caller: DefaultCallerHeader, now: time.Now}
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.sink == nil {
		cfg.sink = NewSlogAuditSink(logger)
	}
	if cfg.caller == "" {
		cfg.caller = DefaultCallerHeader
	}
	if cfg.now == nil {
		cfg.now = time.Now
	}
	return func(next broker.Handler) broker.Handler {
		return broker.HandlerFunc(func(ctx context.Context, req *broker.Message) (reply *broker.Message, err error) {
			// Take everything from the request now: once the broker
			// has it (client) or once we return (server), it is not
			// ours to read.
			rec := AuditRecord{
				Time:        cfg.now(),
				Side:        callSide(ctx),
				ID:          req.ID,
				Subject:     req.Subject,
				Method:      req.Header.Get(broker.HeaderMethod),
				Caller:      req.Header.Get(cfg.caller),
				RequestSize: len(req.Body),
				RequestBody: cfg.body(req.Body),
			}
			if !cfg.noHeader {
				rec.Header = req.Header.Clone()
			}
			done := false
			defer func() {
				if done {
					return
				}
				// A panic is passing through: record it, then let it go
				// on to whoever recovers it.
				r := recover()
				if r == nil {
					return // runtime.Goexit, not a panic
				}
				rec.Code, rec.Error, rec.Failed = rpc.Internal, fmt.Sprintf("panic: %v", r), true
				cfg.emit(ctx, &rec)
				panic(r)
			}()

			reply, err = next.ServeMessage(ctx, req)
			done = true

			out := callOutcome(rec.Side == "client", reply, err)
			rec.Code, rec.Error, rec.Failed, rec.ReplySize = out.code, out.message, out.failed, out.replyBytes
			if reply != nil && out.code == rpc.OK {
				rec.ReplyBody = cfg.body(reply.Body)
			}
			cfg.emit(ctx, &rec)
			return reply, err
		})
	}
}

// body copies up to maxBody bytes of b, or returns nil when bodies are not
// recorded.
func (c *auditConfig) body(b []byte) []byte {
	if c.maxBody <= 0 {
		return nil
	}
	n := min(len(b), c.maxBody)
	return append(make([]byte, 0, n), b[:n]...)
}

func (c *auditConfig) emit(ctx context.Context, rec *AuditRecord) {
	rec.Latency = c.now().Sub(rec.Time)
	if rec.Header != nil {
		redactCredentials(rec)
	}
	for _, fn := range c.redact {
		fn(rec)
	}
	c.sink.Audit(context.WithoutCancel(ctx), *rec)
}
