package amqp

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/mqrpc/mqrpc/broker"
)

// Replies that RabbitMQ might fail on go out on a connection of their own,
// the replier's, not on the channel their request came on: a reply can
// make RabbitMQ close the connection it is published on, and the requests
// in flight on that connection would go with it (requeued, so executed
// again, and the replies published after the error lost). Only a reply to
// a direct reply-to address of the delivery connection's own node
// (session.sameNode) is safe on the delivery channel.
//
// RabbitMQ 3.10 decodes a direct reply-to address
// (amq.rabbitmq.reply-to.<channel>.<key>) when a reply is published to it,
// and its channel process crashes, which closes the whole connection with
// INTERNAL_ERROR, when the address names a node that is not running (the
// caller's node died: {case_clause,error} in rabbit_channel:deliver_reply,
// rabbitmq-server#6396) or does not decode at all. An address that names a
// channel that is gone, or a queue that does not exist, is dropped quietly.
//
// So the replier drops malformed addresses before publishing (replyNode),
// and for the rest relies on publisher confirms: when RabbitMQ closes the
// reply connection, the replies not confirmed yet are published again on
// a new one, one at a time and each confirmed before the next, so the one
// it closes the connection on again is known; that one is dropped, and
// replies to its node are dropped for deadNodeFor. A reply published
// again may reach its caller twice: the client drops the second, whose
// correlation id no call waits for any more.

// deadNodeFor is how long replies to a node are dropped after one made
// RabbitMQ close the reply connection: long enough that the replies to a
// dead node's callers in the queues cost one reconnection, not one each;
// short enough for the node's return (a restart takes 10 s or more).
const deadNodeFor = 5 * time.Second

// replayWait bounds the wait for the confirm of a reply published again
// after RabbitMQ closed the reply connection.
const replayWait = 5 * time.Second

// errReplyDropped is the error of a reply the replier did not publish.
var errReplyDropped = errors.New("reply dropped")

// replier publishes the replies of a Broker's subscriptions.
type replier struct {
	b *Broker

	mu      sync.Mutex                // serializes publishes, reconnection and close
	cur     *replyConn                // nil until started and while reconnecting
	last    atomic.Pointer[replyConn] // the last connection, for close
	closing atomic.Bool               // close has begun
	backlog []pendingReply
	dialing bool // a goroutine reconnects
	suspect bool // RabbitMQ closed the last connection: a backlogged reply is why
	closed  bool
	dead    map[int64]time.Time // node hash: until when its replies are dropped
}

// pendingReply is a reply not confirmed yet.
type pendingReply struct {
	key string
	p   amqp091.Publishing
}

// replyConn is one connection of the replier, its channel in confirm mode
// and the replies published on it that RabbitMQ did not confirm yet.
type replyConn struct {
	conn *amqp091.Connection
	ch   *amqp091.Channel
	done chan struct{} // closed when ch closed; err is set then
	err  *amqp091.Error

	mu      sync.Mutex
	pending map[uint64]pendingReply // by delivery tag
}

// start connects the replier, unless it is connected or reconnecting. If
// the dial fails, it goes on in the background as after a loss.
func (r *replier) start() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed || r.cur != nil || r.dialing {
		return
	}
	c, err := r.dial()
	if err != nil {
		r.b.cfg.logger.Warn("amqp: reply connection failed", "attempt", 1, "err", err)
		r.reconnect(false)
		return
	}
	r.setCur(c)
}

// setCur makes c the current connection; r.mu is held.
func (r *replier) setCur(c *replyConn) {
	r.cur = c
	r.last.Store(c)
}

// publish publishes a reply to key, which replyNode found ok. It returns
// before RabbitMQ confirmed it; nil means the replier took it (a reply
// RabbitMQ drops because no consumer has key is not an error), an error
// that it was dropped.
func (r *replier) publish(key string, hash int64, direct bool, p amqp091.Publishing) error {
	if err := p.Headers.Validate(); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return broker.ErrClosed
	}
	if direct && r.isDead(hash) {
		return fmt.Errorf("%w: a reply to node %d of reply_to %q made RabbitMQ close the reply connection less than %v ago (the node is down)",
			errReplyDropped, hash, key, deadNodeFor)
	}
	if r.cur == nil {
		r.backlog = append(r.backlog, pendingReply{key, p})
		r.reconnect(false)
		return nil
	}
	r.send(r.cur, pendingReply{key, p})
	return nil
}

// send publishes pr on c, pending until confirmed; r.mu is held. If the
// channel is closing, pr waits in the backlog for the next connection.
func (r *replier) send(c *replyConn, pr pendingReply) {
	tag := c.ch.GetNextPublishSeqNo()
	c.mu.Lock()
	c.pending[tag] = pr
	c.mu.Unlock()
	if err := c.ch.Publish("", pr.key, false, false, pr.p); err != nil {
		c.mu.Lock()
		delete(c.pending, tag)
		c.mu.Unlock()
		r.backlog = append(r.backlog, pr)
	}
}

// isDead reports whether replies to the node of hash are dropped; r.mu is
// held.
func (r *replier) isDead(hash int64) bool {
	until, ok := r.dead[hash]
	if ok && time.Now().After(until) {
		delete(r.dead, hash)
		return false
	}
	return ok
}

// dial opens a reply connection and its channel, and starts its confirm
// and close listeners.
func (r *replier) dial() (*replyConn, error) {
	b := r.b
	conn, err := b.dial(b.dialConfig(b.cfg.connName + " replies"))
	if err != nil {
		return nil, err
	}
	ch, err := conn.Channel()
	if err == nil {
		err = ch.Confirm(false)
	}
	if err != nil {
		_ = conn.Close()
		return nil, err
	}
	c := &replyConn{conn: conn, ch: ch, done: make(chan struct{}), pending: make(map[uint64]pendingReply)}
	confirms := ch.NotifyPublish(make(chan amqp091.Confirmation, 256))
	closed := ch.NotifyClose(make(chan *amqp091.Error, 1))
	b.wg.Add(2)
	go func() {
		defer b.wg.Done()
		for cf := range confirms {
			c.mu.Lock()
			delete(c.pending, cf.DeliveryTag)
			c.mu.Unlock()
		}
	}()
	go func() {
		defer b.wg.Done()
		c.err = <-closed // nil after Close
		close(c.done)
		r.lost(c)
	}()
	return c, nil
}

// lost replaces c, whose channel closed, if it is the current connection:
// its unconfirmed replies go first in the backlog.
func (r *replier) lost(c *replyConn) {
	_ = c.conn.CloseDeadline(time.Now().Add(closeTimeout))
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cur != c || r.closed || r.closing.Load() {
		return
	}
	r.cur = nil
	c.mu.Lock()
	tags := make([]uint64, 0, len(c.pending))
	for tag := range c.pending {
		tags = append(tags, tag)
	}
	slices.Sort(tags)
	again := make([]pendingReply, 0, len(tags)+len(r.backlog))
	for _, tag := range tags {
		again = append(again, c.pending[tag])
	}
	c.pending = nil
	c.mu.Unlock()
	r.backlog = append(again, r.backlog...)
	r.b.cfg.logger.Warn("amqp: reply connection lost; reconnecting", "err", c.err, "unconfirmed", len(tags))
	r.reconnect(closedByUs(c.err))
}

// closedByUs reports whether RabbitMQ closed a connection because of
// something published on it: a close it initiated other than
// CONNECTION_FORCED (an operator, a node shutting down).
func closedByUs(e *amqp091.Error) bool {
	return e != nil && e.Server && e.Code != amqp091.ConnectionForced
}

// reconnect starts the goroutine that reconnects, unless it runs; r.mu is
// held.
func (r *replier) reconnect(suspect bool) {
	r.suspect = r.suspect || suspect
	if r.dialing || r.closed {
		return
	}
	r.dialing = true
	r.b.wg.Add(1)
	go r.redial()
}

// redial connects again with backoff, publishes the backlog on the new
// connection and makes it current, until the broker closes.
func (r *replier) redial() {
	b := r.b
	defer b.wg.Done()
	for attempt := 0; ; attempt++ {
		if b.ctx.Err() != nil || attempt > 0 && !sleepCtx(b.ctx, backoff(b.cfg.minBackoff, b.cfg.maxBackoff, attempt-1)) {
			r.mu.Lock()
			r.dialing = false
			r.mu.Unlock()
			return
		}
		c, err := r.dial()
		if err != nil {
			b.cfg.logger.Warn("amqp: reply connection failed", "attempt", attempt+1, "err", err)
			continue
		}
		r.mu.Lock()
		if r.closed {
			r.mu.Unlock()
			_ = c.conn.CloseDeadline(time.Now().Add(closeTimeout))
			return
		}
		if before := len(r.backlog); r.suspect && !r.replay(c) {
			progressed := len(r.backlog) < before
			r.mu.Unlock()
			_ = c.conn.CloseDeadline(time.Now().Add(closeTimeout))
			if progressed {
				attempt = -1 // again at once: the backlog got shorter
			}
			continue
		}
		r.suspect = false
		r.dialing = false
		r.setCur(c)
		backlog := r.backlog
		r.backlog = nil
		for _, pr := range backlog {
			if hash, direct, _ := replyNode(pr.key); !direct || !r.isDead(hash) {
				r.send(c, pr)
			}
		}
		r.mu.Unlock()
		b.cfg.logger.Info("amqp: reply connection resumed", "replayed", len(backlog))
		return
	}
}

// replay publishes the backlog on c one reply at a time, each confirmed
// before the next, and reports whether all were; r.mu is held. When
// RabbitMQ closes c on a reply, that reply is dropped and its node's
// replies are dropped for deadNodeFor.
func (r *replier) replay(c *replyConn) bool {
	for len(r.backlog) > 0 {
		pr := r.backlog[0]
		hash, direct, _ := replyNode(pr.key)
		if direct && r.isDead(hash) {
			r.backlog = r.backlog[1:]
			continue
		}
		dc, err := c.ch.PublishWithDeferredConfirm("", pr.key, false, false, pr.p)
		if err != nil {
			return false // closed before pr went out: pr is tried again
		}
		select {
		case <-dc.Done():
		case <-c.done:
		case <-time.After(replayWait):
		case <-r.b.ctx.Done():
			return false // closing: the backlog is dropped
		}
		if dc.Acked() || !waitClosed(c.done, 100*time.Millisecond) {
			// Delivered, or refused (basic.nack) or not confirmed in
			// time on a connection that stays: not tried again.
			r.backlog = r.backlog[1:]
			continue
		}
		if !closedByUs(c.err) {
			return false // lost otherwise: pr is tried again
		}
		r.backlog = r.backlog[1:]
		if direct && c.err.Code == amqp091.InternalError {
			// The channel process crashed: the address's node is not
			// running (a channel error would be about the reply itself).
			if r.dead == nil {
				r.dead = make(map[int64]time.Time)
			}
			r.dead[hash] = time.Now().Add(deadNodeFor)
		}
		r.b.cfg.logger.Warn("amqp: reply dropped: RabbitMQ closed the reply connection on it",
			"reply_to", pr.key, "correlation_id", pr.p.CorrelationId, "err", c.err)
		return false
	}
	return true
}

// waitClosed waits up to d for c to close and reports whether it did.
func waitClosed(c chan struct{}, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-c:
		return true
	case <-t.C:
		return false
	}
}

// settle waits until RabbitMQ confirmed the replies published so far, ctx
// ends, or the reply connection is lost.
func (r *replier) settle(ctx context.Context) {
	r.mu.Lock()
	c := r.cur
	var next uint64
	if c != nil {
		next = c.ch.GetNextPublishSeqNo()
	}
	r.mu.Unlock()
	for c != nil {
		c.mu.Lock()
		waiting := false
		for tag := range c.pending {
			if tag < next {
				waiting = true
				break
			}
		}
		c.mu.Unlock()
		if !waiting || isClosed(c.done) || !sleepCtx(ctx, time.Millisecond) {
			return
		}
	}
}

// close closes the reply connection after what was published on it was
// written; unconfirmed and backlogged replies are dropped. It closes the
// connection before it takes r.mu: a publish blocked in a write (RabbitMQ
// stopped reading) holds r.mu until then.
func (r *replier) close() {
	r.closing.Store(true)
	if c := r.last.Load(); c != nil {
		_ = c.conn.CloseDeadline(time.Now().Add(closeTimeout))
	}
	r.mu.Lock()
	r.closed = true
	c := r.cur
	r.cur = nil
	r.backlog = nil
	r.mu.Unlock()
	if c != nil {
		_ = c.conn.CloseDeadline(time.Now().Add(closeTimeout))
	}
}

// probeNode learns the hash of the node s is connected to, which the
// direct reply-to addresses of its callers carry: a request to a queue
// that cannot exist comes back (basic.return) with the address RabbitMQ
// gave s's reply consumer as its reply_to. Until then, and if it fails,
// every reply goes through the replier.
func (s *session) probeNode() {
	c := &call{corr: s.probe, res: make(chan result, 1)}
	s.mu.Lock()
	s.calls[c.corr] = c
	s.mu.Unlock()
	// Names that start with "amq." cannot be declared: no queue has it.
	p := amqp091.Publishing{ReplyTo: directReplyTo, CorrelationId: c.corr}
	dc, err := s.req.ch.PublishWithDeferredConfirm("", "amq.mqrpc.node-probe", true, false, p)
	if err != nil {
		s.forget(c)
		return
	}
	if dc != nil {
		s.published(s.req, c, dc.DeliveryTag)
	}
}

// sameNode reports whether a reply to a direct reply-to address of node
// hash is safe on s's own channels: RabbitMQ fails only on addresses of
// nodes that are not running, and s's node runs while s is connected.
func (s *session) sameNode(hash int64) bool {
	return s.nodeKnown.Load() && s.node.Load() == hash
}

// replyNode classifies a reply address as RabbitMQ 3.10 decodes it when a
// reply is published to it (rabbit_direct_reply_to:decode_reply_to_v2):
// ok is false when decoding it would fail and close the connection; direct
// is true for a well-formed direct reply-to address, whose channel is on
// the node of hash (RabbitMQ closes the connection too when that node is
// not running). Anything else, a queue name or a direct reply-to prefix
// not followed by exactly two dot-separated parts, RabbitMQ routes as it
// routes any routing key, or drops.
func replyNode(key string) (hash int64, direct, ok bool) {
	rest, found := strings.CutPrefix(key, directReplyTo+".")
	if !found {
		return 0, false, true
	}
	if !utf8.ValidString(rest) {
		return 0, false, false
	}
	// string:lexemes(Rest, "."): the parts between dots, empty ones left
	// out.
	var enc string
	n := 0
	for part := range strings.SplitSeq(rest, ".") {
		if part == "" {
			continue
		}
		if n == 2 {
			return 0, false, true // not decoded: dropped
		}
		if n == 0 {
			enc = part
		}
		n++
	}
	if n != 2 {
		return 0, false, true
	}
	var src [128]byte
	var buf [96]byte
	if len(enc) > len(src) {
		return 0, false, false
	}
	m, err := base64.StdEncoding.Decode(buf[:], src[:copy(src[:], enc)])
	if err != nil {
		return 0, false, false
	}
	// pid_recomposition:from_binary: a pid in the external term format,
	// its node an atom "<name>@<hash>".
	bin := buf[:m]
	if len(bin) < 3 || bin[0] != 131 || (bin[1] != 88 && bin[1] != 103) {
		return 0, false, false
	}
	var node []byte
	switch bin[2] {
	case 118: // ATOM_UTF8_EXT
		if len(bin) < 5 {
			return 0, false, false
		}
		l := int(bin[3])<<8 | int(bin[4])
		if len(bin) < 5+l {
			return 0, false, false
		}
		node, bin = bin[5:5+l], bin[5+l:]
	case 119: // SMALL_ATOM_UTF8_EXT
		if len(bin) < 4 {
			return 0, false, false
		}
		l := int(bin[3])
		if len(bin) < 4+l {
			return 0, false, false
		}
		node, bin = bin[4:4+l], bin[4+l:]
	default:
		return 0, false, false
	}
	if len(bin) != 12 && len(bin) != 9 { // ID, serial, creation
		return 0, false, false
	}
	if !utf8.Valid(node) || utf8.RuneCount(node) > 255 {
		return 0, false, false
	}
	at := strings.IndexByte(string(node), '@')
	if at < 0 {
		return 0, false, false // the local host name stands in: no number
	}
	hash, err = strconv.ParseInt(string(node[at+1:]), 10, 64)
	if err != nil {
		return 0, false, false
	}
	return hash, true, true
}
