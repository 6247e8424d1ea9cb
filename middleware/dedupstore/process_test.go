package dedupstore_test

import (
	"bufio"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/broker"
	natsbroker "github.com/mqrpc/mqrpc/broker/nats"
	"github.com/mqrpc/mqrpc/internal/testenv"
	"github.com/mqrpc/mqrpc/middleware"
	"github.com/mqrpc/mqrpc/middleware/dedupstore/natskv"
	"github.com/mqrpc/mqrpc/middleware/dedupstore/redisstore"
	"github.com/mqrpc/mqrpc/rpc"
)

// The environment of a child server process (runChild).
const (
	envChild   = "MQRPC_DEDUPSTORE_CHILD" // the store: redis or natskv
	envNATS    = "MQRPC_DEDUPSTORE_NATS"
	envRedis   = "MQRPC_DEDUPSTORE_REDIS"
	envPlace   = "MQRPC_DEDUPSTORE_PLACE" // Redis key prefix, or NATS bucket
	envSubject = "MQRPC_DEDUPSTORE_SUBJECT"
)

// lease is the children's WithDedupLease: short, so a killed child's
// claim expires soon.
const lease = 2 * time.Second

func TestMain(m *testing.M) {
	if os.Getenv(envChild) != "" {
		os.Exit(runChild())
	}
	os.Exit(m.Run())
}

type workRequest struct {
	HoldMS int64 `json:"hold_ms"`
}

type workReply struct {
	PID int `json:"pid"`
}

// runChild serves the work method with Dedup on the shared store until
// its stdin closes or it is killed. It reports on stdout, one line per
// write: "ready", "S <id>" when a run starts, "E <id>" when it executed.
func runChild() int {
	fail := func(err error) int { fmt.Fprintln(os.Stderr, "child:", err); return 1 }
	ctx := context.Background()
	var store middleware.DedupStore
	switch os.Getenv(envChild) {
	case "redis":
		opts, err := redis.ParseURL(os.Getenv(envRedis))
		if err != nil {
			return fail(err)
		}
		c := redis.NewClient(opts)
		defer c.Close()
		store = redisstore.New(c, redisstore.WithPrefix(os.Getenv(envPlace)))
	case "natskv":
		nc, err := natsgo.Connect(os.Getenv(envNATS))
		if err != nil {
			return fail(err)
		}
		defer nc.Close()
		js, err := jetstream.New(nc)
		if err != nil {
			return fail(err)
		}
		if store, err = natskv.New(ctx, js, os.Getenv(envPlace)); err != nil {
			return fail(err)
		}
	default:
		return fail(fmt.Errorf("unknown store %q", os.Getenv(envChild)))
	}
	var mu sync.Mutex
	line := func(s string) {
		mu.Lock()
		defer mu.Unlock()
		_, _ = io.WriteString(os.Stdout, s+"\n")
	}
	srv := rpc.NewServer(rpc.WithServerMiddleware(middleware.Dedup(middleware.WithDedupStore(store), middleware.WithDedupLease(lease))))
	err := rpc.Handle(srv, "Work", func(ctx context.Context, in *workRequest) (*workReply, error) {
		id := rpc.RequestMessage(ctx).ID
		line("S " + id)
		t := time.NewTimer(time.Duration(in.HoldMS) * time.Millisecond)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			return nil, rpc.NewError(rpc.CodeOf(ctx.Err()), ctx.Err()) // not executed
		}
		line("E " + id)
		return &workReply{PID: os.Getpid()}, nil
	})
	if err != nil {
		return fail(err)
	}
	b, err := natsbroker.New(os.Getenv(envNATS))
	if err != nil {
		return fail(err)
	}
	defer b.Close()
	sub, err := b.Serve(os.Getenv(envSubject), srv)
	if err != nil {
		return fail(err)
	}
	line("ready")
	_, _ = io.Copy(io.Discard, os.Stdin) // until the parent is done with us
	stop, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_ = sub.Stop(stop)
	return 0
}

// child is a server process started by the test.
type child struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	done  chan struct{} // closed when stdout ended

	mu    sync.Mutex
	lines []string
}

func startChild(t *testing.T, env []string) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	require.NoError(t, err)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	c := &child{cmd: cmd, stdin: stdin, done: make(chan struct{})}
	go func() {
		defer close(c.done)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			c.mu.Lock()
			c.lines = append(c.lines, sc.Text())
			c.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		_ = c.stdin.Close()
		exited := make(chan struct{})
		go func() { <-c.done; _ = cmd.Wait(); close(exited) }()
		select {
		case <-exited:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	})
	require.True(t, c.await("ready", 30*time.Second), "child started")
	return c
}

// await waits until the child wrote line, or within passed.
func (c *child) await(line string, within time.Duration) bool {
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if c.count(line) > 0 {
			return true
		}
		time.Sleep(10 * time.Millisecond) // poll interval of a bounded wait
	}
	return false
}

func (c *child) count(line string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, l := range c.lines {
		if l == line {
			n++
		}
	}
	return n
}

// stop closes the child's stdin, which ends it, and waits until its
// output is read, so the counts are final.
func (c *child) stop() {
	_ = c.stdin.Close()
	<-c.done
}

// kill ends the child with SIGKILL and waits until it is gone.
func (c *child) kill(t *testing.T) {
	require.NoError(t, c.cmd.Process.Signal(syscall.SIGKILL))
	<-c.done
}

// TestAcrossProcesses runs server processes that share a store, over the
// real NATS server, for each shared store:
//
//  1. A server process is killed with SIGKILL while it runs a request;
//     the request, retried with the same ID, reaches a server process
//     started afterwards, which waits for the dead one's claim to expire
//     and runs it: executed once, not lost.
//  2. A repeat that reaches one process while another still runs the
//     request waits and is answered with the first run's reply.
//  3. A repeat after the outcome is answered from the store.
func TestAcrossProcesses(t *testing.T) {
	natsURL := testenv.NATSURL(t)
	stores := []struct {
		name  string
		setup func(t *testing.T) (env []string)
	}{
		{name: "redis", setup: func(t *testing.T) []string {
			return []string{envChild + "=redis", envRedis + "=" + testenv.RedisURL(t), envPlace + "=mqrpctest:procs:" + rand.Text()[:10] + ":"}
		}},
		{name: "natskv", setup: func(t *testing.T) []string {
			nc, err := natsgo.Connect(natsURL)
			require.NoError(t, err)
			t.Cleanup(nc.Close)
			js, err := jetstream.New(nc)
			require.NoError(t, err)
			bucket := "mqrpctest_procs_" + strings.ToLower(rand.Text()[:10])
			_, err = natskv.New(context.Background(), js, bucket)
			require.NoError(t, err)
			t.Cleanup(func() { _ = js.DeleteKeyValue(context.Background(), bucket) })
			return []string{envChild + "=natskv", envPlace + "=" + bucket}
		}},
	}
	for _, st := range stores {
		t.Run(st.name, func(t *testing.T) {
			env := append(st.setup(t), envNATS+"="+natsURL)
			subject := func(name string) string { return "mqrpctest.dedupprocs." + name + "." + broker.NewID() }
			b, err := natsbroker.New(natsURL)
			require.NoError(t, err)
			defer b.Close()
			client := rpc.NewClient(b)
			call := func(ctx context.Context, subj, id string, hold time.Duration, header *broker.Header) (*workReply, error) {
				opts := []rpc.CallOption{rpc.WithMessageID(id)}
				if header != nil {
					opts = append(opts, rpc.WithReplyHeader(header))
				}
				return rpc.Invoke[workRequest, workReply](ctx, client, subj, "Work", &workRequest{HoldMS: hold.Milliseconds()}, opts...)
			}

			// 1. SIGKILL mid-request, redelivery to a fresh process.
			subjA := subject("a")
			a := startChild(t, append(env, envSubject+"="+subjA))
			killed := "killed-" + broker.NewID()
			firstCtx, firstCancel := context.WithTimeout(context.Background(), 30*time.Second)
			firstCall := make(chan struct{})
			go func() {
				defer close(firstCall)
				_, _ = call(firstCtx, subjA, killed, time.Hour, nil) // dies with the process
			}()
			require.True(t, a.await("S "+killed, 30*time.Second), "the first process took the request")
			a.kill(t)
			killedAt := time.Now()
			firstCancel()
			<-firstCall

			subjB := subject("b")
			fresh := startChild(t, append(env, envSubject+"="+subjB))
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			got, err := call(ctx, subjB, killed, 0, nil)
			require.NoError(t, err, "the redelivered request is served by the fresh process")
			assert.Equal(t, fresh.cmd.Process.Pid, got.PID)
			servedAfter := time.Since(killedAt)
			assert.GreaterOrEqual(t, servedAfter, lease/2, "the fresh process waited for the dead one's claim to expire")

			// 2. A repeat in another process while the first runs.
			subjC := subject("c")
			other := startChild(t, append(env, envSubject+"="+subjC))
			inFlight := "inflight-" + broker.NewID()
			held := make(chan *workReply, 1)
			go func() {
				got, err := call(ctx, subjB, inFlight, 2*lease, nil) // longer than the lease: renewed
				assert.NoError(t, err)
				held <- got
			}()
			require.True(t, fresh.await("S "+inFlight, 30*time.Second))
			var header broker.Header
			got, err = call(ctx, subjC, inFlight, 0, &header)
			require.NoError(t, err)
			assert.Equal(t, fresh.cmd.Process.Pid, got.PID, "the repeat got the first run's reply")
			assert.Equal(t, "true", header.Get(middleware.HeaderReplayed))
			assert.Equal(t, fresh.cmd.Process.Pid, (<-held).PID)

			// 3. A repeat after the outcome, in yet another process.
			header = nil
			got, err = call(ctx, subjC, killed, 0, &header)
			require.NoError(t, err)
			assert.Equal(t, fresh.cmd.Process.Pid, got.PID)
			assert.Equal(t, "true", header.Get(middleware.HeaderReplayed))

			// The children's whole output, then the counts.
			fresh.stop()
			other.stop()
			assert.Zero(t, a.count("E "+killed), "the killed process did not execute it")
			assert.Equal(t, 1, fresh.count("S "+killed)+other.count("S "+killed), "the redelivered request ran once")
			assert.Equal(t, 1, fresh.count("E "+killed), "executed once")
			assert.Zero(t, other.count("S "+inFlight), "the repeat in another process did not run")
			assert.Equal(t, 1, fresh.count("E "+inFlight))
			t.Logf("executions of %s: killed process %d, fresh %d, other %d; served %v after the kill",
				killed, a.count("E "+killed), fresh.count("E "+killed), other.count("E "+killed), servedAfter.Round(time.Millisecond))
		})
	}
}
