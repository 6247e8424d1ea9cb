// Package nats is the mqrpc broker for NATS (https://nats.io), built on
// nats.go.
//
// In the default core mode a request is one NATS message to the service
// subject with a reply subject under the client's single inbox
// subscription; servers of a subject form a queue group, so each request
// reaches one of them; a request nobody serves fails at once with
// broker.ErrNoResponders. Nothing is stored: a request in flight when its
// server dies is lost, and its caller times out. If the connection drops,
// calls in flight fail at once with an error wrapping
// broker.ErrDisconnected, and the broker reconnects and restores its
// subscriptions by itself.
//
// With WithJetStream the broker runs in durable mode on a JetStream
// work-queue stream: a request is stored before it is delivered, kept while
// no server runs, acknowledged only after its reply was sent, redelivered
// when its server dies, deduplicated by subject and Message.ID and
// dead-lettered after JetStreamConfig.MaxDeliver deliveries.
//
// Both modes are drivers of broker/kernel, and keep its promises: a caller
// that cancels its ctx tells the servers (a cancel notice on core NATS,
// "<CancelPrefix>.<subject>"), whose handler sees its ctx cancelled; a
// server that stops past its drain time, or closes, answers the callers of
// the requests it was handling with its handler's reply to an Unavailable
// rejection (rpc.Server's Unavailable status).
//
// The wire format, for clients written in other languages, is in the NATS
// section of docs/PROTOCOL.md. Package broker/nats/embedded starts an
// in-process NATS server for tests and zero-setup programs.
package nats

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/kernel"
	"github.com/mqrpc/mqrpc/internal/redact"
)

// NATS header names used on the wire besides broker's shared ones.
const (
	// HeaderMsgID carries Message.ID; JetStream uses it to drop
	// duplicates.
	HeaderMsgID = "Nats-Msg-Id"
	// HeaderReply carries the reply subject of a durable-mode request:
	// the NATS reply field of a JetStream publish is taken by the
	// stream's acknowledgement.
	HeaderReply = "mqrpc-reply"
	// HeaderDeadReason says why a dead letter was dead-lettered.
	HeaderDeadReason = "mqrpc-dead-reason"
	// HeaderDeliveries says how often a dead letter was delivered.
	HeaderDeliveries = "mqrpc-deliveries"
	// CancelPrefix forms the subject of the cancel notices of a service:
	// "<CancelPrefix>.<subject>". A caller that cancels a request
	// publishes its message ID there (the payload), and the servers of
	// the subject cancel the handler's ctx.
	CancelPrefix = "_mqrpc.cancel"
)

// Broker is a broker.Broker on one NATS connection. Make it with New; it is
// safe for concurrent use.
type Broker struct {
	cfg    *config
	log    *slog.Logger
	nc     *natsgo.Conn
	js     *jetStream // durable mode; nil in core mode
	mux    replyMux
	closed atomic.Bool

	subsMu sync.Mutex
	subs   map[server]struct{}

	inboxes inboxes // stream inboxes (stream.go)
}

// server is a running Serve or ServeEach, as Close and a reconnect see it.
type server interface {
	abort()       // stop at once (Close)
	wait()        // wait for its handlers and helpers
	reconnected() // the connection is back: repair what the server lost
}

var _ broker.Broker = (*Broker)(nil)

// New connects to the NATS server at url and returns a Broker. url is
// nats://host:port or tls://host:port, or a comma-separated list of them
// (the nodes of a cluster): the client connects to one and fails over to
// the others. An empty url means DefaultURL. New fails when no server can
// be reached; once connected, the broker reconnects by itself for as long
// as it lives.
func New(url string, opts ...Option) (*Broker, error) {
	cfg, err := newConfig(url, opts)
	if err != nil {
		return nil, err
	}
	// Everything the connection callbacks touch exists before Connect
	// starts them.
	b := &Broker{cfg: cfg, log: cfg.logger, subs: make(map[server]struct{})}
	b.mux.pending = make(map[string]*call)
	nopts := []natsgo.Option{
		natsgo.Name(cfg.name),
		natsgo.MaxReconnects(-1),
		natsgo.ReconnectWait(cfg.reconnectWait),
		natsgo.ReconnectJitter(cfg.reconnectWait, cfg.reconnectWait),
		natsgo.DisconnectErrHandler(b.onDisconnect),
		natsgo.ReconnectHandler(b.onReconnect),
		natsgo.ClosedHandler(b.onClosed),
		natsgo.ErrorHandler(b.onAsyncError),
	}
	nopts = append(nopts, cfg.natsOpts...)
	nc, err := natsgo.Connect(strings.Join(cfg.urls, ","), nopts...)
	if err != nil {
		return nil, fmt.Errorf("nats: connect %s: %w", redact.URLs(cfg.urls), err)
	}
	b.nc = nc
	b.mux.init(nc)
	if cfg.js != nil {
		js, err := jetstream.New(nc)
		if err != nil {
			nc.Close()
			return nil, fmt.Errorf("nats: jetstream: %w", err)
		}
		b.js = newJetStream(*cfg.js, js, b.log)
	}
	return b, nil
}

// Conn returns the underlying nats.go connection, for monitoring or for
// publishing outside mqrpc. Do not close it; close the Broker.
func (b *Broker) Conn() *natsgo.Conn { return b.nc }

func (b *Broker) onDisconnect(_ *natsgo.Conn, err error) {
	if b.closed.Load() {
		// nats.go reports Close as a disconnect too.
		b.mux.failAll(broker.ErrClosed)
		return
	}
	n := b.mux.failAll(broker.ErrDisconnected)
	if b.js != nil {
		b.js.disconnected()
	}
	b.log.Warn("nats: disconnected", "error", err, "failed_calls", n)
}

func (b *Broker) onReconnect(nc *natsgo.Conn) {
	// Not nc.ConnectedUrlRedacted, which hides only a password: a URL's
	// user info alone is a token (nats://token@host).
	b.log.Info("nats: reconnected", "url", redact.URL(nc.ConnectedUrl()))
	b.subsMu.Lock()
	defer b.subsMu.Unlock()
	for s := range b.subs {
		s.reconnected()
	}
}

func (b *Broker) onClosed(*natsgo.Conn) {
	b.mux.failAll(broker.ErrClosed)
}

func (b *Broker) onAsyncError(_ *natsgo.Conn, sub *natsgo.Subscription, err error) {
	subj := ""
	if sub != nil {
		subj = sub.Subject
	}
	b.log.Error("nats: async error", "subject", subj, "error", err)
}

// Request sends req to req.Subject and waits for one server's reply.
//
// In core mode it returns broker.ErrNoResponders at once when no server
// subscribes to the subject. In durable mode the request is stored first,
// so it waits for a server instead. The wait ends at req.Deadline or
// ctx's deadline (an error wrapping broker.ErrTimeout and
// context.DeadlineExceeded), when the caller cancels ctx (an error
// wrapping context.Canceled alone; the servers get a cancel notice and
// cancel the handler's ctx), when the connection drops
// (broker.ErrDisconnected: the request may or may not have been served) or
// when the broker is closed (broker.ErrClosed). While the connection is
// down, Request fails at once with broker.ErrDisconnected instead of
// queueing the request; retry after a pause. A request with no deadline in
// req or ctx waits until ctx ends.
//
// In durable mode a retry with the same Message.ID is not stored again (the
// stream drops duplicates); made through the same Broker, it waits for the
// stored original's reply.
func (b *Broker) Request(ctx context.Context, req *broker.Message) (*broker.Message, error) {
	const op = "nats: request"
	if b.closed.Load() {
		return nil, fmt.Errorf("%s %s: %w", op, req.Subject, broker.ErrClosed)
	}
	ctx, cancel, err := kernel.Prepare(ctx, req, op)
	defer cancel()
	if err != nil {
		return nil, err
	}
	call, err := b.mux.register(req.ID, req.Subject, b.js != nil)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", op, req.Subject, err)
	}
	o, err := b.publishRequest(ctx, req, call.reply)
	if err != nil {
		b.mux.cancel(call)
		if ctx.Err() != nil {
			// Cancelled while the stream was storing it: it may be
			// stored, and served already.
			return nil, b.abandon(ctx, req, op)
		}
		return nil, fmt.Errorf("%s %s: %w", op, req.Subject, err)
	}
	// The published message goes back to its pool only once the call
	// ended: the flusher the publish woke waits for this goroutine's
	// processor, which it gets as soon as the select below blocks.
	defer o.release()
	select {
	case r := <-call.ch:
		b.mux.done(call)
		if r.err != nil {
			return nil, fmt.Errorf("%s %s: %w", op, req.Subject, r.err)
		}
		if isNoResponders(r.msg) {
			return nil, fmt.Errorf("%s %s: %w", op, req.Subject, broker.ErrNoResponders)
		}
		rep, err := fromNATS(r.msg, "")
		if err != nil {
			return nil, fmt.Errorf("nats: reply to %s: %w", req.Subject, err)
		}
		return rep, nil
	case <-ctx.Done():
		b.mux.cancel(call)
		return nil, b.abandon(ctx, req, op)
	}
}

// abandon ends a request whose ctx ended before its reply came: when the
// caller cancelled, the servers of its subject get the cancel notice (core
// NATS, also in durable mode: the payload is the message ID) and cancel
// the handler's ctx.
func (b *Broker) abandon(ctx context.Context, req *broker.Message, op string) error {
	if kernel.Canceled(ctx) {
		if err := b.nc.Publish(CancelPrefix+"."+req.Subject, []byte(req.ID)); err != nil {
			b.log.Debug("nats: cancel notice", "subject", req.Subject, "id", req.ID, "error", err)
		}
	}
	return kernel.WaitError(ctx, op, req.Subject)
}

// publishRequest publishes req with reply as its reply subject. It
// returns the published message, for the caller to release.
func (b *Broker) publishRequest(ctx context.Context, req *broker.Message, reply string) (*outbound, error) {
	// A request published while the connection is down would sit in
	// nats.go's reconnect buffer with nobody to fail it; fail it now so
	// the caller can retry once the connection is back.
	if st := b.nc.Status(); st != natsgo.CONNECTED {
		if st == natsgo.CLOSED {
			return nil, broker.ErrClosed
		}
		return nil, fmt.Errorf("%w (connection %s)", broker.ErrDisconnected, st)
	}
	var o *outbound
	var err error
	if b.js == nil {
		o = newOutbound(req.Subject, req, req.ID, req.Deadline)
		o.msg.Reply = reply
		err = mapPublishError(b.nc.PublishMsg(&o.msg))
	} else {
		o = newOutbound(b.js.cfg.SubjectPrefix+"."+req.Subject, req, durableMsgID(req.Subject, req.ID), req.Deadline)
		o.set(HeaderReply, reply)
		err = b.js.publish(ctx, &o.msg, req.Deadline)
	}
	if err != nil {
		o.release()
		return nil, err
	}
	return o, nil
}

// Send delivers msg to msg.Subject without waiting for a reply. In core
// mode it returns once the message is handed to the connection (nobody
// serving the subject is not an error: NATS does not report it); in
// durable mode once the stream has stored it.
func (b *Broker) Send(ctx context.Context, msg *broker.Message) error {
	const op = "nats: send"
	if b.closed.Load() {
		return fmt.Errorf("%s %s: %w", op, msg.Subject, broker.ErrClosed)
	}
	if err := kernel.PrepareSend(ctx, msg, op); err != nil {
		return err
	}
	var err error
	if b.js == nil {
		o := newOutbound(msg.Subject, msg, msg.ID, msg.Deadline)
		if st := b.nc.Status(); st == natsgo.CLOSED {
			err = broker.ErrClosed
		} else {
			// While reconnecting, nats.go buffers the message and
			// sends it after the reconnect; that is what one-way
			// callers want.
			err = mapPublishError(b.nc.PublishMsg(&o.msg))
		}
		o.release()
	} else {
		o := newOutbound(b.js.cfg.SubjectPrefix+"."+msg.Subject, msg, durableMsgID(msg.Subject, msg.ID), msg.Deadline)
		err = b.js.publish(ctx, &o.msg, msg.Deadline)
		o.release()
	}
	if err != nil {
		return fmt.Errorf("%s %s: %w", op, msg.Subject, err)
	}
	return nil
}

// Close stops every subscription without draining: the callers of the
// requests being handled get the handler's reply to an Unavailable
// rejection (rpc.Server answers Unavailable, which rpc's Retry retries),
// handlers in flight see their ctx cancelled and Close waits for them to
// return. It fails calls in flight with broker.ErrClosed and closes the
// connection. In durable mode the requests being handled are handed back
// unacknowledged, so the stream redelivers them to another server. Close
// is idempotent.
func (b *Broker) Close() error {
	if !b.closed.CompareAndSwap(false, true) {
		return nil
	}
	b.subsMu.Lock()
	subs := make([]server, 0, len(b.subs))
	for s := range b.subs {
		subs = append(subs, s)
	}
	b.subsMu.Unlock()
	for _, s := range subs {
		s.abort() // their Unavailable replies go out with nc.Close's last flush
	}
	// Fail the calls before closing: the connection's own callbacks run
	// asynchronously, and Close must return with none left waiting.
	b.mux.failAll(broker.ErrClosed)
	b.nc.Close()
	b.mux.failAll(broker.ErrClosed)
	for _, s := range subs {
		s.wait()
	}
	return nil
}

func (b *Broker) addSub(s server) bool {
	b.subsMu.Lock()
	defer b.subsMu.Unlock()
	if b.closed.Load() {
		return false
	}
	b.subs[s] = struct{}{}
	return true
}

func (b *Broker) removeSub(s server) {
	b.subsMu.Lock()
	delete(b.subs, s)
	b.subsMu.Unlock()
}

func mapPublishError(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, natsgo.ErrMaxPayload):
		return fmt.Errorf("%w: %w", broker.ErrMessageTooLarge, err)
	case errors.Is(err, natsgo.ErrConnectionClosed), errors.Is(err, natsgo.ErrConnectionDraining):
		return fmt.Errorf("%w: %w", broker.ErrClosed, err)
	case errors.Is(err, natsgo.ErrReconnectBufExceeded), errors.Is(err, natsgo.ErrConnectionReconnecting),
		errors.Is(err, natsgo.ErrDisconnected), errors.Is(err, natsgo.ErrStaleConnection):
		return fmt.Errorf("%w: %w", broker.ErrDisconnected, err)
	}
	return err
}

// isNoResponders reports the status message the NATS server sends to a
// request's reply subject when no subscription could receive it.
func isNoResponders(m *natsgo.Msg) bool {
	return len(m.Data) == 0 && len(m.Header) > 0 && m.Header.Get("Status") == "503"
}

// toNATS maps a message's ID, headers and deadline to NATS headers. Names
// are written in lower case; HeaderDeadline in Message.Header is ignored
// because the field is the source of truth. A message with nothing to put
// in headers gets none.
func toNATS(m *broker.Message, id string, deadline time.Time) natsgo.Header {
	var o outbound
	o.fill(m, id, deadline)
	return o.msg.Header
}

// outbound is a NATS message being published. nats.go encodes the headers
// while publishing and keeps no reference to the message, so the message,
// its header map and the header values are reused from call to call.
type outbound struct {
	msg  natsgo.Msg
	vals []string // one backing array for all header values
}

var outbounds = sync.Pool{New: func() any { return new(outbound) }}

// newOutbound returns a pooled message to subject carrying m; release it
// once it was published.
func newOutbound(subject string, m *broker.Message, id string, deadline time.Time) *outbound {
	o := outbounds.Get().(*outbound)
	o.msg.Subject = subject
	o.msg.Data = m.Body
	o.fill(m, id, deadline)
	return o
}

func (o *outbound) release() {
	h, vals := o.msg.Header, o.vals
	if len(vals) > 16 {
		return // an unusual message: do not keep its large map around
	}
	clear(h)
	clear(vals)
	o.msg = natsgo.Msg{Header: h}
	o.vals = vals[:0]
	outbounds.Put(o)
}

func (o *outbound) fill(m *broker.Message, id string, deadline time.Time) {
	n := len(m.Header) + 2
	if len(m.Header) == 0 && id == "" && deadline.IsZero() {
		return
	}
	if o.msg.Header == nil {
		o.msg.Header = make(natsgo.Header, n+1) // +1: room for HeaderReply
	}
	if cap(o.vals) < n {
		o.vals = make([]string, 0, n)
	}
	for k, v := range m.Header {
		k = strings.ToLower(k)
		if k == broker.HeaderDeadline || k == HeaderReply {
			continue
		}
		o.set(k, v)
	}
	if id != "" {
		o.set(HeaderMsgID, id)
	}
	if !deadline.IsZero() {
		o.set(broker.HeaderDeadline, broker.FormatDeadline(deadline))
	}
}

// set sets header k to v. Each value's slice is capped so that an append by
// nats.go never writes into its neighbour.
func (o *outbound) set(k, v string) {
	if o.msg.Header == nil {
		o.msg.Header = make(natsgo.Header, 4)
	}
	o.vals = append(o.vals, v)
	i := len(o.vals)
	o.msg.Header[k] = o.vals[i-1 : i : i]
}

// fromNATS maps a received NATS message to a broker.Message. Header names
// are lower-cased; NATS's own headers (Nats-*) and the transport headers
// are not part of Message.Header. A malformed deadline is an error (a
// *broker.HeaderError), with the rest of the message still filled in.
func fromNATS(m *natsgo.Msg, subject string) (*broker.Message, error) {
	out := new(broker.Message)
	return out, decodeInto(out, m, subject)
}

// decodeInto is fromNATS into out, whose Header, if not nil, is empty and
// is filled instead of a new one.
func decodeInto(out *broker.Message, m *natsgo.Msg, subject string) error {
	out.Subject, out.Body = subject, m.Data
	var err error
	if len(m.Header) > 0 {
		if out.Header == nil {
			out.Header = make(broker.Header, len(m.Header))
		}
		for k, vs := range m.Header {
			if len(vs) == 0 {
				continue
			}
			if len(k) > 5 && (k[0] == 'N' || k[0] == 'n') && strings.EqualFold(k[:5], "nats-") {
				if strings.EqualFold(k, HeaderMsgID) {
					out.ID = vs[0]
				}
				continue
			}
			k = strings.ToLower(k)
			switch k {
			case broker.HeaderDeadline:
				// Names differing in case are distinct NATS headers
				// and come in map order.
				var perr error
				if out.Deadline, perr = broker.MergeDeadline(out.Deadline, vs[0]); perr != nil {
					err = perr
				}
			case HeaderReply:
			default:
				out.Header[k] = vs[0]
			}
		}
	}
	return err
}
