// Package cases holds the benchmark cases of mqbench: for each broker the
// broker's own client used the plain way (the baseline), mqrpc over the same
// broker, and where there is one a peer Go framework over it; plus net/rpc
// over TCP as the socket baseline and a direct handler call as the floor.
//
// Every case serves one echo method in the same process as its callers:
// the reply body is the request body.
package cases

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mqrpc/mqrpc/bench/harness"
	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/codec"
	jsoncodec "github.com/mqrpc/mqrpc/codec/json"
	msgpackcodec "github.com/mqrpc/mqrpc/codec/msgpack"
	rawcodec "github.com/mqrpc/mqrpc/codec/raw"
	"github.com/mqrpc/mqrpc/rpc"
)

// Echo is the request and the reply of the benchmark method.
type Echo struct {
	Data []byte `json:"d" msgpack:"d"`
}

// Config is what the cases need to know about the environment.
type Config struct {
	// Codec encodes mqrpc's (and the peer frameworks') requests.
	Codec codec.Codec
	// NATSURL, AMQPURL and RocketMQNameServer locate the brokers.
	NATSURL, AMQPURL, RocketMQNameServer string
	// RocketMQBroker is the broker's address (host:port), for creating the
	// benchmark topic.
	RocketMQBroker string
}

// CodecByName returns the codec called name: "msgpack" or "json".
func CodecByName(name string) (codec.Codec, error) {
	switch name {
	case "msgpack":
		return msgpackcodec.Codec{}, nil
	case "json":
		return jsoncodec.Codec{}, nil
	}
	return nil, fmt.Errorf("unknown codec %q (have msgpack, json)", name)
}

// EnvOr returns the environment variable name, or def when it is empty.
func EnvOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// Method is the name of the benchmark method.
const Method = "Echo"

var runID atomic.Uint64

// subject returns a subject (queue, topic) name that no earlier run uses,
// so a leftover server or queued request from another run never answers.
func subject(prefix string) string {
	return prefix + "_" + strconv.FormatInt(time.Now().UnixNano()%1e12, 36) + "_" + strconv.FormatUint(runID.Add(1), 10)
}

// echo is the typed mqrpc handler.
func echo(_ context.Context, in *Echo) (*Echo, error) { return in, nil }

// errShortReply reports a reply that is not the echo of its request.
var errShortReply = errors.New("reply is not the echo of the request")

func checkEcho(req, rep []byte) error {
	if len(req) != len(rep) || (len(req) > 0 && req[0] != rep[0]) {
		return fmt.Errorf("%w: sent %d bytes, got %d", errShortReply, len(req), len(rep))
	}
	return nil
}

// mqrpcTarget is mqrpc's client calling mqrpc's server over one broker
// (two connections: one for the client, one for the server).
type mqrpcTarget struct {
	cli     *rpc.Client
	service string
	raw     bool // bytes in and out (newMQRPCRaw)
	closers []func() error
}

// newMQRPC serves the echo method on srvB and returns a target calling it
// through cliB. closers run in order on Close, after the subscription
// stopped.
func newMQRPC(cd codec.Codec, cliB, srvB broker.Broker, service string, closers ...func() error) (*mqrpcTarget, error) {
	srv := rpc.NewServer(rpc.WithCodecs(cd))
	if err := rpc.Handle(srv, Method, echo); err != nil {
		return nil, err
	}
	return serveTarget(srv, cd, false, cliB, srvB, service, closers)
}

// serveTarget serves srv on srvB and returns a target calling it through
// cliB with cd.
func serveTarget(srv *rpc.Server, cd codec.Codec, raw bool, cliB, srvB broker.Broker, service string, closers []func() error) (*mqrpcTarget, error) {
	sub, err := srvB.Serve(service, srv)
	if err != nil {
		return nil, err
	}
	stop := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return sub.Stop(ctx)
	}
	return &mqrpcTarget{
		cli:     rpc.NewClient(cliB, rpc.WithCodec(cd)),
		service: service,
		raw:     raw,
		closers: append([]func() error{stop}, closers...),
	}, nil
}

// replyBufs holds the reply buffers of the raw-bytes targets' callers.
var replyBufs = sync.Pool{New: func() any { return new([]byte) }}

// callBytes calls the echo method of service through cli, whose codec is
// the raw one, with p and checks the reply. The reply is copied into a
// buffer the caller reuses (the raw codec's Unmarshal keeps the capacity
// of *out), so the call allocates what the raw client's does: the broker
// client's copy of the reply, and no second one.
func callBytes(ctx context.Context, cli *rpc.Client, service string, p []byte) error {
	out := replyBufs.Get().(*[]byte)
	err := cli.Call(ctx, service, Method, p, out)
	if err == nil {
		err = checkEcho(p, *out)
	}
	replyBufs.Put(out)
	return err
}

func (t *mqrpcTarget) Call(ctx context.Context, p []byte) error {
	if t.raw {
		return callBytes(ctx, t.cli, t.service, p)
	}
	var out Echo
	if err := t.cli.Call(ctx, t.service, Method, &Echo{Data: p}, &out); err != nil {
		return err
	}
	return checkEcho(p, out.Data)
}

// target returns t as a harness.Target, and a nil Target (not a nil
// *mqrpcTarget in one) with an error.
func target(t *mqrpcTarget, err error) (harness.Target, error) {
	if err != nil {
		return nil, err
	}
	return t, nil
}

// newTarget opens the server's and the client's connection with open
// (name is "mqbench-server" or "mqbench-client") and serves the echo
// method of service on them: with bytes in and out (newMQRPCRaw) or typed
// with the configured codec (newMQRPC). A failure closes what was opened;
// the target's Close closes both connections.
func (c Config) newTarget(raw bool, service string, open func(name string) (broker.Broker, error)) (*mqrpcTarget, error) {
	return withPair(open, func(cliB, srvB broker.Broker) (*mqrpcTarget, error) {
		if raw {
			return newMQRPCRaw(cliB, srvB, service, cliB.Close, srvB.Close)
		}
		return newMQRPC(c.Codec, cliB, srvB, service, cliB.Close, srvB.Close)
	})
}

// withPair opens the server's and the client's connection with open
// ("mqbench-server", "mqbench-client") and passes them to serve; when
// serve fails, both are closed.
func withPair[T any](open func(name string) (broker.Broker, error), serve func(cliB, srvB broker.Broker) (T, error)) (T, error) {
	var zero T
	srvB, err := open("mqbench-server")
	if err != nil {
		return zero, err
	}
	cliB, err := open("mqbench-client")
	if err != nil {
		_ = srvB.Close()
		return zero, err
	}
	t, err := serve(cliB, srvB)
	if err != nil {
		_ = cliB.Close()
		_ = srvB.Close()
		return zero, err
	}
	return t, nil
}

// newMQRPCRaw is newMQRPC with bytes in and out, the same work as the raw
// client's: the caller's bytes go out as the body (the raw codec), the
// server echoes the body with rpc.HandleRaw, and the reply body is copied
// into a buffer the caller reuses.
func newMQRPCRaw(cliB, srvB broker.Broker, service string, closers ...func() error) (*mqrpcTarget, error) {
	srv, err := rawEchoServer()
	if err != nil {
		return nil, err
	}
	return serveTarget(srv, rawcodec.Codec{}, true, cliB, srvB, service, closers)
}

// rawEchoServer returns an rpc server whose echo method returns the
// request body as it is (rpc.HandleRaw, the raw codec).
func rawEchoServer() (*rpc.Server, error) {
	srv := rpc.NewServer(rpc.WithCodecs(rawcodec.Codec{}))
	if err := rpc.HandleRaw(srv, Method, func(_ context.Context, body []byte) ([]byte, error) { return body, nil }); err != nil {
		return nil, err
	}
	return srv, nil
}

func (t *mqrpcTarget) Close() error {
	var errs []error
	for _, c := range t.closers {
		errs = append(errs, c())
	}
	return errors.Join(errs...)
}

// directTarget calls the typed handler in the same goroutine, with the
// request and the reply encoded and decoded by the codec as mqrpc would:
// the floor under any transport.
type directTarget struct{ cd codec.Codec }

func (t directTarget) Call(ctx context.Context, p []byte) error {
	body, err := t.cd.Marshal(&Echo{Data: p})
	if err != nil {
		return err
	}
	in := new(Echo)
	if err := t.cd.Unmarshal(body, in); err != nil {
		return err
	}
	out, err := echo(ctx, in)
	if err != nil {
		return err
	}
	rb, err := t.cd.Marshal(out)
	if err != nil {
		return err
	}
	var got Echo
	if err := t.cd.Unmarshal(rb, &got); err != nil {
		return err
	}
	return checkEcho(p, got.Data)
}

func (directTarget) Close() error { return nil }
