// Command mqrpc shows and calls mqrpc services on any broker: which
// services and instances are up, their methods, health and statistics, a
// call by hand with JSON in and out, and a load test.
//
//	go install github.com/mqrpc/mqrpc/cmd/mqrpc@latest
//	export MQRPC_BROKER=nats://127.0.0.1:4222
//	mqrpc ls
//	mqrpc info Calculator
//	mqrpc call Calculator.Add '{"a":2,"b":40}'
//	mqrpc bench Calculator.Add '{"a":2,"b":40}' -c 16 -d 10s
//
// The exit status of call follows the status code of the reply (0 OK, 3
// InvalidArgument, 5 NotFound, 14 Unavailable, ...), with the code and
// message on stderr. ls, info, ping and stats exit with 5 (NotFound) when
// no instance answered, and every command with 14 (Unavailable) when the
// broker cannot be reached and 3 (InvalidArgument) for bad input.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/dial"
	// rocketmq:// URLs: broker/rocketmq is a module of its own, which dial
	// reaches only through this registration.
	_ "github.com/mqrpc/mqrpc/broker/rocketmq/dialrocketmq"
	"github.com/mqrpc/mqrpc/rpc"
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

// exitError is an error with the status code the command exits with.
type exitError struct {
	code rpc.Code
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func fail(code rpc.Code, format string, args ...any) error {
	return &exitError{code: code, err: fmt.Errorf(format, args...)}
}

// app is the state the commands share.
type app struct {
	brokerURL string
	timeout   time.Duration
	wait      time.Duration
	jsonOut   bool
	out, errw io.Writer
	// open opens a broker URL (dial.Open; tests may replace it).
	open func(url string) (broker.Broker, error)
}

func run(args []string, stdout, stderr io.Writer) int {
	a := &app{out: stdout, errw: stderr, open: func(u string) (broker.Broker, error) {
		return dial.Open(u, dial.WithName("mqrpc-cli"))
	}}
	root := a.root()
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.Execute()
	if err == nil {
		return 0
	}
	var ee *exitError
	if !errors.As(err, &ee) {
		// Cobra's own errors: unknown commands and flags, wrong
		// argument counts.
		ee = &exitError{code: rpc.InvalidArgument, err: err}
	}
	fmt.Fprintf(stderr, "mqrpc: %s (%d): %v\n", ee.code, ee.code, ee.err)
	return int(ee.code)
}

func (a *app) root() *cobra.Command {
	root := &cobra.Command{
		Use:   "mqrpc",
		Short: "Show and call mqrpc services on any broker",
		Long: `mqrpc shows and calls mqrpc services on any broker: RabbitMQ, NATS,
RocketMQ. Services served with rpc.Server.Serve (or control.Serve) answer its
discovery, health and statistics requests on every instance; on NATS, natscli's
"nats micro" sees them too.

The broker is a URL, from -b/--broker or $MQRPC_BROKER:
  nats://127.0.0.1:4222   amqp://guest:guest@127.0.0.1:5672/   rocketmq://127.0.0.1:9876

Exit status: 0 on success; for call and bench the status code of the reply
(3 InvalidArgument, 4 DeadlineExceeded, 5 NotFound, 12 Unimplemented,
14 Unavailable, ...); 5 (NotFound) when no instance of a service answered;
14 (Unavailable) when the broker cannot be reached; 3 for bad input.`,
		Example: `  export MQRPC_BROKER=nats://127.0.0.1:4222
  mqrpc ls                                   # every service instance
  mqrpc info Calculator                      # methods, types, schemas
  mqrpc ping Calculator                      # health of each instance
  mqrpc stats Calculator                     # per-method counters
  mqrpc call Calculator.Add '{"a":2,"b":40}' # one call, JSON in and out
  mqrpc bench Calculator.Add '{"a":2,"b":40}' -c 16 -d 10s`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	pf := root.PersistentFlags()
	pf.StringVarP(&a.brokerURL, "broker", "b", os.Getenv("MQRPC_BROKER"), "broker URL (default $MQRPC_BROKER)")
	pf.DurationVar(&a.timeout, "timeout", 5*time.Second, "bound on connecting, and the deadline of each call")
	root.AddCommand(a.lsCmd(), a.infoCmd(), a.pingCmd(), a.statsCmd(), a.callCmd(), a.benchCmd(), a.demoCmd())
	return root
}

// connect opens the broker, within the timeout.
func (a *app) connect() (broker.Broker, error) {
	if a.brokerURL == "" {
		return nil, fail(rpc.InvalidArgument, "no broker: give -b URL or set MQRPC_BROKER (nats://..., amqp://..., rocketmq://...)")
	}
	type result struct {
		b   broker.Broker
		err error
	}
	ch := make(chan result, 1)
	go func() {
		b, err := a.open(a.brokerURL)
		ch <- result{b, err}
	}()
	t := time.NewTimer(a.timeout)
	defer t.Stop()
	select {
	case r := <-ch:
		if r.err != nil {
			if errors.Is(r.err, dial.ErrUnknownScheme) {
				return nil, fail(rpc.InvalidArgument, "%v", r.err)
			}
			return nil, fail(rpc.Unavailable, "cannot reach broker %s: %v", dial.Redact(a.brokerURL), r.err)
		}
		return r.b, nil
	case <-t.C:
		// The dial goroutine may still finish; the process ends soon.
		return nil, fail(rpc.Unavailable, "cannot reach broker %s within %v", dial.Redact(a.brokerURL), a.timeout)
	}
}

// closeBroker closes b within a bound, so a stuck broker cannot hold the
// exit.
func closeBroker(b broker.Broker) {
	done := make(chan struct{})
	go func() { _ = b.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
	}
}

func withTimeout(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d)
}
