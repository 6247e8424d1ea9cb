package cases

import (
	"context"
	"fmt"

	natsgo "github.com/nats-io/nats.go"

	"github.com/mqrpc/mqrpc/bench/harness"
	"github.com/mqrpc/mqrpc/broker"
	mqnats "github.com/mqrpc/mqrpc/broker/nats"
	"github.com/mqrpc/mqrpc/rpc"
)

// NATSSplit returns diagnostic cases that take mqrpc's NATS path apart: the
// raw baseline again, mqrpc's client against a plain nats.go echo server,
// and a plain nats.go client (with mqrpc's headers) against mqrpc's server.
// They tell on which side the cost over the raw client lies.
func NATSSplit(cfg Config) []harness.Case {
	return []harness.Case{
		{Group: "nats-split", Name: "nats.go Request", Role: harness.RoleRaw, Setup: cfg.natsRaw},
		{Group: "nats-split", Name: "mqrpc client, raw server", Role: harness.RolePeer, Setup: cfg.natsMQRPCClientOnly},
		{Group: "nats-split", Name: "raw client, mqrpc server", Role: harness.RolePeer, Setup: cfg.natsMQRPCServerOnly},
	}
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
	return &natsClientOnly{raw: raw, b: b, cli: rpc.NewClient(b, rpc.WithCodec(c.Codec))}, nil
}

func (t *natsClientOnly) Call(ctx context.Context, p []byte) error {
	var out Echo
	if err := t.cli.Call(ctx, t.raw.subject, Method, &Echo{Data: p}, &out); err != nil {
		return err
	}
	return checkEcho(p, out.Data)
}

func (t *natsClientOnly) Close() error {
	_ = t.b.Close()
	return t.raw.Close()
}

type natsServerOnly struct {
	cli     *natsgo.Conn
	mq      *mqrpcTarget
	subject string
	ct      string
	cd      interface {
		Marshal(any) ([]byte, error)
		Unmarshal([]byte, any) error
	}
}

func (c Config) natsMQRPCServerOnly(ctx context.Context) (harness.Target, error) {
	mt, err := c.natsMQRPC(ctx)
	if err != nil {
		return nil, err
	}
	mq := mt.(*mqrpcTarget)
	cli, err := natsgo.Connect(c.NATSURL)
	if err != nil {
		_ = mq.Close()
		return nil, err
	}
	return &natsServerOnly{cli: cli, mq: mq, subject: mq.service, ct: c.Codec.Name(), cd: c.Codec}, nil
}

func (t *natsServerOnly) Call(ctx context.Context, p []byte) error {
	body, err := t.cd.Marshal(&Echo{Data: p})
	if err != nil {
		return err
	}
	m := &natsgo.Msg{Subject: t.subject, Data: body, Header: natsgo.Header{
		broker.HeaderMethod:      {Method},
		broker.HeaderContentType: {t.ct},
	}}
	rep, err := t.cli.RequestMsgWithContext(ctx, m)
	if err != nil {
		return err
	}
	if s := rep.Header.Get(broker.HeaderStatus); s != "" && s != "0" {
		return fmt.Errorf("status %s: %s", s, rep.Header.Get(broker.HeaderStatusMessage))
	}
	var out Echo
	if err := t.cd.Unmarshal(rep.Data, &out); err != nil {
		return err
	}
	return checkEcho(p, out.Data)
}

func (t *natsServerOnly) Close() error {
	t.cli.Close()
	return t.mq.Close()
}
