// Package otelmw instruments mqrpc clients and servers with OpenTelemetry:
// traces whose context travels in the message headers (W3C traceparent and
// tracestate by default), and metrics of calls, errors, latency and calls
// in flight. It only reads and writes headers, so it works on every broker.
//
//	inst, err := otelmw.New(
//		otelmw.WithTracerProvider(tp),
//		otelmw.WithMeterProvider(mp),
//		otelmw.WithMessagingSystem("rabbitmq"),
//	)
//	client := rpc.NewClient(b, rpc.WithClientMiddleware(inst.Client()))
//	server := rpc.NewServer(rpc.WithServerMiddleware(inst.Server()))
//
// # Semantic conventions
//
// Spans follow OpenTelemetry's messaging conventions (semconv v1.43.0),
// since what crosses the process boundary is a message on a broker: the
// client span is a "send" span of kind Producer named "send <subject>", the
// server span a "process" span of kind Consumer named "process <subject>"
// and a child of the client span, whose context it takes from the request
// headers. Both carry messaging.system, messaging.destination.name (the
// subject), messaging.operation.type and messaging.operation.name,
// messaging.message.id and messaging.message.body.size. The messaging
// conventions have no method, so the spans also carry rpc.method (the
// mqrpc-method header) and rpc.response.status_code (the status code name
// in upper case, as gRPC spells it: "OK", "NOT_FOUND"), and error.type (the
// same name) when the call failed.
//
// Span status: a client span is Error for every failed call. A server span
// is Error for delivery failures and for codes that mean the server failed
// (Unknown, DeadlineExceeded, Unimplemented, Internal, Unavailable,
// DataLoss), and left Unset for codes that refuse the caller's request
// (NotFound, InvalidArgument, ...), as the RPC conventions do for gRPC.
//
// # Metrics
//
// For each side (client and server) the meter records:
//
//   - mqrpc.<side>.calls: counter {call}, by rpc.response.status_code
//   - mqrpc.<side>.errors: counter {error} of failed calls, by
//     rpc.response.status_code and error.type
//   - mqrpc.<side>.call.duration: histogram in seconds, by
//     rpc.response.status_code
//   - mqrpc.<side>.active_calls: up-down counter {call} of calls in flight
//
// all with messaging.system, messaging.destination.name and rpc.method.
// These are mqrpc's own names: the conventions have no counters of calls,
// errors and calls in flight for messaging or RPC.
//
// # Defaults
//
// Nothing is global: the tracer and meter providers default to no-op
// providers, so New() alone costs almost nothing and records nothing, but
// still propagates a trace context that the caller's ctx already carries.
// Pass otel.GetTracerProvider() and otel.GetMeterProvider() to use the
// global ones. The propagator defaults to propagation.TraceContext (W3C
// traceparent and tracestate, the header names of package broker).
package otelmw

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/rpc"
)

// ScopeName is the instrumentation scope of the tracer and the meter.
const ScopeName = "github.com/mqrpc/mqrpc/middleware/otelmw"

// DefaultMessagingSystem is the default messaging.system attribute.
const DefaultMessagingSystem = "mqrpc"

// Option configures New.
type Option func(*config)

type config struct {
	tp     trace.TracerProvider
	mp     metric.MeterProvider
	prop   propagation.TextMapPropagator
	system string
}

// WithTracerProvider sets where spans go. Default: a no-op provider; nil
// selects it.
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(c *config) { c.tp = tp }
}

// WithMeterProvider sets where metrics go. Default: a no-op provider; nil
// selects it.
func WithMeterProvider(mp metric.MeterProvider) Option {
	return func(c *config) { c.mp = mp }
}

// WithPropagator sets how the trace context is written to and read from
// message headers. Default: propagation.TraceContext, the W3C traceparent
// and tracestate headers; nil selects it. Use a composite propagator to
// carry baggage too.
func WithPropagator(p propagation.TextMapPropagator) Option {
	return func(c *config) { c.prop = p }
}

// WithMessagingSystem sets the messaging.system attribute, the broker in
// use: "rabbitmq", "rocketmq", "nats", ... The middleware cannot see the
// broker, so it is told. Default: DefaultMessagingSystem ("mqrpc"); ""
// selects it.
func WithMessagingSystem(name string) Option {
	return func(c *config) { c.system = name }
}

// Instrumentation makes the client and server middleware. Make one per
// process (or per broker, to tell systems apart) and share it: it is safe
// for concurrent use, and its middleware share the instruments.
type Instrumentation struct {
	tracer trace.Tracer
	prop   propagation.TextMapPropagator
	system attribute.KeyValue
	client instruments
	server instruments
}

// instruments are the metrics of one side.
type instruments struct {
	calls    metric.Int64Counter
	errors   metric.Int64Counter
	duration metric.Float64Histogram
	active   metric.Int64UpDownCounter
}

// New returns an Instrumentation configured by opts. It fails only when
// the meter provider refuses to create an instrument.
func New(opts ...Option) (*Instrumentation, error) {
	cfg := config{}
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.tp == nil {
		cfg.tp = tracenoop.NewTracerProvider()
	}
	if cfg.mp == nil {
		cfg.mp = metricnoop.NewMeterProvider()
	}
	if cfg.prop == nil {
		cfg.prop = propagation.TraceContext{}
	}
	if cfg.system == "" {
		cfg.system = DefaultMessagingSystem
	}
	meter := cfg.mp.Meter(ScopeName)
	in := &Instrumentation{
		tracer: cfg.tp.Tracer(ScopeName),
		prop:   cfg.prop,
		system: semconv.MessagingSystemKey.String(cfg.system),
	}
	var err error
	if in.client, err = newInstruments(meter, "client"); err != nil {
		return nil, err
	}
	if in.server, err = newInstruments(meter, "server"); err != nil {
		return nil, err
	}
	return in, nil
}

func newInstruments(m metric.Meter, side string) (instruments, error) {
	var (
		ins  instruments
		errs [4]error
	)
	// The bounds the RPC conventions recommend, in seconds: they cover a
	// broker's four hops from a few milliseconds up.
	buckets := []float64{0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10}
	p := "mqrpc." + side + "."
	ins.calls, errs[0] = m.Int64Counter(p+"calls", metric.WithUnit("{call}"),
		metric.WithDescription("Calls ended, by status code."))
	ins.errors, errs[1] = m.Int64Counter(p+"errors", metric.WithUnit("{error}"),
		metric.WithDescription("Calls that failed, by status code."))
	ins.duration, errs[2] = m.Float64Histogram(p+"call.duration", metric.WithUnit("s"),
		metric.WithDescription("Duration of calls."), metric.WithExplicitBucketBoundaries(buckets...))
	ins.active, errs[3] = m.Int64UpDownCounter(p+"active_calls", metric.WithUnit("{call}"),
		metric.WithDescription("Calls in flight."))
	if err := errors.Join(errs[:]...); err != nil {
		return ins, fmt.Errorf("otelmw: create %s instruments: %w", side, err)
	}
	return ins, nil
}

// Client returns the client middleware: a send span per call (or per
// attempt, when placed inside a retry middleware), the trace context
// written into the request headers, and the client metrics. Put it
// outermost to measure whole calls as the caller sees them. The request is
// not modified: the trace headers go into a copy of it.
func (in *Instrumentation) Client() rpc.Middleware {
	return rpc.ClientOnly("otelmw.Instrumentation.Client", func(next broker.Handler) broker.Handler {
		return broker.HandlerFunc(func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
			start := time.Now()
			subject, method := req.Subject, req.Header.Get(broker.HeaderMethod)
			base := in.baseAttrs(subject, method)
			ctx, span := in.tracer.Start(ctx, "send "+subject,
				trace.WithSpanKind(trace.SpanKindProducer),
				trace.WithAttributes(base...),
				trace.WithAttributes(
					semconv.MessagingOperationTypeSend,
					semconv.MessagingOperationName("send"),
					semconv.MessagingMessageID(req.ID),
					semconv.MessagingMessageBodySize(len(req.Body)),
				))
			defer span.End()

			// Write the trace context into a copy: the message may be
			// sent again by a retry while a broker still reads the
			// previous attempt's headers.
			msg := *req
			msg.Header = make(broker.Header, len(req.Header)+2)
			for k, v := range req.Header {
				msg.Header[k] = v
			}
			in.prop.Inject(ctx, HeaderCarrier(msg.Header))

			baseSet := metric.WithAttributes(base...)
			in.client.active.Add(ctx, 1, baseSet)
			reply, err := next.ServeMessage(ctx, &msg)
			in.client.active.Add(ctx, -1, baseSet)

			code, failed, msgText := outcome(true, reply, err)
			in.finish(ctx, span, &in.client, base, start, code, code != rpc.OK, failed, msgText)
			return reply, err
		})
	})
}

// Server returns the server middleware: a process span per delivered
// request, a child of the client span whose context the request headers
// carry, and the server metrics. The handler's ctx holds the span, so
// spans the handler starts (and calls it makes through an instrumented
// client) join the same trace. Put it outermost, so requests refused by
// other middleware are traced and counted too.
func (in *Instrumentation) Server() rpc.Middleware {
	return rpc.ServerOnly("otelmw.Instrumentation.Server", func(next broker.Handler) broker.Handler {
		return broker.HandlerFunc(func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
			start := time.Now()
			subject, method := req.Subject, req.Header.Get(broker.HeaderMethod)
			base := in.baseAttrs(subject, method)
			ctx = in.prop.Extract(ctx, HeaderCarrier(req.Header))
			ctx, span := in.tracer.Start(ctx, "process "+subject,
				trace.WithSpanKind(trace.SpanKindConsumer),
				trace.WithAttributes(base...),
				trace.WithAttributes(
					semconv.MessagingOperationTypeProcess,
					semconv.MessagingOperationName("process"),
					semconv.MessagingMessageID(req.ID),
					semconv.MessagingMessageBodySize(len(req.Body)),
				))
			defer span.End()

			baseSet := metric.WithAttributes(base...)
			in.server.active.Add(ctx, 1, baseSet)
			reply, err := next.ServeMessage(ctx, req)
			in.server.active.Add(ctx, -1, baseSet)

			code, failed, msgText := outcome(false, reply, err)
			in.finish(ctx, span, &in.server, base, start, code, failed || isServerFault(code), failed, msgText)
			return reply, err
		})
	})
}

func (in *Instrumentation) baseAttrs(subject, method string) []attribute.KeyValue {
	return []attribute.KeyValue{
		in.system,
		semconv.MessagingDestinationName(subject),
		semconv.RPCMethod(method),
	}
}

// finish records the outcome on the span and in the metrics.
func (in *Instrumentation) finish(ctx context.Context, span trace.Span, ins *instruments, base []attribute.KeyValue,
	start time.Time, code rpc.Code, spanError, failed bool, msg string) {
	status := semconv.RPCResponseStatusCode(statusName(code))
	span.SetAttributes(status)
	attrs := make([]attribute.KeyValue, 0, len(base)+2)
	attrs = append(append(attrs, base...), status)
	set := metric.WithAttributes(attrs...)
	ins.calls.Add(ctx, 1, set)
	ins.duration.Record(ctx, time.Since(start).Seconds(), set)
	if code == rpc.OK {
		return
	}
	errType := semconv.ErrorTypeKey.String(statusName(code))
	span.SetAttributes(errType)
	if failed {
		span.SetAttributes(attribute.Bool("mqrpc.delivery_failed", true))
	}
	if spanError {
		span.SetStatus(codes.Error, msg)
	}
	ins.errors.Add(ctx, 1, metric.WithAttributes(append(attrs, errType)...))
}

// outcome interprets what the rest of a chain returned: the status code,
// whether no reply came out (a client's transport error or a server's
// delivery failure) and the error message. On a server an *rpc.Error is an
// error reply and any other error a delivery failure; a reply may carry an
// error status itself. On a client the innermost handler returns the reply
// of an error reply together with its *rpc.Error.
func outcome(client bool, reply *broker.Message, err error) (code rpc.Code, failed bool, msg string) {
	switch {
	case err != nil:
		if client {
			failed = reply == nil
		} else {
			var e *rpc.Error
			failed = !errors.As(err, &e)
		}
		return rpc.CodeOf(err), failed, err.Error()
	case reply != nil:
		if rerr := rpc.ErrorFromReply(reply); rerr != nil {
			return rpc.CodeOf(rerr), false, rerr.Error()
		}
	}
	return rpc.OK, false, ""
}

// isServerFault reports whether code means the server or the path to it
// failed, the codes the RPC conventions count as server errors for gRPC.
func isServerFault(code rpc.Code) bool {
	switch code {
	case rpc.Unknown, rpc.DeadlineExceeded, rpc.Unimplemented, rpc.Internal, rpc.Unavailable, rpc.DataLoss:
		return true
	}
	return false
}

// statusName is the code's name as gRPC spells it, "NOT_FOUND".
func statusName(c rpc.Code) string {
	switch c {
	case rpc.OK:
		return "OK" // the hot path: no allocation
	}
	return strings.ToUpper(c.String())
}

// HeaderCarrier adapts broker.Header to propagation.TextMapCarrier, so any
// propagator can read and write trace context in message headers. Set on a
// nil HeaderCarrier panics, as on a nil map.
type HeaderCarrier broker.Header

var _ propagation.TextMapCarrier = HeaderCarrier(nil)

// Get returns the value of key (case-insensitive), or "".
func (c HeaderCarrier) Get(key string) string { return broker.Header(c).Get(key) }

// Set sets key (stored in lower case) to value.
func (c HeaderCarrier) Set(key, value string) { broker.Header(c).Set(key, value) }

// Keys returns the header names.
func (c HeaderCarrier) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	return keys
}
