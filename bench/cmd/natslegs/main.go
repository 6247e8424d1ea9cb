// Command natslegs splits one NATS call at concurrency 1 into its two
// legs: the request leg, from the moment the caller starts the call to the
// moment the handler is entered, and the reply leg, from the handler's
// return to the caller's. It measures, interleaved in rounds:
//
//   - raw nats.go Request against a plain queue subscriber (the baseline),
//   - the same with mqrpc's four request headers, and with the same
//     values in one header,
//   - broker/nats without the rpc layer (broker.Request against a
//     broker.Handler echoing the body),
//   - mqrpc with bytes in and out (rpc.Client and rpc.Server, raw codec).
//
// mqbench's throughput ratios say how much slower a case is at c=1; the
// legs say on which side of the handler the time goes, and how much of it
// the NATS headers alone account for. See docs/BENCHMARKS.md.
//
// Usage, from the bench module, with a NATS server running:
//
//	go run ./cmd/natslegs [-nats URL] [-rounds N] [-d duration] [-size bytes]
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"slices"
	"strconv"
	"sync/atomic"
	"time"

	natsgo "github.com/nats-io/nats.go"

	"github.com/mqrpc/mqrpc/bench/cases"
	"github.com/mqrpc/mqrpc/broker"
	mqnats "github.com/mqrpc/mqrpc/broker/nats"
	rawcodec "github.com/mqrpc/mqrpc/codec/raw"
	"github.com/mqrpc/mqrpc/rpc"
)

func main() {
	var (
		url    = flag.String("nats", cases.EnvOr("MQRPC_NATS_URL", "nats://127.0.0.1:4222"), "NATS server URL")
		rounds = flag.Int("rounds", 12, "how many times every case is measured")
		slice  = flag.Duration("d", 500*time.Millisecond, "how long one measurement (one case, one round) lasts")
		size   = flag.Int("size", 64, "payload size in bytes")
	)
	flag.Parse()
	if err := run(*url, *rounds, *slice, *size); err != nil {
		fmt.Fprintln(os.Stderr, "natslegs:", err)
		os.Exit(1)
	}
}

// stamps holds the handler's entry and exit times of the call in flight
// (there is one at a time), in nanoseconds since start.
type stamps struct{ in, out atomic.Int64 }

var start = time.Now()

func now() int64 { return int64(time.Since(start)) }

func (s *stamps) enter() { s.in.Store(now()) }
func (s *stamps) exit()  { s.out.Store(now()) }

type legCase struct {
	name string
	call func(ctx context.Context, p []byte) error
	req  []float64 // request legs, µs
	rep  []float64 // reply legs, µs
}

func run(url string, rounds int, slice time.Duration, size int) error {
	var st stamps
	subject := func(s string) string { return "natslegs_" + strconv.FormatInt(time.Now().UnixNano(), 36) + "_" + s }

	srv, err := natsgo.Connect(url, natsgo.Name("natslegs-server"))
	if err != nil {
		return err
	}
	defer srv.Close()
	cli, err := natsgo.Connect(url, natsgo.Name("natslegs-client"))
	if err != nil {
		return err
	}
	defer cli.Close()
	rawSubj := subject("raw")
	sub, err := srv.QueueSubscribe(rawSubj, rawSubj, func(m *natsgo.Msg) {
		st.enter()
		st.exit()
		_ = m.Respond(m.Data)
	})
	if err != nil {
		return err
	}
	_ = sub.SetPendingLimits(-1, -1)
	if err := srv.Flush(); err != nil {
		return err
	}
	withHeader := func(h func() natsgo.Header) func(ctx context.Context, p []byte) error {
		return func(ctx context.Context, p []byte) error {
			_, err := cli.RequestMsgWithContext(ctx, &natsgo.Msg{Subject: rawSubj, Data: p, Header: h()})
			return err
		}
	}
	deadline := strconv.FormatInt(time.Now().Add(time.Hour).UnixMilli(), 10)

	sb, err := mqnats.New(mqnats.WithURL(url), mqnats.WithName("natslegs-server"))
	if err != nil {
		return err
	}
	defer sb.Close()
	cb, err := mqnats.New(mqnats.WithURL(url), mqnats.WithName("natslegs-client"))
	if err != nil {
		return err
	}
	defer cb.Close()
	brokerSubj := subject("broker")
	if _, err := sb.Serve(brokerSubj, broker.HandlerFunc(func(_ context.Context, m *broker.Message) (*broker.Message, error) {
		st.enter()
		st.exit()
		return &broker.Message{Body: m.Body}, nil
	})); err != nil {
		return err
	}
	rs := rpc.NewServer(rpc.WithCodecs(rawcodec.Codec{}))
	if err := rpc.HandleRaw(rs, cases.Method, func(_ context.Context, b []byte) ([]byte, error) {
		st.enter()
		st.exit()
		return b, nil
	}); err != nil {
		return err
	}
	rpcSubj := subject("mqrpc")
	if _, err := sb.Serve(rpcSubj, rs); err != nil {
		return err
	}
	rc := rpc.NewClient(cb, rpc.WithCodec(rawcodec.Codec{}))
	var out []byte

	cs := []*legCase{
		{name: "nats.go Request", call: func(ctx context.Context, p []byte) error {
			_, err := cli.RequestWithContext(ctx, rawSubj, p)
			return err
		}},
		{name: "nats.go Request + mqrpc's 4 headers", call: withHeader(func() natsgo.Header {
			return cases.MQRPCRequestHeader(rawcodec.Name, deadline)
		})},
		{name: "nats.go Request + 1 header, same values", call: withHeader(func() natsgo.Header {
			return natsgo.Header{"mqrpc": {"m=" + cases.Method + ";ct=" + rawcodec.Name + ";id=" + broker.NewID() + ";dl=" + deadline}}
		})},
		{name: "broker/nats, no rpc layer", call: func(ctx context.Context, p []byte) error {
			_, err := cb.Request(ctx, &broker.Message{Subject: brokerSubj, Body: p})
			return err
		}},
		{name: "mqrpc", call: func(ctx context.Context, p []byte) error {
			return rc.Call(ctx, rpcSubj, cases.Method, p, &out)
		}},
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(rounds+2)*time.Duration(len(cs))*(slice+10*time.Second))
	defer cancel()
	p := make([]byte, size)
	for _, c := range cs { // first calls and warm-up, unmeasured
		for range 200 {
			if err := c.call(ctx, p); err != nil {
				return fmt.Errorf("%s: %w", c.name, err)
			}
		}
	}
	for round := range rounds {
		order := slices.Clone(cs)
		if round%2 == 1 {
			slices.Reverse(order)
		}
		for _, c := range order {
			end := time.Now().Add(slice)
			for time.Now().Before(end) {
				t0 := now()
				if err := c.call(ctx, p); err != nil {
					return fmt.Errorf("%s: %w", c.name, err)
				}
				t3 := now()
				c.req = append(c.req, float64(st.in.Load()-t0)/1e3)
				c.rep = append(c.rep, float64(t3-st.out.Load())/1e3)
			}
		}
	}
	fmt.Printf("NATS call legs at c=1, %d B, %d rounds of %v per case; p50 over all calls, µs\n\n", size, rounds, slice)
	fmt.Printf("| case | calls | request leg | reply leg | request leg − raw | reply leg − raw |\n|---|---|---|---|---|---|\n")
	rawReq, rawRep := median(cs[0].req), median(cs[0].rep)
	for _, c := range cs {
		rq, rp := median(c.req), median(c.rep)
		fmt.Printf("| %s | %d | %.1f | %.1f | %+.1f | %+.1f |\n", c.name, len(c.req), rq, rp, rq-rawReq, rp-rawRep)
	}
	return nil
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}
