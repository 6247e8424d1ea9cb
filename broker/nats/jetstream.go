package nats

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mqrpc/mqrpc/broker"
)

// setupTimeout bounds the JetStream API calls made by Serve and by the
// first durable publish.
const setupTimeout = 10 * time.Second

// pullExpiry is how long one pull request of a server waits for messages.
const pullExpiry = 10 * time.Second

// ensureStreams creates the request and dead-letter streams when missing.
// Existing streams are used as they are: clients with slightly different
// settings must not keep rewriting a shared stream.
func (b *Broker) ensureStreams(ctx context.Context) error {
	b.streamMu.Lock()
	defer b.streamMu.Unlock()
	if b.streamReady {
		return nil
	}
	js := b.cfg.js
	storage := jetstream.FileStorage
	if js.MemoryStorage {
		storage = jetstream.MemoryStorage
	}
	streams := []jetstream.StreamConfig{{
		Name:        js.Stream,
		Description: "mqrpc durable requests",
		Subjects:    []string{js.SubjectPrefix + ".>"},
		Retention:   jetstream.WorkQueuePolicy,
		Storage:     storage,
		MaxAge:      js.MaxAge,
		Duplicates:  js.DuplicateWindow,
		Replicas:    js.Replicas,
	}, {
		Name:        js.DeadLetterStream,
		Description: "mqrpc dead-lettered requests",
		Subjects:    []string{js.DeadLetterPrefix + ".>"},
		Retention:   jetstream.LimitsPolicy,
		Storage:     storage,
		Duplicates:  js.DuplicateWindow,
		Replicas:    js.Replicas,
	}}
	// Servers from 2.11 on (JetStream API level 1) drop a stored message
	// when its own TTL ends: the request's deadline becomes one.
	if info, err := b.js.AccountInfo(ctx); err == nil && info.API.Level >= 1 {
		streams[0].AllowMsgTTL = true
	}
	for i, sc := range streams {
		st, err := b.js.Stream(ctx, sc.Name)
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			st, err = b.js.CreateStream(ctx, sc)
			if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
				st, err = b.js.Stream(ctx, sc.Name)
			}
		}
		if err != nil {
			return fmt.Errorf("stream %s: %w", sc.Name, err)
		}
		if i == 0 {
			b.msgTTL = st.CachedInfo().Config.AllowMsgTTL
		}
	}
	b.streamReady = true
	return nil
}

// ttlHeader sets the JetStream per-message TTL of a stored request to its
// deadline (whole seconds, rounded up, at least 1s) when the stream allows
// it.
func (b *Broker) ttlHeader(m *natsgo.Msg, deadline time.Time) {
	if !b.msgTTL || deadline.IsZero() {
		return
	}
	secs := int64((time.Until(deadline) + time.Second - 1) / time.Second)
	m.Header[jetstream.MsgTTLHeader] = []string{strconv.FormatInt(max(secs, 1), 10)}
}

// publishDurable stores m in the request stream and returns once the
// stream acknowledged it. A duplicate (same Nats-Msg-Id within the
// duplicate window) is not an error: the stored original stands for it.
func (b *Broker) publishDurable(ctx context.Context, m *natsgo.Msg, deadline time.Time) error {
	sctx, cancel := context.WithTimeout(ctx, setupTimeout)
	defer cancel()
	if err := b.ensureStreams(sctx); err != nil {
		return mapJSError(err)
	}
	b.ttlHeader(m, deadline)
	if _, err := b.js.PublishMsg(ctx, m); err != nil {
		if errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, natsgo.ErrNoResponders) {
			// The stream is gone (deleted, or a memory stream lost in a
			// server restart): make it again on the next call.
			b.streamMu.Lock()
			b.streamReady = false
			b.streamMu.Unlock()
		}
		return mapJSError(err)
	}
	return nil
}

// JetStream API error codes the library has no names for.
const (
	jsErrMessageTooLarge jetstream.ErrorCode = 10054 // message size exceeds maximum allowed
	jsErrHeaderTooLarge  jetstream.ErrorCode = 10097 // header size exceeds maximum allowed
)

func mapJSError(err error) error {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		switch apiErr.ErrorCode {
		case jsErrMessageTooLarge, jsErrHeaderTooLarge:
			return fmt.Errorf("%w: %w", broker.ErrMessageTooLarge, err)
		}
	}
	switch {
	case errors.Is(err, jetstream.ErrNoStreamResponse), errors.Is(err, natsgo.ErrNoResponders):
		return fmt.Errorf("%w: no stream stores this subject: %w", broker.ErrNoResponders, err)
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return fmt.Errorf("%w: %w", broker.ErrTimeout, err)
	case errors.Is(err, natsgo.ErrTimeout):
		return fmt.Errorf("%w: %w: %w", broker.ErrTimeout, context.DeadlineExceeded, err)
	}
	return mapPublishError(err)
}

// consumerName turns a queue group name into a valid durable consumer
// name.
func consumerName(queue string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r == '.' || r == '*' || r == '>' || r == '/' || r == '\\' || r <= ' ' || r == 0x7f:
			return '_'
		}
		return r
	}, queue)
}

func (s *subscription) startDurable(cfg broker.ServeConfig) error {
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	b, js := s.b, s.b.cfg.js
	s.sem = make(chan struct{}, cfg.Concurrency)
	if err := b.ensureStreams(ctx); err != nil {
		return err
	}
	consumer := jetstream.ConsumerConfig{
		Durable:       consumerName(cfg.Queue),
		Description:   "mqrpc servers of " + s.subject,
		FilterSubject: js.SubjectPrefix + "." + s.subject,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       js.AckWait,
		// The broker counts deliveries itself and dead-letters; a server
		// limit would strand the message in the work queue instead.
		MaxDeliver:        -1,
		InactiveThreshold: js.InactiveThreshold,
	}
	s.mu.Lock()
	s.consumer = consumer
	s.mu.Unlock()
	cons, err := b.js.CreateOrUpdateConsumer(ctx, js.Stream, consumer)
	if err != nil {
		return fmt.Errorf("consumer %s: %w", cfg.Queue, err)
	}
	cc, err := cons.Consume(s.onDurable,
		jetstream.PullMaxMessages(cfg.Concurrency),
		// Short pulls with heartbeats: a pull lost in a server restart
		// is noticed and renewed within seconds, not half a minute.
		jetstream.PullExpiry(pullExpiry),
		jetstream.PullHeartbeat(pullExpiry/5),
		jetstream.ConsumeErrHandler(s.onConsumeError))
	if err != nil {
		return fmt.Errorf("consume %s: %w", cfg.Queue, err)
	}
	s.mu.Lock()
	s.cc = cc
	s.mu.Unlock()
	return nil
}

// onConsumeError repairs the consumer when it has gone (deleted, or lost
// with a memory stream in a server restart). The pull loop keeps asking for
// messages by the consumer's name, so it resumes once the consumer exists
// again.
func (s *subscription) onConsumeError(_ jetstream.ConsumeContext, err error) {
	s.b.log.Debug("nats: consume", "subject", s.subject, "error", err)
	if errors.Is(err, jetstream.ErrConsumerDeleted) || errors.Is(err, jetstream.ErrConsumerNotFound) ||
		errors.Is(err, jetstream.ErrNoHeartbeat) || errors.Is(err, natsgo.ErrNoResponders) {
		s.repairConsumer()
	}
}

func (s *subscription) repairConsumer() {
	if !s.repairing.CompareAndSwap(false, true) {
		return
	}
	s.mu.Lock()
	consumer := s.consumer
	if s.stopped || consumer.Durable == "" {
		s.mu.Unlock()
		s.repairing.Store(false)
		return
	}
	s.wg.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.wg.Done()
		defer s.repairing.Store(false)
		ctx, cancel := context.WithTimeout(s.ctx, setupTimeout)
		defer cancel()
		b, stream := s.b, s.b.cfg.js.Stream
		if _, err := b.js.Consumer(ctx, stream, consumer.Durable); err == nil {
			return
		}
		b.streamMu.Lock()
		b.streamReady = false
		b.streamMu.Unlock()
		if err := b.ensureStreams(ctx); err != nil {
			b.log.Warn("nats: repair stream", "subject", s.subject, "error", err)
			return
		}
		if _, err := b.js.CreateOrUpdateConsumer(ctx, stream, consumer); err != nil {
			b.log.Warn("nats: repair consumer", "subject", s.subject, "error", err)
			return
		}
		b.log.Info("nats: consumer recreated", "subject", s.subject, "consumer", consumer.Durable)
	}()
}

func (s *subscription) onDurable(m jetstream.Msg) {
	if !s.dispatch(func() { s.handleDurable(m) }) {
		// Stopping: hand it straight back for another server.
		_ = m.Nak()
	}
}

func (s *subscription) handleDurable(m jetstream.Msg) {
	js := s.b.cfg.js
	subject := strings.TrimPrefix(m.Subject(), js.SubjectPrefix+".")
	var delivered uint64 = 1
	if md, err := m.Metadata(); err == nil {
		delivered = md.NumDelivered
	}
	hdr := m.Headers()
	reply := hdr.Get(HeaderReply)
	req, err := fromNATS(&natsgo.Msg{Header: hdr, Data: m.Data()}, subject)
	if err != nil {
		if reply != "" {
			s.replyStatus(reply, statusInvalidArgument, err.Error())
		}
		s.deadLetter(m, subject, delivered, err.Error())
		return
	}
	if req.Expired(time.Now()) {
		s.b.log.Debug("nats: dropped expired request", "subject", subject, "id", req.ID)
		_ = m.Term()
		return
	}
	if delivered > uint64(js.MaxDeliver) {
		s.deadLetter(m, subject, delivered,
			fmt.Sprintf("delivered %d times without an acknowledgement (servers died or timed out)", delivered-1))
		return
	}

	stopKeepAlive := keepInProgress(m, js.AckWait/2)
	rep, err := s.serve(req)
	stopKeepAlive()
	if s.ctx.Err() != nil && err != nil {
		// Closed mid-request: leave the message unacknowledged so the
		// stream redelivers it to another server.
		return
	}
	if err != nil {
		s.b.log.Warn("nats: delivery failed", "subject", subject, "id", req.ID, "delivery", delivered, "error", err)
		if delivered >= uint64(js.MaxDeliver) {
			s.deadLetter(m, subject, delivered, err.Error())
			return
		}
		_ = m.NakWithDelay(redeliveryDelay(delivered))
		return
	}
	if rep != nil && reply != "" {
		if err := s.sendReply(reply, rep); err != nil {
			s.b.log.Warn("nats: reply failed", "subject", subject, "id", req.ID, "error", err)
			if !errors.Is(err, broker.ErrMessageTooLarge) {
				_ = m.Nak()
				return
			}
		}
	}
	// The reply was published on this same connection before the ack,
	// so the server has the reply before it forgets the request.
	if err := m.Ack(); err != nil {
		s.b.log.Warn("nats: ack failed", "subject", subject, "id", req.ID, "error", err)
	}
}

// redeliveryDelay backs off redeliveries of failed requests a little:
// 100ms, 200ms, 400ms ... up to 5s.
func redeliveryDelay(delivered uint64) time.Duration {
	d := 100 * time.Millisecond
	for i := uint64(1); i < delivered && d < 5*time.Second; i++ {
		d *= 2
	}
	return min(d, 5*time.Second)
}

// deadLetter stores the request in the dead-letter stream with the reason
// and removes it from the work queue. If storing fails the request is
// handed back, so it is never lost.
func (s *subscription) deadLetter(m jetstream.Msg, subject string, delivered uint64, reason string) {
	js := s.b.cfg.js
	hdr := make(natsgo.Header, len(m.Headers())+2)
	for k, v := range m.Headers() {
		hdr[k] = v
	}
	hdr[HeaderDeadReason] = []string{reason}
	hdr[HeaderDeliveries] = []string{strconv.FormatUint(delivered, 10)}
	dl := &natsgo.Msg{Subject: js.DeadLetterPrefix + "." + subject, Header: hdr, Data: m.Data()}
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	if _, err := s.b.js.PublishMsg(ctx, dl); err != nil {
		s.b.log.Error("nats: dead-letter failed", "subject", subject, "error", err)
		_ = m.Nak()
		return
	}
	s.b.log.Warn("nats: dead-lettered request", "subject", subject, "deliveries", delivered, "reason", reason)
	_ = m.TermWithReason("mqrpc: dead-lettered")
}

// keepInProgress tells the stream every interval that m is still being
// worked on, so a slow handler does not get its request redelivered to a
// second server. The returned func stops it.
func keepInProgress(m jetstream.Msg, interval time.Duration) func() {
	var (
		mu   sync.Mutex
		done bool
		t    *time.Timer
	)
	mu.Lock()
	defer mu.Unlock()
	t = time.AfterFunc(interval, func() {
		mu.Lock()
		defer mu.Unlock()
		if done {
			return
		}
		_ = m.InProgress()
		t.Reset(interval)
	})
	return func() {
		mu.Lock()
		done = true
		t.Stop()
		mu.Unlock()
	}
}
