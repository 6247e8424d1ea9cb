package cases

import (
	"context"
	"fmt"
	"time"

	natsgo "github.com/nats-io/nats.go"

	"github.com/mqrpc/mqrpc/bench/harness"
	"github.com/mqrpc/mqrpc/broker"
	mqnats "github.com/mqrpc/mqrpc/broker/nats"
	rawcodec "github.com/mqrpc/mqrpc/codec/raw"
	"github.com/mqrpc/mqrpc/rpc"
)

// NATSSplit returns diagnostic cases that take mqrpc's NATS path apart,
// all carrying bytes as the mqrpc bytes case does (the raw codec and
// rpc.HandleRaw): the raw baseline again; mqrpc's client against a plain
// nats.go echo server, and a plain nats.go client (with mqrpc's method and
// content-type headers) against mqrpc's server, which tell on which side
// the cost over the raw client lies; mqrpc itself, and with a client
// middleware that does nothing (the path every client with middleware
// takes); and broker/nats without the rpc layer, alone and under either
// half of it.
func NATSSplit(cfg Config) []harness.Case {
	layered := func(name string, l natsLayers) harness.Case {
		return harness.Case{Group: "nats-split", Name: name, Role: harness.RolePeer,
			Setup: func(context.Context) (harness.Target, error) { return cfg.natsLayered(l) }}
	}
	return []harness.Case{
		{Group: "nats-split", Name: "nats.go Request", Role: harness.RoleRaw, Setup: cfg.natsRaw},
		{Group: "nats-split", Name: "mqrpc client, raw server", Role: harness.RolePeer, Setup: cfg.natsMQRPCClientOnly},
		{Group: "nats-split", Name: "raw client, mqrpc server", Role: harness.RolePeer, Setup: cfg.natsMQRPCServerOnly},
		layered("mqrpc", natsLayers{rpcClient: true, rpcServer: true}),
		layered("mqrpc, no-op client middleware", natsLayers{rpcClient: true, rpcServer: true, middleware: true}),
		layered("broker/nats, no rpc layer", natsLayers{}),
		layered("rpc client, broker/nats handler", natsLayers{rpcClient: true}),
		layered("broker/nats request, rpc server", natsLayers{rpcServer: true}),
	}
}

// natsLayers says which parts of the rpc layer a natsLayered case runs
// over broker/nats.
type natsLayers struct {
	rpcClient  bool // rpc.Client, not broker.Request with mqrpc's headers
	rpcServer  bool // rpc.Server, not a broker.Handler echoing the body
	middleware bool // a client middleware that does nothing
}

type natsLayered struct {
	cli, srv *mqnats.Broker
	sub      broker.Subscription
	subject  string
	rc       *rpc.Client   // with natsLayers.rpcClient
	header   broker.Header // without it: the request header rpc.Client sends
}

func (c Config) natsLayered(l natsLayers) (harness.Target, error) {
	t := &natsLayered{subject: subject("mqbench")}
	var err error
	if t.srv, err = mqnats.New(mqnats.WithURL(c.NATSURL)); err != nil {
		return nil, err
	}
	if t.cli, err = mqnats.New(mqnats.WithURL(c.NATSURL)); err != nil {
		_ = t.Close()
		return nil, err
	}
	var h broker.Handler = broker.HandlerFunc(func(_ context.Context, m *broker.Message) (*broker.Message, error) {
		return &broker.Message{Body: m.Body}, nil
	})
	if l.rpcServer {
		srv, err := rawEchoServer()
		if err != nil {
			_ = t.Close()
			return nil, err
		}
		h = srv
	}
	if l.rpcClient {
		opts := []rpc.ClientOption{rpc.WithCodec(rawcodec.Codec{})}
		if l.middleware {
			opts = append(opts, rpc.WithClientMiddleware(func(next broker.Handler) broker.Handler { return next }))
		}
		t.rc = rpc.NewClient(t.cli, opts...)
	} else if l.rpcServer {
		t.header = broker.Header{broker.HeaderMethod: Method, broker.HeaderContentType: rawcodec.Name}
	}
	if t.sub, err = t.srv.Serve(t.subject, h); err != nil {
		_ = t.Close()
		return nil, err
	}
	return t, nil
}

func (t *natsLayered) Call(ctx context.Context, p []byte) error {
	if t.rc != nil {
		return callBytes(ctx, t.rc, t.subject, p)
	}
	// One header map for every call, as rpc.Client shares one.
	rep, err := t.cli.Request(ctx, &broker.Message{Subject: t.subject, Header: t.header, Body: p})
	if err != nil {
		return err
	}
	return checkEcho(p, rep.Body)
}

func (t *natsLayered) Close() error {
	if t.sub != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = t.sub.Stop(ctx)
	}
	if t.cli != nil {
		_ = t.cli.Close()
	}
	return t.srv.Close()
}

type natsClientOnly struct {
	raw *natsRawTarget
	b   *mqnats.Broker
	cli *rpc.Client
}

func (c Config) natsMQRPCClientOnly(ctx context.Context) (harness.Target, error) {
	rt, err := c.natsRaw(ctx)
	if err != nil {
		return nil, err
	}
	raw := rt.(*natsRawTarget)
	b, err := mqnats.New(mqnats.WithURL(c.NATSURL))
	if err != nil {
		_ = raw.Close()
		return nil, err
	}
	return &natsClientOnly{raw: raw, b: b, cli: rpc.NewClient(b, rpc.WithCodec(rawcodec.Codec{}))}, nil
}

func (t *natsClientOnly) Call(ctx context.Context, p []byte) error {
	return callBytes(ctx, t.cli, t.raw.subject, p)
}

func (t *natsClientOnly) Close() error {
	_ = t.b.Close()
	return t.raw.Close()
}

type natsServerOnly struct {
	cli     *natsgo.Conn
	mq      *mqrpcTarget
	subject string
}

func (c Config) natsMQRPCServerOnly(ctx context.Context) (harness.Target, error) {
	mq, err := c.natsMQRPCTarget(true)
	if err != nil {
		return nil, err
	}
	cli, err := natsgo.Connect(c.NATSURL)
	if err != nil {
		_ = mq.Close()
		return nil, err
	}
	return &natsServerOnly{cli: cli, mq: mq, subject: mq.service}, nil
}

func (t *natsServerOnly) Call(ctx context.Context, p []byte) error {
	m := &natsgo.Msg{Subject: t.subject, Data: p, Header: natsgo.Header{
		broker.HeaderMethod:      {Method},
		broker.HeaderContentType: {rawcodec.Name},
	}}
	rep, err := t.cli.RequestMsgWithContext(ctx, m)
	if err != nil {
		return err
	}
	if s := rep.Header.Get(broker.HeaderStatus); s != "" && s != "0" {
		return fmt.Errorf("status %s: %s", s, rep.Header.Get(broker.HeaderStatusMessage))
	}
	return checkEcho(p, rep.Data)
}

func (t *natsServerOnly) Close() error {
	t.cli.Close()
	return t.mq.Close()
}

// NATSServerShapes returns diagnostic cases that take the raw baseline
// one step towards mqrpc at a time: the same plain client and echo server,
// but with mqrpc's headers on the request (the reply has none, as mqrpc's
// has not), with the handler run on a goroutine per message (bounded at
// 64), or with 1, 2 or 64 workers reading a synchronous subscription.
func NATSServerShapes(cfg Config) []harness.Case {
	shape := func(name string, headers bool, mode int) harness.Case {
		return harness.Case{Group: "nats-shapes", Name: name, Role: harness.RolePeer,
			Setup: func(context.Context) (harness.Target, error) { return cfg.natsShape(headers, mode) }}
	}
	return []harness.Case{
		{Group: "nats-shapes", Name: "nats.go Request", Role: harness.RoleRaw, Setup: cfg.natsRaw},
		shape("+ mqrpc request headers", true, shapeInline),
		shape("+ goroutine per message", false, shapeGoroutine),
		shape("+ 64 workers on NextMsg", false, shapeWorkers),
		shape("+ 1 worker on NextMsg", false, shapeWorkers1),
		shape("+ 2 workers on NextMsg", false, shapeWorkers2),
	}
}

const (
	shapeInline = iota
	shapeGoroutine
	shapeWorkers
	shapeWorkers1
	shapeWorkers2
)

// MQRPCRequestHeader returns the NATS headers of an mqrpc request to the
// echo method (docs/PROTOCOL.md): method, content type, a new message ID
// and the deadline (milliseconds since the epoch), for plain nats.go
// clients that send what mqrpc's client sends.
func MQRPCRequestHeader(contentType, deadline string) natsgo.Header {
	return natsgo.Header{
		broker.HeaderMethod:      {Method},
		broker.HeaderContentType: {contentType},
		mqnats.HeaderMsgID:       {broker.NewID()},
		broker.HeaderDeadline:    {deadline},
	}
}

type natsShapeTarget struct {
	natsRawTarget
	headers bool
	done    chan struct{}
}

func (c Config) natsShape(headers bool, mode int) (harness.Target, error) {
	cli, srv, err := natsPair(c.NATSURL)
	if err != nil {
		return nil, err
	}
	t := &natsShapeTarget{natsRawTarget: natsRawTarget{cli: cli, srv: srv, subject: subject("mqbench")}, headers: headers}
	// The reply carries no header, as an mqrpc reply in the request's
	// codec does not.
	respond := func(m *natsgo.Msg) { _ = srv.PublishMsg(&natsgo.Msg{Subject: m.Reply, Data: m.Data}) }
	var sub *natsgo.Subscription
	switch mode {
	case shapeInline:
		sub, err = srv.QueueSubscribe(t.subject, t.subject, respond)
	case shapeGoroutine:
		sem := make(chan struct{}, 64)
		sub, err = srv.QueueSubscribe(t.subject, t.subject, func(m *natsgo.Msg) {
			sem <- struct{}{}
			go func() {
				defer func() { <-sem }()
				respond(m)
			}()
		})
	case shapeWorkers, shapeWorkers1, shapeWorkers2:
		n := map[int]int{shapeWorkers: 64, shapeWorkers1: 1, shapeWorkers2: 2}[mode]
		sub, err = srv.QueueSubscribeSync(t.subject, t.subject)
		if err == nil {
			for i := 0; i < n; i++ {
				go func() {
					for {
						m, err := sub.NextMsgWithContext(context.Background())
						if err != nil {
							return
						}
						respond(m)
					}
				}()
			}
		}
	}
	if err == nil {
		_ = sub.SetPendingLimits(-1, -1)
		err = srv.Flush()
	}
	if err != nil {
		_ = t.Close()
		return nil, err
	}
	return t, nil
}

func (t *natsShapeTarget) Call(ctx context.Context, p []byte) error {
	if !t.headers {
		return t.natsRawTarget.Call(ctx, p)
	}
	m := &natsgo.Msg{Subject: t.subject, Data: p, Header: MQRPCRequestHeader("application/msgpack", "1893456000000")}
	rep, err := t.cli.RequestMsgWithContext(ctx, m)
	if err != nil {
		return err
	}
	return checkEcho(p, rep.Data)
}
