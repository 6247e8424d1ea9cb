package otelmw_test

import (
	"context"
	"fmt"
	"sort"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/goleak"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/memory"
	"github.com/mqrpc/mqrpc/middleware/otelmw"
	"github.com/mqrpc/mqrpc/rpc"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type req struct{ A, B int }
type res struct{ Sum int }

// env is a client and a server, each with its own Instrumentation (as two
// processes would have) exporting to one span recorder and one reader.
type env struct {
	b      *memory.Broker
	c      *rpc.Client
	spans  *tracetest.SpanRecorder
	tp     *sdktrace.TracerProvider
	reader *sdkmetric.ManualReader
	// handlerSpan receives the span context a handler's ctx holds.
	handlerSpan chan trace.SpanContext
	// release unblocks method Block.
	release chan struct{}
	blocked chan struct{}
}

// newEnv serves methods Add, Fail (fails with code A) and Block on subject
// "calc". inner is server middleware inside the instrumentation.
func newEnv(t *testing.T, inner ...rpc.Middleware) *env {
	t.Helper()
	e := &env{
		spans:       tracetest.NewSpanRecorder(),
		reader:      sdkmetric.NewManualReader(),
		handlerSpan: make(chan trace.SpanContext, 10),
		release:     make(chan struct{}),
		blocked:     make(chan struct{}, 1),
	}
	e.tp = sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(e.spans))
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(e.reader))
	t.Cleanup(func() {
		_ = e.tp.Shutdown(context.Background())
		_ = mp.Shutdown(context.Background())
	})
	clientInst, err := otelmw.New(otelmw.WithTracerProvider(e.tp), otelmw.WithMeterProvider(mp))
	require.NoError(t, err)
	serverInst, err := otelmw.New(otelmw.WithTracerProvider(e.tp), otelmw.WithMeterProvider(mp))
	require.NoError(t, err)

	e.b = memory.New()
	t.Cleanup(func() { _ = e.b.Close() })
	srv := rpc.NewServer(rpc.WithServerMiddleware(append([]rpc.Middleware{serverInst.Server()}, inner...)...))
	require.NoError(t, rpc.Handle(srv, "Add", func(ctx context.Context, in *req) (*res, error) {
		e.handlerSpan <- trace.SpanContextFromContext(ctx)
		return &res{Sum: in.A + in.B}, nil
	}))
	require.NoError(t, rpc.Handle(srv, "Fail", func(_ context.Context, in *req) (*res, error) {
		return nil, rpc.Errorf(rpc.Code(in.A), "failed with %d", in.A)
	}))
	require.NoError(t, rpc.Handle(srv, "Block", func(ctx context.Context, _ *req) (*res, error) {
		e.blocked <- struct{}{}
		<-e.release
		return &res{}, nil
	}))
	_, err = e.b.Serve("calc", srv)
	require.NoError(t, err)
	e.c = rpc.NewClient(e.b, rpc.WithClientMiddleware(clientInst.Client()))
	return e
}

// span returns the one ended span named name.
func (e *env) span(t *testing.T, name string) sdktrace.ReadOnlySpan {
	t.Helper()
	var found []sdktrace.ReadOnlySpan
	for _, s := range e.spans.Ended() {
		if s.Name() == name {
			found = append(found, s)
		}
	}
	require.Len(t, found, 1, "spans named %q", name)
	return found[0]
}

func attrMap(kvs []attribute.KeyValue) map[string]any {
	m := make(map[string]any, len(kvs))
	for _, kv := range kvs {
		m[string(kv.Key)] = kv.Value.AsInterface()
	}
	return m
}

func TestTraceLinksClientAndServer(t *testing.T) {
	e := newEnv(t)
	ctx, parent := e.tp.Tracer("test").Start(context.Background(), "caller")
	var replyHeader broker.Header
	var out res
	require.NoError(t, e.c.Call(ctx, "calc", "Add", &req{A: 2, B: 3}, &out,
		rpc.WithMessageID("t1"), rpc.WithReplyHeader(&replyHeader)))
	parent.End()
	require.Equal(t, 5, out.Sum)

	client, server := e.span(t, "send calc"), e.span(t, "process calc")
	traceID := parent.SpanContext().TraceID()

	assert.Equal(t, trace.SpanKindProducer, client.SpanKind())
	assert.Equal(t, traceID, client.SpanContext().TraceID())
	assert.Equal(t, parent.SpanContext().SpanID(), client.Parent().SpanID(), "the client span is the caller's child")

	assert.Equal(t, trace.SpanKindConsumer, server.SpanKind())
	assert.Equal(t, traceID, server.SpanContext().TraceID(), "one trace across the broker")
	assert.Equal(t, client.SpanContext().SpanID(), server.Parent().SpanID(), "the server span is the client span's child")
	assert.True(t, server.Parent().IsRemote(), "the parent came through the message headers")

	select {
	case sc := <-e.handlerSpan:
		assert.Equal(t, server.SpanContext(), sc, "the handler's ctx holds the server span")
	default:
		t.Fatal("handler did not run")
	}

	assert.Equal(t, map[string]any{
		"messaging.system": "mqrpc", "messaging.destination.name": "calc", "rpc.method": "Add",
		"messaging.operation.type": "send", "messaging.operation.name": "send", "messaging.message.id": "t1",
		"messaging.message.body.size": int64(len(`{"A":2,"B":3}`)), "rpc.response.status_code": "OK",
	}, attrMap(client.Attributes()))
	assert.Equal(t, map[string]any{
		"messaging.system": "mqrpc", "messaging.destination.name": "calc", "rpc.method": "Add",
		"messaging.operation.type": "process", "messaging.operation.name": "process", "messaging.message.id": "t1",
		"messaging.message.body.size": int64(len(`{"A":2,"B":3}`)), "rpc.response.status_code": "OK",
	}, attrMap(server.Attributes()))
	assert.Equal(t, codes.Unset, client.Status().Code)
	assert.Equal(t, codes.Unset, server.Status().Code)
}

// TestTraceHeaders checks the W3C header on the wire and that the request
// the caller passed is left alone.
func TestTraceHeaders(t *testing.T) {
	inst, err := otelmw.New(otelmw.WithTracerProvider(sdktrace.NewTracerProvider()))
	require.NoError(t, err)
	var sent broker.Header
	capture := broker.HandlerFunc(func(_ context.Context, m *broker.Message) (*broker.Message, error) {
		sent = m.Header
		return nil, nil
	})
	in := &broker.Message{ID: "h1", Subject: "calc", Header: broker.Header{"mqrpc-method": "Add"}}
	ctx := trace.ContextWithSpanContext(context.Background(), trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: trace.TraceID{1}, SpanID: trace.SpanID{2}, TraceFlags: trace.FlagsSampled,
		TraceState: mustTraceState(t, "vendor=x"),
	}))
	_, err = inst.Client()(capture).ServeMessage(ctx, in)
	require.NoError(t, err)

	assert.Regexp(t, `^00-01000000000000000000000000000000-[0-9a-f]{16}-01$`, sent.Get(broker.HeaderTraceParent))
	assert.Equal(t, "vendor=x", sent.Get(broker.HeaderTraceState))
	assert.Equal(t, broker.Header{"mqrpc-method": "Add"}, in.Header, "the caller's message is not modified")
}

func mustTraceState(t *testing.T, s string) trace.TraceState {
	ts, err := trace.ParseTraceState(s)
	require.NoError(t, err)
	return ts
}

// TestDefaultsPropagate checks that New() with no options (no-op
// providers) still carries the caller's trace context to the server.
func TestDefaultsPropagate(t *testing.T) {
	inst, err := otelmw.New()
	require.NoError(t, err)
	b := memory.New()
	defer b.Close()
	got := make(chan trace.SpanContext, 1)
	srv := rpc.NewServer(rpc.WithServerMiddleware(inst.Server()))
	require.NoError(t, rpc.Handle(srv, "Add", func(ctx context.Context, _ *req) (*res, error) {
		got <- trace.SpanContextFromContext(ctx)
		return &res{}, nil
	}))
	_, err = b.Serve("calc", srv)
	require.NoError(t, err)

	tp := sdktrace.NewTracerProvider()
	ctx, parent := tp.Tracer("test").Start(context.Background(), "caller")
	defer parent.End()
	require.NoError(t, rpc.NewClient(b, rpc.WithClientMiddleware(inst.Client())).Call(ctx, "calc", "Add", &req{}, nil))
	sc := <-got
	assert.Equal(t, parent.SpanContext().TraceID(), sc.TraceID())
	assert.Equal(t, parent.SpanContext().SpanID(), sc.SpanID(), "no-op spans pass the caller's context on")
	assert.True(t, sc.IsRemote())
}

func TestSpanStatus(t *testing.T) {
	refuse := func(next broker.Handler) broker.Handler {
		return broker.HandlerFunc(func(ctx context.Context, m *broker.Message) (*broker.Message, error) {
			switch m.Header.Get(broker.HeaderMethod) {
			case "Secret":
				return nil, rpc.Errorf(rpc.PermissionDenied, "not for you")
			case "Drop":
				return nil, fmt.Errorf("store unavailable: %w", broker.ErrDeliveryFailed)
			}
			return next.ServeMessage(ctx, m)
		})
	}
	tests := []struct {
		name           string
		method         string
		a              int
		status         string
		client, server codes.Code
		serverFailed   bool
	}{
		{"OK", "Add", 0, "OK", codes.Unset, codes.Unset, false},
		{"CallerError", "Fail", int(rpc.NotFound), "NOT_FOUND", codes.Error, codes.Unset, false},
		{"ServerError", "Fail", int(rpc.Internal), "INTERNAL", codes.Error, codes.Error, false},
		{"Refused", "Secret", 0, "PERMISSION_DENIED", codes.Error, codes.Unset, false},
		{"DeliveryFailure", "Drop", 0, "UNKNOWN", codes.Error, codes.Error, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, refuse)
			ctx := context.Background()
			if tt.method == "Drop" {
				var cancel context.CancelFunc // no reply comes: the caller times out
				ctx, cancel = context.WithTimeout(ctx, 200*time.Millisecond)
				defer cancel()
			}
			_ = e.c.Call(ctx, "calc", tt.method, &req{A: tt.a}, nil)
			client, server := e.span(t, "send calc"), e.span(t, "process calc")

			assert.Equal(t, tt.server, server.Status().Code)
			sattrs := attrMap(server.Attributes())
			assert.Equal(t, tt.status, sattrs["rpc.response.status_code"])
			if tt.status != "OK" {
				assert.Equal(t, tt.status, sattrs["error.type"])
			}
			assert.Equal(t, tt.serverFailed, sattrs["mqrpc.delivery_failed"] == true)

			assert.Equal(t, tt.client, client.Status().Code)
			want := tt.status
			if tt.method == "Drop" {
				want = "DEADLINE_EXCEEDED"
				assert.Equal(t, true, attrMap(client.Attributes())["mqrpc.delivery_failed"], "no reply came")
			}
			assert.Equal(t, want, attrMap(client.Attributes())["rpc.response.status_code"])
		})
	}
}

// TestTraceFaults runs the instrumentation over a broker that drops and
// duplicates messages.
func TestTraceFaults(t *testing.T) {
	t.Run("DroppedReply", func(t *testing.T) {
		e := newEnv(t)
		e.b.SetFaults(memory.Faults{DropReplies: 1})
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		err := e.c.Call(ctx, "calc", "Add", &req{}, nil)
		require.Equal(t, rpc.DeadlineExceeded, rpc.CodeOf(err))
		client, server := e.span(t, "send calc"), e.span(t, "process calc")
		assert.Equal(t, codes.Error, client.Status().Code)
		assert.Equal(t, codes.Unset, server.Status().Code, "the server did its work")
		assert.Equal(t, client.SpanContext().SpanID(), server.Parent().SpanID())
	})
	t.Run("Duplicate", func(t *testing.T) {
		e := newEnv(t)
		e.b.SetFaults(memory.Faults{Duplicates: 1})
		require.NoError(t, e.c.Call(context.Background(), "calc", "Add", &req{}, nil))
		<-e.handlerSpan
		<-e.handlerSpan // both deliveries ran
		client := e.span(t, "send calc")
		require.Eventually(t, func() bool { return len(e.spans.Ended()) == 3 }, 10*time.Second, time.Millisecond)
		for _, s := range e.spans.Ended() {
			if s.Name() == "process calc" {
				assert.Equal(t, client.SpanContext().SpanID(), s.Parent().SpanID(), "each delivery is a child of the send")
			}
		}
	})
}

// metricValues collects the int64 sums and the histogram counts, by
// instrument name and then by encoded attributes.
func metricValues(t *testing.T, r *sdkmetric.ManualReader) map[string]map[string]int64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	require.NoError(t, r.Collect(context.Background(), &rm))
	out := map[string]map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		assert.Equal(t, otelmw.ScopeName, sm.Scope.Name)
		for _, m := range sm.Metrics {
			vals := map[string]int64{}
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				for _, dp := range d.DataPoints {
					vals[dp.Attributes.Encoded(attribute.DefaultEncoder())] = dp.Value
				}
			case metricdata.Histogram[float64]:
				for _, dp := range d.DataPoints {
					vals[dp.Attributes.Encoded(attribute.DefaultEncoder())] = int64(dp.Count)
				}
			default:
				t.Fatalf("unexpected data %T for %s", m.Data, m.Name)
			}
			out[m.Name] = vals
		}
	}
	return out
}

// attrs encodes the attributes of a data point for method on calc.
func attrs(method string, extra ...string) string {
	kv := append([]string{"messaging.destination.name=calc", "messaging.system=mqrpc", "rpc.method=" + method}, extra...)
	sort.Strings(kv)
	s := kv[0]
	for _, x := range kv[1:] {
		s += "," + x
	}
	return s
}

func TestMetrics(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	for i := 0; i < 2; i++ {
		require.NoError(t, e.c.Call(ctx, "calc", "Add", &req{}, nil))
		<-e.handlerSpan
	}
	require.Equal(t, rpc.NotFound, rpc.CodeOf(e.c.Call(ctx, "calc", "Fail", &req{A: int(rpc.NotFound)}, nil)))

	// A call in flight shows on both sides.
	done := make(chan error, 1)
	go func() { done <- e.c.Call(ctx, "calc", "Block", &req{}, nil) }()
	<-e.blocked
	inFlight := metricValues(t, e.reader)
	assert.Equal(t, int64(1), inFlight["mqrpc.client.active_calls"][attrs("Block")])
	assert.Equal(t, int64(1), inFlight["mqrpc.server.active_calls"][attrs("Block")])
	close(e.release)
	require.NoError(t, <-done)

	got := metricValues(t, e.reader)
	for _, side := range []string{"client", "server"} {
		t.Run(side, func(t *testing.T) {
			p := "mqrpc." + side + "."
			ok, nf := "rpc.response.status_code=OK", "rpc.response.status_code=NOT_FOUND"
			assert.Equal(t, map[string]int64{
				attrs("Add", ok): 2, attrs("Fail", nf): 1, attrs("Block", ok): 1,
			}, got[p+"calls"])
			assert.Equal(t, map[string]int64{
				attrs("Fail", nf, "error.type=NOT_FOUND"): 1,
			}, got[p+"errors"])
			assert.Equal(t, map[string]int64{
				attrs("Add", ok): 2, attrs("Fail", nf): 1, attrs("Block", ok): 1,
			}, got[p+"call.duration"], "one latency sample per call")
			assert.Equal(t, map[string]int64{
				attrs("Add"): 0, attrs("Fail"): 0, attrs("Block"): 0,
			}, got[p+"active_calls"], "nothing in flight at the end")
		})
	}
}

func TestOptions(t *testing.T) {
	tests := []struct {
		name   string
		opts   []otelmw.Option
		system string
	}{
		{"Default", nil, "mqrpc"},
		{"System", []otelmw.Option{otelmw.WithMessagingSystem("rabbitmq")}, "rabbitmq"},
		{"EmptySystemIsDefault", []otelmw.Option{otelmw.WithMessagingSystem("")}, "mqrpc"},
		{"NilsAreDefaults", []otelmw.Option{otelmw.WithPropagator(nil), otelmw.WithMeterProvider(nil)}, "mqrpc"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := tracetest.NewSpanRecorder()
			tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
			inst, err := otelmw.New(append([]otelmw.Option{otelmw.WithTracerProvider(tp)}, tt.opts...)...)
			require.NoError(t, err)
			h := inst.Server()(broker.HandlerFunc(func(context.Context, *broker.Message) (*broker.Message, error) {
				return nil, nil
			}))
			_, err = h.ServeMessage(context.Background(), &broker.Message{Subject: "s"})
			require.NoError(t, err)
			require.Len(t, rec.Ended(), 1)
			assert.Equal(t, tt.system, attrMap(rec.Ended()[0].Attributes())["messaging.system"])
		})
	}
}

func TestHeaderCarrier(t *testing.T) {
	h := broker.Header{}
	c := otelmw.HeaderCarrier(h)
	c.Set("TraceParent", "v1")
	c.Set("tracestate", "v2")
	assert.Equal(t, "v1", h["traceparent"], "stored in lower case")
	assert.Equal(t, "v1", c.Get("Traceparent"))
	assert.Equal(t, "", c.Get("missing"))
	keys := c.Keys()
	sort.Strings(keys)
	assert.Equal(t, []string{"traceparent", "tracestate"}, keys)
	assert.Empty(t, otelmw.HeaderCarrier(nil).Keys())
	assert.Equal(t, "", otelmw.HeaderCarrier(nil).Get("x"))
}

func TestTraceOneWay(t *testing.T) {
	e := newEnv(t)
	require.NoError(t, e.c.Notify(context.Background(), "calc", "Add", &req{}, rpc.WithMessageID("n1")))
	sc := <-e.handlerSpan
	require.Eventually(t, func() bool { return len(e.spans.Ended()) == 2 }, 10*time.Second, time.Millisecond)
	client, server := e.span(t, "send calc"), e.span(t, "process calc")
	assert.Equal(t, trace.SpanKindProducer, client.SpanKind())
	assert.Equal(t, server.SpanContext(), sc)
	assert.Equal(t, client.SpanContext().SpanID(), server.Parent().SpanID())
	assert.Equal(t, "OK", attrMap(server.Attributes())["rpc.response.status_code"])
	assert.Equal(t, "n1", attrMap(server.Attributes())["messaging.message.id"])
}
