package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/testscript"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	mqgrpc "github.com/mqrpc/mqrpc/adapters/grpc"
	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/dial"
	"github.com/mqrpc/mqrpc/broker/nats/embedded"
	"github.com/mqrpc/mqrpc/internal/testenv"
	"github.com/mqrpc/mqrpc/rpc/control"
)

func TestMain(m *testing.M) {
	testscript.Main(m, map[string]func(){
		"mqrpc": func() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) },
	})
}

// brokerURLs are the brokers the scripts run against: an embedded NATS
// server started by the test, and the shared real brokers.
var brokerURLs = map[string]func(t *testing.T) string{
	"embedded": func(t *testing.T) string {
		srv, err := embedded.Start()
		require.NoError(t, err)
		t.Cleanup(srv.Stop)
		return srv.URL()
	},
	"nats": func(t *testing.T) string { return testenv.NATSURL(t) },
	"amqp": func(t *testing.T) string { return testenv.AMQPURL(t) },
	"rocketmq": func(t *testing.T) string {
		return "rocketmq://" + testenv.RocketMQNoRace(t)
	},
}

// TestScripts runs the scripts in testdata/script against every broker:
// the mqrpc binary (this test binary, re-executed) calls demo services the
// test serves. Each run names its services uniquely, so runs sharing a
// broker do not see each other's.
func TestScripts(t *testing.T) {
	for _, name := range []string{"embedded", "nats", "amqp", "rocketmq"} {
		t.Run(name, func(t *testing.T) {
			url := brokerURLs[name](t)
			b, err := dial.Open(url)
			require.NoError(t, err)
			t.Cleanup(func() { _ = b.Close() })
			id := strings.ReplaceAll(broker.NewID(), "-", "_")
			// SSVC is for the stats script alone, whose counts the
			// scripts running beside it must not change.
			svc, msvc, ssvc := "Demo_"+id, "DemoMsgpack_"+id, "DemoStats_"+id
			for _, s := range []struct {
				name    string
				msgpack bool
			}{{svc, false}, {msvc, true}, {ssvc, false}} {
				srv, err := serveDemo(b, s.name, s.msgpack)
				require.NoError(t, err)
				t.Cleanup(func() {
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					defer cancel()
					_ = srv.Stop(ctx)
				})
			}
			// A gRPC service through adapters/grpc: the health
			// service of grpc-go.
			gsvc := "Health_" + id
			gsrv := mqgrpc.NewServer()
			healthpb.RegisterHealthServer(gsrv, health.NewServer())
			g, err := control.Serve(b, gsvc, gsrv)
			require.NoError(t, err)
			t.Cleanup(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				_ = g.Stop(ctx)
			})
			waitServing(t, b, svc)
			testscript.Run(t, testscript.Params{
				Dir: "testdata/script",
				Setup: func(env *testscript.Env) error {
					env.Setenv("MQRPC_BROKER", url)
					env.Setenv("SVC", svc)
					env.Setenv("MSVC", msvc)
					env.Setenv("SSVC", ssvc)
					env.Setenv("GSVC", gsvc)
					env.Setenv("ID", id)
					env.Setenv("BROKER_KIND", name)
					return nil
				},
				// [broadcast]: the broker has a control plane
				// (broker.Broadcaster); [rocketmq]: the broker is
				// RocketMQ, which keeps requests for servers that
				// start later (no "no responders").
				Condition: func(cond string) (bool, error) {
					switch cond {
					case "broadcast":
						_, ok := b.(broker.Broadcaster)
						return ok, nil
					case "rocketmq":
						return name == "rocketmq", nil
					}
					return false, fmt.Errorf("unknown condition %q", cond)
				},
				Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
					"exitcode": exitCode,
				},
			})
		})
	}
}

// The mqrpc command opens rocketmq:// URLs through broker/dial's
// registration (dialrocketmq), with no constructor of its own.
func TestRocketMQSchemeRegistered(t *testing.T) {
	assert.Contains(t, dial.Schemes(), "rocketmq")
}

// TestRocketMQWithoutRace runs the RocketMQ scripts again without the
// race detector (see testenv.RocketMQNoRace).
func TestRocketMQWithoutRace(t *testing.T) {
	testenv.RerunWithoutRace(t, "^TestScripts$/^rocketmq$")
}

// waitServing waits until a call to service succeeds: a RocketMQ consumer
// group takes a moment to be assigned its queues.
func waitServing(t *testing.T, b broker.Broker, service string) {
	a := &app{timeout: 5 * time.Second}
	tg := &target{service: service, method: "Add", body: []byte(`{"a":1,"b":1}`)}
	cl, err := a.newCaller(b, tg, &callFlags{codec: "json"})
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := cl.call(ctx)
		return err == nil
	}, 60*time.Second, 200*time.Millisecond, "the demo service never answered")
}

// exitCode runs a command and checks its exit status:
// exitcode N cmd args...
func exitCode(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 2 {
		ts.Fatalf("usage: exitcode N command [args...]")
	}
	want, err := strconv.Atoi(args[0])
	ts.Check(err)
	start := time.Now()
	err = ts.Exec(args[1], args[2:]...)
	got := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		got = ee.ExitCode()
	} else if err != nil {
		ts.Fatalf("%v", err)
	}
	if got != want {
		ts.Fatalf("exit status %d, want %d", got, want)
	}
	ts.Logf("exit status %d after %v", got, time.Since(start).Round(time.Millisecond))
}
