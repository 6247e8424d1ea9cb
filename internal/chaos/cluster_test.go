//go:build chaos

package chaos_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/internal/chaos"
	"github.com/mqrpc/mqrpc/internal/testenv"
	"github.com/mqrpc/mqrpc/middleware"
	"github.com/mqrpc/mqrpc/rpc"
)

// Cluster chaos (issue 21): 100 callers on a 3-node NATS cluster, one node
// SIGKILLed mid-load and started again.

const (
	// clusterRecoverGoal is how soon after a node's death new calls must
	// succeed (issue 21's goal): met on core NATS and RabbitMQ, and on
	// JetStream when the node led none of the raft groups a call needs.
	clusterRecoverGoal = 5 * time.Second
	// afterElection bounds, on JetStream, how soon after the last of
	// the raft groups a call needs (the request stream, its consumer,
	// the dedup bucket) that the killed node led had a new leader the
	// first new call must succeed: the library's part of the recovery
	// (an attempt of 1 s to store the request or claim it in the bucket,
	// a pull renewed within 1 s; 0.01-1.9 s measured).
	afterElection = 3 * time.Second
	// streamRecoverWithin bounds the recovery on JetStream when the
	// killed node led one of those groups: the survivors elect a new
	// leader only after nats-server's raft election timeout (randomized,
	// 4 to 9 s after the last heartbeat in 2.12, not configurable), a
	// campaign of up to 0.8 s, and another round when a vote splits
	// (elections 4.3-11.7 s after the kill measured); afterElection on
	// top (docs/RELIABILITY.md gives the figures).
	streamRecoverWithin = 15 * time.Second
	// clusterMinDown is how long a NATS cluster scenario keeps its killed
	// node down at least: past streamRecoverWithin, so the recovery
	// measured is the failover's, not the node's return.
	clusterMinDown = 16 * time.Second
	// failAtOnce bounds how long after the kill of its node a call in
	// flight on the client's connection may take to fail.
	failAtOnce = time.Second
)

var clusterTargets = []chaos.Target{
	{Name: "nats-cluster-core", Kind: chaos.KindNATS},
	{Name: "nats-cluster-jetstream", Kind: chaos.KindNATS, Durable: true},
}

// TestChaosCluster runs TestChaosCluster/<target>/kill-connected (SIGKILL
// the node the client is connected to) and, on JetStream,
// kill-leader (SIGKILL the node leading the request stream), each node
// started again mid-load, on one private cluster.
func TestChaosCluster(t *testing.T) {
	// Started by the first subtest that runs, so a -run that selects
	// none (scripts/chaos rabbitmq) starts nothing.
	var cl *chaos.NATSCluster
	cluster := func(t *testing.T) *chaos.NATSCluster {
		if cl != nil {
			return cl
		}
		c := startCluster(t, "nats", func(dir string) (*chaos.NATSCluster, error) { return chaos.StartNATSCluster(dir, 3) })
		cl = c
		return c
	}
	t.Cleanup(func() {
		if cl != nil {
			cl.Close()
		}
	})
	for _, target := range clusterTargets {
		t.Run(target.Name, func(t *testing.T) {
			cl := cluster(t)
			if target.Durable {
				t.Run("replicas", func(t *testing.T) { runClusterReplicas(t, cl) })
			}
			t.Run("kill-connected", func(t *testing.T) { runClusterKill(t, target, cl, "kill-connected") })
			if target.Durable {
				t.Run("kill-leader", func(t *testing.T) { runClusterKill(t, target, cl, "kill-leader") })
			}
		})
	}
}

// clusterPending lists the cluster scenarios that fail on main, with what
// fails; they are skipped unless MQRPC_CHAOS_PENDING=1 (as the pending
// scenarios of durable_test.go). Empty: the JetStream kill scenarios lost
// accepted requests until Dedup's refusals became delivery failures.
var clusterPending = map[string]string{}

// runClusterReplicas: JetStreamConfig.Replicas reaches the streams New
// creates: the request stream of a durable broker has a copy on each node.
func runClusterReplicas(t *testing.T, cl *chaos.NATSCluster) {
	b, err := chaos.OpenCluster(cl.URL(), "replicas", true)
	require.NoError(t, err)
	defer b.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// A send makes the broker create its streams. Right after the
	// cluster came up, the meta leader may not know every peer yet ("no
	// suitable peers for placement"): try again until ctx ends.
	subj := subject("replicas")
	for {
		err = b.Send(ctx, &broker.Message{ID: broker.NewID(), Subject: subj,
			Header: broker.Header{broker.HeaderMethod: chaos.MethodRecord}, Body: []byte(`{"n":0}`)})
		if err == nil || ctx.Err() != nil {
			break
		}
		time.Sleep(250 * time.Millisecond) // poll interval of a bounded wait
	}
	require.NoError(t, err)
	ci, cfg := streamCluster(t, cl)
	assert.Equal(t, chaos.ClusterReplicas, cfg.Replicas, "replicas of the request stream")
	assert.Len(t, ci.Replicas, chaos.ClusterReplicas-1, "followers of the request stream besides leader %s", ci.Leader)
}

// runClusterKill serves the service from two servers on nodes n2 and n3
// sharing one Dedup (on JetStream with a natskv bucket of 3 replicas), puts
// the client on n1 and the load on, and a third into the load SIGKILLs a
// node: the client's (kill-connected) or the request stream's leader
// (kill-leader); another third later it starts the node again.
func runClusterKill(t *testing.T, target chaos.Target, cl *chaos.NATSCluster, which string) {
	if why, ok := clusterPending[target.Name+"/"+which]; ok && os.Getenv("MQRPC_CHAOS_PENDING") != "1" {
		t.Skipf("issue 21, fails on main: %s (MQRPC_CHAOS_PENDING=1 runs it)", why)
	}
	s := newScenario(t, target, which)
	defer s.finish()
	s.minDown = clusterMinDown
	subj := subject(which)
	var store middleware.DedupStore = middleware.NewMemoryDedupStore(0, 0)
	if target.Durable {
		st, closeStore, err := chaos.OpenClusterStore(cl.URLFrom(1), clusterDedupBucket, s.log)
		require.NoError(t, err)
		s.closers = append(s.closers, closeStore)
		store = st
	}
	if target.Durable {
		// Runs last, after finish waited for the accepted requests: where
		// the missing ones are, if any.
		s.closers = append(s.closers, func() {
			if s.row.Lost > 0 {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				t.Logf("after the drain: %s", cl.StreamState(ctx, chaos.ClusterStream))
			}
		})
	}
	srv := chaos.NewServer(s.log, store)
	conns := map[string]*natsgo.Conn{}
	for i := 1; i <= 2; i++ {
		name := fmt.Sprintf("server-%d", i)
		b, err := chaos.OpenCluster(cl.URLFrom(i), name, target.Durable)
		require.NoError(t, err)
		conns[name] = b.Conn()
		s.serveOn(b, subj, srv)
	}
	cb, err := chaos.OpenCluster(cl.URLFrom(0), "client", target.Durable)
	require.NoError(t, err)
	conns["client"] = cb.Conn()
	c := s.clusterClient(cb, subj)
	if target.Durable {
		// JetStreamConfig.Replicas reached the stream: a copy on each node.
		ci, cfg := streamCluster(t, cl)
		require.Equal(t, chaos.ClusterReplicas, cfg.Replicas, "replicas of the request stream")
		require.Len(t, ci.Replicas, chaos.ClusterReplicas-1, "followers of the request stream")
	}

	var victim, clientNode string
	var watch *chaos.LeaderWatch
	pick := func() int {
		switch which {
		case "kill-connected":
			victim = cb.Conn().ConnectedServerName()
		case "kill-leader":
			ci, _ := streamCluster(t, cl)
			victim = ci.Leader
		}
		clientNode = cb.Conn().ConnectedServerName()
		if i := cl.Index(victim); i >= 0 {
			// Where the time to recover goes: leader elections, reconnects.
			watch = cl.WatchLeaders(i, conns)
		}
		return cl.Index(victim)
	}
	back := func(int) {
		s.note("client was on %s", clientNode)
		if target.Durable {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			ci, _, err := cl.StreamCluster(ctx, chaos.ClusterStream)
			cancel()
			if err != nil {
				s.note("stream info after the restart: %v", err)
			} else {
				s.note("stream leader now %s", ci.Leader)
			}
		}
	}
	res, killAt, _ := killUnderLoad(t, s, c, cb, subj, cl, pick, back, 0)
	if watch != nil {
		s.note("after the kill: %s", watch.Stop())
	}

	within, allAfter := clusterRecoverGoal, clusterRecoverGoal
	if target.Durable {
		allAfter = streamRecoverWithin
		// The groups a call needs: a request is stored by the stream's
		// leader, pulled through its consumer's, claimed in the dedup
		// bucket's.
		var elected time.Duration
		needed := []string{chaos.ClusterStream, chaos.ClusterStream + "/" + consumerOf(subj), "KV_" + clusterDedupBucket}
		for _, g := range needed {
			if !watch.Led(g) {
				continue
			}
			d, ok := watch.Elected(g)
			require.True(t, ok, "raft group %s got no new leader while the load ran", g)
			elected = max(elected, d)
		}
		if elected > 0 {
			// Not the library's to shorten: bounded with a margin.
			within = min(elected+afterElection, streamRecoverWithin)
			s.note("the last group a call needs was led again %v after the kill", elected.Round(10*time.Millisecond))
		}
	}
	e := checkRecovery(t, s, which, res, killAt, within, allAfter)
	if !target.Durable && which == "kill-connected" {
		assertFailedAtOnce(t, e)
	}
	// finish (deferred) checks: on JetStream every accepted request
	// served, no duplicate execution; goroutines and heap back.
}

// clusterDedupBucket is the natskv bucket of the JetStream cluster
// scenarios' Dedup.
const clusterDedupBucket = "CHAOS_CLUSTER_DEDUP"

// consumerOf is the durable consumer of the servers of subject (their
// queue group is the subject; broker/nats names the consumer after it).
func consumerOf(subject string) string {
	return strings.Map(func(r rune) rune {
		if r == '.' || r == '*' || r == '>' || r == '/' || r == '\\' || r <= ' ' || r == 0x7f {
			return '_'
		}
		return r
	}, subject)
}

func streamCluster(t *testing.T, cl *chaos.NATSCluster) (*jetstream.ClusterInfo, *jetstream.StreamConfig) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ci, cfg, err := cl.StreamCluster(ctx, chaos.ClusterStream)
	require.NoError(t, err)
	return ci, cfg
}

// clusterNodes is a private cluster whose nodes a scenario kills.
type clusterNodes interface {
	Kill(i int) error
	Start(i int) error
	Index(name string) int
	Name(i int) string
}

// killUnderLoad runs the scenario's load on c (its one-way sends through
// cb) with every call's times kept; a third of the way in it SIGKILLs the
// node pick returns, a third later starts it again and calls back, and
// after extra and another third stops the load. It returns the load, the instant of
// the kill and how long after it the node was back.
func killUnderLoad(t *testing.T, s *scenario, c *rpc.Client, cb broker.Broker, subj string,
	cl clusterNodes, pick func() int, back func(i int), extra time.Duration) (*chaos.LoadResult, time.Time, time.Duration) {
	t.Helper()
	d := loadDuration(t)
	cfg := s.loadConfig(subj)
	cfg.KeepTimes = true
	stopLoad := s.startLoad(c, cb, cfg)
	time.Sleep(d / 3) // load before the kill: the scenario's shape, not synchronisation
	idx := pick()
	require.GreaterOrEqual(t, idx, 0, "the node to kill")
	killAt := time.Now()
	require.NoError(t, cl.Kill(idx))
	s.note("SIGKILLed %s", cl.Name(idx))
	time.Sleep(max(d/3, s.minDown)) // load with a node down
	begin := time.Now()
	require.NoError(t, cl.Start(idx))
	backAfter := time.Since(killAt)
	s.note("back in %v", time.Since(begin).Round(time.Millisecond))
	if back != nil {
		back(idx)
	}
	time.Sleep(extra + d/3) // load with every node up again
	res := stopLoad()
	s.load(res)
	return res, killAt, backAfter
}

// checkRecovery notes what the kill at killAt did to the calls and asserts
// that a call started after it succeeded within firstWithin, and (allAfter
// above 0) that every call started later than allAfter after it succeeded.
func checkRecovery(t *testing.T, s *scenario, which string, res *chaos.LoadResult, killAt time.Time, firstWithin, allAfter time.Duration) chaos.KillEffect {
	t.Helper()
	e := chaos.EffectOf(res.Times, killAt, allAfter)
	failed := fmt.Sprintf("%d calls started %v after it failed", e.FailedAfter, allAfter)
	if allAfter <= 0 {
		failed = fmt.Sprintf("%d calls started after it failed", e.FailedAfter)
	}
	s.note("in flight at the kill: %s (failures returned within %v); first new call ok %v after the kill; %s, the last failure started %v after it",
		chaos.FormatCodes(e.InFlight), e.InFlightEnded.Round(time.Millisecond), e.Recovered.Round(time.Millisecond),
		failed, e.LastFailed.Round(time.Millisecond))
	t.Logf("%s: %s", which, s.row.Note)
	assert.GreaterOrEqual(t, e.Recovered, time.Duration(0), "no call that started after the kill succeeded")
	assert.LessOrEqual(t, e.Recovered, firstWithin, "new calls succeeded only %v after the kill", e.Recovered)
	if allAfter > 0 {
		assert.Zero(t, e.FailedAfter, "calls started %v after the kill failed", allAfter)
	}
	return e
}

// startCluster starts a private cluster of kind with start in a new
// directory, skipping (failing under CI=true) when its software is not
// installed.
func startCluster[C interface{ Name(int) string }](t *testing.T, kind string, start func(dir string) (C, error)) C {
	t.Helper()
	dir, err := os.MkdirTemp("", "mqrpc-chaos-"+kind+"-cluster-")
	require.NoError(t, err)
	begin := time.Now()
	c, err := start(dir)
	if errors.Is(err, chaos.ErrNotInstalled) {
		if testenv.CI() {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	require.NoError(t, err)
	t.Logf("private %s cluster up in %v (data in %s)", kind, time.Since(begin).Round(time.Millisecond), dir)
	return c
}

// assertFailedAtOnce: the client's connection died with its node, so its
// calls in flight (fast modes, not retried) fail with Unavailable at once,
// none waits out its deadline (the servers run on the other nodes).
func assertFailedAtOnce(t *testing.T, e chaos.KillEffect) {
	t.Helper()
	for code, n := range e.InFlight {
		assert.Contains(t, []rpc.Code{rpc.OK, rpc.Unavailable}, code, "%d calls in flight at the kill ended %s", n, code)
	}
	assert.Positive(t, e.InFlight[rpc.Unavailable], "no call in flight failed with Unavailable")
	assert.LessOrEqual(t, e.InFlightEnded, failAtOnce, "calls in flight at the kill failed only %v after it", e.InFlightEnded)
}

// clusterClient is the client of a cluster scenario on cb, which it closes
// at the end, once the service answers. Fast-mode calls are not retried, so
// the calls the kill cut off show how they fail; durable calls are retried
// with their message ID, as docs/RELIABILITY.md recommends.
func (s *scenario) clusterClient(cb broker.Broker, subj string) *rpc.Client {
	s.closers = append(s.closers, func() { _ = cb.Close() })
	c := rpc.NewClient(cb)
	if s.target.Durable {
		c = newClient(cb)
	}
	awaitService(s.t, c, subj, recoverWithin)
	return c
}
