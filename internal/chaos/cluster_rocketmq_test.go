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

// rocketRecoverWithin: a call started this long after a RocketMQ master's
// death must succeed (its request sent to the other master). Not every
// call after it does: until the clients refresh the topic's route
// (rocketmq-client-go: every 30 s) they send to the dead master's queues
// too, and once it is back its queues wait for the servers' next
// rebalance (every 20 s); docs/RELIABILITY.md gives the figures.
const rocketRecoverWithin = 5 * time.Second

// TestChaosClusterRocketMQ runs
// TestChaosClusterRocketMQ/rocketmq-cluster-two-masters/kill-master on a
// private RocketMQ of two masters under one name server (issue 21).
func TestChaosClusterRocketMQ(t *testing.T) {
	target := chaos.Target{Name: "rocketmq-cluster-two-masters", Kind: chaos.KindRocketMQ, Durable: true}
	t.Run(target.Name, func(t *testing.T) {
		// Started inside the subtest, so a -run that selects none
		// starts nothing.
		cl := startCluster(t, "rocketmq", chaos.StartRocketMQCluster)
		t.Cleanup(cl.Close)
		t.Run("kill-master", func(t *testing.T) { runRocketClusterKill(t, target, cl) })
	})
}

// runRocketClusterKill: the request topic has queues on both masters; two
// servers share one Dedup and the client retries with its message IDs. A
// third into the load broker-a is SIGKILLed, and started again (same
// store) a third later. Every accepted one-way send must be served (those
// stored on the dead master once it is back), none twice.
func runRocketClusterKill(t *testing.T, target chaos.Target, cl *chaos.RocketMQCluster) {
	s := newScenario(t, target, "kill-master")
	defer s.finish()
	subj := subject("kill-master")
	require.NoError(t, cl.CreateTopics(subj, 4))
	open := chaos.Target{Name: "rocketmq", Kind: chaos.KindRocketMQ, Durable: true}
	// Room for every outcome of the scenario: the dead master's requests
	// come back once it is.
	srv := chaos.NewServer(s.log, middleware.NewMemoryDedupStore(1<<20, 0))
	for i := 1; i <= 2; i++ {
		b, err := open.Open(cl.NameServer, fmt.Sprintf("server-%d", i))
		require.NoError(t, err)
		s.serveOn(b, subj, srv)
	}
	cb, err := open.Open(cl.NameServer, "client")
	require.NoError(t, err)
	c := s.clusterClient(cb, subj)

	pick := func() int { return 0 } // broker-a: both hold the topic's queues
	res, killAt, backAfter := killUnderLoad(t, s, c, cb, subj, cl, pick, nil, 0)
	e := checkRecovery(t, s, "kill-master", res, killAt, rocketRecoverWithin, 0)
	s.note("calls failed until %v after the master was back", (e.LastFailed - backAfter).Round(time.Millisecond))
}
