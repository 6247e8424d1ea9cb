package dial_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/dial"
	"github.com/mqrpc/mqrpc/broker/memory"
	"github.com/mqrpc/mqrpc/internal/testenv"
)

func TestOpen(t *testing.T) {
	tests := []struct {
		name string
		url  func(t *testing.T) string
	}{
		{"memory", func(*testing.T) string { return "memory:" }},
		{"embedded", func(*testing.T) string { return "embedded:" }},
		{"nats", func(t *testing.T) string { return testenv.NATSURL(t) }},
		{"amqp", func(t *testing.T) string { return testenv.AMQPURL(t) }},
		// Lists of cluster nodes, the first not listening: the client
		// fails over to the next.
		{"nats-list", func(t *testing.T) string { return "nats://" + closedAddr(t) + "," + testenv.NATSURL(t) }},
		{"amqp-list", func(t *testing.T) string { return "amqp://guest:guest@" + closedAddr(t) + "/," + testenv.AMQPURL(t) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := dial.Open(tt.url(t), dial.WithName("dial-test"))
			require.NoError(t, err)
			defer b.Close()
			subj := "dialtest_" + strings.ReplaceAll(broker.NewID(), "-", "_")
			sub, err := b.Serve(subj, broker.HandlerFunc(func(_ context.Context, req *broker.Message) (*broker.Message, error) {
				return &broker.Message{Body: append([]byte("re: "), req.Body...)}, nil
			}))
			require.NoError(t, err)
			defer sub.Stop(context.Background())
			// Consumer-group brokers take a moment to route to a new
			// server: retry for a bounded time.
			var reply *broker.Message
			deadline := time.Now().Add(60 * time.Second)
			for {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				reply, err = b.Request(ctx, &broker.Message{Subject: subj, Body: []byte("hi")})
				cancel()
				if err == nil || time.Now().After(deadline) {
					break
				}
				time.Sleep(500 * time.Millisecond)
			}
			require.NoError(t, err)
			assert.Equal(t, "re: hi", string(reply.Body))
		})
	}
}

func TestOpenErrors(t *testing.T) {
	_, err := dial.Open("kafka://127.0.0.1:9092")
	assert.ErrorIs(t, err, dial.ErrUnknownScheme)
	// RocketMQ is a module of its own: unregistered, the error says how to
	// add it (examples/rocketmq's TestMainModuleExamplesOnRocketMQ opens it
	// through the registration).
	_, err = dial.Open("rocketmq://127.0.0.1:9876")
	assert.ErrorIs(t, err, dial.ErrUnknownScheme)
	assert.ErrorContains(t, err, `import _ "github.com/mqrpc/mqrpc/broker/rocketmq/dialrocketmq"`)
	_, err = dial.Open("carrier-pigeon://coop", dial.WithScheme("carrier-pigeon", func(string) (broker.Broker, error) {
		return nil, errors.New("no pigeon")
	}))
	assert.EqualError(t, err, "dial: no pigeon")
}

// WithScheme adds a scheme (case-insensitive) and gets the whole URL; it
// can take over a built-in one too.
func TestWithScheme(t *testing.T) {
	var got []string
	open := func(u string) (broker.Broker, error) {
		got = append(got, u)
		return memory.New(), nil
	}
	for _, u := range []string{"pigeon://coop-1,pigeon://coop-2", "PIGEON://coop", "memory:"} {
		b, err := dial.Open(u, dial.WithScheme("Pigeon", open), dial.WithScheme("memory", open))
		require.NoError(t, err, u)
		require.NoError(t, b.Close())
	}
	assert.Equal(t, []string{"pigeon://coop-1,pigeon://coop-2", "PIGEON://coop", "memory:"}, got)
}

// Register adds a scheme for every later Open, case-insensitive, in any
// goroutine; WithScheme still takes precedence for its call.
func TestRegister(t *testing.T) {
	p := registerPrefix() // Register is for good: new schemes each run (-count)
	var mu sync.Mutex
	var got []string
	open := func(u string) (broker.Broker, error) {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, u)
		return memory.New(), nil
	}
	_, err := dial.Open(p + "a://coop")
	require.ErrorIs(t, err, dial.ErrUnknownScheme)

	// Registrations and Opens from many goroutines at once (under -race).
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			dial.Register(fmt.Sprintf("%s%c", strings.ToUpper(p), 'a'+i), open)
			b, err := dial.Open(fmt.Sprintf("%s%c://n%d", p, 'a'+i, i))
			if assert.NoError(t, err) {
				assert.NoError(t, b.Close())
			}
			_, _ = dial.Open("memory:") // a reader while others register
		})
	}
	wg.Wait()
	assert.Len(t, got, 8)
	assert.Subset(t, dial.Schemes(), []string{"amqp", "memory", p + "a", p + "h"})

	b, err := dial.Open(strings.ToUpper(p) + "A://upper")
	require.NoError(t, err)
	require.NoError(t, b.Close())
	assert.Contains(t, got, strings.ToUpper(p)+"A://upper")

	var viaOption bool
	b, err = dial.Open(p+"a://x", dial.WithScheme(p+"a", func(string) (broker.Broker, error) {
		viaOption = true
		return memory.New(), nil
	}))
	require.NoError(t, err)
	require.NoError(t, b.Close())
	assert.True(t, viaOption, "WithScheme takes precedence over Register")

	_, err = dial.Open(p + "fail://x")
	require.ErrorIs(t, err, dial.ErrUnknownScheme)
	dial.Register(p+"fail", func(string) (broker.Broker, error) { return nil, errors.New("no pigeon") })
	_, err = dial.Open(p + "fail://x")
	assert.EqualError(t, err, "dial: no pigeon")
}

// Register panics, as sql.Register does, on a scheme registered twice (in
// any case), a built-in scheme, a nil opener or a malformed scheme; a
// panicking call registers nothing.
func TestRegisterPanics(t *testing.T) {
	p := registerPrefix()
	open := func(string) (broker.Broker, error) { return memory.New(), nil }
	dial.Register(p+"dup", open)
	for name, call := range map[string]func(){
		"twice":    func() { dial.Register(p+"dup", open) },
		"case":     func() { dial.Register(strings.ToUpper(p)+"DUP", open) },
		"builtin":  func() { dial.Register("amqp", open) },
		"builtin2": func() { dial.Register("Memory", open) },
		"nil":      func() { dial.Register(p+"nil", nil) },
		"empty":    func() { dial.Register("", open) },
		"colon":    func() { dial.Register(p+":x", open) },
		"digit":    func() { dial.Register("1"+p, open) },
	} {
		assert.Panics(t, call, name)
	}
	assert.NotContains(t, dial.Schemes(), p+"nil")
	assert.NotContains(t, dial.Schemes(), "")
}

var registerRuns atomic.Int32

// registerPrefix returns a scheme prefix no earlier run of a test used.
func registerPrefix() string { return fmt.Sprintf("regtest%d-", registerRuns.Add(1)) }

// Importing dial starts no goroutine: it links no client that starts one
// at init (rocketmq-client-go does: a cache janitor that never ends, which
// is why broker/rocketmq is a module of its own and dial does not import
// it). The test binary imports dial and so everything dial links.
func TestImportStartsNoGoroutine(t *testing.T) {
	goleak.VerifyNone(t)
}

func TestRedact(t *testing.T) {
	for in, want := range map[string]string{
		"amqp://guest:guest@127.0.0.1:5672/":   "amqp://redacted@127.0.0.1:5672/",
		"nats://s3cr3t-token@127.0.0.1:4222":   "nats://redacted@127.0.0.1:4222",
		"nats://a:1@h1:4222,tls://b:2@h2:4222": "nats://redacted@h1:4222,tls://redacted@h2:4222",
		"nats://h1:4222,nats://tok@h2:4222":    "nats://h1:4222,nats://redacted@h2:4222",
		"nats://u:p,ss@h1:4222":                "nats://redacted@h1:4222",
		"amqp://u:p%zz@host/":                  "amqp://redacted@host/", // not a valid URL: hidden all the same
		"amqp://u:p@ss@host/vhost":             "amqp://redacted@host/vhost",
		"rocketmq://127.0.0.1:9876":            "rocketmq://127.0.0.1:9876",
		"memory:":                              "memory:",
		"embedded:":                            "embedded:",
	} {
		got := dial.Redact(in)
		assert.Equal(t, want, got, "Redact(%q)", in)
	}
}

// closedAddr returns a loopback host:port nobody listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	require.NoError(t, l.Close())
	return addr
}
