package chaos

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mqrpc/mqrpc/broker"
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
	Names []string
	bin   string
	dir   string
	ports []int // client ports
	mport []int // monitoring ports
	mu    sync.Mutex
	procs []*proc
}

// StartNATSCluster starts a cluster of size nodes and waits until every node
// reports JetStream healthy (a meta leader elected).
func StartNATSCluster(dir string, size int) (*NATSCluster, error) {
	bin, err := natsBinary()
	if err != nil {
		return nil, err
	}
	c := &NATSCluster{bin: bin, dir: dir, procs: make([]*proc, size)}
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
	for i := range c.Names {
		if err := c.spawn(i); err != nil {
			c.Close()
			return nil, err
		}
	}
	for i := range c.Names {
		if err := c.wait(i); err != nil {
			c.Close()
			return nil, err
		}
	}
	return c, nil
}

func (c *NATSCluster) spawn(i int) error {
	nd := filepath.Join(c.dir, c.Names[i])
	p, err := startProc(nd, "nats.log", os.Environ(), c.bin, "-c", filepath.Join(nd, "nats.conf"))
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.procs[i] = p
	c.mu.Unlock()
	return nil
}

func (c *NATSCluster) wait(i int) error {
	c.mu.Lock()
	p := c.procs[i]
	c.mu.Unlock()
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

// Index returns the index of the node called name, or -1.
func (c *NATSCluster) Index(name string) int {
	for i, n := range c.Names {
		if n == name {
			return i
		}
	}
	return -1
}

// Kill SIGKILLs node i and waits until its client port is free.
func (c *NATSCluster) Kill(i int) error {
	c.mu.Lock()
	p := c.procs[i]
	c.procs[i] = nil
	c.mu.Unlock()
	if p == nil {
		return fmt.Errorf("chaos: cluster node %s is not running", c.Names[i])
	}
	p.kill()
	for deadline := time.Now().Add(30 * time.Second); !portFree(c.ports[i]); {
		if time.Now().After(deadline) {
			return fmt.Errorf("chaos: cluster node %s still listens after SIGKILL", c.Names[i])
		}
		time.Sleep(50 * time.Millisecond) // poll interval of a bounded wait
	}
	return nil
}

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
	c.mu.Lock()
	procs := c.procs
	c.procs = make([]*proc, len(procs))
	c.mu.Unlock()
	for _, p := range procs {
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
	nc, err := natsgo.Connect(urls, natsgo.Name("chaos-dedup"), natsgo.MaxReconnects(-1), natsgo.ReconnectWait(100*time.Millisecond))
	if err != nil {
		return nil, nil, fmt.Errorf("chaos: dedup store: %w", err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("chaos: dedup store: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := natskv.New(ctx, js, bucket, natskv.WithReplicas(ClusterReplicas))
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("chaos: dedup store: %w", err)
	}
	return reporting{s, log.Committed}, nc.Close, nil
}

// CallTime is when one call of a timed load ran and how it ended.
type CallTime struct {
	Start, End time.Time
	Code       rpc.Code
}

// RunTimedLoad is RunLoad that also keeps every call's start, end and
// outcome, to tell what a node's death did to the calls in flight and how
// soon new calls succeeded. Tracked sends go through b as in RunLoad.
func RunTimedLoad(c *rpc.Client, b broker.Broker, cfg LoadConfig, stop <-chan struct{}) (*LoadResult, []CallTime) {
	sendsDone := make(chan *LoadResult, 1)
	sendCfg := cfg
	sendCfg.Callers = 0
	go func() { sendsDone <- RunLoad(c, b, sendCfg, stop) }()

	res := &LoadResult{Codes: map[rpc.Code]int64{}, Errors: map[rpc.Code]string{}, Outcomes: map[string]rpc.Code{}}
	var (
		mu      sync.Mutex
		wg      sync.WaitGroup
		counter atomic.Int64
		times   []CallTime
	)
	end := time.Now().Add(cfg.Duration)
	done := func() bool {
		select {
		case <-stop:
			return true
		default:
			return time.Now().After(end)
		}
	}
	for i := 0; i < cfg.Callers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !done() {
				n := counter.Add(1)
				ctx, cancel := context.WithTimeout(context.Background(), cfg.Deadline)
				begin := time.Now()
				var out WorkReply
				id := "call-" + broker.NewID()
				err := c.Call(ctx, cfg.Subject, MethodWork, &WorkRequest{N: n}, &out, rpc.WithMessageID(id))
				finished := time.Now()
				cancel()
				code := rpc.CodeOf(err)
				took := finished.Sub(begin)
				mu.Lock()
				times = append(times, CallTime{Start: begin, End: finished, Code: code})
				res.Calls++
				res.Codes[code]++
				res.Outcomes[id] = code
				res.MaxWait = max(res.MaxWait, took)
				if took > cfg.Deadline+cfg.Grace {
					res.Late++
					res.LateExample = fmt.Sprintf("took %v, ended %s: %v", took.Round(time.Millisecond), code, err)
				}
				if err == nil && out.N != n {
					res.Mismatched++
				}
				if _, ok := res.Errors[code]; err != nil && !ok {
					res.Errors[code] = err.Error()
				}
				mu.Unlock()
				if err != nil {
					pause(stop, 50*time.Millisecond)
				}
			}
		}()
	}
	wg.Wait()
	sends := <-sendsDone
	res.Accepted, res.SendErrors = sends.Accepted, sends.SendErrors
	return res, times
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
	// and failed.
	FailedAfter int64
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
