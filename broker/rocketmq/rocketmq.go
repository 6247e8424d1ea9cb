// Package rocketmq is an mqrpc broker on Apache RocketMQ, built on
// rocketmq-client-go (github.com/apache/rocketmq-client-go/v2) and
// RocketMQ's native request-reply (RIP-16).
//
// A request is a message on the service's topic carrying CORRELATION_ID,
// REPLY_TO_CLIENT and TTL; the server's reply goes to the cluster's
// <cluster>_REPLY_TOPIC with MSG_TYPE=reply, and the broker pushes it
// straight to the requesting client. Servers are a consumer group on the
// topic (the serve queue name is the group), so load spreads over them and
// requests are stored while no server runs. A subject RocketMQ refuses as
// a topic (the full gRPC name "helloworld.Greeter") travels on the topic
// kernel.MapName maps it to. docs/PROTOCOL.md has the exact mapping.
//
// Servers run on broker/kernel: the consumer's callback hands each message
// to the kernel's pipeline (deadline, delivery context, panic recovery,
// reply, Stop / drain / abort) and returns the delay level the outcome
// maps to. A caller that cancels sends the servers a cancel notice on
// ControlTopic, which cancels the handler's context.
//
// Clients connect to the name server and the broker directly (the 5.x proxy
// does not forward replies). On a cluster of several masters a Broker
// chooses the queue of each message itself: a send a dead master refused
// goes to another at once, and the dead one is avoided (docs/PROTOCOL.md,
// Several masters).
//
// Servers retry a failed delivery through the group's retry topic after
// 1 s, 5 s, then every 10 s, and dead-letter it into %DLQ%<group> after
// WithMaxDeliveries deliveries, deadline or not. A delivery that crashed the
// server process counts too: servers keep a delivery journal
// (WithDeliveryJournal), and a message that was in flight at a crash is sent
// back rather than run again, then runs alone.
//
// rocketmq-client-go has process-wide state: its logger (rlog, see
// WithLogger), its panic handler (primitive.PanicHandler, which New sets if
// the application did not, because without one a failed asynchronous send
// crashes the process), the table of pending requests and its client cache
// keyed by client ID. Each Broker and each Serve uses its own client instance
// name, so they do not share connections or close each other's.
//
// The package works around the client's request-reply defects (v2.1.2):
// replies are built by hand (CreateReplyMessage drops the body, #890/#1046),
// the requester registers with the broker on its first request to a topic
// (#1047; done through reflection, see the source) and servers retry a reply
// the broker could not route yet, and Request does its own waiting (see
// Broker.Request).
package rocketmq

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	rmq "github.com/apache/rocketmq-client-go/v2"
	"github.com/apache/rocketmq-client-go/v2/primitive"
	"github.com/apache/rocketmq-client-go/v2/producer"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/kernel"
)

// DefaultProducerGroup is the producer group of a Broker's producer unless
// WithProducerGroup says otherwise.
const DefaultProducerGroup = "mqrpc"

// unboundedTTL is the time-to-live handed to the client for a request with
// no deadline at all (see WithRequestTTL).
const unboundedTTL = 24 * time.Hour

// DefaultMaxMessageSize is the broker's default maxMessageSize (4 MiB).
const DefaultMaxMessageSize = 4 << 20

// Option configures New.
type Option func(*config)

type config struct {
	logger         *slog.Logger
	group          string
	requestTTL     time.Duration
	maxMessageSize int
	credentials    primitive.Credentials
	maxDeliveries  int
	journalDir     string
	journalSet     bool
}

// DefaultMaxDeliveries is how many times a server hands a message to its
// handler before it dead-letters it, unless WithMaxDeliveries says
// otherwise.
const DefaultMaxDeliveries = 5

// WithMaxDeliveries sets how many deliveries of a message a server makes
// (failed ones: the handler returned an error or panicked, or the server
// process crashed while handling it) before the message goes to the
// consumer group's dead-letter topic, %DLQ%<group>. Failed deliveries are
// retried through RocketMQ's retry topic after 1 s, 5 s and then every
// 10 s. Default DefaultMaxDeliveries; values below 1 select it.
func WithMaxDeliveries(n int) Option { return func(c *config) { c.maxDeliveries = n } }

// WithDeliveryJournal sets the directory where servers record the
// deliveries they start, so that a server process started after a crash
// counts the crashed delivery (see docs/PROTOCOL.md, Delivery failure).
// Servers of one group must share it to count each other's crashes.
// Default DefaultJournalDir(); an empty dir turns the journal off, and a
// message that crashes its server is then redelivered without limit.
func WithDeliveryJournal(dir string) Option {
	return func(c *config) { c.journalDir, c.journalSet = dir, true }
}

// DefaultJournalDir returns the default WithDeliveryJournal directory:
// mqrpc-rocketmq in the system's temporary directory.
func DefaultJournalDir() string { return filepath.Join(os.TempDir(), "mqrpc-rocketmq") }

// WithLogger sends the Broker's logs and rocketmq-client-go's logs to l.
// Default: nothing is logged. The client's logger is process-wide (rlog), so
// while several Brokers with loggers are open, each receives every client
// log line.
func WithLogger(l *slog.Logger) Option { return func(c *config) { c.logger = l } }

// WithProducerGroup sets the producer group name. Default
// DefaultProducerGroup; an empty name selects the default.
func WithProducerGroup(name string) Option { return func(c *config) { c.group = name } }

// WithRequestTTL bounds how long a request without any deadline (no
// Message.Deadline, no ctx deadline) waits for its reply; it then fails with
// broker.ErrTimeout. Default (0 or less): no bound, the request waits as
// long as ctx lives. RocketMQ needs a time-to-live on every request: the
// client keeps each pending request in a table until it expires, even when
// the caller gave up, so unbounded requests are given 24 h there, and one
// cancelled early occupies its entry (a few hundred bytes) that long.
func WithRequestTTL(d time.Duration) Option { return func(c *config) { c.requestTTL = d } }

// WithMaxMessageSize sets the largest message (body plus properties) that
// Request, Send and replies accept; larger ones fail with
// broker.ErrMessageTooLarge before reaching the broker. It should match the
// broker's maxMessageSize. Default DefaultMaxMessageSize; values <= 0
// select it.
func WithMaxMessageSize(n int) Option { return func(c *config) { c.maxMessageSize = n } }

// WithCredentials sets the ACL access key and secret key. Default: none.
func WithCredentials(accessKey, secretKey string) Option {
	return func(c *config) {
		c.credentials = primitive.Credentials{AccessKey: accessKey, SecretKey: secretKey}
	}
}

// Broker is a broker.Broker on RocketMQ. Create it with New.
type Broker struct {
	cfg      config
	servers  []string
	instance string
	log      *slog.Logger
	producer rocketProducer
	// hooks reach into the client (see clientHooks); topics holds a
	// *topicInit per topic requested so far.
	hooks      clientHooks
	topics     sync.Map
	heartbeats gate // heartbeatSoon: at most one a second
	// faults chooses the producer's queues, avoiding unreachable masters
	// (failover.go); refreshes lets a failed send refresh the routes at
	// most once every refreshEvery, and background holds those refreshes.
	faults     *faultSelector
	refreshes  gate
	background sync.WaitGroup

	// ctx is cancelled by Close: it ends handler contexts and waits.
	ctx    context.Context
	cancel context.CancelFunc

	mu      sync.Mutex
	closed  bool
	subs    map[*subscription]struct{}
	ctl     controlPlane   // broadcast consumers (control.go)
	notices sync.WaitGroup // cancel notices being sent (control.go)

	streams streams // stream inboxes (stream.go)
}

// rocketProducer is the part of rocketmq-client-go's producer that Broker
// uses; tests substitute it to reproduce upstream defects.
type rocketProducer interface {
	Start() error
	Shutdown() error
	SendSync(ctx context.Context, msgs ...*primitive.Message) (*primitive.SendResult, error)
	RequestAsync(ctx context.Context, ttl time.Duration, callback func(context.Context, *primitive.Message, error), msg *primitive.Message) error
}

var _ broker.Broker = (*Broker)(nil)

// New connects to the RocketMQ name server(s) at nameServer, a host:port
// or a list of them separated by ';' or ',', each optionally written as a
// rocketmq://host:port URL (the form broker/dial takes).
func New(nameServer string, opts ...Option) (*Broker, error) {
	b, err := newBroker(nameServer, opts...)
	if err != nil {
		return nil, err
	}
	cfg := b.cfg
	popts := []producer.Option{
		producer.WithNsResolver(primitive.NewPassthroughResolver(b.servers)),
		producer.WithGroupName(cfg.group),
		// A unique instance name gives this Broker its own client:
		// rocketmq-client-go shares one client (connections, heartbeats,
		// reply routing) among everything with the same client ID, and
		// shutting one down would close the others.
		producer.WithInstanceName(b.instance),
		producer.WithRetry(2),
		producer.WithQueueSelector(b.faults),
		// Replies are sent with SEND_REPLY_MESSAGE, which carries the raw
		// body while the producer still flags it compressed; the requester
		// then "decompresses" an uncompressed body. Bodies are opaque to a
		// broker anyway: never compress.
		producer.WithCompressMsgBodyOverHowmuch(1 << 30),
	}
	if !cfg.credentials.IsEmpty() {
		popts = append(popts, producer.WithCredentials(cfg.credentials))
	}
	p, err := rmq.NewProducer(popts...)
	if err != nil {
		b.cancel()
		clientLogSink.detach(b)
		return nil, fmt.Errorf("rocketmq: new producer: %w", err)
	}
	if err := p.Start(); err != nil {
		b.cancel()
		clientLogSink.detach(b)
		return nil, fmt.Errorf("rocketmq: start producer: %w", err)
	}
	b.producer = producerAdapter{p}
	b.hooks = hooksOf(p)
	return b, nil
}

// newBroker validates the configuration and builds a Broker without a
// producer.
func newBroker(nameServer string, opts ...Option) (*Broker, error) {
	cfg := config{}
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.group == "" {
		cfg.group = DefaultProducerGroup
	}
	if err := validName(cfg.group, 255); err != nil {
		return nil, fmt.Errorf("rocketmq: producer group %q: %w", cfg.group, err)
	}
	if cfg.maxMessageSize <= 0 {
		cfg.maxMessageSize = DefaultMaxMessageSize
	}
	if cfg.maxDeliveries < 1 {
		cfg.maxDeliveries = DefaultMaxDeliveries
	}
	if !cfg.journalSet {
		cfg.journalDir = DefaultJournalDir()
	}
	servers, err := nameServers(nameServer)
	if err != nil {
		return nil, err
	}
	log := cfg.logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	b := &Broker{
		cfg:      cfg,
		servers:  servers,
		instance: "mqrpc-" + broker.NewID(),
		log:      log,
		subs:     make(map[*subscription]struct{}),
		faults:   newFaultSelector(),
	}
	// A requester must heartbeat a master that came back before the
	// master can push replies to it.
	b.faults.returned = b.heartbeatSoon
	b.ctx, b.cancel = context.WithCancel(context.Background())
	// Install the log sink before the client exists, so its first lines
	// are not printed by the default logrus logger.
	clientLogSink.attach(b, cfg.logger)
	return b, nil
}

// producerAdapter gives RequestAsync a callback of a plain func type: the
// client declares it with a type from its internal package, which no other
// module can name (a plain func value is assignable to it).
type producerAdapter struct{ rmq.Producer }

func (a producerAdapter) RequestAsync(ctx context.Context, ttl time.Duration, cb func(context.Context, *primitive.Message, error), msg *primitive.Message) error {
	return a.Producer.RequestAsync(ctx, ttl, cb, msg)
}

func (b *Broker) isClosed() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.closed
}

// checkSize fails a message of size bytes (wireSize) larger than the
// configured maximum.
func (b *Broker) checkSize(subject string, size int) error {
	if size > b.cfg.maxMessageSize {
		return fmt.Errorf("rocketmq: message to %s is %d bytes, more than %d: %w", subject, size, b.cfg.maxMessageSize, broker.ErrMessageTooLarge)
	}
	return nil
}

type requestResult struct {
	msg *primitive.Message
	err error
}

// Request implements broker.Broker with RocketMQ request-reply.
//
// It does not rely on rocketmq-client-go to end the wait: the library's
// synchronous Request ignores ctx, swallows send errors until its timeout
// and times out late; its RequestAsync callback can fire twice, and with
// nothing at all when the request is removed early. Request waits on its
// own for the first real outcome, ctx, the deadline or Close.
func (b *Broker) Request(ctx context.Context, req *broker.Message) (*broker.Message, error) {
	const op = "rocketmq: request to"
	if b.isClosed() {
		return nil, fmt.Errorf("%s %s: %w", op, req.Subject, broker.ErrClosed)
	}
	topic, err := topicOf(req.Subject)
	if err != nil {
		return nil, err
	}
	if _, ok := ctx.Deadline(); !ok && req.Deadline.IsZero() && b.cfg.requestTTL > 0 {
		req.Deadline = time.Now().Add(b.cfg.requestTTL) // WithRequestTTL's default deadline
	}
	ctx, cancel, err := kernel.Prepare(ctx, req, op)
	defer cancel()
	if err != nil {
		return nil, err // never send what nobody waits for
	}
	// The client's TTL is whole seconds, and its table entry expires with
	// it: ttlSeconds rounds up so the entry outlives our own wait.
	ttl := unboundedTTL
	if !req.Deadline.IsZero() {
		ttl = kernel.TTL(req.Deadline, time.Now())
	}
	ttl = time.Duration(ttlSeconds(ttl)) * time.Second
	msg, size, err := rocketMessage(topic, req, req.Deadline, clientSendProps+clientRequestProps)
	if err != nil {
		return nil, err
	}
	if err := b.checkSize(req.Subject, size); err != nil {
		return nil, err
	}

	done := make(chan requestResult, 1)
	callback := func(_ context.Context, m *primitive.Message, err error) {
		if m == nil && err == nil {
			// Fired by the client's table eviction without an outcome
			// (the second firing after a reply, or a removal).
			return
		}
		select {
		case done <- requestResult{m, err}:
		default: // a later firing for the same request: keep the first
		}
	}
	if err := b.register(ctx, topic); err != nil {
		return nil, err
	}
	// The send itself is not tied to ctx: Request stops waiting on ctx by
	// itself, and an async send the client sees cancelled takes its
	// panicking error path (see installClientHooks).
	// A request the first master could not take goes to another at once.
	sendCtx := context.WithoutCancel(ctx)
	if err := b.failover(msg, func() error { return b.producer.RequestAsync(sendCtx, ttl, callback, msg) }); err != nil {
		return nil, b.sendError(ctx, topic, err)
	}
	select {
	case r := <-done:
		if r.err != nil {
			if ctx.Err() != nil {
				return nil, b.waitError(ctx, req)
			}
			return nil, b.sendError(ctx, topic, r.err)
		}
		reply, err := fromProperties(req.Subject, r.msg.GetProperties(), r.msg.Body)
		if err != nil {
			return nil, fmt.Errorf("rocketmq: reply from %s: %w", req.Subject, err)
		}
		reply.Deadline = time.Time{}
		if reply.ID == "" {
			reply.ID = broker.NewID()
		}
		return reply, nil
	case <-ctx.Done():
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			// A reply may have been refused for want of registration
			// (a new connection after a broker restart is registered only
			// by the next heartbeat, up to 30 s away): register now.
			b.heartbeatSoon()
		}
		return nil, b.waitError(ctx, req)
	case <-b.ctx.Done():
		return nil, fmt.Errorf("%s %s: %w", op, req.Subject, broker.ErrClosed)
	}
}

// waitError is the error of a request whose ctx ended (kernel.WaitError);
// when the caller cancelled, the servers get a cancel notice.
func (b *Broker) waitError(ctx context.Context, req *broker.Message) error {
	if kernel.Canceled(ctx) {
		b.cancelNotice(req.Subject, req.ID)
	}
	return kernel.WaitError(ctx, "rocketmq: request to", req.Subject)
}

// topicInit makes the first requests to a topic wait for register; done is
// closed once the registration ran.
type topicInit struct {
	once sync.Once
	done chan struct{}
}

// register makes sure, before the first request to topic, that the client
// knows the topic's brokers and has sent them its heartbeat, so they can
// push the replies (see clientHooks). Later calls return at once. The
// client's calls ignore ctx (and take up to 3 s each against an unreachable
// broker), so they run in their own goroutine and register returns when ctx
// ends.
func (b *Broker) register(ctx context.Context, topic string) error {
	if b.hooks.heartbeat == nil {
		return nil
	}
	v, ok := b.topics.Load(topic)
	if !ok {
		v, _ = b.topics.LoadOrStore(topic, &topicInit{done: make(chan struct{})})
	}
	ti := v.(*topicInit)
	ti.once.Do(func() {
		go func() {
			defer close(ti.done)
			if b.hooks.lookup != nil {
				// A missing topic is fine here: the send reports it.
				_ = b.hooks.lookup(topic)
			}
			b.hooks.heartbeat()
		}()
	})
	select {
	case <-ti.done:
		return nil
	case <-ctx.Done():
		return kernel.WaitError(ctx, "rocketmq: request to", topic)
	case <-b.ctx.Done():
		return fmt.Errorf("rocketmq: request to %s: %w", topic, broker.ErrClosed)
	}
}

// heartbeatSoon sends a heartbeat in the background, at most once a second.
func (b *Broker) heartbeatSoon() {
	if b.hooks.heartbeat == nil || b.isClosed() {
		return
	}
	if !b.heartbeats.pass(time.Second) {
		return
	}
	go b.hooks.heartbeat()
}

// gate lets one call through per interval, to however many goroutines
// try at once.
type gate struct{ last atomic.Int64 }

// pass reports whether the caller may go: no one passed in the last
// every.
func (g *gate) pass(every time.Duration) bool {
	now := time.Now().UnixNano()
	last := g.last.Load()
	return now-last >= int64(every) && g.last.CompareAndSwap(last, now)
}

// sendError classifies an error of the client's send path.
func (b *Broker) sendError(ctx context.Context, subject string, err error) error {
	if b.isClosed() {
		return fmt.Errorf("rocketmq: send to %s: %w", subject, broker.ErrClosed)
	}
	if ctx.Err() != nil {
		return kernel.WaitError(ctx, "rocketmq: send to", subject)
	}
	s := err.Error()
	switch {
	case strings.Contains(s, "route info not found"), strings.Contains(s, "topic not exist"),
		strings.Contains(s, "CODE: 17,"):
		// No route: either the topic does not exist (and the broker does
		// not create topics on send), so nobody can serve it, or the name
		// server could not be asked.
		if b.hooks.lookup != nil {
			if lerr := b.hooks.lookup(subject); lerr != nil && !strings.Contains(lerr.Error(), "not exist") {
				return fmt.Errorf("rocketmq: send to %s: %w: %w (name server: %w)", subject, broker.ErrDisconnected, err, lerr)
			}
		}
		return fmt.Errorf("rocketmq: send to %s: %w: %w", subject, broker.ErrNoResponders, err)
	case strings.Contains(s, "CODE: 13,"):
		return fmt.Errorf("rocketmq: send to %s: %w: %w", subject, broker.ErrMessageTooLarge, err)
	case strings.Contains(s, "request timeout"), strings.Contains(s, "connect"),
		strings.Contains(s, "EOF"), strings.Contains(s, "broken pipe"), strings.Contains(s, "reset by peer"):
		// The broker did not confirm the send: it may or may not have
		// stored the message.
		return fmt.Errorf("rocketmq: send to %s: %w: %w", subject, broker.ErrDisconnected, err)
	}
	return fmt.Errorf("rocketmq: send to %s: %w", subject, err)
}

// Send implements broker.Broker: a normal (synchronous) send, which returns
// once the broker stored the message. The message expires at m.Deadline
// (none when zero); ctx only bounds the send itself.
func (b *Broker) Send(ctx context.Context, m *broker.Message) error {
	if b.isClosed() {
		return fmt.Errorf("rocketmq: send to %s: %w", m.Subject, broker.ErrClosed)
	}
	topic, err := topicOf(m.Subject)
	if err != nil {
		return err
	}
	// Only m.Deadline limits a one-way message; ctx bounds the send. A
	// stored notification must not expire because its send had a short
	// timeout.
	if err := kernel.PrepareSend(ctx, m, "rocketmq: send to"); err != nil {
		return err
	}
	msg, size, err := rocketMessage(topic, m, m.Deadline, clientSendProps)
	if err != nil {
		return err
	}
	if err := b.checkSize(m.Subject, size); err != nil {
		return err
	}
	if err := b.sendSync(ctx, msg); err != nil {
		return b.sendError(ctx, topic, err)
	}
	return nil
}

// sendSync sends msg synchronously, failing over to another master when
// the first could not take it.
func (b *Broker) sendSync(ctx context.Context, msg *primitive.Message) error {
	return b.failover(msg, func() error {
		_, err := b.producer.SendSync(ctx, msg)
		return err
	})
}

// Close implements broker.Broker. It stops every subscription without
// draining: the callers of the deliveries in flight get the handler's reply
// to an Unavailable rejection at once, handler contexts are cancelled, and
// Close waits up to a second for the handlers to return. It fails calls in
// flight with broker.ErrClosed and shuts the client down.
//
// rocketmq-client-go leaves goroutines behind after its shutdown: timers
// that sleep before they check for it (10 s; 15 min for a consumer's
// expired-message cleaner; until the next minute, hour and month for each
// consumer's statistics), pulls in flight (up to 30 s) and the reader of a
// name-server connection it never closes (until the name server drops it).
// They exit by themselves but make short-lived Brokers and Serves costly.
func (b *Broker) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	subs := make([]*subscription, 0, len(b.subs))
	for s := range b.subs {
		subs = append(subs, s)
	}
	b.mu.Unlock()
	// The callers of the deliveries in flight hear Unavailable now, while
	// the producer can still tell them.
	for _, s := range subs {
		s.k.Abort()
	}
	b.cancel()
	b.ctl.close()
	b.notices.Wait()
	b.background.Wait()
	b.streams.close()

	var errs []error
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	for _, s := range subs {
		select {
		case <-s.finish():
			if s.finishErr != nil {
				errs = append(errs, s.finishErr)
			}
		case <-ctx.Done():
		}
	}
	if err := b.producer.Shutdown(); err != nil {
		errs = append(errs, fmt.Errorf("rocketmq: shut down producer: %w", err))
	}
	clientLogSink.detach(b)
	return errors.Join(errs...)
}
