package chaos

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/amqp"
	"github.com/mqrpc/mqrpc/broker/nats"
	"github.com/mqrpc/mqrpc/broker/rocketmq"
	"github.com/mqrpc/mqrpc/middleware"
	"github.com/mqrpc/mqrpc/rpc"
)

// Methods of the service under test.
const (
	// MethodWork is the request-reply method of the load: it takes
	// WorkTime, so a server always has requests in flight to lose.
	MethodWork = "Work"
	// MethodRecord is the one-way method of the tracked sends that count
	// lost requests in durable modes.
	MethodRecord = "Record"
	// MethodPanic panics, as a poison request that hits a bug would.
	MethodPanic = "Panic"
	// MethodCrash ends the server process (os.Exit in a child server,
	// outside any recover), as a request that crashes its server would.
	MethodCrash = "Crash"
	// MethodFail fails the delivery: the handler returns an error that is
	// not a reply, so a durable broker redelivers the request and finally
	// dead-letters it.
	MethodFail = "Fail"
)

// MaxDeliver is how many times the durable targets deliver a request before
// they dead-letter it.
const MaxDeliver = 5

// WorkTime is how long one Work or Record execution takes.
const WorkTime = 20 * time.Millisecond

// MaxBody is the request body limit of the server under test; poison
// messages above it must be refused with ResourceExhausted.
const MaxBody = 1 << 20

// WorkRequest is the request of MethodWork and MethodRecord.
type WorkRequest struct {
	N int64 `json:"n"`
}

// WorkReply is the reply of MethodWork: the request's N, so a reply that
// reached the wrong caller is noticed.
type WorkReply struct {
	N int64 `json:"n"`
}

// Recorder is told what the server does, request by request.
type Recorder interface {
	// Started is called when a method starts on request id.
	Started(method, id string)
	// Executed is called when a method finished its work on request id:
	// the side effect happened. Two calls for one id are a duplicate
	// execution.
	Executed(method, id string)
}

// AMQPDeadLetterExchange is the dead-letter exchange of the durable
// RabbitMQ targets; a subject's dead letters are kept in the queue
// "<subject>.dead-letter".
const AMQPDeadLetterExchange = "chaos.dead-letter"

// Target is a broker and mode under test.
type Target struct {
	// Name is the row label: nats-core, nats-jetstream, rabbitmq-fast,
	// rabbitmq-durable, rabbitmq-quorum or rocketmq.
	Name string
	// Kind is the Node kind the target runs on.
	Kind string
	// Durable is true when the broker stores requests: every accepted
	// request must be served.
	Durable bool
}

// Targets lists every broker and mode under test.
var Targets = []Target{
	{Name: "nats-core", Kind: KindNATS},
	{Name: "nats-jetstream", Kind: KindNATS, Durable: true},
	{Name: "rabbitmq-fast", Kind: KindRabbitMQ},
	{Name: "rabbitmq-durable", Kind: KindRabbitMQ, Durable: true},
	{Name: "rabbitmq-quorum", Kind: KindRabbitMQ, Durable: true},
	{Name: "rocketmq", Kind: KindRocketMQ, Durable: true},
}

// TargetByName returns the target called name.
func TargetByName(name string) (Target, bool) {
	for _, t := range Targets {
		if t.Name == name {
			return t, true
		}
	}
	return Target{}, false
}

// Open connects to the broker at addr in the target's mode. Clients and
// servers of one target use the same options, as the broker packages
// require.
func (t Target) Open(addr, connName string) (broker.Broker, error) {
	switch t.Name {
	case "nats-core", "nats-jetstream":
		opts := []nats.Option{nats.WithName(connName), nats.WithReconnectWait(100 * time.Millisecond)}
		if t.Durable {
			opts = append(opts, nats.WithJetStream(nats.JetStreamConfig{
				Stream:           jsStream,
				SubjectPrefix:    jsSubject,
				DeadLetterPrefix: jsDeadPrefix,
				DeadLetterStream: jsDeadStream,
				// Short: a request held by a killed server comes back
				// this soon, within the callers' deadlines.
				AckWait:    2 * time.Second,
				MaxDeliver: MaxDeliver,
			}))
		}
		return nats.New(addr, opts...)
	case "rabbitmq-fast", "rabbitmq-durable", "rabbitmq-quorum":
		opts := []amqp.Option{amqp.WithConnectionName(connName), amqp.WithReconnectBackoff(50*time.Millisecond, time.Second)}
		switch t.Name {
		case "rabbitmq-durable":
			opts = append(opts, amqp.WithDurable(amqp.ClassicQueue), amqp.WithDeadLetter(AMQPDeadLetterExchange, MaxDeliver))
		case "rabbitmq-quorum":
			opts = append(opts, amqp.WithDurable(amqp.QuorumQueue), amqp.WithDeadLetter(AMQPDeadLetterExchange, MaxDeliver))
		}
		return amqp.New(addr, opts...)
	case "rocketmq":
		return rocketmq.New(addr, rocketmq.WithMaxDeliveries(MaxDeliver), rocketmq.WithDeliveryJournal(JournalDir()))
	}
	return nil, fmt.Errorf("chaos: unknown target %q", t.Name)
}

// NewServer returns the service under test. Its middleware is the
// reliability stack docs/RELIABILITY.md recommends: Recover outermost, a
// DeadlineGuard that refuses expired work, and Dedup with store, so a
// redelivered or retried request does not run twice.
func NewServer(rec Recorder, store middleware.DedupStore) *rpc.Server {
	return NewServerConfig(ServerConfig{Recorder: rec, Store: store})
}

// ServerConfig configures NewServerConfig.
type ServerConfig struct {
	Recorder Recorder
	Store    middleware.DedupStore
	// Crash is what MethodCrash does once it recorded its start: os.Exit
	// in a child server. Default: panic (Recover turns it into Internal).
	Crash func()
	// Lease is Dedup's claim lease (WithDedupLease), for stores that
	// claim keys; 0 is Dedup's default.
	Lease time.Duration
}

// NewServerConfig is NewServer with the crash of MethodCrash chosen.
// MethodFail fails every delivery; it runs inside Dedup, which stores no
// delivery failure, so every delivery reaches it and is recorded as a
// start.
func NewServerConfig(cfg ServerConfig) *rpc.Server {
	rec, store := cfg.Recorder, cfg.Store
	guard := &middleware.DeadlineGuard{}
	fail := func(next broker.Handler) broker.Handler {
		return broker.HandlerFunc(func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
			if req.Header.Get(broker.HeaderMethod) == MethodFail {
				rec.Started(MethodFail, req.ID)
				return nil, fmt.Errorf("chaos: delivery failed on purpose: %w", broker.ErrDeliveryFailed)
			}
			return next.ServeMessage(ctx, req)
		})
	}
	srv := rpc.NewServer(
		rpc.WithMaxMessageSize(MaxBody),
		rpc.WithServerMiddleware(
			middleware.Recover(),
			guard.Middleware,
			middleware.Dedup(middleware.WithDedupStore(store), middleware.WithDedupLease(cfg.Lease)),
			fail,
		),
	)
	work := func(method string) func(ctx context.Context, in *WorkRequest) (*WorkReply, error) {
		return func(ctx context.Context, in *WorkRequest) (*WorkReply, error) {
			id := rpc.RequestMessage(ctx).ID
			rec.Started(method, id)
			t := time.NewTimer(WorkTime)
			defer t.Stop()
			select {
			case <-t.C:
			case <-ctx.Done():
				// Not executed: the caller gave up or the server is
				// stopping; a redelivery may run it.
				return nil, rpc.NewError(rpc.CodeOf(ctx.Err()), ctx.Err())
			}
			rec.Executed(method, id)
			return &WorkReply{N: in.N}, nil
		}
	}
	// Registration of fixed, distinct names cannot fail.
	_ = rpc.Handle(srv, MethodWork, work(MethodWork))
	_ = rpc.Handle(srv, MethodRecord, work(MethodRecord))
	_ = rpc.Handle(srv, MethodPanic, func(context.Context, *WorkRequest) (*WorkReply, error) {
		panic("chaos: poison request")
	})
	crash := cfg.Crash
	if crash == nil {
		crash = func() { panic("chaos: crash request") }
	}
	_ = rpc.Handle(srv, MethodCrash, func(ctx context.Context, _ *WorkRequest) (*WorkReply, error) {
		rec.Started(MethodCrash, rpc.RequestMessage(ctx).ID)
		crash()
		return nil, rpc.Errorf(rpc.Internal, "chaos: crash returned")
	})
	return srv
}

// FileDedupStore is a DedupStore in a directory, one file per key, shared
// by the server processes of one test as Redis would be in production: a
// request redelivered to another process after its server was killed finds
// the outcome stored there.
type FileDedupStore struct {
	Dir string
	// OnStore, if not nil, is called after an outcome was stored for a
	// key that had none: the request's outcome is committed.
	OnStore func(key string)
}

var _ middleware.DedupStore = FileDedupStore{}

type storedReply struct {
	Nil    bool          `json:"nil,omitempty"`
	Header broker.Header `json:"header,omitempty"`
	Body   []byte        `json:"body,omitempty"`
}

func (s FileDedupStore) path(key string) string {
	sum := sha256.Sum256([]byte(key))
	return filepath.Join(s.Dir, hex.EncodeToString(sum[:16]))
}

// Load implements middleware.DedupStore.
func (s FileDedupStore) Load(_ context.Context, key string) (*broker.Message, bool, error) {
	b, err := os.ReadFile(s.path(key))
	if errors.Is(err, os.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("chaos: dedup load: %w", err)
	}
	var r storedReply
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, false, fmt.Errorf("chaos: dedup load: %w", err)
	}
	if r.Nil {
		return nil, true, nil
	}
	return &broker.Message{Header: r.Header, Body: r.Body}, true, nil
}

// Store implements middleware.DedupStore: write then rename, so a reader
// never sees half a file.
func (s FileDedupStore) Store(_ context.Context, key string, reply *broker.Message) error {
	r := storedReply{Nil: reply == nil}
	if reply != nil {
		r.Header, r.Body = reply.Header, reply.Body
	}
	b, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("chaos: dedup store: %w", err)
	}
	p := s.path(key)
	_, statErr := os.Stat(p) // a repeat's Store overwrites: not a new commit
	tmp := p + ".tmp" + broker.NewID()
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return fmt.Errorf("chaos: dedup store: %w", err)
	}
	if err := os.Rename(tmp, p); err != nil {
		return fmt.Errorf("chaos: dedup store: %w", err)
	}
	if statErr != nil && s.OnStore != nil {
		s.OnStore(key)
	}
	return nil
}

// EnvJournal names the directory where the RocketMQ servers of the chaos
// tests, in this process and in its children, record their deliveries
// (rocketmq.WithDeliveryJournal), so a server counts a delivery that crashed
// another one. TestMain sets it; children inherit it.
const EnvJournal = "MQRPC_CHAOS_ROCKETMQ_JOURNAL"

// JournalDir returns the RocketMQ delivery journal directory of the chaos
// tests (EnvJournal), or rocketmq.DefaultJournalDir when it is not set.
func JournalDir() string {
	if d := os.Getenv(EnvJournal); d != "" {
		return d
	}
	return rocketmq.DefaultJournalDir()
}

// Environment of a child server process (RunChild).
const (
	EnvChild       = "MQRPC_CHAOS_CHILD"
	envChildTarget = "MQRPC_CHAOS_CHILD_TARGET"
	envChildAddr   = "MQRPC_CHAOS_CHILD_ADDR"
	envChildSubj   = "MQRPC_CHAOS_CHILD_SUBJECT"
	envChildDedup  = "MQRPC_CHAOS_CHILD_DEDUP"
)

// ChildEnv returns the environment that makes a re-executed test binary run
// RunChild: serve subject on target at addr, deduplicating through the
// shared store dedup names (NATSKVSpec, RedisSpec, or a directory for a
// FileDedupStore).
func ChildEnv(target Target, addr, subject, dedup string) []string {
	return append(os.Environ(),
		EnvChild+"=1",
		envChildTarget+"="+target.Name,
		envChildAddr+"="+addr,
		envChildSubj+"="+subject,
		envChildDedup+"="+dedup,
	)
}

// lineRecorder writes the protocol a parent reads from a child's stdout:
// "ready", "S <method> <id>" (started), "E <method> <id>" (executed) and
// "C <id>" (outcome stored in the shared dedup store),
// one unbuffered write per line, so the parent has every line written
// before a SIGKILL.
type lineRecorder struct {
	mu sync.Mutex
	w  io.Writer
}

func (r *lineRecorder) line(s string) {
	r.mu.Lock()
	_, _ = io.WriteString(r.w, s+"\n")
	r.mu.Unlock()
}

func (r *lineRecorder) Started(method, id string)  { r.line("S " + method + " " + id) }
func (r *lineRecorder) Executed(method, id string) { r.line("E " + method + " " + id) }

// ExitCrash is the exit code of a child server that MethodCrash ended.
const ExitCrash = 3

// RunChild is the main of a child server process: it serves the service
// under test until its stdin closes (the parent is done) or it is killed,
// and returns the exit code.
func RunChild() int {
	target, ok := TargetByName(os.Getenv(envChildTarget))
	if !ok {
		fmt.Fprintln(os.Stderr, "chaos child: unknown target", os.Getenv(envChildTarget))
		return 2
	}
	b, err := target.Open(os.Getenv(envChildAddr), fmt.Sprintf("chaos-child-%d", os.Getpid()))
	if err != nil {
		fmt.Fprintln(os.Stderr, "chaos child:", err)
		return 1
	}
	defer b.Close()
	rec := &lineRecorder{w: os.Stdout}
	store, closeStore, err := openStore(os.Getenv(envChildDedup), func(key string) { rec.line("C " + key) })
	if err != nil {
		fmt.Fprintln(os.Stderr, "chaos child:", err)
		return 1
	}
	defer closeStore()
	srv := NewServerConfig(ServerConfig{Recorder: rec, Store: store, Lease: ChildLease, Crash: func() { os.Exit(ExitCrash) }})
	sub, err := b.Serve(os.Getenv(envChildSubj), srv, broker.WithConcurrency(64))
	if err != nil {
		fmt.Fprintln(os.Stderr, "chaos child: serve:", err)
		return 1
	}
	rec.line("ready")
	// The parent closes our stdin when it is done with us; if it dies,
	// the pipe closes too, so a child never outlives its test.
	_, _ = io.Copy(io.Discard, bufio.NewReader(os.Stdin))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = sub.Stop(ctx)
	return 0
}
