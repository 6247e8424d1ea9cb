package nats_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/broker"
	natsbroker "github.com/mqrpc/mqrpc/broker/nats"
	"github.com/mqrpc/mqrpc/internal/testenv"
)

// crashChildEnv makes the test binary a server process for
// TestDurablePoisonCrashChargesOnlyItself; its value is the child's
// settings as JSON.
const crashChildEnv = "MQRPC_NATS_CRASH_CHILD"

type crashChild struct {
	URL     string
	JS      natsbroker.JetStreamConfig
	Subject string
	Report  string
}

// A request that crashes its server process is dead-lettered after
// MaxDeliver crashes, and the healthy requests delivered to the same
// process (prefetched in the same pull batch, or handled at the same time)
// are not charged for those crashes: every one is served, none is
// dead-lettered. The server runs as a child process that the poison kills
// with os.Exit; a new child is started after every crash.
func TestDurablePoisonCrashChargesOnlyItself(t *testing.T) {
	if v := os.Getenv(crashChildEnv); v != "" {
		runCrashChild(t, v)
		return
	}
	url := testenv.NATSURL(t)
	js := testJetStream(t, url, func(c *natsbroker.JetStreamConfig) {
		c.AckWait = time.Second // a crashed process's requests come back soon
		c.MaxDeliver = 5
	})
	child := crashChild{URL: url, JS: js, Subject: uniqueSubject(t), Report: uniqueSubject(t) + ".report"}
	settings, err := json.Marshal(child)
	require.NoError(t, err)

	nc, err := natsgo.Connect(url)
	require.NoError(t, err)
	defer nc.Close()
	var (
		mu     sync.Mutex
		served = map[string]int{}
		starts int
	)
	_, err = nc.Subscribe(child.Report, func(m *natsgo.Msg) {
		mu.Lock()
		defer mu.Unlock()
		if id := string(m.Data); id == "poison" {
			starts++
		} else {
			served[id]++
		}
	})
	require.NoError(t, err)
	require.NoError(t, nc.Flush())

	const healthy = 20
	client := newBroker(t, url, natsbroker.WithJetStream(js))
	send := func(id string) {
		require.NoError(t, client.Send(ctxTimeout(t, 5*time.Second), &broker.Message{ID: id, Subject: child.Subject, Body: []byte(id)}))
	}
	send("poison")
	for i := range healthy {
		send(fmt.Sprintf("h%02d", i))
	}

	jsc, err := jetstream.New(nc)
	require.NoError(t, err)
	deadLetters := func() uint64 {
		s, err := jsc.Stream(context.Background(), js.Stream+"_DEAD")
		if err != nil {
			return 0
		}
		info, err := s.Info(context.Background())
		if err != nil {
			return 0
		}
		return info.State.Msgs
	}
	finished := func() bool {
		mu.Lock()
		defer mu.Unlock()
		// Every request either served or dead-lettered (a dead-lettered
		// healthy one ends the run early; the checks below catch it).
		dl := deadLetters()
		return dl >= 1 && uint64(len(served))+dl >= healthy+1
	}

	var out testenv.LogBuffer
	crashes := 0
	end := time.Now().Add(2 * time.Minute)
	for !finished() && time.Now().Before(end) {
		cmd := exec.Command(os.Args[0], "-test.run=^"+t.Name()+"$")
		cmd.Env = append(os.Environ(), crashChildEnv+"="+string(settings))
		cmd.Stdout, cmd.Stderr = &out, &out
		require.NoError(t, cmd.Start())
		exited := make(chan struct{})
		go func() {
			_ = cmd.Wait()
			close(exited)
		}()
		tick := time.NewTicker(50 * time.Millisecond)
	wait:
		for {
			select {
			case <-exited:
				crashes++
				break wait
			case <-tick.C:
				if finished() || time.Now().After(end) {
					_ = cmd.Process.Kill()
					<-exited
					break wait
				}
			}
		}
		tick.Stop()
	}
	require.True(t, finished(), "not finished after %d crashes; child output:\n%s", crashes, out.String())
	t.Logf("%d crashes, %d healthy requests served, %d dead letters", crashes, len(served), deadLetters())

	mu.Lock()
	defer mu.Unlock()
	assert.Equal(t, 5, crashes, "one crash per delivery of the poison, MaxDeliver in all")
	assert.Equal(t, 5, starts)
	assert.Len(t, served, healthy, "every healthy request served")
	assert.Equal(t, uint64(1), deadLetters(), "only the poison is dead-lettered")
	s, err := jsc.Stream(context.Background(), js.Stream+"_DEAD")
	require.NoError(t, err)
	dead, err := s.GetLastMsgForSubject(context.Background(), js.DeadLetterPrefix+"."+child.Subject)
	require.NoError(t, err)
	assert.Equal(t, "poison", string(dead.Data))
	assert.Equal(t, "5", dead.Header.Get(natsbroker.HeaderDeliveries))
	workQueueEmpty(t, jsc, js)
}

// runCrashChild serves the test's subject until the poison request makes
// it exit, as a crash would: nothing is acknowledged or cleaned up.
func runCrashChild(t *testing.T, settings string) {
	var c crashChild
	require.NoError(t, json.Unmarshal([]byte(settings), &c))
	nc, err := natsgo.Connect(c.URL)
	require.NoError(t, err)
	report := func(id string) {
		_ = nc.Publish(c.Report, []byte(id))
		_ = nc.Flush()
	}
	b, err := natsbroker.New(c.URL, natsbroker.WithJetStream(c.JS))
	require.NoError(t, err)
	_, err = b.Serve(c.Subject, broker.HandlerFunc(func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
		if req.ID == "poison" {
			report(req.ID)
			os.Exit(3)
		}
		time.Sleep(50 * time.Millisecond) // still running when the poison strikes
		report(req.ID)
		return nil, nil
	}), broker.WithConcurrency(4))
	require.NoError(t, err)
	time.Sleep(2 * time.Minute) // the parent kills it first
	os.Exit(4)
}
