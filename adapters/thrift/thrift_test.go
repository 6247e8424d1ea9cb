package thrift_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/apache/thrift/lib/go/thrift"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	mqthrift "github.com/mqrpc/mqrpc/adapters/thrift"
	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/memory"
	"github.com/mqrpc/mqrpc/examples/thrift-calculator/calculator"
	"github.com/mqrpc/mqrpc/rpc"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// Special divisors make the test handler misbehave on purpose.
const (
	divNotFound = -1 // returns an *rpc.Error with code NotFound
	divPanic    = -2 // panics
	divBlock    = -3 // waits for ctx to end
)

// calc is the Calculator the tests serve.
type calc struct {
	notes   chan string   // receives every recorded note
	release chan struct{} // when non-nil, Record waits for it to close
	unblock chan struct{} // divBlock waits for ctx to end and for this to close
}

func newCalc() *calc { return &calc{notes: make(chan string, 16), unblock: make(chan struct{})} }

func (c *calc) Ping(context.Context) error { return nil }

func (c *calc) Add(_ context.Context, a, b int32) (int32, error) { return a + b, nil }

func (c *calc) CalcSum(_ context.Context, numbers []float64) (float64, error) {
	var sum float64
	for _, n := range numbers {
		sum += n
	}
	return sum, nil
}

func (c *calc) Divide(ctx context.Context, a, b int32) (int32, error) {
	switch b {
	case 0:
		return 0, &calculator.InvalidOperation{Code: 1, Why: "divide by zero"}
	case divNotFound:
		return 0, rpc.Errorf(rpc.NotFound, "no such divisor")
	case divPanic:
		panic("boom")
	case divBlock:
		// Answer only after the caller has given up, so the caller
		// sees its own timeout.
		<-ctx.Done()
		<-c.unblock
		return 0, ctx.Err()
	}
	return a / b, nil
}

func (c *calc) Record(_ context.Context, note string) error {
	if c.release != nil {
		<-c.release
	}
	c.notes <- note
	return nil
}

// serve serves a calc on subject "Calculator" of a new memory broker.
func serve(t *testing.T, h *calc, mw ...rpc.Middleware) *memory.Broker {
	t.Helper()
	b := memory.New()
	t.Cleanup(func() { _ = b.Close() })
	srv := rpc.Chain(rpc.ServerSide, mqthrift.NewServer(calculator.NewCalculatorProcessor(h)), mw...)
	sub, err := b.Serve("Calculator", srv)
	require.NoError(t, err)
	t.Cleanup(func() { _ = sub.Stop(context.Background()) })
	return b
}

var protocols = []mqthrift.Protocol{mqthrift.Binary, mqthrift.Compact, mqthrift.JSON}

// clients returns a calculator client made each way the package offers.
func clients(b broker.Broker, p mqthrift.Protocol, opts ...mqthrift.Option) map[string]*calculator.CalculatorClient {
	opts = append([]mqthrift.Option{mqthrift.WithProtocol(p)}, opts...)
	tr := mqthrift.NewTransport(b, "Calculator", append(opts, mqthrift.WithOneway("record"))...)
	return map[string]*calculator.CalculatorClient{
		"Client":    calculator.NewCalculatorClient(mqthrift.NewClient(b, "Calculator", opts...)),
		"Transport": calculator.NewCalculatorClientFactory(tr, p.Factory(nil)),
	}
}

func TestCalls(t *testing.T) {
	for _, p := range protocols {
		for kind, c := range clients(serve(t, newCalc()), p) {
			t.Run(p.String()+"/"+kind, func(t *testing.T) {
				ctx := context.Background()
				require.NoError(t, c.Ping(ctx))

				sum, err := c.Add(ctx, 2, 3)
				require.NoError(t, err)
				assert.Equal(t, int32(5), sum)

				total, err := c.CalcSum(ctx, []float64{1, 2.5, 3.5})
				require.NoError(t, err)
				assert.Equal(t, 7.0, total)

				total, err = c.CalcSum(ctx, nil)
				require.NoError(t, err)
				assert.Equal(t, 0.0, total)

				q, err := c.Divide(ctx, 7, 2)
				require.NoError(t, err)
				assert.Equal(t, int32(3), q)

				// A declared exception is an ordinary result.
				_, err = c.Divide(ctx, 1, 0)
				var io *calculator.InvalidOperation
				require.ErrorAs(t, err, &io)
				assert.Equal(t, "divide by zero", io.Why)
			})
		}
	}
}

func TestOneway(t *testing.T) {
	for _, p := range protocols {
		h := newCalc()
		b := serve(t, h)
		for kind, c := range clients(b, p) {
			t.Run(p.String()+"/"+kind, func(t *testing.T) {
				// Record blocks in the server until release is closed, so
				// the call returning proves that it did not wait.
				h.release = make(chan struct{})
				require.NoError(t, c.Record(context.Background(), "note "+kind))
				close(h.release)
				assert.Equal(t, "note "+kind, <-h.notes)
				h.release = nil
			})
		}
	}
}

// A oneway method that the transport was not told about still works: the
// server runs it and acknowledges the CALL message.
func TestOnewayUnlisted(t *testing.T) {
	h := newCalc()
	b := serve(t, h)
	c := calculator.NewCalculatorClientFactory(mqthrift.NewTransport(b, "Calculator"), mqthrift.Binary.Factory(nil))
	require.NoError(t, c.Record(context.Background(), "unlisted"))
	assert.Equal(t, "unlisted", <-h.notes)
	// The transport is ready for the next call.
	sum, err := c.Add(context.Background(), 1, 1)
	require.NoError(t, err)
	assert.Equal(t, int32(2), sum)
}

// A message of type ONEWAY written to a Transport goes out with Send.
func TestTransportOnewayMessage(t *testing.T) {
	for _, p := range protocols {
		t.Run(p.String(), func(t *testing.T) {
			h := newCalc()
			h.release = make(chan struct{})
			b := serve(t, h)
			ctx := context.Background()
			tr := mqthrift.NewTransport(b, "Calculator", mqthrift.WithProtocol(p))
			prot := p.Factory(nil).GetProtocol(tr)
			require.NoError(t, prot.WriteMessageBegin(ctx, "record", thrift.ONEWAY, 1))
			require.NoError(t, (&calculator.CalculatorRecordArgs{Note: "raw"}).Write(ctx, prot))
			require.NoError(t, prot.WriteMessageEnd(ctx))
			require.NoError(t, prot.Flush(ctx))
			assert.Zero(t, tr.RemainingBytes())
			close(h.release)
			assert.Equal(t, "raw", <-h.notes)
		})
	}
}

func TestErrors(t *testing.T) {
	refuse := func(next broker.Handler) broker.Handler {
		return broker.HandlerFunc(func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
			if req.Header.Get("x-user") == "" {
				return rpc.ErrorReply(rpc.Errorf(rpc.PermissionDenied, "who are you?")), nil
			}
			return next.ServeMessage(ctx, req)
		})
	}
	h := newCalc()
	b := serve(t, h, refuse)
	t.Cleanup(func() { close(h.unblock) }) // runs before the server stops
	short := func() (context.Context, context.CancelFunc) {
		return context.WithTimeout(context.Background(), 200*time.Millisecond)
	}
	tests := []struct {
		name string
		call func(ctx context.Context, c *calculator.CalculatorClient) error
		ctx  func() (context.Context, context.CancelFunc)
		user string
		// want: the code rpc.CodeOf gives for a Client, the code
		// CodeOf gives for a Transport, and the Thrift types.
		code, transportCode rpc.Code
		appType             int32 // -1: a transport exception is expected instead
		transportType       int
		is                  error
	}{
		{
			name: "handler status", user: "u",
			call: func(ctx context.Context, c *calculator.CalculatorClient) error {
				_, err := c.Divide(ctx, 1, divNotFound)
				return err
			},
			code: rpc.NotFound, transportCode: rpc.Internal, appType: thrift.INTERNAL_ERROR,
		},
		{
			name: "panic", user: "u",
			call: func(ctx context.Context, c *calculator.CalculatorClient) error {
				_, err := c.Divide(ctx, 1, divPanic)
				return err
			},
			code: rpc.Internal, transportCode: rpc.Internal, appType: thrift.INTERNAL_ERROR,
		},
		{
			name: "middleware status",
			call: func(ctx context.Context, c *calculator.CalculatorClient) error {
				_, err := c.Add(ctx, 1, 2)
				return err
			},
			code: rpc.PermissionDenied, transportCode: rpc.PermissionDenied, appType: thrift.UNKNOWN_APPLICATION_EXCEPTION,
		},
		{
			name: "deadline", user: "u", ctx: short,
			call: func(ctx context.Context, c *calculator.CalculatorClient) error {
				_, err := c.Divide(ctx, 1, divBlock)
				return err
			},
			code: rpc.DeadlineExceeded, transportCode: rpc.DeadlineExceeded, appType: -1,
			transportType: thrift.TIMED_OUT, is: broker.ErrTimeout,
		},
	}
	for _, tt := range tests {
		for kind, c := range clients(b, mqthrift.Binary, mqthrift.WithHeader("X-User", tt.user)) {
			t.Run(tt.name+"/"+kind, func(t *testing.T) {
				ctx, cancel := context.Background(), context.CancelFunc(func() {})
				if tt.ctx != nil {
					ctx, cancel = tt.ctx()
				}
				defer cancel()
				err := tt.call(ctx, c)
				require.Error(t, err)
				if kind == "Client" {
					assert.Equal(t, tt.code, rpc.CodeOf(err), "rpc.CodeOf(%v)", err)
					assert.Equal(t, tt.code, mqthrift.CodeOf(err), "CodeOf(%v)", err)
				} else {
					assert.Equal(t, tt.transportCode, mqthrift.CodeOf(err), "CodeOf(%v)", err)
				}
				if tt.appType >= 0 {
					var x thrift.TApplicationException
					require.ErrorAs(t, err, &x)
					assert.Equal(t, tt.appType, x.TypeId())
				} else {
					var x thrift.TTransportException
					require.ErrorAs(t, err, &x)
					assert.Equal(t, tt.transportType, x.TypeId())
				}
				if tt.is != nil {
					assert.ErrorIs(t, err, tt.is)
				}
			})
		}
	}
}

func TestUnknownMethod(t *testing.T) {
	b := serve(t, newCalc())
	c := mqthrift.NewClient(b, "Calculator")
	_, err := c.Call(context.Background(), "nope", calculator.NewCalculatorPingArgs(), calculator.NewCalculatorPingResult())
	var x *mqthrift.Exception
	require.ErrorAs(t, err, &x)
	assert.Equal(t, int32(thrift.UNKNOWN_METHOD), x.TypeId())
	assert.Equal(t, rpc.Unimplemented, rpc.CodeOf(err))
	assert.True(t, x.Status().Wire())
}

func TestNoResponders(t *testing.T) {
	b := memory.New()
	defer b.Close()
	for kind, c := range clients(b, mqthrift.Binary) {
		t.Run(kind, func(t *testing.T) {
			_, err := c.Add(context.Background(), 1, 2)
			require.ErrorIs(t, err, broker.ErrNoResponders)
			assert.Equal(t, rpc.Unavailable, mqthrift.CodeOf(err))
			var x thrift.TTransportException
			require.ErrorAs(t, err, &x)
			assert.Equal(t, thrift.NOT_OPEN, x.TypeId())

			// Oneway calls report it too.
			err = c.Record(context.Background(), "lost")
			require.ErrorIs(t, err, broker.ErrNoResponders)
		})
	}
}

func TestClientConcurrent(t *testing.T) {
	b := serve(t, newCalc())
	shared := mqthrift.NewClient(b, "Calculator", mqthrift.WithProtocol(mqthrift.Compact))
	errs := make(chan error, 100)
	for i := int32(0); i < 100; i++ {
		go func() {
			// Generated clients record the last reply's metadata, so
			// each goroutine wraps the shared Client in its own.
			c := calculator.NewCalculatorClient(shared)
			sum, err := c.Add(context.Background(), i, i)
			if err == nil && sum != 2*i {
				err = errors.New("wrong sum")
			}
			errs <- err
		}()
	}
	for i := 0; i < 100; i++ {
		require.NoError(t, <-errs)
	}
}

func TestRequestMessageAndHeaders(t *testing.T) {
	b := memory.New()
	defer b.Close()
	var seen broker.Header
	h := newCalc()
	proc := calculator.NewCalculatorProcessor(h)
	proc.AddToProcessorMap("add", processorFunc(func(ctx context.Context, seq int32, in, out thrift.TProtocol) (bool, thrift.TException) {
		seen = mqthrift.RequestMessage(ctx).Header.Clone()
		return calculator.NewCalculatorProcessor(h).ProcessorMap()["add"].Process(ctx, seq, in, out)
	}))
	sub, err := b.Serve("Calculator", mqthrift.NewServer(proc))
	require.NoError(t, err)
	defer sub.Stop(context.Background())

	c := mqthrift.NewClient(b, "Calculator", mqthrift.WithProtocol(mqthrift.JSON), mqthrift.WithHeader("X-Tenant", "t1"))
	calc := calculator.NewCalculatorClient(c)
	sum, err := calc.Add(context.Background(), 20, 22)
	require.NoError(t, err)
	assert.Equal(t, int32(42), sum)
	assert.Equal(t, "t1", seen.Get("x-tenant"))
	assert.Equal(t, "add", seen.Get(broker.HeaderMethod))
	assert.Equal(t, mqthrift.ContentTypeJSON, seen.Get(broker.HeaderContentType))
	assert.Equal(t, mqthrift.ContentTypeJSON, calc.LastResponseMeta_().Headers[broker.HeaderContentType])
	assert.Nil(t, mqthrift.RequestMessage(context.Background()))
}

type processorFunc func(ctx context.Context, seq int32, in, out thrift.TProtocol) (bool, thrift.TException)

func (f processorFunc) Process(ctx context.Context, seq int32, in, out thrift.TProtocol) (bool, thrift.TException) {
	return f(ctx, seq, in, out)
}
