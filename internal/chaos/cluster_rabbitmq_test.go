//go:build chaos

package chaos_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/internal/chaos"
	"github.com/mqrpc/mqrpc/internal/testenv"
	"github.com/mqrpc/mqrpc/middleware"
)

// rabbitRecoverWithin: every call started this long after a RabbitMQ
// node's death must succeed (the first must within clusterRecoverGoal).
const rabbitRecoverWithin = 15 * time.Second

// TestChaosClusterRabbitMQ runs
// TestChaosClusterRabbitMQ/rabbitmq-cluster-quorum/{kill-connected,kill-leader}
// on a private 3-node RabbitMQ cluster with quorum queues.
func TestChaosClusterRabbitMQ(t *testing.T) {
	target := chaos.Target{Name: "rabbitmq-cluster-quorum", Kind: chaos.KindRabbitMQ, Durable: true}
	t.Run(target.Name, func(t *testing.T) {
		// Started inside the subtest, so a -run that selects none
		// (scripts/chaos nats) starts nothing.
		dir, err := os.MkdirTemp("", "mqrpc-chaos-rabbitcluster-")
		require.NoError(t, err)
		begin := time.Now()
		cl, err := chaos.StartRabbitMQCluster(dir, 3)
		if errors.Is(err, chaos.ErrNotInstalled) {
			if testenv.CI() {
				t.Fatal(err)
			}
			t.Skip(err)
		}
		require.NoError(t, err)
		t.Cleanup(cl.Close)
		t.Logf("private RabbitMQ cluster %v up in %v (data in %s)", cl.Names, time.Since(begin).Round(time.Millisecond), dir)
		t.Run("kill-connected", func(t *testing.T) { runRabbitClusterKill(t, target, cl, "kill-connected") })
		t.Run("kill-leader", func(t *testing.T) { runRabbitClusterKill(t, target, cl, "kill-leader") })
	})
}

// runRabbitClusterKill is runClusterKill on RabbitMQ: two servers on nodes
// 2 and 3 sharing one Dedup, the client on node 1, quorum queues; a third
// into the load it SIGKILLs the client's node or the request queue's
// leader, and starts it again a third later.
func runRabbitClusterKill(t *testing.T, target chaos.Target, cl *chaos.RabbitMQCluster, which string) {
	s := newScenario(t, target, which)
	defer s.finish()
	subj := subject(which)
	open := chaos.Target{Name: "rabbitmq-quorum", Kind: chaos.KindRabbitMQ, Durable: true}
	// Room for every outcome of the scenario (~40 000 in 10 s): a
	// redelivery comes up to 20 s after the first run, once the killed
	// node is back, and the default 10 000 would have forgotten it.
	srv := chaos.NewServer(s.log, middleware.NewMemoryDedupStore(1<<20, 0))
	for i := 1; i <= 2; i++ {
		b, err := open.Open(cl.URLFrom(i), fmt.Sprintf("server-%d", i))
		require.NoError(t, err)
		sub, err := b.Serve(subj, srv, broker.WithConcurrency(64))
		require.NoError(t, err)
		s.closers = append(s.closers, func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_ = sub.Stop(ctx)
			_ = b.Close()
		})
	}
	cb, err := open.Open(cl.URLFrom(0), "client")
	require.NoError(t, err)
	s.closers = append(s.closers, func() { _ = cb.Close() })
	c := newClient(cb)
	awaitService(t, c, subj, recoverWithin)

	d := loadDuration(t)
	stop := make(chan struct{})
	type result struct {
		res   *chaos.LoadResult
		times []chaos.CallTime
	}
	done := make(chan result, 1)
	go func() {
		res, times := chaos.RunTimedLoad(c, cb, s.loadConfig(subj), stop)
		done <- result{res, times}
	}()
	var (
		once sync.Once
		out  result
	)
	stopLoad := func() result {
		once.Do(func() {
			close(stop)
			out = <-done
		})
		return out
	}
	s.closers = append(s.closers, func() { stopLoad() })

	time.Sleep(d / 3) // load before the kill: the scenario's shape, not synchronisation
	idx := 0          // the client connected to the first URL of its list
	if which == "kill-leader" {
		leader, err := cl.QueueLeader(subj, -1)
		require.NoError(t, err)
		idx = cl.Index(leader)
		require.GreaterOrEqual(t, idx, 0, "node %q", leader)
	}
	killAt := time.Now()
	require.NoError(t, cl.Kill(idx))
	s.note("SIGKILLed %s", cl.Names[idx])
	time.Sleep(d / 3) // load with a node down
	back := time.Now()
	require.NoError(t, cl.Start(idx))
	s.note("back in %v", time.Since(back).Round(time.Millisecond))
	if leader, err := cl.QueueLeader(subj, -1); err == nil {
		s.note("queue leader now %s", leader)
	}
	time.Sleep(d / 3) // load with every node up again
	r := stopLoad()
	s.load(r.res)

	e := chaos.EffectOf(r.times, killAt, rabbitRecoverWithin)
	s.note("in flight at the kill: %s (failures returned within %v); first new call ok %v after the kill; %d calls started %v after it failed",
		chaos.FormatCodes(e.InFlight), e.InFlightEnded.Round(time.Millisecond), e.Recovered.Round(time.Millisecond),
		e.FailedAfter, rabbitRecoverWithin)
	t.Logf("%s: %s", which, s.row.Note)
	assert.GreaterOrEqual(t, e.Recovered, time.Duration(0), "no call that started after the kill succeeded")
	assert.LessOrEqual(t, e.Recovered, clusterRecoverGoal, "new calls succeeded only %v after the kill", e.Recovered)
	assert.Zero(t, e.FailedAfter, "calls started %v after the kill failed", rabbitRecoverWithin)
}
