package nats

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
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

// pullExpiry is how long one pull request of a server waits for messages;
// pullHeartbeat how often the consumer tells an idle server it is alive
// (the least nats.go allows).
const (
	pullExpiry    = 10 * time.Second
	pullHeartbeat = 500 * time.Millisecond
)

// jetStream is what a Broker in durable mode keeps besides its
// connection: the JetStream client, the streams (made once, on first
// use) and the bucket of delivery records (opened on first need).
type jetStream struct {
	cfg JetStreamConfig
	js  jetstream.JetStream
	log *slog.Logger

	streamMu    sync.Mutex
	streamSetup chan struct{} // held by the caller setting the streams up
	streamReady bool
	msgTTL      bool // the request stream allows per-message TTLs

	kvMu     sync.Mutex
	kv       jetstream.KeyValue
	kvFailed time.Time // when the bucket last could not be opened

	connMu  sync.Mutex
	conn    context.Context // of the current connection: ends when it drops
	connEnd context.CancelFunc
}

func newJetStream(cfg JetStreamConfig, js jetstream.JetStream, log *slog.Logger) *jetStream {
	b := &jetStream{cfg: cfg, js: js, log: log, streamSetup: make(chan struct{}, 1)}
	b.conn, b.connEnd = context.WithCancel(context.Background())
	return b
}

// ensureStreams creates the request and dead-letter streams when missing.
// Existing streams are used as they are: clients with slightly different
// settings must not keep rewriting a shared stream.
func (b *jetStream) ensureStreams(ctx context.Context) error {
	b.streamMu.Lock()
	ready := b.streamReady
	b.streamMu.Unlock()
	if ready {
		return nil
	}
	js := &b.cfg
	// One caller sets the streams up at a time; the others wait for it no
	// longer than their own ctx allows (while a cluster elects a stream
	// leader, a set-up can take as long as its caller's deadline).
	select {
	case b.streamSetup <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("stream %s: %w", js.Stream, ctx.Err())
	}
	defer func() { <-b.streamSetup }()
	b.streamMu.Lock()
	ready = b.streamReady
	b.streamMu.Unlock()
	if ready {
		return nil
	}
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
	msgTTL := false
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
			msgTTL = st.CachedInfo().Config.AllowMsgTTL
		}
	}
	b.streamMu.Lock()
	b.msgTTL, b.streamReady = msgTTL, true
	b.streamMu.Unlock()
	return nil
}

// maxMsgTTL bounds the Nats-TTL mqrpc sets: a deadline further ahead is
// clamped to it. The server adds the TTL, in nanoseconds, to the message's
// timestamp, so a TTL of centuries would overflow there as well as here.
const maxMsgTTL = 100 * 365 * 24 * time.Hour

// ttlHeader sets the JetStream per-message TTL of a stored request to its
// deadline (whole seconds, rounded up, at least 1s, at most maxMsgTTL) when
// the stream allows it.
func (b *jetStream) ttlHeader(m *natsgo.Msg, deadline time.Time) {
	if !b.msgTTL || deadline.IsZero() {
		return
	}
	now := time.Now()
	left := broker.ClampDeadline(deadline, now, maxMsgTTL).Sub(now)
	secs := int64((left + time.Second - 1) / time.Second)
	m.Header[jetstream.MsgTTLHeader] = []string{strconv.FormatInt(max(secs, 1), 10)}
}

// durableMsgID is the Nats-Msg-Id of a durable message: duplicate
// detection spans every subject of the stream, so the message ID is scoped
// by the subject ("<subject>:<id>") and IDs of different services never
// clash, while a retry to the same service is still dropped.
func durableMsgID(subject, id string) string { return subject + ":" + id }

// messageID returns the Message.ID of a stored message to subject from its
// Nats-Msg-Id: without the "<subject>:" scope, or as it is when a foreign
// client sent a bare ID.
func messageID(subject, msgID string) string {
	if len(msgID) > len(subject) && msgID[len(subject)] == ':' && msgID[:len(subject)] == subject {
		return msgID[len(subject)+1:]
	}
	return msgID
}

// publish stores m in the request stream and returns once the
// stream acknowledged it. A duplicate (same Nats-Msg-Id within the
// duplicate window) is not an error: the stored original stands for it.
func (b *jetStream) publish(ctx context.Context, m *natsgo.Msg, deadline time.Time) error {
	sctx, cancel := context.WithTimeout(ctx, setupTimeout)
	defer cancel()
	if err := b.ensureStreams(sctx); err != nil {
		return mapJSError(err)
	}
	b.ttlHeader(m, deadline)
	return mapJSError(b.publishAttempts(ctx, m))
}

// publishAttempts publishes m until the stream acknowledges it, an attempt
// fails otherwise, or ctx ends (or, when ctx has no deadline, the default
// publish timeout passed). One attempt waits at most
// JetStreamConfig.PublishAttempt: a stream whose leader died never
// answers, nor does one whose acknowledgement was on its way when the
// connection dropped, and the next attempt reaches the new leader (or goes
// out on the new connection) as soon as there is one. An attempt on a
// connection that drops ends at once, and while the connection is down
// the next waits for it. A publish nobody answered is tried again while
// the stream has no leader (see unanswered). Every attempt carries the
// same Nats-Msg-Id, so the stream stores the message once however many
// attempts reach it.
func (b *jetStream) publishAttempts(ctx context.Context, m *natsgo.Msg) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, b.js.Options().DefaultTimeout)
		defer cancel()
	}
	led := false // the stream was seen with a leader since an unanswered attempt
	for {
		actx, cancel := context.WithTimeout(ctx, b.cfg.PublishAttempt)
		stop := context.AfterFunc(b.connCtx(), cancel)
		_, err := b.js.PublishMsg(actx, m)
		stop()
		ended := actx.Err() != nil // timed out, or the connection dropped
		cancel()
		switch {
		case err == nil || ctx.Err() != nil:
			return err
		case ended || reconnecting(err):
			// The attempt timed out, or its connection dropped: try
			// again, once there is a connection again.
			if !b.awaitConnection(ctx) {
				return err
			}
		case errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, natsgo.ErrNoResponders):
			again, leader, serr := b.unanswered(ctx)
			if serr != nil {
				return serr
			}
			if !again || (leader && led) {
				return err
			}
			led = led || leader
		default:
			return err
		}
	}
}

// unanswered finds out why a publish had no answer from the request
// stream (nats.go already retried it for half a second), and reports
// whether to publish again and whether the stream has a leader:
//   - The stream is gone (deleted, or a memory stream lost in a server
//     restart): it is made again, and the publish follows.
//   - It has no leader (the one that stored this subject died and the
//     cluster is electing another, which takes seconds), or nobody says
//     (the meta leader died too): the publish is tried again, at once,
//     without waiting for the meta leader the stream's set-up would need.
//   - It has a leader: tried once more (the leader may be new); then the
//     stream does not store this subject, and the publish fails.
func (b *jetStream) unanswered(ctx context.Context) (again, leader bool, err error) {
	actx, cancel := context.WithTimeout(ctx, b.cfg.PublishAttempt)
	defer cancel()
	st, err := b.js.Stream(actx, b.cfg.Stream)
	switch {
	case isStreamNotFound(err):
		b.streamMu.Lock()
		b.streamReady = false
		b.streamMu.Unlock()
		return true, false, b.ensureStreams(ctx)
	case err != nil:
		return ctx.Err() == nil, false, nil
	}
	ci := st.CachedInfo().Cluster
	return true, ci == nil || ci.Leader != "", nil
}

// reconnecting reports an error of a publish made while the connection
// was down.
func reconnecting(err error) bool {
	return errors.Is(err, natsgo.ErrDisconnected) || errors.Is(err, natsgo.ErrConnectionReconnecting)
}

// awaitConnection waits until the connection is up, or reports false when
// ctx ended or the connection was closed first.
func (b *jetStream) awaitConnection(ctx context.Context) bool {
	nc := b.js.Conn()
	for {
		switch nc.Status() {
		case natsgo.CONNECTED:
			return true
		case natsgo.CLOSED:
			return false
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(20 * time.Millisecond): // poll interval of a bounded wait
		}
	}
}

// connCtx is cancelled when the connection drops (see disconnected).
func (b *jetStream) connCtx() context.Context {
	b.connMu.Lock()
	defer b.connMu.Unlock()
	return b.conn
}

// disconnected ends the publish attempts waiting on the connection that
// dropped: their acknowledgements will not come.
func (b *jetStream) disconnected() {
	b.connMu.Lock()
	defer b.connMu.Unlock()
	b.connEnd()
	b.conn, b.connEnd = context.WithCancel(context.Background())
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

// isStreamNotFound reports an error saying the stream does not exist
// (the consumer API gives it as an APIError with the stream's code).
func isStreamNotFound(err error) bool {
	var apiErr *jetstream.APIError
	return errors.Is(err, jetstream.ErrStreamNotFound) ||
		errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamNotFound
}
