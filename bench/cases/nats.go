package cases

import (
	"context"
	"errors"
	"fmt"
	"time"

	kitnats "github.com/go-kit/kit/transport/nats"
	natsgo "github.com/nats-io/nats.go"

	"github.com/mqrpc/mqrpc/bench/harness"
	"github.com/mqrpc/mqrpc/broker"
	mqnats "github.com/mqrpc/mqrpc/broker/nats"
)

// NATS returns the NATS cases: raw nats.go Request against a plain queue
// subscriber (the baseline), mqrpc over broker/nats (bytes in and out, as
// the baseline; and typed, through the codec), and go-kit's transport/nats
// with the same codec as typed mqrpc.
func NATS(cfg Config) []harness.Case {
	return []harness.Case{
		{Group: "nats", Name: "nats.go Request", Role: harness.RoleRaw, Setup: cfg.natsRaw},
		{Group: "nats", Name: "mqrpc", Role: harness.RoleMQRPC, Setup: cfg.natsMQRPC(true)},
		{Group: "nats", Name: "mqrpc, typed + codec", Role: harness.RoleMQRPC, NoTarget: true, Setup: cfg.natsMQRPC(false)},
		{Group: "nats", Name: "go-kit transport/nats", Role: harness.RolePeer, Setup: cfg.natsGoKit},
	}
}

// NATSServerVersion connects to url and returns the server's version.
func NATSServerVersion(url string) (string, error) {
	nc, err := natsgo.Connect(url)
	if err != nil {
		return "", err
	}
	defer nc.Close()
	return nc.ConnectedServerVersion(), nil
}

// natsPair connects the client and the server connection of a case.
func natsPair(url string) (cli, srv *natsgo.Conn, err error) {
	srv, err = natsgo.Connect(url, natsgo.Name("mqbench-server"))
	if err != nil {
		return nil, nil, fmt.Errorf("connect %s: %w", url, err)
	}
	cli, err = natsgo.Connect(url, natsgo.Name("mqbench-client"))
	if err != nil {
		srv.Close()
		return nil, nil, fmt.Errorf("connect %s: %w", url, err)
	}
	return cli, srv, nil
}

type natsRawTarget struct {
	cli, srv *natsgo.Conn
	subject  string
}

func (c Config) natsRaw(context.Context) (harness.Target, error) {
	cli, srv, err := natsPair(c.NATSURL)
	if err != nil {
		return nil, err
	}
	t := &natsRawTarget{cli: cli, srv: srv, subject: subject("mqbench")}
	// The plain way: a queue subscriber answering from its callback.
	sub, err := srv.QueueSubscribe(t.subject, t.subject, func(m *natsgo.Msg) { _ = m.Respond(m.Data) })
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

func (t *natsRawTarget) Call(ctx context.Context, p []byte) error {
	m, err := t.cli.RequestWithContext(ctx, t.subject, p)
	if err != nil {
		return err
	}
	return checkEcho(p, m.Data)
}

func (t *natsRawTarget) Close() error {
	t.cli.Close()
	t.srv.Close()
	return nil
}

// natsMQRPC sets up mqrpc over NATS, typed or with raw bytes.
func (c Config) natsMQRPC(raw bool) func(context.Context) (harness.Target, error) {
	return func(context.Context) (harness.Target, error) { return target(c.natsMQRPCTarget(raw)) }
}

func (c Config) natsMQRPCTarget(raw bool) (*mqrpcTarget, error) {
	return c.newTarget(raw, subject("mqbench"), func(name string) (broker.Broker, error) {
		return mqnats.New(c.NATSURL, mqnats.WithName(name))
	})
}

type goKitTarget struct {
	cli, srv *natsgo.Conn
	call     func(ctx context.Context, req any) (any, error)
}

func (c Config) natsGoKit(context.Context) (harness.Target, error) {
	cli, srv, err := natsPair(c.NATSURL)
	if err != nil {
		return nil, err
	}
	cd := c.Codec
	subj := subject("mqbench")
	endpoint := func(_ context.Context, req any) (any, error) { return req, nil }
	dec := func(_ context.Context, m *natsgo.Msg) (any, error) {
		in := new(Echo)
		return in, cd.Unmarshal(m.Data, in)
	}
	enc := func(_ context.Context, reply string, nc *natsgo.Conn, resp any) error {
		b, err := cd.Marshal(resp)
		if err != nil {
			return err
		}
		return nc.Publish(reply, b)
	}
	server := kitnats.NewSubscriber(endpoint, dec, enc)
	sub, err := srv.QueueSubscribe(subj, subj, server.ServeMsg(srv))
	if err == nil {
		_ = sub.SetPendingLimits(-1, -1)
		err = srv.Flush()
	}
	if err != nil {
		cli.Close()
		srv.Close()
		return nil, err
	}
	encReq := func(_ context.Context, m *natsgo.Msg, req any) error {
		b, err := cd.Marshal(req)
		m.Data = b
		return err
	}
	decRep := func(_ context.Context, m *natsgo.Msg) (any, error) {
		out := new(Echo)
		return out, cd.Unmarshal(m.Data, out)
	}
	pub := kitnats.NewPublisher(cli, subj, encReq, decRep, kitnats.PublisherTimeout(30*time.Second))
	return &goKitTarget{cli: cli, srv: srv, call: pub.Endpoint()}, nil
}

func (t *goKitTarget) Call(ctx context.Context, p []byte) error {
	rep, err := t.call(ctx, &Echo{Data: p})
	if err != nil {
		return err
	}
	out, ok := rep.(*Echo)
	if !ok {
		return errors.New("go-kit: unexpected reply type")
	}
	return checkEcho(p, out.Data)
}

func (t *goKitTarget) Close() error {
	t.cli.Close()
	t.srv.Close()
	return nil
}
