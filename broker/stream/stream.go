// Package stream is the stream engine of mqrpc, written once for every
// broker that has inboxes ([broker.Streamer]): a stream of messages in each
// direction between a caller and a handler, with sequence numbers, credit-
// based flow control, heartbeats, an end with a status, and cancellation.
// Package rpc builds its typed streaming API on it; it knows no codecs and
// no status codes.
//
// # How a stream runs
//
// The caller opens an inbox and sends the opening request, an ordinary
// request (through [broker.Broker.Request], so it follows the broker's
// delivery rules and passes every middleware), carrying the stream's ID,
// the caller's inbox address, its heartbeat interval and the credit it
// grants the handler ([Stream.Prepare]). The handler accepts it
// ([Accept]): it opens an inbox of its own and posts a credit frame with
// its address to the caller. From then on both sides post frames to each
// other's inbox:
//
//   - data: one message, with a sequence number 1, 2, 3, ... per direction.
//     A gap or a repeat ends the stream with [ErrDataLoss].
//   - batch: several data messages in one frame, numbered on from the
//     first's sequence number, to a peer that declared it reads them
//     (HeaderBatch on the opening request, on the handler's credit
//     frames). A writer faster than the broker sends what it queued
//     meanwhile as one batch; it never waits to fill one.
//   - credit: how many data frames the sender of the credit has granted in
//     all (cumulative, so a lost credit frame is repaired by the next). A
//     side never has more data frames in flight than it was granted: a
//     slow reader makes the writer wait in Send, and each side holds at
//     most its window of received messages.
//   - ping: every quarter of the heartbeat interval, with the sender's
//     count of data frames sent (a lost last frame is seen at once) and
//     its credit. A side that hears nothing from its peer for three
//     quarters of the interval ends the stream with [ErrPeerGone].
//   - end: the caller's half-close (CloseSend), with its count of data
//     frames sent.
//   - cancel: the stream is abandoned ([ErrCanceled] on the other side).
//
// The handler ends the stream by returning: its reply to the opening
// request is the end of the stream, with the status and the trailers in
// its headers and its count of data frames sent ([Stream.Finish]). The
// caller reads every data frame up to that count, then the end.
//
// # What a stream is not
//
// A stream is not stored. With a durable broker (JetStream, a durable
// RabbitMQ queue, RocketMQ) the opening request follows the broker's
// delivery rules (kept while no server runs, redelivered after a crash),
// but the frames of a stream travel the fast path and are not replayed: a
// stream cut by a crash ends with [ErrPeerGone] on the side that lives,
// and is not resumed.
//
// docs/PROTOCOL.md ("Streams") describes the frames for clients written
// without mqrpc.
package stream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mqrpc/mqrpc/broker"
)

// The header names of stream frames and of the opening request.
const (
	// HeaderStream carries the stream's ID, on the opening request and on
	// every frame.
	HeaderStream = "mqrpc-stream"
	// HeaderInbox carries the sender's inbox address: the caller's on the
	// opening request, the handler's on its credit and ping frames.
	HeaderInbox = "mqrpc-stream-inbox"
	// HeaderHeartbeat carries the heartbeat interval in milliseconds, on
	// the opening request; the handler uses the caller's.
	HeaderHeartbeat = "mqrpc-stream-heartbeat"
	// HeaderFrame names the kind of a frame: data, credit, ping, end or
	// cancel.
	HeaderFrame = "mqrpc-frame"
	// HeaderSeq carries a data frame's sequence number (from 1), and on
	// ping and end frames and on the handler's reply the number of data
	// frames sent.
	HeaderSeq = "mqrpc-seq"
	// HeaderCredit carries the number of data frames the sender grants
	// its peer in all, on credit and ping frames and on the opening
	// request.
	HeaderCredit = "mqrpc-credit"
	// HeaderBatch, set to "1", declares that its sender reads batch
	// frames: the caller's on the opening request, the handler's on its
	// credit and ping frames. A side sends batch frames only to a peer
	// that declared it.
	HeaderBatch = "mqrpc-stream-batch"
)

// The kinds of frames (values of HeaderFrame).
const (
	FrameData   = "data"
	FrameCredit = "credit"
	FramePing   = "ping"
	FrameEnd    = "end"
	FrameCancel = "cancel"
	// FrameBatch carries several data messages in one frame, for a peer
	// that declared HeaderBatch; HeaderSeq is the first one's sequence
	// number. docs/PROTOCOL.md ("Batch frames") has the body.
	FrameBatch = "batch"
)

// maxBatch bounds the body of a batch frame: a writer coalesces what was
// queued while its last frame was posted, up to this many bytes (a larger
// message goes alone, as a data frame).
const maxBatch = 64 << 10

// BodyCopier is an optional interface of a [broker.Streamer] whose Post is
// done with the message (its body and its headers) when it returns,
// having copied it (to the connection's write buffer, as broker/nats
// does). The engine then reuses its data and batch frames and the buffers
// of batch frames rather than allocating them per frame: for 4 KiB
// messages over NATS a fresh batch buffer per frame and the garbage
// collection it caused were about a third of the process's CPU time.
type BodyCopier interface {
	broker.Streamer
	// PostCopiesBody reports whether Post is done with msg, its body and
	// its headers, when it returns.
	PostCopiesBody() bool
}

// batchBuffers are the reused bodies of batch frames, for a BodyCopier.
var batchBuffers = sync.Pool{New: func() any { b := make([]byte, 0, maxBatch); return &b }}

// bodyBuffers are the reused bodies of messages queued by SendAppend.
var bodyBuffers = sync.Pool{New: func() any { return new([]byte) }}

// putBody returns a body buffer of SendAppend to the pool, unless it grew
// beyond a batch frame (a rare huge message is not kept alive).
func putBody(buf *[]byte) {
	if cap(*buf) > maxBatch {
		return
	}
	*buf = (*buf)[:0]
	bodyBuffers.Put(buf)
}

// outMsg is a data message queued by Send; buf, when not nil, holds its
// body, a buffer of bodyBuffers (SendAppend) that postData reuses once the
// body was copied into a batch frame or posted to a BodyCopier.
type outMsg struct {
	broker.Message
	buf *[]byte
}

// Errors that end a stream. Test with errors.Is.
var (
	// ErrDataLoss: a data frame was lost or arrived twice.
	ErrDataLoss = errors.New("stream: data loss")
	// ErrPeerGone: the peer was not heard from within the heartbeat
	// interval.
	ErrPeerGone = errors.New("stream: peer gone")
	// ErrCanceled: the peer cancelled the stream.
	ErrCanceled = errors.New("stream: canceled by the peer")
	// ErrProtocol: the peer broke the protocol (data beyond its credit,
	// a malformed frame).
	ErrProtocol = errors.New("stream: protocol violation")
	// ErrNotStream: the request opens no stream, or the broker that
	// delivered it has no inboxes.
	ErrNotStream = errors.New("stream: not a stream")
	// ErrClosed: the stream was closed locally.
	ErrClosed = errors.New("stream: closed")
)

// Default values of Config.
const (
	// DefaultWindow: 1024 messages keep a fast sender from waiting for
	// credit round trips (128 held a 64 B stream over NATS to about two
	// thirds of the rate at 1024).
	DefaultWindow    = 1024
	DefaultHeartbeat = 5 * time.Second
	minHeartbeat     = 20 * time.Millisecond
	// firstCredit is the most a side grants before it has seen a message
	// (their size is not known yet), and windowBytes the bytes of unread
	// messages it grants credit for once it has: large messages get less
	// of the window than small ones.
	firstCredit = 32
	windowBytes = 8 << 20
)

// Config configures the caller's side of a stream; the handler takes the
// heartbeat interval from the opening request.
type Config struct {
	// Window is how many received messages a side holds at most: the
	// credit it grants its peer ahead of what it has read. Default
	// DefaultWindow. A side grants at most 32 before the first message
	// arrives, and once messages arrive no more than about 8 MiB of
	// them at their average size (at least one message).
	Window int
	// Heartbeat is the liveness interval: each side pings every quarter
	// of it, and a peer not heard from for three quarters of it is gone,
	// so a dead peer is noticed within one interval. Default
	// DefaultHeartbeat; at least 20ms.
	Heartbeat time.Duration
}

func (c Config) withDefaults() Config {
	if c.Window < 1 {
		c.Window = DefaultWindow
	}
	if c.Heartbeat <= 0 {
		c.Heartbeat = DefaultHeartbeat
	}
	if c.Heartbeat < minHeartbeat {
		c.Heartbeat = minHeartbeat
	}
	return c
}

// Stream is one side of a stream. Send and CloseSend may be called
// concurrently with Recv, but not with each other; Recv not concurrently
// with itself.
type Stream struct {
	id     string
	s      broker.Streamer
	inbox  broker.Inbox
	client bool
	hb     time.Duration
	window uint64
	ctx    context.Context
	cancel context.CancelFunc

	postMu sync.Mutex // orders data, ping, end and credit frames as posted
	// spare is the queue's other buffer, swapped by the writer; postMu
	// is held.
	spare []outMsg
	// flushWake (1-buffered) tells run that Send queued messages.
	flushWake chan struct{}
	// reuse says the Streamer is a BodyCopier: postData reuses frame and
	// the buffers of batch frames; postMu is held.
	reuse bool
	frame broker.Message
	// bodyHint is the size of the last body SendAppend encoded into a new
	// buffer: the next new one has that capacity, so that it does not
	// grow as the codec appends.
	bodyHint atomic.Int64

	mu sync.Mutex
	// recvWake and sendWake (1-buffered) wake the one Recv and the one
	// Send that may wait at a time, on every change.
	recvWake, sendWake chan struct{}
	peer               string
	heard              time.Time // last frame from the peer; zero before the first
	err                error     // the stream failed (not a clean end)
	done               bool      // finished: heartbeat stopped, inbox closed
	stopped            chan struct{}
	// receiving
	queue    []*broker.Message
	recvd    uint64 // highest sequence number received
	taken    uint64 // messages Recv returned
	bodies   uint64 // bytes of the data frames' bodies received
	granted  uint64 // credit granted in all
	peerEnd  bool   // the caller half-closed (handler side)
	end      *broker.Message
	endSeq   uint64
	endAt    time.Time
	finished bool // caller: Finish ran
	// sending: Send queues data messages on out (sent counts them, so
	// that the credit holds), and run's flush posts them (posted counts
	// those posted) as data frames, or as batch frames when peerBatch.
	out        []outMsg
	sent       uint64
	posted     uint64
	writing    bool // a flush is due or running
	peerBatch  bool // the peer reads batch frames
	credit     uint64
	sendClosed bool
}

// Open starts the caller's side of a new stream on s: it opens an inbox.
// Set the opening request's headers with Prepare, send it with
// broker.Broker.Request (on the same broker) and hand its outcome to
// Finish. ctx bounds the stream: when it ends, the stream is cancelled.
func Open(ctx context.Context, s broker.Streamer, cfg Config) (*Stream, error) {
	cfg = cfg.withDefaults()
	st := newStream(ctx, s, broker.NewID(), cfg.Heartbeat, cfg.Window, true)
	if err := st.openInbox(); err != nil {
		return nil, err
	}
	go st.run()
	return st, nil
}

// Prepare sets the stream headers of the opening request m.
func (st *Stream) Prepare(m *broker.Message) {
	m.SetHeader(HeaderStream, st.id)
	m.SetHeader(HeaderInbox, st.inbox.Addr())
	m.SetHeader(HeaderHeartbeat, strconv.FormatInt(st.hb.Milliseconds(), 10))
	m.SetHeader(HeaderBatch, "1")
	st.mu.Lock()
	m.SetHeader(HeaderCredit, strconv.FormatUint(st.granted, 10))
	st.mu.Unlock()
}

// IsOpening reports whether req opens a stream.
func IsOpening(req *broker.Message) bool { return req.Header.Get(HeaderStream) != "" }

// Accept starts the handler's side of the stream req opens, on the
// Streamer of the connection that delivered it (in ctx). ctx bounds the
// stream. window is how many messages the handler holds at most (0 for
// DefaultWindow). The handler ends the stream with Finish, whose headers
// go on its reply.
func Accept(ctx context.Context, req *broker.Message, window int) (*Stream, error) {
	id := req.Header.Get(HeaderStream)
	addr := req.Header.Get(HeaderInbox)
	if id == "" || addr == "" {
		return nil, fmt.Errorf("%w: the request has no %s or %s header", ErrNotStream, HeaderStream, HeaderInbox)
	}
	s, ok := broker.StreamerFromContext(ctx)
	if !ok {
		return nil, fmt.Errorf("%w: the broker that delivered the request has no inboxes", ErrNotStream)
	}
	hbms, err := strconv.ParseInt(req.Header.Get(HeaderHeartbeat), 10, 64)
	if err != nil || hbms <= 0 {
		return nil, fmt.Errorf("%w: malformed %s header %q", ErrProtocol, HeaderHeartbeat, req.Header.Get(HeaderHeartbeat))
	}
	credit, err := strconv.ParseUint(req.Header.Get(HeaderCredit), 10, 64)
	if err != nil {
		return nil, fmt.Errorf("%w: malformed %s header %q", ErrProtocol, HeaderCredit, req.Header.Get(HeaderCredit))
	}
	cfg := Config{Window: window, Heartbeat: time.Duration(hbms) * time.Millisecond}.withDefaults()
	st := newStream(ctx, s, id, cfg.Heartbeat, cfg.Window, false)
	st.peer = addr
	st.peerBatch = req.Header.Get(HeaderBatch) == "1"
	st.credit = credit
	st.heard = time.Now()
	if err := st.openInbox(); err != nil {
		return nil, err
	}
	go st.run()
	// The first credit frame tells the caller where to post.
	st.postMu.Lock()
	err = st.post(st.control(FrameCredit))
	st.postMu.Unlock()
	if err != nil {
		st.fail(err)
		st.Finish()
		return nil, err
	}
	return st, nil
}

func newStream(ctx context.Context, s broker.Streamer, id string, hb time.Duration, window int, client bool) *Stream {
	st := &Stream{id: id, s: s, client: client, hb: hb, window: uint64(window),
		recvWake: make(chan struct{}, 1), sendWake: make(chan struct{}, 1), flushWake: make(chan struct{}, 1),
		stopped: make(chan struct{})}
	st.ctx, st.cancel = context.WithCancel(ctx)
	st.granted = min(st.window, firstCredit)
	if bc, ok := s.(BodyCopier); ok {
		st.reuse = bc.PostCopiesBody()
	}
	return st
}

func (st *Stream) openInbox() error {
	in, err := st.s.OpenInbox(st.receive)
	if err != nil {
		st.cancel()
		return fmt.Errorf("stream: open inbox: %w", err)
	}
	st.inbox = in
	return nil
}

// ID returns the stream's ID.
func (st *Stream) ID() string { return st.id }

// Context returns the stream's ctx: the ctx it was opened or accepted
// with, cancelled when the stream fails or ends.
func (st *Stream) Context() context.Context { return st.ctx }

// changed wakes the waiters; st.mu is held.
func (st *Stream) changed() {
	select {
	case st.recvWake <- struct{}{}:
	default:
	}
	select {
	case st.sendWake <- struct{}{}:
	default:
	}
}

// failLocked ends the stream with err unless it ended already; st.mu is
// held.
func (st *Stream) failLocked(err error) {
	if st.err == nil && !st.done {
		st.err = err
		st.changed()
		st.cancel() // the stream's ctx ends with it, at once
	}
}

func (st *Stream) fail(err error) {
	st.mu.Lock()
	st.failLocked(err)
	st.mu.Unlock()
}

// receive is the inbox's function: it never blocks.
func (st *Stream) receive(m *broker.Message) {
	if m.Header.Get(HeaderStream) != st.id {
		return // not ours (a stale frame of an earlier stream)
	}
	kind := m.Header.Get(HeaderFrame)
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.err != nil || st.done {
		return
	}
	st.heard = time.Now()
	if a := m.Header.Get(HeaderInbox); a != "" && st.peer == "" {
		st.peer = a
		st.peerBatch = m.Header.Get(HeaderBatch) == "1"
	}
	if v := m.Header.Get(HeaderCredit); v != "" {
		c, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			st.failLocked(fmt.Errorf("%w: malformed %s %q", ErrProtocol, HeaderCredit, v))
			return
		}
		if c > st.credit {
			st.credit = c
		}
	}
	var seq uint64
	if v := m.Header.Get(HeaderSeq); v != "" {
		var err error
		if seq, err = strconv.ParseUint(v, 10, 64); err != nil {
			st.failLocked(fmt.Errorf("%w: malformed %s %q", ErrProtocol, HeaderSeq, v))
			return
		}
	}
	switch kind {
	case FrameData:
		if err := st.acceptLocked(seq, 1); err != nil {
			st.failLocked(err)
			return
		}
		st.bodies += uint64(len(m.Body))
		delete(m.Header, HeaderStream)
		delete(m.Header, HeaderFrame)
		delete(m.Header, HeaderSeq)
		st.queue = append(st.queue, m)
	case FrameBatch:
		n := len(st.queue)
		q, err := decodeBatch(st.queue, m.Body)
		if err != nil {
			st.failLocked(fmt.Errorf("%w: %w", ErrProtocol, err))
			return
		}
		if err := st.acceptLocked(seq, uint64(len(q)-n)); err != nil {
			clear(q[n:])
			st.failLocked(err)
			return
		}
		for _, d := range q[n:] {
			st.bodies += uint64(len(d.Body))
		}
		st.queue = q
	case FramePing, FrameEnd:
		if seq > st.recvd {
			st.failLocked(fmt.Errorf("%w: messages %d to %d lost", ErrDataLoss, st.recvd+1, seq))
			return
		}
		if kind == FrameEnd {
			st.peerEnd = true
		}
	case FrameCancel:
		st.failLocked(ErrCanceled)
		return
	}
	st.changed()
}

// acceptLocked checks that n data messages numbered from seq may arrive
// now, and counts them received; st.mu is held.
func (st *Stream) acceptLocked(seq, n uint64) error {
	last := seq + n - 1
	switch {
	case seq <= st.recvd:
		return fmt.Errorf("%w: message %d arrived again (after %d)", ErrDataLoss, seq, st.recvd)
	case seq > st.recvd+1:
		return fmt.Errorf("%w: messages %d to %d lost", ErrDataLoss, st.recvd+1, seq-1)
	case last > st.granted:
		return fmt.Errorf("%w: message %d beyond the credit of %d", ErrProtocol, last, st.granted)
	case st.peerEnd:
		return fmt.Errorf("%w: message %d after the end", ErrProtocol, seq)
	}
	st.recvd = last
	return nil
}

// run pings the peer and watches its pings, the stream's ctx and a
// caller's end, until the stream is done.
func (st *Stream) run() {
	tick := time.NewTicker(st.hb / 8)
	defer tick.Stop()
	defer close(st.stopped)
	lastPing := time.Time{}
	for {
		select {
		case <-st.flushWake:
			st.postMu.Lock()
			st.flushLocked()
			st.postMu.Unlock()
		case <-st.ctx.Done():
			st.mu.Lock()
			done, err := st.done, st.err
			st.mu.Unlock()
			if done {
				return
			}
			if err == nil {
				err = st.ctx.Err()
				st.fail(err)
			}
			// Tell the peer, so it stops at once rather than by its
			// heartbeat, unless it knows: it cancelled or went away, the
			// stream was closed (Close told it), or the deadline passed
			// (the peer has the same one).
			if !errors.Is(err, ErrCanceled) && !errors.Is(err, ErrPeerGone) && !errors.Is(err, ErrClosed) &&
				!errors.Is(err, context.DeadlineExceeded) {
				st.postCancel()
			}
			st.shutdown()
			return
		case now := <-tick.C:
			st.mu.Lock()
			if st.done {
				st.mu.Unlock()
				return
			}
			switch {
			case st.err != nil:
			case st.end != nil:
				// The handler's reply ended the stream; its last frames
				// may still be on their way, but not for long.
				if st.recvd < st.endSeq && now.Sub(st.endAt) > st.hb*3/4 {
					st.failLocked(fmt.Errorf("%w: messages %d to %d lost", ErrDataLoss, st.recvd+1, st.endSeq))
				}
			case !st.heard.IsZero() && now.Sub(st.heard) > st.hb*3/4:
				st.failLocked(fmt.Errorf("%w: nothing heard for %v", ErrPeerGone, now.Sub(st.heard).Round(time.Millisecond)))
			}
			ping := st.err == nil && st.end == nil && st.peer != "" && now.Sub(lastPing) >= st.hb/4
			st.mu.Unlock()
			if ping {
				lastPing = now
				st.postMu.Lock()
				_ = st.post(st.control(FramePing))
				st.postMu.Unlock()
			}
		}
	}
}

// control builds a control frame of kind with the current credit, count
// and (on the handler's side) inbox address; the caller holds postMu.
func (st *Stream) control(kind string) *broker.Message {
	st.mu.Lock()
	h := broker.Header{
		HeaderStream: st.id,
		HeaderFrame:  kind,
		HeaderCredit: strconv.FormatUint(st.granted, 10),
		HeaderSeq:    strconv.FormatUint(st.posted, 10),
	}
	st.mu.Unlock()
	if !st.client {
		h[HeaderInbox] = st.inbox.Addr()
		h[HeaderBatch] = "1"
	}
	return &broker.Message{Header: h}
}

func (st *Stream) post(m *broker.Message) error {
	st.mu.Lock()
	peer := st.peer
	st.mu.Unlock()
	if peer == "" {
		return nil
	}
	// Post does not wait for the peer (nothing is stored), so no
	// deadline of its own: a timer per frame would cost more than the
	// publish.
	return st.s.Post(context.Background(), peer, m)
}

func (st *Stream) postCancel() {
	st.postMu.Lock()
	_ = st.post(&broker.Message{Header: broker.Header{HeaderStream: st.id, HeaderFrame: FrameCancel}})
	st.postMu.Unlock()
}

// shutdown marks the stream done and closes its inbox.
func (st *Stream) shutdown() {
	st.mu.Lock()
	if st.done {
		st.mu.Unlock()
		return
	}
	st.done = true
	st.changed()
	st.mu.Unlock()
	st.cancel()
	_ = st.inbox.Close()
}

// Send queues m as the next data message, waiting for credit while the
// peer has not granted more, and returns: the stream's goroutine posts
// it, in order, with the messages queued meanwhile (one batch frame for
// a peer that reads them). A failed post fails the stream, and the next
// Send or Recv returns the error. CloseSend and Finish post what is
// queued first. Once the caller's stream has ended (the handler returned)
// Send returns io.EOF, and Recv says how it ended. Send keeps a copy of
// *m, not m itself (so m need not be allocated per message), and takes
// ownership of its body and headers.
func (st *Stream) Send(m *broker.Message) error {
	return st.enqueue(outMsg{Message: *m})
}

// SendAppend is Send for a message whose body encode appends to buf, a
// buffer of the engine's (empty, its capacity from an earlier message):
// once the message was copied into a batch frame, or posted to a
// BodyCopier, the engine reuses the buffer for another message, so a
// writer that encodes each message (package rpc, with a codec.Appender)
// allocates no body per message. encode must not retain buf nor the
// slice it returns; an error of encode is returned as it is, and nothing
// is sent. h, which may be nil, are the message's headers; the stream
// takes ownership of them.
func (st *Stream) SendAppend(h broker.Header, encode func(buf []byte) ([]byte, error)) error {
	buf := bodyBuffers.Get().(*[]byte)
	fresh := cap(*buf) == 0
	if n := st.bodyHint.Load(); fresh && n > 0 {
		*buf = make([]byte, 0, n)
	}
	body, err := encode((*buf)[:0])
	if err != nil {
		putBody(buf)
		return err
	}
	if fresh {
		st.bodyHint.Store(int64(len(body)))
	}
	*buf = body
	if err := st.enqueue(outMsg{Message: broker.Message{Header: h, Body: body}, buf: buf}); err != nil {
		putBody(buf)
		return err
	}
	return nil
}

// enqueue queues m for run's flush, as Send says.
func (st *Stream) enqueue(m outMsg) error {
	st.mu.Lock()
	for {
		if err := st.sendErrLocked(); err != nil {
			st.mu.Unlock()
			return err
		}
		if st.peer != "" && st.sent < st.credit {
			break
		}
		st.mu.Unlock()
		<-st.sendWake
		st.mu.Lock()
	}
	st.sent++
	st.out = append(st.out, m)
	wake := !st.writing
	st.writing = true
	st.mu.Unlock()
	if wake {
		select {
		case st.flushWake <- struct{}{}:
		default:
		}
	}
	return nil
}

// flushLocked posts the queued data messages, in order: a batch frame
// for each run of them up to maxBatch bytes when the peer reads batches,
// else a data frame each. It takes what Send queued meanwhile too, so a
// writer faster than the broker sends fewer, larger frames and one that
// is not never waits to fill a batch. A failed post fails the stream;
// postMu is held.
func (st *Stream) flushLocked() {
	for {
		st.mu.Lock()
		q := st.out
		if len(q) == 0 || st.err != nil || st.done {
			clear(q)
			st.out = q[:0]
			st.writing = false
			st.mu.Unlock()
			return
		}
		st.out = st.spare[:0]
		batch := st.peerBatch
		st.mu.Unlock()
		err := st.postData(q, batch)
		clear(q)
		st.spare = q[:0]
		if err != nil {
			st.fail(fmt.Errorf("stream: post: %w", err))
		}
	}
}

// postData posts the messages q; postMu is held.
func (st *Stream) postData(q []outMsg, batch bool) error {
	for len(q) > 0 {
		n, size := 1, batchSize(&q[0].Message)
		if batch {
			for n < len(q) {
				s := batchSize(&q[n].Message)
				if size+s > maxBatch {
					break
				}
				size += s
				n++
			}
		}
		f := st.frameLocked()
		var buf *[]byte // f's body, to reuse
		if n == 1 {
			for k, v := range q[0].Header {
				f.Header[k] = v
			}
			f.Header[HeaderFrame] = FrameData
			f.Body = q[0].Body
		} else {
			var body []byte
			if st.reuse {
				buf = batchBuffers.Get().(*[]byte)
				body = (*buf)[:0]
			} else {
				body = make([]byte, 0, size)
			}
			for i := range q[:n] {
				body = appendBatch(body, &q[i].Message)
				if q[i].buf != nil { // copied: the buffer is free
					putBody(q[i].buf)
					q[i].buf = nil
				}
			}
			f.Header[HeaderFrame] = FrameBatch
			f.Body = body
		}
		f.Header[HeaderStream] = st.id
		f.Header[HeaderSeq] = strconv.FormatUint(st.posted+1, 10)
		err := st.post(f)
		if buf != nil {
			*buf = f.Body[:0]
			batchBuffers.Put(buf)
		}
		if n == 1 && q[0].buf != nil {
			if !st.reuse {
				// Posted alone, the body is the broker's now; only the
				// holder is reused.
				*q[0].buf = nil
			}
			putBody(q[0].buf)
			q[0].buf = nil
		}
		if st.reuse {
			f.Body = nil // not to keep the caller's body
		}
		if err != nil {
			return err
		}
		st.mu.Lock()
		st.posted += uint64(n)
		st.mu.Unlock()
		q = q[n:]
	}
	return nil
}

// frameLocked returns an empty data or batch frame to post: the stream's
// own, reused, on a BodyCopier (whose Post is done with it when it
// returns), else a new one; postMu is held.
func (st *Stream) frameLocked() *broker.Message {
	if !st.reuse {
		return &broker.Message{Header: make(broker.Header, 3)}
	}
	if st.frame.Header == nil || len(st.frame.Header) > 16 {
		st.frame.Header = make(broker.Header, 3)
	} else {
		clear(st.frame.Header)
	}
	return &st.frame
}

func (st *Stream) sendErrLocked() error {
	switch {
	case st.err != nil:
		return st.err
	case st.end != nil || st.done:
		return io.EOF
	case st.sendClosed:
		return fmt.Errorf("%w: send after CloseSend", ErrClosed)
	}
	return nil
}

// CloseSend half-closes the caller's side: the handler's Recv returns
// io.EOF after the messages sent so far. The handler's side closes by
// returning (Finish).
func (st *Stream) CloseSend() error {
	st.mu.Lock()
	if err := st.sendErrLocked(); err != nil {
		st.mu.Unlock()
		if err == io.EOF {
			return nil
		}
		return err
	}
	st.sendClosed = true
	st.mu.Unlock()
	st.postMu.Lock()
	defer st.postMu.Unlock()
	st.flushLocked() // the end counts, and follows, every message sent
	if err := st.Err(); err != nil {
		return err
	}
	return st.post(st.control(FrameEnd))
}

// Recv returns the next message. At the end of the stream it returns
// io.EOF: on the handler's side once the caller half-closed, on the
// caller's once the handler returned (End has its reply). Any other error
// ends the stream.
func (st *Stream) Recv() (*broker.Message, error) {
	st.mu.Lock()
	for {
		if st.err != nil {
			err := st.err
			st.mu.Unlock()
			return nil, err
		}
		if len(st.queue) > 0 {
			m := st.queue[0]
			st.queue[0] = nil
			st.queue = st.queue[1:]
			st.taken++
			n := st.grantSizeLocked()
			grant := st.granted-st.taken <= n-n/4 && st.taken+n > st.granted
			if grant {
				st.granted = st.taken + n
			}
			st.mu.Unlock()
			if grant {
				st.postMu.Lock()
				_ = st.post(st.control(FrameCredit))
				st.postMu.Unlock()
			}
			return m, nil
		}
		if (st.client && st.end != nil && st.recvd >= st.endSeq) || (!st.client && st.peerEnd) {
			st.mu.Unlock()
			return nil, io.EOF
		}
		if st.done {
			st.mu.Unlock()
			return nil, ErrClosed
		}
		st.mu.Unlock()
		<-st.recvWake
		st.mu.Lock()
	}
}

// grantSizeLocked is how far ahead of what it read a side grants credit:
// its window, cut to about windowBytes of messages of the average size
// received so far, but at least one; st.mu is held.
func (st *Stream) grantSizeLocked() uint64 {
	n := st.window
	if st.recvd > 0 {
		if avg := st.bodies / st.recvd; avg > 0 {
			n = min(n, max(1, windowBytes/avg))
		}
	}
	return n
}

// End returns the handler's reply that ended the caller's stream, or nil
// while it runs.
func (st *Stream) End() *broker.Message {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.end
}

// Finish ends the stream on the handler's side: it stops the heartbeat
// and closes the inbox, and returns the headers the handler's reply must
// carry (the count of data frames sent). On the caller's side, see
// Finished.
func (st *Stream) Finish() broker.Header {
	st.postMu.Lock()
	st.flushLocked() // post what Send queued before the stream ends
	st.postMu.Unlock()
	st.mu.Lock()
	n := st.sent
	st.mu.Unlock()
	st.shutdown()
	<-st.stopped
	return broker.Header{HeaderSeq: strconv.FormatUint(n, 10)}
}

// Finished hands the outcome of the opening request to the caller's
// side: an error ends the stream with it at once; a reply ends it once
// every data frame it counts arrived (Recv then returns io.EOF and End the
// reply, which Finished does not change). A reply without a count (a server that streams nothing, an
// error answered by middleware) ends it after the frames received.
func (st *Stream) Finished(reply *broker.Message, err error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.finished {
		return
	}
	st.finished = true
	if err != nil {
		st.failLocked(err)
		return
	}
	if reply == nil {
		reply = &broker.Message{}
	}
	st.endSeq = st.recvd
	if v := reply.Header.Get(HeaderSeq); v != "" {
		n, perr := strconv.ParseUint(v, 10, 64)
		if perr != nil {
			st.failLocked(fmt.Errorf("%w: malformed %s %q on the reply", ErrProtocol, HeaderSeq, v))
			return
		}
		if n < st.recvd {
			st.failLocked(fmt.Errorf("%w: %d messages received, the reply counts %d", ErrDataLoss, st.recvd, n))
			return
		}
		st.endSeq = n
	}
	st.end = reply
	st.endAt = time.Now()
	st.changed()
}

// Close ends the stream locally: when it has not ended, the peer is told
// to cancel. It waits for the stream's goroutine and is idempotent.
func (st *Stream) Close() {
	st.mu.Lock()
	live := st.err == nil && st.end == nil && !st.done
	st.mu.Unlock()
	if live {
		st.postCancel()
		st.fail(fmt.Errorf("%w", ErrClosed))
	}
	st.shutdown()
	<-st.stopped
}

// Err returns the error the stream failed with, or nil.
func (st *Stream) Err() error {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.err
}
