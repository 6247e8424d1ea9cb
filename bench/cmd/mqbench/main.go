// Command mqbench measures what RPC over a message broker costs and what
// mqrpc adds to it: calls/s and p50/p99 latency of mqrpc against each
// broker's raw client, a peer framework, a socket baseline (net/rpc over
// TCP) and a direct handler call, all in one run, interleaved; and the
// msgs/s of mqrpc's server streams against the raw client publishing the
// same messages (-kind stream runs those alone).
//
// Usage:
//
//	go run ./cmd/mqbench [flags]
//
// from the bench module, or scripts/bench from the repository root, which
// starts the brokers first. See docs/BENCHMARKS.md.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/signal"
	"regexp"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"

	"github.com/mqrpc/mqrpc/bench/cases"
	"github.com/mqrpc/mqrpc/bench/harness"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "mqbench:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		brokers   = flag.String("brokers", "memory,tcp,nats,amqp,rocketmq", "comma-separated case groups to run: memory, tcp, nats, amqp, rocketmq")
		kinds     = flag.String("kind", "call,stream", "comma-separated kinds of case to run: call (request-reply), stream (server streams)")
		concs     = flag.String("c", "1,16,64", "comma-separated numbers of concurrent callers")
		streams   = flag.String("streams", "1,16", "comma-separated numbers of concurrent streams of the stream cases")
		sizes     = flag.String("sizes", "64,4096", "comma-separated payload sizes in bytes")
		rounds    = flag.Int("rounds", 5, "how many times every case is measured at every concurrency and size")
		slice     = flag.Duration("d", time.Second, "how long one measurement (one case, concurrency and size, one round) lasts")
		warmup    = flag.Duration("warmup", 500*time.Millisecond, "unmeasured run of every case before the first round")
		codecName = flag.String("codec", "msgpack", "codec of mqrpc and the peer frameworks: msgpack or json")
		natsURL   = flag.String("nats", cases.EnvOr("MQRPC_NATS_URL", "nats://127.0.0.1:4222"), "NATS server URL")
		amqpURL   = flag.String("amqp", cases.EnvOr("MQRPC_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"), "RabbitMQ URL")
		rmqNS     = flag.String("rocketmq", cases.EnvOr("MQRPC_ROCKETMQ_NAMESRV", "127.0.0.1:9876"), "RocketMQ name server")
		rmqBroker = flag.String("rocketmq-broker", cases.EnvOr("MQRPC_ROCKETMQ_BROKER", "127.0.0.1:10911"), "RocketMQ broker address, for creating the benchmark topic")
		rmqVer    = flag.String("rocketmq-version", "", "RocketMQ version, for the report (scripts/bench finds it)")
		rabbitVer = flag.String("rabbitmq-version", "", "RabbitMQ version, for the report when the server does not say")
		out       = flag.String("out", "", "write the report into this Markdown file (between the mqbench markers of the kinds of case run, or the whole file when it has none)")
		svg       = flag.String("svg", "", "write the chart of the request-reply cases (throughput against concurrency) to this SVG file; not written without -kind call")
		command   = flag.String("command", "", "the command line to print in the report (default: this one)")
		cpuprof   = flag.String("cpuprofile", "", "write a CPU profile of the measured rounds to this file; samples carry the label case=<group>/<name> (go tool pprof -tagfocus case=nats/mqrpc)")
		revision  = flag.String("revision", "", "the mqrpc revision measured, for the report (scripts/bench passes git's)")
		quiet     = flag.Bool("q", false, "do not print a line per measurement")
		strict    = flag.Bool("strict", false, "exit with an error when a case was skipped or a call failed (for smoke runs in CI)")
		only      = flag.String("only", "", "run only the cases whose \"group/name\" matches this regular expression (for profiling one case)")
	)
	flag.Parse()

	cd, err := cases.CodecByName(*codecName)
	if err != nil {
		return err
	}
	cs, err := ints(*concs)
	if err != nil {
		return fmt.Errorf("-c: %w", err)
	}
	ss, err := ints(*sizes)
	if err != nil {
		return fmt.Errorf("-sizes: %w", err)
	}
	sts, err := ints(*streams)
	if err != nil {
		return fmt.Errorf("-streams: %w", err)
	}
	var calls, strms bool
	for _, k := range strings.Split(*kinds, ",") {
		switch k = strings.TrimSpace(k); k {
		case "call":
			calls = true
		case "stream":
			strms = true
		default:
			return fmt.Errorf("-kind: unknown kind %q (have call, stream)", k)
		}
	}
	// add appends the request-reply cases (unary) and the stream cases
	// (stream) of a group, as -kind selects.
	var all []harness.Case
	add := func(unary, stream []harness.Case) {
		if calls {
			all = append(all, unary...)
		}
		if strms {
			all = append(all, stream...)
		}
	}
	ccfg := cases.Config{
		Codec: cd, NATSURL: *natsURL, AMQPURL: *amqpURL,
		RocketMQNameServer: *rmqNS, RocketMQBroker: *rmqBroker,
	}
	env := harness.Environment{Codec: cd.Name(), Revision: *revision, Brokers: map[string]string{}}
	for _, g := range strings.Split(*brokers, ",") {
		switch g = strings.TrimSpace(g); g {
		case "memory":
			add(cases.Memory(ccfg), cases.MemoryStreams(ccfg))
		case "tcp":
			add(cases.TCP(ccfg), nil)
		case "nats":
			add(cases.NATS(ccfg), cases.NATSStreams(ccfg))
			if v, err := cases.NATSServerVersion(*natsURL); err == nil {
				env.Brokers["nats"] = "nats-server " + v
			}
		case "amqp":
			add(cases.AMQP(ccfg), cases.AMQPStreams(ccfg))
			if v, err := cases.RabbitMQVersion(*amqpURL); err == nil {
				env.Brokers["amqp"] = v
			} else if *rabbitVer != "" {
				env.Brokers["amqp"] = "RabbitMQ " + *rabbitVer
			}
		case "rocketmq":
			add(cases.RocketMQ(ccfg), cases.RocketMQStreams(ccfg))
			v := *rmqVer
			if v == "" {
				v = cases.RocketMQVersion()
			}
			if v != "" {
				env.Brokers["rocketmq"] = "Apache RocketMQ " + v + " (name server + broker)"
			}
		case "":
		default:
			return fmt.Errorf("-brokers: unknown group %q", g)
		}
	}

	if *only != "" {
		re, err := regexp.Compile(*only)
		if err != nil {
			return fmt.Errorf("-only: %w", err)
		}
		var kept []harness.Case
		for _, c := range all {
			if re.MatchString(c.Group + "/" + c.Name) {
				kept = append(kept, c)
			}
		}
		all = kept
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	hcfg := harness.Config{
		Concurrency: cs, Streams: sts, Sizes: ss, Rounds: *rounds, Slice: *slice, Warmup: *warmup,
		CallTimeout: 10 * time.Second,
		BrokerPIDs: brokerPIDs(all, map[string][]string{
			"nats":     {*natsURL},
			"amqp":     {*amqpURL},
			"rocketmq": {*rmqBroker, *rmqNS},
		}),
	}
	if !*quiet {
		hcfg.Progress = func(s string) { fmt.Fprintln(os.Stderr, s) }
	}
	if *cpuprof != "" {
		f, err := os.Create(*cpuprof)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	res, err := harness.Run(ctx, hcfg, all)
	if err != nil {
		return err
	}
	cmdline := *command
	if cmdline == "" {
		cmdline = strings.Join(os.Args, " ")
	}
	env.Fill()
	rep := harness.Report{Results: res, Env: env, Command: cmdline}
	fmt.Println(rep.Text())
	if *out != "" {
		if err := rep.WriteMarkdown(*out, *svg); err != nil {
			return err
		}
	}
	if *svg != "" && calls {
		if err := os.WriteFile(*svg, []byte(rep.SVG()), 0o644); err != nil {
			return err
		}
	}
	if *strict {
		return res.Failures()
	}
	return nil
}

func ints(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("%q is not a positive integer", f)
		}
		out = append(out, n)
	}
	return out, nil
}

// brokerPIDs finds the processes of the broker servers the groups of cases
// talk to, from their addresses (URLs or host:port), when they listen on
// this machine. A group named like "nats-x" uses the addresses of
// "nats".
func brokerPIDs(cases []harness.Case, addrs map[string][]string) map[string][]int {
	out := map[string][]int{}
	for _, c := range cases {
		if _, done := out[c.Group]; done {
			continue
		}
		base, _, _ := strings.Cut(c.Group, "-")
		var pids []int
		for _, a := range addrs[base] {
			port := addrPort(a)
			if port == 0 {
				continue
			}
			pid, err := harness.ListenerPID(port)
			if err != nil {
				fmt.Fprintf(os.Stderr, "mqbench: %s: broker CPU not measured: %v\n", c.Group, err)
				pids = nil
				break
			}
			pids = append(pids, pid)
		}
		out[c.Group] = pids
	}
	return out
}

// addrPort returns the port of a loopback address given as a URL or as
// host:port, or 0.
func addrPort(a string) int {
	host := a
	if u, err := url.Parse(a); err == nil && u.Host != "" {
		host = u.Host
	}
	h, p, err := net.SplitHostPort(host)
	if err != nil {
		return 0
	}
	if ip := net.ParseIP(h); h != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return 0
	}
	port, _ := strconv.Atoi(p)
	return port
}
