package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/mqrpc/mqrpc/broker"
	msgpackcodec "github.com/mqrpc/mqrpc/codec/msgpack"
	"github.com/mqrpc/mqrpc/rpc"
	"github.com/mqrpc/mqrpc/rpc/control"
)

// AddRequest is the demo's Add request.
type AddRequest struct {
	A int `json:"a" msgpack:"a"`
	B int `json:"b" msgpack:"b"`
}

// AddReply is the demo's Add reply.
type AddReply struct {
	Sum int `json:"sum" msgpack:"sum"`
}

// SleepRequest is the demo's Sleep request.
type SleepRequest struct {
	Ms int `json:"ms" msgpack:"ms" jsonschema:"description=milliseconds to sleep"`
}

// FailRequest is the demo's Fail request: the status code and message to
// answer with.
type FailRequest struct {
	Code    int    `json:"code" msgpack:"code"`
	Message string `json:"message" msgpack:"message"`
}

// Empty is a reply without fields.
type Empty struct{}

// newDemo returns the demo service: Add, Sleep, Fail and a raw Echo.
func newDemo(opts ...rpc.ServerOption) *rpc.Server {
	srv := rpc.NewServer(opts...)
	_ = rpc.Handle(srv, "Add", func(_ context.Context, in *AddRequest) (*AddReply, error) {
		return &AddReply{Sum: in.A + in.B}, nil
	})
	_ = rpc.Handle(srv, "Sleep", func(ctx context.Context, in *SleepRequest) (*Empty, error) {
		t := time.NewTimer(time.Duration(in.Ms) * time.Millisecond)
		defer t.Stop()
		select {
		case <-t.C:
			return &Empty{}, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	})
	_ = rpc.Handle(srv, "Fail", func(_ context.Context, in *FailRequest) (*Empty, error) {
		return nil, rpc.Errorf(rpc.Code(in.Code), "%s", in.Message)
	})
	_ = rpc.HandleRaw(srv, "Echo", func(_ context.Context, body []byte) ([]byte, error) {
		return append([]byte(nil), body...), nil
	})
	return srv
}

// serveDemo serves the demo on b as service. It accepts JSON and
// msgpack, and decodes requests without a content type as msgpack when
// msgpackDefault is set, else as JSON.
func serveDemo(b broker.Broker, service string, msgpackDefault bool, opts ...control.Option) (*control.Service, error) {
	sopts := []rpc.ServerOption{rpc.WithCodecs(msgpackcodec.Codec{})}
	if msgpackDefault {
		sopts = append(sopts, rpc.WithCodec(msgpackcodec.Codec{}))
	}
	opts = append([]control.Option{control.WithVersion("1.0.0"),
		control.WithDescription("mqrpc's demo service: Add, Sleep, Fail, Echo")}, opts...)
	return newDemo(sopts...).Serve(b, service, opts...)
}

func (a *app) demoCmd() *cobra.Command {
	var (
		msgpackDefault bool
		ready          string
	)
	c := &cobra.Command{
		Use:   "demo [SERVICE]",
		Short: "Serve a demo service (Add, Sleep, Fail, Echo) to try the other commands on",
		Long: `demo serves a small service (default name Demo) until interrupted, then
drains it (it reports NOT_SERVING while it drains):
  Add    {"a":1,"b":2} -> {"sum":3}
  Sleep  {"ms":100} -> {} after 100 ms
  Fail   {"code":5,"message":"gone"} -> the error NotFound: gone
  Echo   the request's bytes, raw`,
		Example: `  mqrpc demo &
  mqrpc call Demo.Add '{"a":2,"b":40}'
  mqrpc call Demo.Add '{"a":2,"b":40}' --codec msgpack   # JSON converted to msgpack and back`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			name := "Demo"
			if len(args) > 0 {
				name = args[0]
			}
			b, err := a.connect()
			if err != nil {
				return err
			}
			defer closeBroker(b)
			svc, err := serveDemo(b, name, msgpackDefault)
			if err != nil {
				return fail(rpc.Unavailable, "serve %s: %v", name, err)
			}
			fmt.Fprintf(a.errw, "mqrpc: serving %s (instance %s) on %s; interrupt to stop\n", name, svc.ID(), a.brokerURL)
			if ready != "" {
				if err := os.WriteFile(ready, []byte(svc.ID()+"\n"), 0o644); err != nil {
					return err
				}
			}
			sig := make(chan os.Signal, 1)
			signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
			<-sig
			ctx, cancel := withTimeout(30 * time.Second)
			defer cancel()
			return svc.Stop(ctx)
		},
	}
	c.Flags().BoolVar(&msgpackDefault, "msgpack", false, "decode requests without a content type as msgpack (JSON is accepted too)")
	c.Flags().StringVar(&ready, "ready-file", "", "write the instance ID to this file once serving (for scripts)")
	return c
}
