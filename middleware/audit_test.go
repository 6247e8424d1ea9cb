package middleware_test

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/memory"
	"github.com/mqrpc/mqrpc/middleware"
	"github.com/mqrpc/mqrpc/rpc"
)

// auditT0 is the start of the audit tests' clock.
var auditT0 = time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)

// auditClock returns a clock that starts at auditT0 and moves 1ms per
// reading, so sequential calls get exact times and latencies.
func auditClock() func() time.Time {
	var mu sync.Mutex
	now := auditT0
	return func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		now = now.Add(time.Millisecond)
		return now
	}
}

// auditSink collects records.
type auditSink struct {
	mu      sync.Mutex
	recs    []middleware.AuditRecord
	changed chan struct{}
}

func newAuditSink() *auditSink { return &auditSink{changed: make(chan struct{}, 1)} }

func (s *auditSink) Audit(_ context.Context, rec middleware.AuditRecord) {
	s.mu.Lock()
	s.recs = append(s.recs, rec)
	s.mu.Unlock()
	select {
	case s.changed <- struct{}{}:
	default:
	}
}

// wait waits until n records arrived (the limit only catches a hung test)
// and returns them.
func (s *auditSink) wait(t *testing.T, n int) []middleware.AuditRecord {
	t.Helper()
	limit := time.After(10 * time.Second)
	for {
		s.mu.Lock()
		recs := append([]middleware.AuditRecord(nil), s.recs...)
		s.mu.Unlock()
		if len(recs) >= n {
			return recs
		}
		select {
		case <-s.changed:
		case <-limit:
			t.Fatalf("want %d audit records, have %d", n, len(recs))
		}
	}
}

// auditPanic is a server middleware that panics for method Boom.
func auditPanic(next broker.Handler) broker.Handler {
	return broker.HandlerFunc(func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
		if req.Header.Get(broker.HeaderMethod) == "Boom" {
			panic("kaboom")
		}
		return next.ServeMessage(ctx, req)
	})
}

func TestAuditServer(t *testing.T) {
	sink := newAuditSink()
	c, _ := obsCalc(t, []rpc.Middleware{
		middleware.Recover(), // catches the panic Audit records and re-raises
		middleware.Audit(nil, middleware.WithAuditSink(sink), middleware.WithAuditClock(auditClock()),
			middleware.WithAuditRedact(middleware.RedactHeaders("X-Card"))),
		obsRefuse("Secret", rpc.Errorf(rpc.PermissionDenied, "not for you")),
		obsRefuse("Drop", errors.New("store unavailable")),
		auditPanic,
	})
	add := &obsReq{A: 2, B: 3}
	tests := []struct {
		name   string
		method string
		in     *obsReq
		want   middleware.AuditRecord // Time, ID, Subject, Method, Header, Latency and RequestSize are filled in
	}{
		{"OK", "Add", add, middleware.AuditRecord{ReplySize: int(obsSize(t, obsRes{Sum: 5}))}},
		{"ErrorReply", "Fail", &obsReq{A: int(rpc.NotFound)},
			middleware.AuditRecord{Code: rpc.NotFound, Error: "not_found: failed with 5"}},
		{"RefusedBeforeHandler", "Secret", add,
			middleware.AuditRecord{Code: rpc.PermissionDenied, Error: "permission_denied: not for you"}},
		{"DeliveryFailure", "Drop", add,
			middleware.AuditRecord{Code: rpc.Unknown, Error: "store unavailable", Failed: true}},
		{"Panic", "Boom", add,
			middleware.AuditRecord{Code: rpc.Internal, Error: "panic: kaboom", Failed: true}},
		{"UnknownMethod", "Nope", add,
			middleware.AuditRecord{Code: rpc.Unimplemented, Error: `unimplemented: unknown method "Nope"`}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			if tt.method == "Drop" {
				var cancel context.CancelFunc // a failed delivery gets no reply
				ctx, cancel = context.WithTimeout(ctx, 200*time.Millisecond)
				defer cancel()
			}
			_ = c.Call(ctx, "calc", tt.method, tt.in, &obsRes{}, rpc.WithMessageID("id-"+tt.name),
				rpc.WithHeader(middleware.DefaultCallerHeader, "alice"),
				rpc.WithHeader("Authorization", "Bearer secret"), rpc.WithHeader("x-card", "4111"))

			want := tt.want
			want.Time = auditT0.Add(time.Duration(2*i+1) * time.Millisecond)
			want.Latency = time.Millisecond
			want.Side, want.ID, want.Subject, want.Method, want.Caller = "server", "id-"+tt.name, "calc", tt.method, "alice"
			want.RequestSize = int(obsSize(t, tt.in))
			want.Header = broker.Header{
				"mqrpc-method": tt.method, "content-type": "application/json", "mqrpc-caller": "alice",
				"authorization": middleware.Redacted, "x-card": middleware.Redacted,
			}
			assert.Equal(t, want, sink.wait(t, i+1)[i])
		})
	}
}

func TestAuditDoesNotChangeTheMessage(t *testing.T) {
	var seen broker.Header
	keep := func(next broker.Handler) broker.Handler {
		return broker.HandlerFunc(func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
			seen = req.Header.Clone()
			return next.ServeMessage(ctx, req)
		})
	}
	c, _ := obsCalc(t, []rpc.Middleware{middleware.Audit(nil, middleware.WithAuditRedact(middleware.RedactHeaders("x-card"))), keep})
	require.NoError(t, c.Call(context.Background(), "calc", "Add", &obsReq{}, nil,
		rpc.WithHeader("authorization", "Bearer secret"), rpc.WithHeader("x-card", "4111")))
	assert.Equal(t, "Bearer secret", seen.Get("authorization"))
	assert.Equal(t, "4111", seen.Get("x-card"))
}

func TestAuditBodies(t *testing.T) {
	tests := []struct {
		name             string
		opts             []middleware.AuditOption
		method           string
		reqBody, repBody []byte
	}{
		{"Off", nil, "Add", nil, nil},
		{"Cut", []middleware.AuditOption{middleware.WithAuditBodies(8)}, "Add", []byte(`{"A":2,"`), []byte(`{"Sum":5`)},
		{"Whole", []middleware.AuditOption{middleware.WithAuditBodies(1 << 10)}, "Add", []byte(`{"A":2,"B":3}`), []byte(`{"Sum":5}`)},
		{"NoReplyBodyForErrors", []middleware.AuditOption{middleware.WithAuditBodies(1 << 10)}, "Fail", []byte(`{"A":5,"B":3}`), nil},
		{"NoHeaders", []middleware.AuditOption{middleware.WithoutAuditHeaders()}, "Add", nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sink := newAuditSink()
			opts := append([]middleware.AuditOption{middleware.WithAuditSink(sink)}, tt.opts...)
			c, _ := obsCalc(t, []rpc.Middleware{middleware.Audit(nil, opts...)})
			in := &obsReq{A: 2, B: 3}
			if tt.method == "Fail" {
				in.A = int(rpc.NotFound)
			}
			_ = c.Call(context.Background(), "calc", tt.method, in, &obsRes{})
			rec := sink.wait(t, 1)[0]
			assert.Equal(t, tt.reqBody, rec.RequestBody)
			assert.Equal(t, tt.repBody, rec.ReplyBody)
			assert.Equal(t, tt.name == "NoHeaders", rec.Header == nil)
		})
	}
}

// TestAuditFaults runs client and server audits over a broker that drops
// and duplicates messages: each side records what it saw.
func TestAuditFaults(t *testing.T) {
	t.Run("DroppedReply", func(t *testing.T) {
		server, client := newAuditSink(), newAuditSink()
		c, b := obsCalc(t, []rpc.Middleware{middleware.Audit(nil, middleware.WithAuditSink(server))},
			middleware.Audit(nil, middleware.WithAuditSink(client)))
		b.SetFaults(memory.Faults{DropReplies: 1})
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		err := c.Call(ctx, "calc", "Add", &obsReq{}, nil, rpc.WithMessageID("d1"),
			rpc.WithHeader(middleware.DefaultCallerHeader, "bob"))
		require.Equal(t, rpc.DeadlineExceeded, rpc.CodeOf(err))

		s := server.wait(t, 1)[0]
		assert.Equal(t, []any{"server", "d1", "bob", rpc.OK, false}, []any{s.Side, s.ID, s.Caller, s.Code, s.Failed},
			"the server did the work")
		cl := client.wait(t, 1)[0]
		assert.Equal(t, []any{"client", "d1", "bob", rpc.DeadlineExceeded, true}, []any{cl.Side, cl.ID, cl.Caller, cl.Code, cl.Failed},
			"the client saw no reply")
	})
	t.Run("Duplicate", func(t *testing.T) {
		server := newAuditSink()
		c, b := obsCalc(t, []rpc.Middleware{middleware.Audit(nil, middleware.WithAuditSink(server))})
		b.SetFaults(memory.Faults{Duplicates: 1})
		require.NoError(t, c.Call(context.Background(), "calc", "Add", &obsReq{}, nil, rpc.WithMessageID("dup")))
		recs := server.wait(t, 2)
		require.Len(t, recs, 2, "both deliveries pass the audited ingress")
		assert.Equal(t, "dup", recs[0].ID)
		assert.Equal(t, "dup", recs[1].ID)
	})
}

func TestAuditSlogSink(t *testing.T) {
	log := newObsLog()
	c, _ := obsCalc(t, []rpc.Middleware{middleware.Audit(log.logger(slog.LevelInfo),
		middleware.WithAuditClock(auditClock()), middleware.WithAuditCallerHeader("x-user"))})
	err := c.Call(context.Background(), "calc", "Fail", &obsReq{A: int(rpc.NotFound)}, nil,
		rpc.WithMessageID("s1"), rpc.WithHeader("x-user", "carol"), rpc.WithHeader("cookie", "session=1"))
	require.Equal(t, rpc.NotFound, rpc.CodeOf(err))
	assert.Equal(t, []map[string]any{{
		"level": "INFO", "msg": "mqrpc audit", "start": "2024-05-01T12:00:00.001Z", "side": "server", "id": "s1",
		"subject": "calc", "method": "Fail", "caller": "carol", "code": "not_found", "error": "not_found: failed with 5",
		"latency": float64(time.Millisecond), "request_bytes": obsSize(t, obsReq{A: 5}), "reply_bytes": 0.0,
		"header": map[string]any{"mqrpc-method": "Fail", "content-type": "application/json", "x-user": "carol",
			"cookie": middleware.Redacted},
	}}, log.wait(t, 1))
}

func TestAuditNilLogger(t *testing.T) {
	c, _ := obsCalc(t, []rpc.Middleware{middleware.Audit(nil)})
	var out obsRes
	require.NoError(t, c.Call(context.Background(), "calc", "Add", &obsReq{A: 1, B: 2}, &out))
	assert.Equal(t, 3, out.Sum)
}

// TestAuditOutsideTheServer wraps the rpc.Server itself rather than sitting
// in its chain: error replies then arrive as replies with a status.
func TestAuditOutsideTheServer(t *testing.T) {
	sink := newAuditSink()
	c, b := obsCalc(t, nil)
	srv := rpc.NewServer()
	require.NoError(t, rpc.Handle(srv, "Fail", func(context.Context, *obsReq) (*obsRes, error) {
		return nil, rpc.Errorf(rpc.AlreadyExists, "twice")
	}))
	_, err := b.Serve("wrapped", rpc.Chain(rpc.ServerSide, srv, middleware.Audit(nil, middleware.WithAuditSink(sink))))
	require.NoError(t, err)

	err = c.Call(context.Background(), "wrapped", "Fail", &obsReq{}, nil)
	require.Equal(t, rpc.AlreadyExists, rpc.CodeOf(err))
	rec := sink.wait(t, 1)[0]
	assert.Equal(t, rpc.AlreadyExists, rec.Code)
	assert.Equal(t, "already_exists: twice", rec.Error)
	assert.False(t, rec.Failed)
}
