// Package amqp is an mqrpc broker for RabbitMQ (AMQP 0-9-1), built on
// github.com/rabbitmq/amqp091-go.
//
// Requests go to one queue per service: the subject is the queue name on the
// default exchange, or the routing key on an exchange set with WithExchange.
// Replies come back over RabbitMQ's direct reply-to
// (amq.rabbitmq.reply-to): one reply consumer per connection, matched to
// calls by correlation id, so no queue is ever declared per call or per
// client. Requests are published with the mandatory flag, so a request no
// queue can take fails at once with broker.ErrNoResponders, and with an AMQP
// expiration equal to the time left before the caller's deadline, so
// RabbitMQ drops requests whose caller has given up. A caller that cancels
// sends the servers a cancel notice (CancelExchange), which cancels the
// handler's ctx.
//
// Serving runs on broker/kernel: this package is the wire (publish,
// consume, reply, acknowledge, retry and dead-letter queues). A Broker that
// serves opens a second connection, named after the first with " replies",
// in confirm mode, for the replies that RabbitMQ might fail on: those to
// callers on other nodes and to queues (on RabbitMQ 3.10 a reply to a
// direct reply-to address of a node that is not running closes the
// connection it is published on). So such a reply never takes the requests
// in flight down with it, and the replies RabbitMQ did not confirm before
// it closed that connection are published again. A reply to a caller on
// the server's own node goes out on the channel its request came on.
//
// In fast mode (the default) request queues are transient and auto-deleted
// with their last server, and messages are not persistent. Durable mode
// (WithDurable) uses durable classic or quorum queues, persistent messages,
// publisher confirms, acknowledgement after the reply, retries with backoff
// through retry queues, and dead-lettering after repeated failures, a
// server lost while holding the request (crashed, disconnected) counting as
// one: a request that crashes its server is dead-lettered too, and runs
// alone before then, so it takes no other request with it.
//
// A Broker reconnects by itself when its connection or a channel is lost:
// with backoff, re-declaring its topology and resuming its subscriptions and
// its reply consumer. Calls in flight when the connection drops fail at once
// with an error wrapping broker.ErrDisconnected.
//
// The mapping of messages onto AMQP properties and headers is documented in
// the project's docs/PROTOCOL.md, section "RabbitMQ (AMQP 0-9-1)".
package amqp

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	neturl "net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/kernel"
	"github.com/mqrpc/mqrpc/internal/redact"
)

// Broker is a broker.Broker over one RabbitMQ connection. It is safe for
// concurrent use. Create it with New and release it with Close.
type Broker struct {
	urls []string
	// next is the index in urls of the node a dial tries first: the one
	// the last connection went to, or after a lost connection the node
	// after it (see supervise).
	next atomic.Int32
	cfg  config
	amq  amqp091.Config

	// ctx is cancelled by Close; handlers' contexts derive from it.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup // every goroutine the broker owns

	// lane lets a suspect request run alone in durable mode.
	lane *kernel.Lane

	mu     sync.Mutex
	sess   *session      // nil while reconnecting
	ready  chan struct{} // closed when sess is set
	closed bool
	subs   map[*driver]struct{} // running subscriptions

	streams streams // stream inboxes (stream.go)
	rep     replier // publishes the replies of the subscriptions (reply.go)
}

var _ broker.Broker = (*Broker)(nil)

// New connects to RabbitMQ at url (amqp://user:pass@host:port/vhost or
// amqps://...) and returns a Broker. The first connection attempt is made
// before New returns, so a wrong address or credentials fail here; later
// losses are recovered in the background.
//
// url may list the nodes of a cluster, separated by commas
// ("amqp://u:p@host1:5672/,amqp://u:p@host2:5672/"): each connection
// attempt (the first, and every reconnect) tries them in turn and takes
// the first that accepts; it fails only when none does. The first connect
// starts with the first URL; after a lost connection the reconnect starts
// with the node after the lost one, which it tries last (a dead host
// would hold its dial for the dial timeout). Each URL keeps its own
// credentials and vhost.
func New(url string, opts ...Option) (*Broker, error) {
	cfg := newConfig(opts)
	b := &Broker{
		urls:  splitURLs(url),
		cfg:   cfg,
		ready: make(chan struct{}),
		subs:  make(map[*driver]struct{}),
		lane:  kernel.NewLane(),
	}
	b.rep.b = b
	for _, u := range b.urls {
		if _, err := amqp091.ParseURI(u); err != nil {
			return nil, fmt.Errorf("amqp: parse url %s: %w", redact.URL(u), parseError(u, err))
		}
	}
	b.amq = amqp091.Config{
		Heartbeat:       cfg.heartbeat,
		TLSClientConfig: cfg.tls,
		Dial:            batchDial(amqp091.DefaultDial(cfg.dialTimeout)),
	}
	if cfg.vhost != nil {
		b.amq.Vhost = *cfg.vhost
	}
	b.ctx, b.cancel = context.WithCancel(context.Background())
	s, err := b.connect()
	if err != nil {
		b.cancel()
		b.wg.Wait() // listeners of a half-set-up session
		return nil, err
	}
	b.sess = s
	close(b.ready)
	b.wg.Add(1)
	go b.supervise(s)
	return b, nil
}

// splitURLs splits a comma-separated list of URLs. A string whose parts
// are not all URLs (a comma in a password that was not percent-encoded)
// is one URL.
func splitURLs(raw string) []string {
	parts := strings.Split(raw, ",")
	for i, p := range parts {
		parts[i] = strings.TrimSpace(p)
		if !strings.Contains(parts[i], "://") {
			return []string{raw}
		}
	}
	return parts
}

// dial connects to the first of b.urls that accepts, from b.next on.
func (b *Broker) dial(amq amqp091.Config) (*amqp091.Connection, error) {
	if len(b.urls) == 1 {
		return amqp091.DialConfig(b.urls[0], amq)
	}
	first := int(b.next.Load())
	var errs []error
	for i := range b.urls {
		k := (first + i) % len(b.urls)
		props := amqp091.Table{}
		for key, v := range amq.Properties {
			props[key] = v
		}
		try := amq
		try.Properties = props
		conn, err := amqp091.DialConfig(b.urls[k], try)
		if err == nil {
			b.next.Store(int32(k))
			return conn, nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", redact.URL(b.urls[k]), err))
	}
	return nil, errors.Join(errs...)
}

// parseError is the cause of a URL that amqp091-go could not parse, without
// the URL's credentials: net/url's errors quote the URL, and their detail
// (an invalid port, escape or host) may be a piece of a password, so with
// user info present only the kind of mistake is kept.
func parseError(raw string, err error) error {
	var uerr *neturl.Error
	if !errors.As(err, &uerr) {
		// amqp091-go's own errors (scheme, white space, port range,
		// parameters) name no part of the user info.
		return err
	}
	if !strings.Contains(raw, "@") {
		return uerr.Err
	}
	return errors.New("malformed URL (a user name or password with reserved characters such as " +
		"@ : / ? # must be percent-encoded)")
}

// Close implements broker.Broker. Subscriptions stop without draining: the
// callers of their requests in flight get the handler's reply to an
// Unavailable rejection at once, their handlers' contexts are cancelled and
// the deliveries they hold are returned to RabbitMQ. Calls in flight fail
// with broker.ErrClosed, and Close waits until every goroutine of the
// broker, handlers included, has returned.
func (b *Broker) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	s := b.sess
	subs := make([]*driver, 0, len(b.subs))
	for d := range b.subs {
		subs = append(subs, d)
	}
	b.mu.Unlock()
	// Before the connection goes: the rejections go out on it.
	for _, d := range subs {
		d.sub.Load().Abort()
	}
	b.cancel()
	var err error
	if s != nil {
		err = s.close()
	}
	b.rep.close() // after the rejections; no reply follows them
	for _, d := range subs {
		d.sub.Load().Wait()
		d.wg.Wait()
	}
	b.wg.Wait()
	if err != nil && !errors.Is(err, amqp091.ErrClosed) {
		return fmt.Errorf("amqp: close: %w", err)
	}
	return nil
}

// session is one live connection with its two client channels. Requests
// go on the channel that consumes replies (direct reply-to requires both on
// one channel); it is in confirm mode only in durable mode, because in fast
// mode a request needs no confirm: its reply or its return says enough.
// One-way messages go on a second channel, always in confirm mode, so Send
// can report that RabbitMQ took the message.
type session struct {
	b    *Broker
	conn *amqp091.Connection
	req  *pubChan
	send *pubChan
	lost chan struct{} // closed when the connection or a client channel is gone

	mu       sync.Mutex
	dead     bool
	calls    map[string]*call // waiting for a reply or return, by correlation id
	declared map[string]bool  // subjects (durable) and the exchange
	declMu   sync.Mutex       // serializes declarations
	// unblocked is closed while RabbitMQ lets the connection publish, and
	// replaced by an open channel while it blocks it (connection.blocked,
	// on a memory or disk alarm); blockReason says why.
	unblocked   chan struct{}
	blockReason string
	blocked     atomic.Bool // unblocked is open: publishes take the slow path

	// node is the hash of the node the connection is on, as direct
	// reply-to addresses carry it (reply.go), once nodeKnown; probe is the
	// correlation id of the request that learns it.
	node      atomic.Int64
	nodeKnown atomic.Bool
	probe     string
}

// pubChan is a client channel and its confirms in flight. Its maps are
// guarded by the session's mu.
type pubChan struct {
	ch    *amqp091.Channel
	tags  map[uint64]*call // waiting for a publisher confirm, by delivery tag
	early map[uint64]bool  // confirms that arrived before their tag was registered
}

// call is one Request or Send in flight. Its result is set once.
type call struct {
	corr   string
	oneway bool // Send: an ack completes it; Request: only a reply does
	done   bool
	res    chan result
}

// result is a call's outcome: a reply, already mapped (the reply
// goroutine maps it, so a call's channel holds a pointer rather than a
// whole Delivery), or an error.
type result struct {
	reply *broker.Message
	err   error
}

// connect dials and sets up a session: the two client channels, the reply
// consumer, and per channel a listener for returns and confirms.
func (b *Broker) connect() (*session, error) {
	conn, err := b.dial(b.dialConfig(b.cfg.connName))
	if err != nil {
		return nil, fmt.Errorf("amqp: dial: %w", err)
	}
	s := &session{
		b:         b,
		conn:      conn,
		lost:      make(chan struct{}),
		calls:     make(map[string]*call),
		declared:  make(map[string]bool),
		unblocked: make(chan struct{}),
		probe:     broker.NewID(),
	}
	close(s.unblocked)
	fail := func(what string, err error) (*session, error) {
		_ = conn.Close()
		return nil, fmt.Errorf("amqp: %s: %w", what, err)
	}
	if s.req, err = s.openPubChan(b.cfg.durable); err != nil {
		return fail("open request channel", err)
	}
	if s.send, err = s.openPubChan(true); err != nil {
		return fail("open send channel", err)
	}
	replies, err := s.req.ch.Consume(directReplyTo, "", true, false, false, false, nil)
	if err != nil {
		return fail("consume "+directReplyTo, err)
	}
	blocks := conn.NotifyBlocked(make(chan amqp091.Blocking, 4))
	connClosed := conn.NotifyClose(make(chan *amqp091.Error, 1))
	reqClosed := s.req.ch.NotifyClose(make(chan *amqp091.Error, 1))
	sendClosed := s.send.ch.NotifyClose(make(chan *amqp091.Error, 1))

	b.wg.Add(3)
	go func() {
		defer b.wg.Done()
		for bl := range blocks {
			s.setBlocked(bl)
		}
	}()
	go func() {
		defer b.wg.Done()
		var e *amqp091.Error
		select {
		case e = <-connClosed:
		case e = <-reqClosed:
		case e = <-sendClosed:
		case <-s.lost: // Close, which may not notify the listeners
		}
		s.markLost(e)
	}()
	go func() {
		defer b.wg.Done()
		for d := range replies {
			s.reply(&d)
		}
	}()
	s.declareCancelExchange()
	s.probeNode()
	b.cfg.logger.Info("amqp: connected", "vhost", conn.Config.Vhost, "remote", remoteAddr(conn))
	return s, nil
}

// dialConfig is the configuration of a dial for a connection named name.
func (b *Broker) dialConfig(name string) amqp091.Config {
	amq := b.amq
	// amqp091-go writes into the properties table while dialing.
	amq.Properties = amqp091.NewConnectionProperties()
	amq.Properties.SetClientConnectionName(name)
	if b.cfg.user != nil {
		// Fresh for every dial: some amqp091-go versions clear the
		// credentials of a PlainAuth after the handshake.
		amq.SASL = []amqp091.Authentication{&amqp091.PlainAuth{Username: *b.cfg.user, Password: *b.cfg.password}}
	}
	return amq
}

// openPubChan opens a client channel, optionally in confirm mode, and
// starts its returns and confirms listener.
func (s *session) openPubChan(confirm bool) (*pubChan, error) {
	ch, err := s.conn.Channel()
	if err != nil {
		return nil, err
	}
	pc := &pubChan{ch: ch, tags: make(map[uint64]*call), early: make(map[uint64]bool)}
	var confirms chan amqp091.Confirmation
	if confirm {
		if err := ch.Confirm(false); err != nil {
			return nil, fmt.Errorf("confirm mode: %w", err)
		}
		confirms = ch.NotifyPublish(make(chan amqp091.Confirmation, 256))
	}
	// Unbuffered: amqp091-go hands over a basic.return before it processes
	// the confirm that follows it, and one goroutine reads both, so a Send
	// sees the return of its message before its ack.
	returns := ch.NotifyReturn(make(chan amqp091.Return))
	s.b.wg.Add(1)
	go func() {
		defer s.b.wg.Done()
		for returns != nil || confirms != nil {
			select {
			case r, ok := <-returns:
				if !ok {
					returns = nil
					continue
				}
				s.returned(r)
			case c, ok := <-confirms:
				if !ok {
					confirms = nil
					continue
				}
				s.confirmed(pc, c.DeliveryTag, c.Ack)
			}
		}
	}()
	return pc, nil
}

func remoteAddr(c *amqp091.Connection) string {
	if a := c.RemoteAddr(); a != nil {
		return a.String()
	}
	return ""
}

// setBlocked records a connection.blocked or connection.unblocked.
func (s *session) setBlocked(bl amqp091.Blocking) {
	s.mu.Lock()
	defer s.mu.Unlock()
	blockedNow := !isClosed(s.unblocked)
	switch {
	case bl.Active && !blockedNow:
		s.unblocked = make(chan struct{})
		s.blockReason = bl.Reason
		s.blocked.Store(true)
		s.b.cfg.logger.Warn("amqp: connection blocked by the broker", "reason", bl.Reason)
	case !bl.Active && blockedNow:
		close(s.unblocked)
		s.blocked.Store(false)
		s.b.cfg.logger.Info("amqp: connection unblocked")
	}
}

// waitUnblocked returns at once while the connection may publish, and
// otherwise waits for RabbitMQ to unblock it or ctx to end: a publish on a
// blocked connection would hang in a socket write that no ctx can cancel.
func (s *session) waitUnblocked(ctx context.Context) error {
	if !s.blocked.Load() {
		return nil
	}
	s.mu.Lock()
	unblocked, reason := s.unblocked, s.blockReason
	s.mu.Unlock()
	select {
	case <-unblocked:
		return nil
	default:
	}
	select {
	case <-unblocked:
		return nil
	case <-s.lost:
		return broker.ErrDisconnected
	case <-ctx.Done():
		return fmt.Errorf("%w: %w (connection blocked by the broker: %s)", broker.ErrTimeout, ctx.Err(), reason)
	}
}

func isClosed(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// markLost fails every call in flight on the session with ErrDisconnected
// and closes the connection, which ends the session's goroutines.
func (s *session) markLost(e *amqp091.Error) {
	err := broker.ErrDisconnected
	if e != nil {
		err = fmt.Errorf("%w: %v", broker.ErrDisconnected, e)
	}
	s.mu.Lock()
	if s.dead {
		s.mu.Unlock()
		return
	}
	s.dead = true
	for _, c := range s.calls {
		s.finishLocked(c, result{err: err})
	}
	for _, pc := range []*pubChan{s.req, s.send} {
		for _, c := range pc.tags {
			s.finishLocked(c, result{err: err})
		}
		pc.tags, pc.early = nil, nil
	}
	s.calls = nil
	s.mu.Unlock()
	close(s.lost)
	_ = s.conn.Close()
}

// close closes the connection, waiting a bounded time for RabbitMQ to
// acknowledge: on a dead network the handshake would otherwise wait for the
// heartbeat timeout.
func (s *session) close() error {
	err := s.conn.CloseDeadline(time.Now().Add(closeTimeout))
	s.markLost(nil)
	return err
}

// closeTimeout bounds the connection.close handshake in Close.
const closeTimeout = 5 * time.Second

// register adds a call that waits for a reply, return or confirm.
func (s *session) register(oneway bool) (*call, error) {
	c := &call{corr: broker.NewID(), oneway: oneway, res: make(chan result, 1)}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dead {
		return nil, broker.ErrDisconnected
	}
	s.calls[c.corr] = c
	return c, nil
}

// published records the delivery tag of c's message on pc, or applies the
// confirm that already came for it.
func (s *session) published(pc *pubChan, c *call, tag uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dead {
		return
	}
	if ack, ok := pc.early[tag]; ok {
		delete(pc.early, tag)
		s.confirmLocked(c, ack)
		return
	}
	pc.tags[tag] = c
}

// forget drops c, whose caller stopped waiting.
func (s *session) forget(c *call) {
	s.mu.Lock()
	if !s.dead {
		c.done = true
		delete(s.calls, c.corr)
	}
	s.mu.Unlock()
}

func (s *session) finishLocked(c *call, r result) {
	if c.done {
		return
	}
	c.done = true
	if s.calls != nil {
		delete(s.calls, c.corr)
	}
	c.res <- r // buffered; set once
}

func (s *session) reply(d *amqp091.Delivery) {
	// A reply has no deadline; a malformed mqrpc-deadline on one (from a
	// foreign server) is ignored rather than failing the call.
	m, _ := fromDelivery(d)
	m.Subject = ""
	m.Deadline = time.Time{}
	s.mu.Lock()
	if c, ok := s.calls[d.CorrelationId]; ok {
		s.finishLocked(c, result{reply: m})
	}
	s.mu.Unlock()
}

func (s *session) returned(r amqp091.Return) {
	if r.CorrelationId == s.probe {
		if hash, direct, _ := replyNode(r.ReplyTo); direct {
			s.node.Store(hash)
			s.nodeKnown.Store(true)
		}
	}
	s.mu.Lock()
	if c, ok := s.calls[r.CorrelationId]; ok {
		s.finishLocked(c, result{err: fmt.Errorf("%w: %d %s", broker.ErrNoResponders, r.ReplyCode, r.ReplyText)})
	}
	s.mu.Unlock()
}

func (s *session) confirmed(pc *pubChan, tag uint64, ack bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dead {
		return
	}
	c, ok := pc.tags[tag]
	if !ok {
		pc.early[tag] = ack
		return
	}
	delete(pc.tags, tag)
	s.confirmLocked(c, ack)
}

func (s *session) confirmLocked(c *call, ack bool) {
	switch {
	case !ack:
		s.finishLocked(c, result{err: errNack})
	case c.oneway:
		s.finishLocked(c, result{})
	}
}

// supervise replaces lost sessions until the broker closes.
func (b *Broker) supervise(s *session) {
	defer b.wg.Done()
	for {
		select {
		case <-s.lost:
		case <-b.ctx.Done():
			return
		}
		b.mu.Lock()
		if b.closed {
			b.mu.Unlock()
			return
		}
		b.sess = nil
		b.ready = make(chan struct{})
		b.mu.Unlock()
		b.cfg.logger.Warn("amqp: connection lost; reconnecting")
		// The node whose connection was lost is tried last: it may be
		// dead, and a dead host (not only a dead process) holds a dial
		// for the whole dial timeout.
		if n := int32(len(b.urls)); n > 1 {
			b.next.Store((b.next.Load() + 1) % n)
		}

		var err error
		for attempt := 0; ; attempt++ {
			if !sleepCtx(b.ctx, backoff(b.cfg.minBackoff, b.cfg.maxBackoff, attempt)) {
				return
			}
			if s, err = b.connect(); err == nil {
				break
			}
			b.cfg.logger.Warn("amqp: reconnect failed", "attempt", attempt+1, "err", err)
		}
		b.mu.Lock()
		if b.closed {
			b.mu.Unlock()
			_ = s.close()
			return
		}
		b.sess = s
		close(b.ready)
		b.mu.Unlock()
		b.cfg.logger.Info("amqp: reconnected")
	}
}

// session returns the live session, waiting for a reconnection while ctx
// allows.
func (b *Broker) session(ctx context.Context) (*session, error) {
	for {
		b.mu.Lock()
		if b.closed {
			b.mu.Unlock()
			return nil, broker.ErrClosed
		}
		s, ready := b.sess, b.ready
		b.mu.Unlock()
		if s != nil {
			return s, nil
		}
		select {
		case <-ready:
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: %w (waiting for a connection: %w)", broker.ErrTimeout, ctx.Err(), broker.ErrDisconnected)
		case <-b.ctx.Done():
			return nil, broker.ErrClosed
		}
	}
}

// backoff returns the delay before reconnection attempt n (from 0):
// exponential from min up to max, with jitter in [d/2, d).
func backoff(min, max time.Duration, n int) time.Duration {
	d := min
	for i := 0; i < n && d < max; i++ {
		d *= 2
	}
	if d > max {
		d = max
	}
	return d/2 + rand.N(d/2+1)
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
