package amqp_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/amqp"
)

// The crash child: the test binary re-executed as a server process that
// serves one durable subject and kills itself (SIGKILL) on a request whose
// body is "poison". It logs every request it takes to a file.
const (
	crashChildEnv = "MQRPC_AMQP_CRASH_CHILD" // the subject
	crashURLEnv   = "MQRPC_AMQP_CRASH_URL"
	crashQTEnv    = "MQRPC_AMQP_CRASH_QUEUE_TYPE"
	crashMaxEnv   = "MQRPC_AMQP_CRASH_MAX_DELIVERIES"
	crashLogEnv   = "MQRPC_AMQP_CRASH_LOG"
)

// crashOptions are the options of the crash test's clients and servers.
func crashOptions(qt amqp.QueueType, maxDeliveries int) []amqp.Option {
	return []amqp.Option{
		amqp.WithDurable(qt),
		amqp.WithDeadLetter("", maxDeliveries),
		amqp.WithRetryBackoff(50*time.Millisecond, 200*time.Millisecond),
	}
}

func runCrashChild() int {
	maxDeliveries, _ := strconv.Atoi(os.Getenv(crashMaxEnv))
	opts := crashOptions(amqp.QueueType(os.Getenv(crashQTEnv)), maxDeliveries)
	if os.Getenv("MQRPC_AMQP_CRASH_DEBUG") != "" {
		opts = append(opts, amqp.WithLogger(slog.New(slog.NewTextHandler(os.Stderr, nil))))
	}
	b, err := amqp.New(os.Getenv(crashURLEnv), opts...)
	if err != nil {
		fmt.Fprintln(os.Stderr, "crash child:", err)
		return 2
	}
	f, err := os.OpenFile(os.Getenv(crashLogEnv), os.O_APPEND|os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		fmt.Fprintln(os.Stderr, "crash child:", err)
		return 2
	}
	var mu sync.Mutex
	logLine := func(s string) {
		mu.Lock()
		defer mu.Unlock()
		_, _ = f.WriteString(s + "\n")
		_ = f.Sync()
	}
	_, err = b.Serve(os.Getenv(crashChildEnv), broker.HandlerFunc(func(_ context.Context, req *broker.Message) (*broker.Message, error) {
		if string(req.Body) == "poison" {
			logLine("poison " + req.ID)
			_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {}
		}
		time.Sleep(5 * time.Millisecond)
		logLine("ok " + req.ID)
		return nil, nil
	}), broker.WithConcurrency(4))
	if err != nil {
		fmt.Fprintln(os.Stderr, "crash child:", err)
		return 2
	}
	logLine("ready")
	select {} // until killed
}

// TestPoisonCrashesServer: a request that kills its server process
// (SIGKILL) each time it runs is dead-lettered after maxDeliveries
// deliveries, on classic and quorum queues, and the 20 healthy requests
// queued behind it are all served, none dead-lettered. A new server process
// is started after every crash, as a supervisor would.
func TestPoisonCrashesServer(t *testing.T) {
	for _, qt := range []amqp.QueueType{amqp.ClassicQueue, amqp.QuorumQueue} {
		t.Run(string(qt), func(t *testing.T) {
			const maxDeliveries, healthy = 3, 20
			url, _ := vhostURL(t)
			subj := "poison-" + broker.NewID()
			client := open(t, url, crashOptions(qt, maxDeliveries)...)
			ctx := ctxT(t, 60*time.Second)
			// Queued before any server runs (the client declares the
			// queue): the poison first, the healthy ones behind it.
			require.NoError(t, client.Send(ctx, &broker.Message{ID: "poison", Subject: subj, Body: []byte("poison")}))
			for i := range healthy {
				require.NoError(t, client.Send(ctx, &broker.Message{ID: fmt.Sprintf("h-%d", i), Subject: subj, Body: []byte("ok")}))
			}
			_, ch := rawChannel(t, url)
			dlq := subj + ".dead-letter"
			_, err := ch.QueueDeclare(dlq, true, false, false, false, nil)
			require.NoError(t, err)

			logPath := filepath.Join(t.TempDir(), "served.log")
			exe, err := os.Executable()
			require.NoError(t, err)
			var child *exec.Cmd
			var exited chan struct{}
			start := func() {
				child = exec.Command(exe, "-test.run=^$")
				child.Env = append(os.Environ(), crashChildEnv+"="+subj, crashURLEnv+"="+url,
					crashQTEnv+"="+string(qt), crashMaxEnv+"="+strconv.Itoa(maxDeliveries), crashLogEnv+"="+logPath)
				child.Stderr = os.Stderr
				require.NoError(t, child.Start())
				exited = make(chan struct{})
				go func(c *exec.Cmd, done chan struct{}) {
					_ = c.Wait()
					close(done)
				}(child, exited)
			}
			start()
			t.Cleanup(func() {
				_ = child.Process.Kill()
				<-exited
			})

			crashes := 0
			var served map[string]int
			var poisoned int
			for deadline := time.Now().Add(45 * time.Second); ; {
				served, poisoned = readServed(t, logPath)
				q, err := ch.QueueDeclarePassive(dlq, true, false, false, false, nil)
				require.NoError(t, err)
				if len(served) == healthy && q.Messages >= 1 {
					break
				}
				require.True(t, time.Now().Before(deadline),
					"after %d crashes: %d of %d healthy requests served, %d dead-lettered", crashes, len(served), healthy, q.Messages)
				select {
				case <-exited:
					crashes++
					require.LessOrEqual(t, crashes, maxDeliveries,
						"the poison crashed the server more often than its delivery limit (%d healthy served)", len(served))
					start()
				case <-time.After(50 * time.Millisecond):
				}
			}
			assert.Equal(t, maxDeliveries, crashes, "crashes")
			assert.Equal(t, maxDeliveries, poisoned, "deliveries of the poison")

			d, ok, err := ch.Get(dlq, true)
			require.NoError(t, err)
			require.True(t, ok)
			assert.Equal(t, "poison", d.MessageId)
			assert.EqualValues(t, maxDeliveries, d.Headers["x-mqrpc-deliveries"])
			assert.Contains(t, d.Headers["x-mqrpc-error"], "lost with its server")
			_, ok, err = ch.Get(dlq, true)
			require.NoError(t, err)
			assert.False(t, ok, "a healthy request was dead-lettered with the poison")
		})
	}
}

// readServed reads the crash child's log: the healthy requests served (by
// ID, with how often) and how often the poison ran.
func readServed(t *testing.T, path string) (served map[string]int, poisoned int) {
	t.Helper()
	served = map[string]int{}
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return served, 0
	}
	require.NoError(t, err)
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		switch kind, id, _ := strings.Cut(sc.Text(), " "); kind {
		case "ok":
			served[id]++
		case "poison":
			poisoned++
		}
	}
	return served, poisoned
}
