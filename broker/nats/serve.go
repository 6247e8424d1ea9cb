package nats

import (
	"context"
	"errors"
	"fmt"
	"time"

	natsgo "github.com/nats-io/nats.go"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/kernel"
)

// Serve starts serving subject with h as a member of the queue group
// opts select (default: the subject), handling up to the configured
// concurrency at once. In core mode subject may contain NATS wildcards.
//
// In durable mode every queue group of a subject is one durable JetStream
// consumer on the work-queue stream; a work-queue stream allows only one
// group per subject.
//
// In both modes the servers listen for the callers' cancel notices on
// "<CancelPrefix>.<subject>" and cancel the ctx of the handler of a
// cancelled request.
func (b *Broker) Serve(subject string, h broker.Handler, opts ...broker.ServeOption) (broker.Subscription, error) {
	if b.closed.Load() {
		return nil, fmt.Errorf("nats: serve %s: %w", subject, broker.ErrClosed)
	}
	if subject == "" || h == nil {
		return nil, fmt.Errorf("nats: serve %q: empty subject or nil handler", subject)
	}
	cfg := broker.NewServeConfig(subject, opts...)
	var (
		sub broker.Subscription
		err error
	)
	if b.js == nil {
		sub, err = b.serveCore(subject, cfg.Queue, h, cfg, true)
	} else {
		sub, err = b.serveDurable(subject, h, cfg)
	}
	if err != nil {
		return nil, fmt.Errorf("nats: serve %s: %w", subject, err)
	}
	return sub, nil
}

// coreDriver is the kernel.Driver of a core NATS subscription: the kernel's
// pool takes messages straight from the subscription (no goroutine
// hand-off per request under load, as with a plain nats.go responder, but
// without its one-at-a-time handling; see broker/kernel/dispatch).
type coreDriver struct {
	b       *Broker
	subject string
	nsub    *natsgo.Subscription
	cancels *natsgo.Subscription // cancel notices; nil for ServeEach
	sub     *kernel.Subscription[*natsgo.Msg]
}

var (
	_ kernel.Driver[*natsgo.Msg] = (*coreDriver)(nil)
	_ kernel.Flusher             = (*coreDriver)(nil)
)

// serveCore serves subject on a core NATS subscription: in queue group
// queue, or every subscriber (queue "", ServeEach). With cancels the
// server listens for cancel notices.
func (b *Broker) serveCore(subject, queue string, h broker.Handler, cfg broker.ServeConfig, cancels bool) (broker.Subscription, error) {
	nsub, err := b.nc.QueueSubscribeSync(subject, queue)
	if err != nil {
		return nil, mapPublishError(err)
	}
	d := &coreDriver{b: b, subject: subject, nsub: nsub}
	d.sub = kernel.Serve[*natsgo.Msg](d, subject, h, cfg, kernel.Options{Name: "nats", Log: b.log, Streamer: b})
	var listen **natsgo.Subscription
	if cancels {
		listen = &d.cancels
	}
	if err := b.launch(d, subject, d.sub.Cancel, listen); err != nil {
		return nil, err
	}
	return d.sub, nil
}

// launch finishes the start of server s, whose kernel subscription runs:
// with cancels not nil it subscribes to the cancel notices of subject
// (stored in *cancels, handed to cancel), then registers s with the
// broker (started). On an error it aborts s.
func (b *Broker) launch(s server, subject string, cancel func(id string), cancels **natsgo.Subscription) error {
	if cancels != nil {
		var err error
		if *cancels, err = b.listenCancels(subject, cancel); err != nil {
			s.abort()
			return err
		}
	}
	if err := b.started(s); err != nil {
		s.abort()
		return err
	}
	return nil
}

// listenCancels subscribes to the cancel notices of subject's requests.
func (b *Broker) listenCancels(subject string, cancel func(id string)) (*natsgo.Subscription, error) {
	s, err := b.nc.Subscribe(CancelPrefix+"."+subject, func(m *natsgo.Msg) { cancel(string(m.Data)) })
	if err != nil {
		return nil, fmt.Errorf("cancel notices: %w", mapPublishError(err))
	}
	return s, nil
}

// started registers a new server with its broker and returns once the NATS
// server knows its subscriptions, so a request sent right after (from any
// connection) finds it.
func (b *Broker) started(s server) error {
	if !b.addSub(s) {
		return broker.ErrClosed
	}
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	if err := b.nc.FlushWithContext(ctx); err != nil {
		return fmt.Errorf("flush subscription: %w", mapPublishError(err))
	}
	return nil
}

// Next implements kernel.Driver.
func (d *coreDriver) Next(ctx context.Context) (*natsgo.Msg, bool) {
	for {
		m, err := d.nsub.NextMsgWithContext(ctx)
		if err == nil {
			return m, true
		}
		if !errors.Is(err, natsgo.ErrSlowConsumer) {
			return nil, false
		}
		d.b.log.Warn("nats: slow consumer, messages dropped", "subject", d.subject)
	}
}

// Decode implements kernel.Driver.
func (d *coreDriver) Decode(m *natsgo.Msg, into *broker.Message) error {
	return decodeInto(into, m, m.Subject)
}

// Reply implements kernel.Driver.
func (d *coreDriver) Reply(m *natsgo.Msg, rep *broker.Message) error {
	return d.b.reply(m.Reply, rep)
}

// reply publishes rep to the reply subject of a request ("": one-way).
func (b *Broker) reply(to string, rep *broker.Message) error {
	if to == "" {
		return nil
	}
	o := newOutbound(to, rep, rep.ID, time.Time{})
	err := mapPublishError(b.nc.PublishMsg(&o.msg))
	o.release()
	return err
}

// Settle implements kernel.Driver: core NATS acknowledges nothing.
func (d *coreDriver) Settle(*natsgo.Msg, kernel.Outcome) {}

// Drain implements kernel.Driver: the messages NATS delivered already are
// handed out, and Next then reports the end.
func (d *coreDriver) Drain() {
	if err := d.nsub.Drain(); err != nil {
		_ = d.nsub.Unsubscribe()
	}
}

// Abort implements kernel.Driver.
func (d *coreDriver) Abort() {
	_ = d.nsub.Unsubscribe()
	d.done()
}

// Flush implements kernel.Flusher: Stop drained the subscription and its
// handlers returned; their replies reach the server before Stop returns.
func (d *coreDriver) Flush(ctx context.Context) error {
	d.done()
	return d.b.flush(ctx)
}

func (d *coreDriver) done() { d.b.forget(d, d.cancels) }

// forget ends what outlives a server's drain: its cancel notices (nil: it
// has none) and its place in the broker.
func (b *Broker) forget(s server, cancels *natsgo.Subscription) {
	if cancels != nil {
		_ = cancels.Unsubscribe()
	}
	b.removeSub(s)
}

func (d *coreDriver) abort()       { d.sub.Abort() }
func (d *coreDriver) wait()        { d.sub.Wait() }
func (d *coreDriver) reconnected() {}

// flush waits until the server has what this connection sent, or ctx
// ends (setupTimeout when ctx has no deadline).
func (b *Broker) flush(ctx context.Context) error {
	if b.closed.Load() {
		return nil
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, setupTimeout)
		defer cancel()
	}
	if err := b.nc.FlushWithContext(ctx); err != nil {
		return mapPublishError(err)
	}
	return nil
}
