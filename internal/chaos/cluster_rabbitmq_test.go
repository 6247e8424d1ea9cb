//go:build chaos

package chaos_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/internal/chaos"
	"github.com/mqrpc/mqrpc/middleware"
)

// rabbitRecoverWithin: every call started this long after a RabbitMQ
// node's death must succeed (the first must within clusterRecoverGoal).
const rabbitRecoverWithin = 15 * time.Second

// TestChaosClusterRabbitMQ runs
// TestChaosClusterRabbitMQ/rabbitmq-cluster-quorum/{kill-connected,kill-leader}
// (quorum queues) and TestChaosClusterRabbitMQ/rabbitmq-cluster-fast/kill-connected
// (fast mode) on a private 3-node RabbitMQ cluster.
func TestChaosClusterRabbitMQ(t *testing.T) {
	// Started by the first subtest that runs, so a -run that selects
	// none (scripts/chaos nats) starts nothing.
	var cl *chaos.RabbitMQCluster
	cluster := func(t *testing.T) *chaos.RabbitMQCluster {
		if cl == nil {
			cl = startCluster(t, "rabbitmq", func(dir string) (*chaos.RabbitMQCluster, error) { return chaos.StartRabbitMQCluster(dir, 3) })
		}
		return cl
	}
	t.Cleanup(func() {
		if cl != nil {
			cl.Close()
		}
	})
	quorum := chaos.Target{Name: "rabbitmq-cluster-quorum", Kind: chaos.KindRabbitMQ, Durable: true}
	t.Run(quorum.Name, func(t *testing.T) {
		cl := cluster(t)
		t.Run("kill-connected", func(t *testing.T) { runRabbitClusterKill(t, quorum, cl, "kill-connected") })
		t.Run("kill-leader", func(t *testing.T) { runRabbitClusterKill(t, quorum, cl, "kill-leader") })
	})
	fast := chaos.Target{Name: "rabbitmq-cluster-fast", Kind: chaos.KindRabbitMQ}
	t.Run(fast.Name, func(t *testing.T) {
		cl := cluster(t)
		t.Run("kill-connected", func(t *testing.T) { runRabbitClusterKill(t, fast, cl, "kill-connected") })
	})
}

// runRabbitClusterKill is runClusterKill on RabbitMQ: two servers on nodes
// 2 and 3 sharing one Dedup, the client on node 1, quorum queues (or fast
// mode); a third into the load it SIGKILLs the client's node or the request
// queue's leader, and starts it again a third later.
func runRabbitClusterKill(t *testing.T, target chaos.Target, cl *chaos.RabbitMQCluster, which string) {
	s := newScenario(t, target, which)
	defer s.finish()
	// Down past the goal: RabbitMQ's boot takes longer anyway.
	s.minDown = clusterRecoverGoal + time.Second
	subj := subject(which)
	open := chaos.Target{Name: "rabbitmq-fast", Kind: chaos.KindRabbitMQ}
	if target.Durable {
		open = chaos.Target{Name: "rabbitmq-quorum", Kind: chaos.KindRabbitMQ, Durable: true}
	}
	// Room for every outcome of the scenario (~40 000 in 10 s): a
	// redelivery comes up to 20 s after the first run, once the killed
	// node is back, and the default 10 000 would have forgotten it.
	srv := chaos.NewServer(s.log, middleware.NewMemoryDedupStore(1<<20, 0))
	for i := 1; i <= 2; i++ {
		b, err := open.Open(cl.URLFrom(i), fmt.Sprintf("server-%d", i))
		require.NoError(t, err)
		s.serveOn(b, subj, srv)
	}
	cb, err := open.Open(cl.URLFrom(0), "client")
	require.NoError(t, err)
	c := s.clusterClient(cb, subj)

	pick := func() int {
		if which == "kill-leader" {
			leader, err := cl.QueueLeader(subj, -1)
			require.NoError(t, err)
			return cl.Index(leader)
		}
		return 0 // the client connected to the first URL of its list
	}
	back := func(int) {
		if leader, err := cl.QueueLeader(subj, -1); err == nil {
			s.note("queue leader now %s", leader)
		}
	}
	res, killAt, _ := killUnderLoad(t, s, c, cb, subj, cl, pick, back, 0)
	e := checkRecovery(t, s, which, res, killAt, clusterRecoverGoal, rabbitRecoverWithin)
	if !target.Durable {
		assertFailedAtOnce(t, e)
	}
}
