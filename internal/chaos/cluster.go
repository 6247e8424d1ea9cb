package chaos

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mqrpc/mqrpc/broker/nats"
	"github.com/mqrpc/mqrpc/middleware"
	"github.com/mqrpc/mqrpc/middleware/dedupstore/natskv"
	"github.com/mqrpc/mqrpc/rpc"
)

// The cluster targets (issue 21): mqrpc on a 3-node NATS cluster whose
// nodes are killed under load.

// Streams of the cluster targets, apart from the single-node targets'.
const (
	ClusterStream     = "CHAOS_CLUSTER"
	clusterSubject    = "chaoscluster.req"
	clusterDeadPrefix = "chaoscluster.dead"
	clusterDeadStream = "CHAOS_CLUSTER_DEAD"
	// ClusterReplicas is the replicas of every stream and bucket of the
	// cluster targets: a copy on each node.
	ClusterReplicas = 3
)

// NATSCluster is a private 3-node NATS cluster with JetStream: nodes n1, n2
// and n3 on free loopback ports with routes between them, each with its own
// store under dir. Every process dies with the test process (Pdeathsig).
type NATSCluster struct {
	nodeSet
	bin   string
	dir   string
	ports []int // client ports
	mport []int // monitoring ports
}

// StartNATSCluster starts a cluster of size nodes and waits until every node
// reports JetStream healthy (a meta leader elected).
func StartNATSCluster(dir string, size int) (*NATSCluster, error) {
	bin, err := natsBinary()
	if err != nil {
		return nil, err
	}
	c := &NATSCluster{nodeSet: newNodeSet(size), bin: bin, dir: dir}
	var routes []string
	rports := make([]int, size)
	for i := 0; i < size; i++ {
		p, err1 := freePort()
		m, err2 := freePort()
		r, err3 := freePort()
		if err1 != nil || err2 != nil || err3 != nil {
			return nil, fmt.Errorf("chaos: cluster ports: %v %v %v", err1, err2, err3)
		}
		c.Names = append(c.Names, "n"+strconv.Itoa(i+1))
		c.ports, c.mport, rports[i] = append(c.ports, p), append(c.mport, m), r
		routes = append(routes, fmt.Sprintf("%q", "nats-route://127.0.0.1:"+strconv.Itoa(r)))
	}
	for i, name := range c.Names {
		nd := filepath.Join(dir, name)
		if err := os.MkdirAll(nd, 0o755); err != nil {
			return nil, fmt.Errorf("chaos: mkdir: %w", err)
		}
		// As scripts/brokers.d/cluster/nats.sh, on free ports.
		conf := fmt.Sprintf(`server_name: %q
listen: "127.0.0.1:%d"
http: "127.0.0.1:%d"
max_payload: 8MB
jetstream {
  store_dir: %q
  max_memory_store: 128MB
  max_file_store: 1GB
}
cluster {
  name: "chaos"
  listen: "127.0.0.1:%d"
  routes: [%s]
}
`, name, c.ports[i], c.mport[i], filepath.Join(nd, "jetstream"), rports[i], strings.Join(routes, ", "))
		if err := os.WriteFile(filepath.Join(nd, "nats.conf"), []byte(conf), 0o644); err != nil {
			return nil, fmt.Errorf("chaos: write nats.conf: %w", err)
		}
	}
	// All first, then wait: a node is healthy only once a quorum runs.
	if err := startAll(len(c.Names), c.spawn, c.wait, c.Close); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *NATSCluster) spawn(i int) error {
	nd := filepath.Join(c.dir, c.Names[i])
	p, err := startProc(nd, "nats.log", os.Environ(), c.bin, "-c", filepath.Join(nd, "nats.conf"))
	if err != nil {
		return err
	}
	c.set(i, p)
	return nil
}

func (c *NATSCluster) wait(i int) error {
	p := c.get(i)
	if err := waitPort(p, c.ports[i], 30*time.Second); err != nil {
		return fmt.Errorf("chaos: cluster node %s: %w", c.Names[i], err)
	}
	// healthz answers 200 once the node's JetStream is current with the
	// cluster (meta leader known, its streams caught up).
	if err := waitHealthy(p, "http://127.0.0.1:"+strconv.Itoa(c.mport[i])+"/healthz", 60*time.Second); err != nil {
		return fmt.Errorf("chaos: cluster node %s: %w", c.Names[i], err)
	}
	return nil
}

// URL is the client URL list of every node, comma-separated.
func (c *NATSCluster) URL() string { return c.URLFrom(0) }

// URLFrom is URL starting with node first: a client that does not
// randomize the list (OpenCluster) connects to that node.
func (c *NATSCluster) URLFrom(first int) string {
	urls := make([]string, len(c.ports))
	for i := range c.ports {
		urls[i] = "nats://127.0.0.1:" + strconv.Itoa(c.ports[(first+i)%len(c.ports)])
	}
	return strings.Join(urls, ",")
}

// Kill SIGKILLs node i and waits until its client port is free.
func (c *NATSCluster) Kill(i int) error { return c.sigkill(i, "", c.ports[i]) }

// Start starts node i again on its ports and store, and waits until it is
// healthy (caught up with the cluster).
func (c *NATSCluster) Start(i int) error {
	if err := c.spawn(i); err != nil {
		return err
	}
	return c.wait(i)
}

// Close stops every node.
func (c *NATSCluster) Close() {
	for _, p := range c.takeAll() {
		if p != nil {
			p.signal(syscall.SIGTERM, 10*time.Second)
		}
	}
}

// StreamCluster returns the cluster info of stream (leader and replicas)
// as the JetStream API reports it, asked through any live node.
func (c *NATSCluster) StreamCluster(ctx context.Context, stream string) (*jetstream.ClusterInfo, *jetstream.StreamConfig, error) {
	nc, err := natsgo.Connect(c.URL(), natsgo.Name("chaos-admin"))
	if err != nil {
		return nil, nil, fmt.Errorf("chaos: admin connection: %w", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, nil, fmt.Errorf("chaos: admin jetstream: %w", err)
	}
	st, err := js.Stream(ctx, stream)
	if err != nil {
		return nil, nil, fmt.Errorf("chaos: stream %s: %w", stream, err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("chaos: stream %s info: %w", stream, err)
	}
	if info.Cluster == nil {
		return nil, nil, fmt.Errorf("chaos: stream %s has no cluster info", stream)
	}
	return info.Cluster, &info.Config, nil
}

// OpenCluster connects to the cluster at urls (comma-separated), to the
// first URL that answers (the list is not randomized), in core mode, or in
// durable mode with streams of ClusterReplicas replicas.
func OpenCluster(urls, connName string, durable bool) (*nats.Broker, error) {
	opts := []nats.Option{nats.WithName(connName), nats.WithReconnectWait(100 * time.Millisecond),
		nats.WithNATSOptions(natsgo.DontRandomize())}
	if durable {
		opts = append(opts, nats.WithJetStream(nats.JetStreamConfig{
			Stream:           ClusterStream,
			SubjectPrefix:    clusterSubject,
			DeadLetterPrefix: clusterDeadPrefix,
			DeadLetterStream: clusterDeadStream,
			AckWait:          2 * time.Second,
			MaxDeliver:       MaxDeliver,
			Replicas:         ClusterReplicas,
		}))
	}
	return nats.New(urls, opts...)
}

// OpenClusterStore opens the dedup store the servers of a cluster scenario
// share: a natskv bucket of ClusterReplicas replicas on the cluster. Every
// outcome stored is reported to log. The returned func closes it.
func OpenClusterStore(urls, bucket string, log *ExecLog) (middleware.DedupStore, func(), error) {
	return openNATSKV(urls, bucket, 30*time.Second, log.Committed, natskv.WithReplicas(ClusterReplicas))
}

// startAll spawns n nodes, then waits for each; on an error it closes
// what started.
func startAll(n int, spawn, wait func(i int) error, closeAll func()) error {
	for i := range n {
		if err := spawn(i); err != nil {
			closeAll()
			return err
		}
	}
	for i := range n {
		if err := wait(i); err != nil {
			closeAll()
			return err
		}
	}
	return nil
}

// nodeSet holds the processes of a cluster's nodes, by index.
type nodeSet struct {
	Names []string
	mu    sync.Mutex
	procs []*proc // nil: not running
}

func newNodeSet(size int) nodeSet { return nodeSet{procs: make([]*proc, size)} }

func (n *nodeSet) set(i int, p *proc) {
	n.mu.Lock()
	n.procs[i] = p
	n.mu.Unlock()
}

func (n *nodeSet) get(i int) *proc {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.procs[i]
}

// takeAll returns the running processes and forgets them.
func (n *nodeSet) takeAll() []*proc {
	n.mu.Lock()
	defer n.mu.Unlock()
	procs := n.procs
	n.procs = make([]*proc, len(procs))
	return procs
}

// Name returns the name of node i.
func (n *nodeSet) Name(i int) string { return n.Names[i] }

// Index returns the index of the node called name, or -1.
func (n *nodeSet) Index(name string) int {
	for i, nn := range n.Names {
		if nn == name {
			return i
		}
	}
	return -1
}

// sigkill SIGKILLs node i — the process named in pidFile when there is one
// (a VM its start script runs in the foreground), else the process started
// — and waits until it exited and nothing listens on port.
func (n *nodeSet) sigkill(i int, pidFile string, port int) error {
	n.mu.Lock()
	p := n.procs[i]
	n.procs[i] = nil
	n.mu.Unlock()
	if p == nil {
		return fmt.Errorf("chaos: cluster node %s is not running", n.Names[i])
	}
	killPidFile(p, pidFile, 30*time.Second)
	for deadline := time.Now().Add(30 * time.Second); !portFree(port); {
		if time.Now().After(deadline) {
			return fmt.Errorf("chaos: cluster node %s still listens after SIGKILL", n.Names[i])
		}
		time.Sleep(50 * time.Millisecond) // poll interval of a bounded wait
	}
	return nil
}

// killPidFile SIGKILLs the process pidFile names (if any) and waits for p
// to exit, at most wait; then it kills p itself.
func killPidFile(p *proc, pidFile string, wait time.Duration) {
	if pidFile == "" {
		p.kill()
		return
	}
	if b, err := os.ReadFile(pidFile); err == nil {
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 0 {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	select {
	case <-p.exited:
	case <-time.After(wait):
		p.kill()
	}
}

// KillEffect is what a node's death at one instant did to the calls.
type KillEffect struct {
	// InFlight counts the calls running at the kill by outcome;
	// InFlightEnded is how long after the kill the last of them that
	// failed returned.
	InFlight      map[rpc.Code]int64
	InFlightEnded time.Duration
	// Recovered is how long after the kill the first call that started
	// after it succeeded (-1: none did).
	Recovered time.Duration
	// FailedAfter counts the calls that started more than after the kill
	// and failed; LastFailed is how long after the kill the last call
	// that failed started (0: none failed).
	FailedAfter int64
	LastFailed  time.Duration
}

// EffectOf computes the KillEffect of a kill at killAt on the calls of
// times; calls started later than killAt+after must all succeed.
func EffectOf(times []CallTime, killAt time.Time, after time.Duration) KillEffect {
	e := KillEffect{InFlight: map[rpc.Code]int64{}, Recovered: -1}
	var firstOK time.Time
	for _, ct := range times {
		switch {
		case ct.Start.Before(killAt) && ct.End.After(killAt):
			e.InFlight[ct.Code]++
			if ct.Code != rpc.OK {
				e.InFlightEnded = max(e.InFlightEnded, ct.End.Sub(killAt))
			}
		case !ct.Start.Before(killAt):
			if ct.Code == rpc.OK && (firstOK.IsZero() || ct.End.Before(firstOK)) {
				firstOK = ct.End
			}
			if ct.Code != rpc.OK {
				e.LastFailed = max(e.LastFailed, ct.Start.Sub(killAt))
			}
			if ct.Code != rpc.OK && ct.Start.After(killAt.Add(after)) {
				e.FailedAfter++
			}
		}
	}
	if !firstOK.IsZero() {
		e.Recovered = firstOK.Sub(killAt)
	}
	return e
}

// StreamState describes stream and its consumers (stored messages, each
// consumer's pending, waiting-for-ack and redelivered counts and its
// leader), for a scenario's log.
func (c *NATSCluster) StreamState(ctx context.Context, stream string) string {
	nc, err := natsgo.Connect(c.URL(), natsgo.Name("chaos-admin"))
	if err != nil {
		return err.Error()
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err.Error()
	}
	st, err := js.Stream(ctx, stream)
	if err != nil {
		return err.Error()
	}
	info, err := st.Info(ctx)
	if err != nil {
		return err.Error()
	}
	out := fmt.Sprintf("stream %s: %d messages (first seq %d, last %d), leader %s", stream, info.State.Msgs,
		info.State.FirstSeq, info.State.LastSeq, info.Cluster.Leader)
	if dead, err := js.Stream(ctx, clusterDeadStream); err == nil {
		if di, err := dead.Info(ctx); err == nil {
			out += fmt.Sprintf("; dead letters %d", di.State.Msgs)
			if di.State.Msgs > 0 {
				if m, err := dead.GetMsg(ctx, di.State.FirstSeq); err == nil {
					out += fmt.Sprintf(" (first: %s, reason %q)", m.Header.Get(natsgo.MsgIdHdr), m.Header.Get(nats.HeaderDeadReason))
				}
			}
		}
	}
	lister := st.ListConsumers(ctx)
	for ci := range lister.Info() {
		leader := ""
		if ci.Cluster != nil {
			leader = ci.Cluster.Leader
		}
		out += fmt.Sprintf("; consumer %s: pending %d, ack pending %d, redelivered %d, waiting pulls %d, delivered seq %d, ack floor %d, leader %s",
			ci.Name, ci.NumPending, ci.NumAckPending, ci.NumRedelivered, ci.NumWaiting, ci.Delivered.Stream, ci.AckFloor.Stream, leader)
	}
	return out
}
