package cases

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	natsgo "github.com/nats-io/nats.go"

	mqgrpc "github.com/mqrpc/mqrpc/adapters/grpc"
	"github.com/mqrpc/mqrpc/bench/harness"
	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/memory"
	mqnats "github.com/mqrpc/mqrpc/broker/nats"
	"github.com/mqrpc/mqrpc/broker/stream"
	pb "github.com/mqrpc/mqrpc/examples/grpc-routeguide/routeguide"
	"github.com/mqrpc/mqrpc/rpc"
)

// The stream cases: one Call of their Target receives one whole server
// stream of a fixed number of messages, each a copy of the payload, and
// checks the length of each and their number. The raw cases do the
// equivalent with the broker's own client: a publisher sends the same
// messages to a plain subscription (a queue, a consumer) of the caller's,
// which counts them; nothing opens or ends a stream there, so what mqrpc
// spends on that counts against it, spread over the stream's messages.
//
// The number of messages per stream is per broker, so that a stream
// takes a few tens of milliseconds: long against its opening, short
// against a measurement.
const (
	memoryStreamMsgs   = 5000
	natsStreamMsgs     = 5000
	amqpStreamMsgs     = 1000
	rocketmqStreamMsgs = 200
)

// StreamMethod is the server-streaming method of the rpc and gRPC stream
// cases.
const StreamMethod = "Stream"

// streamStopWait bounds the stop of a stream case's server.
const streamStopWait = 5 * time.Second

// errStreamShort reports a stream that did not deliver what was sent.
var errStreamShort = errors.New("stream did not deliver the messages sent")

// counter checks the messages of one stream: n of size bytes each.
type counter struct {
	n, size, got int
}

func (c *counter) add(size int) error {
	if size != c.size {
		return fmt.Errorf("%w: message %d has %d bytes, want %d", errStreamShort, c.got, size, c.size)
	}
	c.got++
	return nil
}

func (c *counter) end() error {
	if c.got != c.n {
		return fmt.Errorf("%w: %d of %d messages", errStreamShort, c.got, c.n)
	}
	return nil
}

// engineTarget is a server stream of mqrpc's stream engine (broker/stream)
// over one broker: the handler accepts the stream and sends the opening
// request's body msgs times; the caller opens the stream and reads it to
// its end.
type engineTarget struct {
	cli     broker.Broker
	inbox   broker.Streamer
	subject string
	msgs    int
	closers []func() error
}

// newEngineTarget opens the server's and the client's connection with
// open and serves the stream on subject.
func newEngineTarget(msgs int, subject string, open func(name string) (broker.Broker, error)) (harness.Target, error) {
	return withPair(open, func(cliB, srvB broker.Broker) (harness.Target, error) {
		inbox, ok := cliB.(broker.Streamer)
		if !ok {
			return nil, fmt.Errorf("%T has no inboxes (broker.Streamer)", cliB)
		}
		sub, err := srvB.Serve(subject, broker.HandlerFunc(func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
			st, err := stream.Accept(ctx, req, 0)
			if err != nil {
				return nil, err
			}
			for i := 0; i < msgs; i++ {
				if st.Send(&broker.Message{Body: req.Body}) != nil {
					break // the caller went away; its Recv has the error
				}
			}
			return &broker.Message{Header: st.Finish()}, nil
		}))
		if err != nil {
			return nil, err
		}
		return &engineTarget{cli: cliB, inbox: inbox, subject: subject, msgs: msgs,
			closers: []func() error{stopper(sub), cliB.Close, srvB.Close}}, nil
	})
}

// stopper returns a function stopping sub.
func stopper(sub broker.Subscription) func() error {
	return func() error {
		ctx, cancel := context.WithTimeout(context.Background(), streamStopWait)
		defer cancel()
		return sub.Stop(ctx)
	}
}

func (t *engineTarget) Call(ctx context.Context, p []byte) error {
	st, err := stream.Open(ctx, t.inbox, stream.Config{})
	if err != nil {
		return err
	}
	defer st.Close()
	req := &broker.Message{Subject: t.subject, Body: p}
	st.Prepare(req)
	go func() {
		rep, err := t.cli.Request(st.Context(), req)
		st.Finished(rep, err)
	}()
	c := counter{n: t.msgs, size: len(p)}
	for {
		m, err := st.Recv()
		if err == io.EOF {
			return c.end()
		}
		if err != nil {
			return err
		}
		if err := c.add(len(m.Body)); err != nil {
			return err
		}
	}
}

func (t *engineTarget) Close() error { return closeAll(t.closers) }

func closeAll(closers []func() error) error {
	var errs []error
	for _, c := range closers {
		errs = append(errs, c())
	}
	return errors.Join(errs...)
}

// rpcStreamTarget is the same server stream through package rpc, typed:
// rpc.HandleServerStream sends the request msgs times, the caller ranges
// over rpc.InvokeServerStream; every message goes through the codec.
type rpcStreamTarget struct {
	cli     *rpc.Client
	service string
	closers []func() error
	msgs    int
}

func (c Config) newRPCStreamTarget(msgs int, open func(name string) (broker.Broker, error)) (harness.Target, error) {
	service := subject("mqbench_stream")
	return withPair(open, func(cliB, srvB broker.Broker) (harness.Target, error) {
		srv := rpc.NewServer(rpc.WithCodecs(c.Codec))
		err := rpc.HandleServerStream(srv, StreamMethod, func(_ context.Context, in *Echo, send func(*Echo) error) error {
			for i := 0; i < msgs; i++ {
				if err := send(in); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
		sub, err := srvB.Serve(service, srv)
		if err != nil {
			return nil, err
		}
		return &rpcStreamTarget{cli: rpc.NewClient(cliB, rpc.WithCodec(c.Codec)), service: service, msgs: msgs,
			closers: []func() error{stopper(sub), cliB.Close, srvB.Close}}, nil
	})
}

func (t *rpcStreamTarget) Call(ctx context.Context, p []byte) error {
	c := counter{n: t.msgs, size: len(p)}
	for m, err := range rpc.InvokeServerStream[Echo, Echo](ctx, t.cli, t.service, StreamMethod, &Echo{Data: p}) {
		if err != nil {
			return err
		}
		if err := c.add(len(m.Data)); err != nil {
			return err
		}
	}
	return c.end()
}

func (t *rpcStreamTarget) Close() error { return closeAll(t.closers) }

// routeGuide serves ListFeatures of gRPC's route_guide example as the
// stream case of the gRPC layer: Rectangle.Lo.Latitude features whose
// names have Rectangle.Hi.Latitude bytes (the payload's size).
type routeGuide struct {
	pb.UnimplementedRouteGuideServer
}

func (routeGuide) ListFeatures(rect *pb.Rectangle, st pb.RouteGuide_ListFeaturesServer) error {
	f := &pb.Feature{Name: strings.Repeat("f", int(rect.GetHi().GetLatitude())), Location: rect.GetLo()}
	for i := int32(0); i < rect.GetLo().GetLatitude(); i++ {
		if err := st.Send(f); err != nil {
			return err
		}
	}
	return nil
}

// grpcStreamTarget is the same server stream through adapters/grpc: the
// route_guide stubs generated by protoc-gen-go-grpc, over mqrpc, with the
// protobuf codec.
type grpcStreamTarget struct {
	cli     pb.RouteGuideClient
	closers []func() error
	msgs    int
}

func newGRPCStreamTarget(msgs int, open func(name string) (broker.Broker, error)) (harness.Target, error) {
	subj := subject("mqbench_grpc")
	opt := mqgrpc.WithSubject(func(string) string { return subj })
	return withPair(open, func(cliB, srvB broker.Broker) (harness.Target, error) {
		srv := mqgrpc.NewServer(opt)
		pb.RegisterRouteGuideServer(srv, routeGuide{})
		sub, err := srv.Serve(srvB)
		if err != nil {
			return nil, err
		}
		return &grpcStreamTarget{cli: pb.NewRouteGuideClient(mqgrpc.NewClientConn(cliB, opt)), msgs: msgs,
			closers: []func() error{stopper(sub), cliB.Close, srvB.Close}}, nil
	})
}

func (t *grpcStreamTarget) Call(ctx context.Context, p []byte) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := t.cli.ListFeatures(ctx, &pb.Rectangle{
		Lo: &pb.Point{Latitude: int32(t.msgs)}, Hi: &pb.Point{Latitude: int32(len(p))}})
	if err != nil {
		return err
	}
	c := counter{n: t.msgs, size: len(p)}
	for {
		f, err := st.Recv()
		if err == io.EOF {
			return c.end()
		}
		if err != nil {
			return err
		}
		if err := c.add(len(f.GetName())); err != nil {
			return err
		}
	}
}

func (t *grpcStreamTarget) Close() error { return closeAll(t.closers) }

// MemoryStreams returns the stream case of the in-process broker: the
// stream engine over broker/memory, without a raw baseline.
func MemoryStreams(Config) []harness.Case {
	return []harness.Case{{
		Group: "memory-stream", Name: "mqrpc stream", Role: harness.RoleMQRPC, NoTarget: true, Msgs: memoryStreamMsgs,
		Setup: func(context.Context) (harness.Target, error) {
			hub := memory.New()
			first := true
			return newEngineTarget(memoryStreamMsgs, subject("mqbench_stream"), func(string) (broker.Broker, error) {
				if first {
					first = false
					return hub, nil
				}
				return hub.Connect(), nil
			})
		},
	}}
}

// NATSStreams returns the NATS stream cases: raw nats.go publishing to a
// plain subscription (the baseline), the stream engine over broker/nats's
// inboxes, and the same stream through package rpc (typed, the codec) and
// through adapters/grpc (route_guide's generated stubs), for what each
// layer costs over the engine.
func NATSStreams(cfg Config) []harness.Case {
	open := func(name string) (broker.Broker, error) {
		return mqnats.New(cfg.NATSURL, mqnats.WithName(name))
	}
	const n = natsStreamMsgs
	return []harness.Case{
		{Group: "nats-stream", Name: "nats.go Publish → Subscribe", Role: harness.RoleRaw, Msgs: n, Setup: cfg.natsRawStream},
		{Group: "nats-stream", Name: "mqrpc stream", Role: harness.RoleMQRPC, Msgs: n,
			Setup: func(context.Context) (harness.Target, error) {
				return newEngineTarget(n, subject("mqbench_stream"), open)
			}},
		{Group: "nats-stream", Name: "rpc.InvokeServerStream, typed + codec", Role: harness.RoleMQRPC, NoTarget: true, Msgs: n,
			Setup: func(context.Context) (harness.Target, error) { return cfg.newRPCStreamTarget(n, open) }},
		{Group: "nats-stream", Name: "gRPC stub over adapters/grpc", Role: harness.RoleMQRPC, NoTarget: true, Msgs: n,
			Setup: func(context.Context) (harness.Target, error) { return newGRPCStreamTarget(n, open) }},
	}
}

// rawReader is the receiving end of a raw stream: the broker client's
// callback (or consumer goroutine) counts the messages with add and, at
// the stream's last, sends the count check's outcome on done.
type rawReader struct {
	subj string // where the messages go
	msgs int
	size atomic.Int64 // the size the current stream's messages have
	got  int          // touched only by the receiving goroutine
	bad  error
	done chan error
	stop func() // ends the subscription
}

func newRawReader(subj string, msgs int) *rawReader {
	return &rawReader{subj: subj, msgs: msgs, done: make(chan error, 1)}
}

// add counts one message of n bytes; it runs on the receiving goroutine.
func (r *rawReader) add(n int) {
	if want := int(r.size.Load()); n != want && r.bad == nil {
		r.bad = fmt.Errorf("%w: message %d has %d bytes, want %d", errStreamShort, r.got, n, want)
	}
	r.got++
	if r.got == r.msgs {
		select {
		case r.done <- r.bad:
		default: // a probe answered twice (rocketRawStream.await)
		}
		r.got, r.bad = 0, nil
	}
}

// wait waits for the end of the current stream.
func (r *rawReader) wait(ctx context.Context) error {
	select {
	case err := <-r.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// readers is a free list of raw readers.
type readers struct {
	mu   sync.Mutex
	free []*rawReader
	all  []*rawReader
}

// get returns a free reader, or one made by mk.
func (rs *readers) get(mk func() (*rawReader, error)) (*rawReader, error) {
	rs.mu.Lock()
	if n := len(rs.free); n > 0 {
		r := rs.free[n-1]
		rs.free = rs.free[:n-1]
		rs.mu.Unlock()
		return r, nil
	}
	rs.mu.Unlock()
	r, err := mk()
	if err != nil {
		return nil, err
	}
	rs.mu.Lock()
	rs.all = append(rs.all, r)
	rs.mu.Unlock()
	return r, nil
}

// put returns r to the free list after a complete stream; a reader whose
// stream failed half-way is in an unknown state and is dropped.
func (rs *readers) put(r *rawReader, err error) {
	if err != nil {
		r.stop()
		return
	}
	rs.mu.Lock()
	rs.free = append(rs.free, r)
	rs.mu.Unlock()
}

// stopAll ends every reader's subscription.
func (rs *readers) stopAll() {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	for _, r := range rs.all {
		r.stop()
	}
	rs.all, rs.free = nil, nil
}

// natsRawStream publishes on one connection to subscriptions on another:
// each caller takes a reader (a subject and its subscription) from a free
// list, publishes the stream's messages to it and waits until its callback
// counted them all.
type natsRawStream struct {
	pub, sub *natsgo.Conn
	msgs     int
	readers  readers
}

func (c Config) natsRawStream(context.Context) (harness.Target, error) {
	cli, srv, err := natsPair(c.NATSURL)
	if err != nil {
		return nil, err
	}
	return &natsRawStream{pub: srv, sub: cli, msgs: natsStreamMsgs}, nil
}

func (t *natsRawStream) newReader() (*rawReader, error) {
	r := newRawReader(subject("mqbench_raw"), t.msgs)
	s, err := t.sub.Subscribe(r.subj, func(m *natsgo.Msg) { r.add(len(m.Data)) })
	if err != nil {
		return nil, err
	}
	// As broker/nats's inboxes: no limit on what waits in the client.
	_ = s.SetPendingLimits(-1, -1)
	r.stop = func() { _ = s.Unsubscribe() }
	if err := t.sub.Flush(); err != nil {
		r.stop()
		return nil, err
	}
	return r, nil
}

func (t *natsRawStream) Call(ctx context.Context, p []byte) error {
	r, err := t.readers.get(t.newReader)
	if err != nil {
		return err
	}
	r.size.Store(int64(len(p)))
	for i := 0; i < t.msgs && err == nil; i++ {
		err = t.pub.Publish(r.subj, p)
	}
	if err == nil {
		err = r.wait(ctx)
	}
	t.readers.put(r, err)
	return err
}

func (t *natsRawStream) Close() error {
	t.readers.stopAll()
	t.pub.Close()
	t.sub.Close()
	return nil
}
