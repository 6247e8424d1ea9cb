//go:build chaos

package chaos_test

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
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
	store := middleware.NewMemoryDedupStore(1<<20, 0)
	// Each server counts its own executions: after the kill, each must
	// serve again while the node is down (checkServers).
	recs := make([]*serverRecorder, rabbitServers)
	for i := range recs {
		recs[i] = &serverRecorder{ExecLog: s.log, name: fmt.Sprintf("server-%d", i+1)}
		b, err := open.Open(cl.URLFrom(i+1), recs[i].name)
		require.NoError(t, err)
		s.serveOn(b, subj, chaos.NewServer(recs[i], store))
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
	start := time.Now()
	res, killAt, _ := killUnderLoad(t, s, c, cb, subj, cl, pick, back, 0)
	if alarms := cl.MemoryAlarms(start); len(alarms) > 0 {
		// Not the library's doing, but the likely cause of any failure.
		s.note("memory alarms (publishers blocked on every node), seconds after the load began: %s", strings.Join(alarms, ", "))
	}
	e := checkRecovery(t, s, which, res, killAt, clusterRecoverGoal, rabbitRecoverWithin)
	t.Logf("failed calls by start, in seconds after the kill: %s", failureTimeline(res.Times, killAt))
	checkServers(t, s, recs, killAt, clusterRecoverGoal, s.minDown)
	if !target.Durable {
		assertFailedAtOnce(t, e)
	}
}

// rabbitServers is how many servers a RabbitMQ cluster scenario runs.
const rabbitServers = 2

// serverRecorder is the Recorder of one server of a RabbitMQ cluster
// scenario: the scenario's log, and when this server executed MethodWork.
type serverRecorder struct {
	*chaos.ExecLog
	name  string
	mu    sync.Mutex
	times []time.Time
}

// Executed implements chaos.Recorder.
func (r *serverRecorder) Executed(method, id string) {
	r.ExecLog.Executed(method, id)
	if method == chaos.MethodWork {
		r.mu.Lock()
		r.times = append(r.times, time.Now())
		r.mu.Unlock()
	}
}

// executedBetween counts this server's executions in [from, to).
func (r *serverRecorder) executedBetween(from, to time.Time) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, at := range r.times {
		if !at.Before(from) && at.Before(to) {
			n++
		}
	}
	return n
}

// checkServers: every server serves while the killed node is still down,
// from within goal of the kill (up to down after it, before the node's
// restart began): a server whose connection died with the node consumes
// again from another node, rather than waiting for the node to return.
func checkServers(t *testing.T, s *scenario, recs []*serverRecorder, killAt time.Time, goal, down time.Duration) {
	t.Helper()
	from, to := killAt.Add(goal), killAt.Add(down)
	counts := make([]string, len(recs))
	for i, r := range recs {
		n := r.executedBetween(from, to)
		counts[i] = fmt.Sprintf("%s %d", r.name, n)
		assert.Positive(t, n, "%s executed nothing %v-%v after the kill, the node still down: it did not serve again from another node", r.name, goal, down)
	}
	s.note("calls executed %v-%v after the kill: %s", goal, down, strings.Join(counts, ", "))
	t.Logf("calls executed %v-%v after the kill: %s", goal, down, strings.Join(counts, ", "))
}
