package chaos

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"go/build"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Broker kinds a Node runs.
const (
	KindNATS     = "nats"
	KindRabbitMQ = "rabbitmq"
	KindRocketMQ = "rocketmq"
	// KindRedis is not a broker: the shared dedup store of the child
	// servers (middleware/dedupstore/redisstore).
	KindRedis = "redis"
)

// ErrNotInstalled is wrapped by StartNode when the broker's server software
// is not on this machine; scripts/brokers up <kind> installs it.
var ErrNotInstalled = errors.New("chaos: broker server not installed")

// Node is a private broker started for one test: its own processes, ports
// and data directory on loopback, so restarting it disturbs nobody else.
// Every process is a child of the test process and dies with it
// (Pdeathsig), so nothing outlives an aborted run.
type Node struct {
	// Kind is KindNATS, KindRabbitMQ or KindRocketMQ.
	Kind string
	// Addr is what the broker package connects to: a nats:// or amqp://
	// URL, or the RocketMQ name server's host:port.
	Addr string

	dir     string
	mu      sync.Mutex
	procs   map[string]*proc // running processes by role
	start   func(role string) error
	stopOne func(role string, p *proc) error
	// restartRoles are the processes a restart cycles (RocketMQ keeps its
	// name server: it holds no messages).
	restartRoles []string
	// port is the broker's client port (RocketMQ: the broker's, not the
	// name server's).
	port int
}

// StartNode starts a private broker of kind with its data under dir and
// waits until it accepts connections.
func StartNode(kind, dir string) (*Node, error) {
	n := &Node{Kind: kind, dir: dir, procs: map[string]*proc{}}
	var err error
	switch kind {
	case KindNATS:
		err = n.setupNATS()
	case KindRabbitMQ:
		err = n.setupRabbitMQ()
	case KindRocketMQ:
		err = n.setupRocketMQ()
	case KindRedis:
		err = n.setupRedis()
	default:
		err = fmt.Errorf("chaos: unknown broker kind %q", kind)
	}
	if err != nil {
		return nil, err
	}
	for _, role := range n.restartRolesAll() {
		if err := n.start(role); err != nil {
			n.Close()
			return nil, fmt.Errorf("chaos: start %s %s: %w", kind, role, err)
		}
	}
	return n, nil
}

func (n *Node) restartRolesAll() []string {
	if n.Kind == KindRocketMQ {
		return []string{"namesrv", "broker"}
	}
	return []string{n.Kind}
}

// Restart stops the broker gracefully (SIGTERM or its control tool, so a
// durable broker flushes what it confirmed) and starts it again on the same
// ports and data. It returns how long the broker was unreachable.
func (n *Node) Restart() (time.Duration, error) {
	begin := time.Now()
	for _, role := range n.restartRoles {
		n.mu.Lock()
		p := n.procs[role]
		delete(n.procs, role)
		n.mu.Unlock()
		if p != nil {
			if err := n.stopOne(role, p); err != nil {
				return time.Since(begin), fmt.Errorf("chaos: stop %s %s: %w", n.Kind, role, err)
			}
		}
	}
	for _, role := range n.restartRoles {
		if err := n.start(role); err != nil {
			return time.Since(begin), fmt.Errorf("chaos: start %s %s again: %w", n.Kind, role, err)
		}
	}
	return time.Since(begin), nil
}

// Kill ends the broker with SIGKILL, as a crash or an OOM kill would (no
// shutdown, no flush beyond what the broker wrote when it confirmed), and
// starts it again on the same ports and data. It returns how long the
// broker was unreachable.
func (n *Node) Kill() (time.Duration, error) {
	begin := time.Now()
	for _, role := range n.restartRoles {
		n.mu.Lock()
		p := n.procs[role]
		delete(n.procs, role)
		n.mu.Unlock()
		if p != nil {
			n.hardKill(p)
		}
	}
	// The broker is gone only when nothing answers on its port any more
	// (a survivor would pass for the restarted broker).
	for deadline := time.Now().Add(30 * time.Second); !portFree(n.port); {
		if time.Now().After(deadline) {
			return time.Since(begin), fmt.Errorf("chaos: %s still listens on %d after SIGKILL", n.Kind, n.port)
		}
		time.Sleep(50 * time.Millisecond) // poll interval of a bounded wait
	}
	for _, role := range n.restartRoles {
		if err := n.start(role); err != nil {
			return time.Since(begin), fmt.Errorf("chaos: start %s %s after SIGKILL: %w", n.Kind, role, err)
		}
	}
	return time.Since(begin), nil
}

// hardKill SIGKILLs the process that is the broker. RabbitMQ's
// rabbitmq-server is a shell that runs the Erlang VM as its child (and
// stops it gracefully on SIGTERM): the VM, whose OS pid the node writes to
// its pid file, is the one killed; the shell then exits by itself.
func (n *Node) hardKill(p *proc) {
	if n.Kind == KindRabbitMQ {
		if b, err := os.ReadFile(filepath.Join(n.dir, "pid")); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 0 && pid != p.cmd.Process.Pid {
				_ = syscall.Kill(pid, syscall.SIGKILL)
				select {
				case <-p.exited:
					return
				case <-time.After(30 * time.Second):
				}
			}
		}
	}
	p.kill()
}

// Close kills every process of the node and waits for them.
func (n *Node) Close() {
	n.mu.Lock()
	procs := n.procs
	n.procs = map[string]*proc{}
	n.mu.Unlock()
	for role, p := range procs {
		if err := n.stopOne(role, p); err != nil {
			p.kill()
		}
	}
}

func (n *Node) register(role string, p *proc) {
	n.mu.Lock()
	n.procs[role] = p
	n.mu.Unlock()
}

// proc is one child process of a node.
type proc struct {
	cmd    *exec.Cmd
	exited chan struct{}
	log    string
}

// nofileRaised is the command line that runs bin with args with the
// soft open-files limit raised to the hard limit, as scripts/brokers
// starts its RabbitMQ nodes (see rabbitmq_nofile there): Go restores the
// soft limit the test process started with (often 1024) in every child,
// and with 1024 RabbitMQ's file handle cache runs dry once a few hundred
// queues exist. The shell execs bin, so the process started is bin's.
func nofileRaised(bin string, args ...string) (string, []string) {
	return "/bin/sh", append([]string{"-c", `ulimit -Sn "$(ulimit -Hn)" 2>/dev/null; exec "$0" "$@"`, bin}, args...)
}

// startProc starts bin with args in dir, output appended to logName.
func startProc(dir, logName string, env []string, bin string, args ...string) (*proc, error) {
	logPath := filepath.Join(dir, logName)
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return nil, fmt.Errorf("chaos: open log: %w", err)
	}
	defer logf.Close()
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = logf, logf
	// Pdeathsig: a test binary killed by go test's timeout takes its
	// brokers with it instead of leaving them on the ports.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("chaos: start %s: %w", bin, err)
	}
	p := &proc{cmd: cmd, exited: make(chan struct{}), log: logPath}
	go func() {
		_ = cmd.Wait()
		close(p.exited)
	}()
	return p, nil
}

// signal sends sig and waits up to wait for the process to exit, then
// kills it.
func (p *proc) signal(sig syscall.Signal, wait time.Duration) {
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.exited:
	case <-time.After(wait):
		p.kill()
	}
}

func (p *proc) kill() {
	_ = p.cmd.Process.Kill()
	<-p.exited
}

// tail returns the last lines of the process's log, for error messages.
func (p *proc) tail() string {
	b, _ := os.ReadFile(p.log)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}

// waitPort waits until host:port accepts connections, the process exits or
// timeout passes.
func waitPort(p *proc, port int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	addr := "127.0.0.1:" + strconv.Itoa(port)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			_ = c.Close()
			return nil
		}
		select {
		case <-p.exited:
			return fmt.Errorf("process exited before opening %s; log:\n%s", addr, p.tail())
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not open after %v; log:\n%s", addr, timeout, p.tail())
		}
	}
}

// freePort returns a loopback port nobody listens on now.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("chaos: free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func portFree(port int) bool {
	l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
	if err != nil {
		return false
	}
	_ = l.Close()
	return true
}

// --- NATS: a nats-server process with JetStream on a file store.

func natsBinary() (string, error) {
	if p, err := exec.LookPath("nats-server"); err == nil {
		return p, nil
	}
	gopath := os.Getenv("GOPATH")
	if gopath == "" {
		gopath = build.Default.GOPATH
	}
	p := filepath.Join(strings.Split(gopath, string(os.PathListSeparator))[0], "bin", "nats-server")
	if _, err := os.Stat(p); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("%w: nats-server (run scripts/brokers up nats)", ErrNotInstalled)
}

func (n *Node) setupNATS() error {
	bin, err := natsBinary()
	if err != nil {
		return err
	}
	port, err := freePort()
	if err != nil {
		return err
	}
	mport, err := freePort()
	if err != nil {
		return err
	}
	conf := fmt.Sprintf(`listen: "127.0.0.1:%d"
http: "127.0.0.1:%d"
max_payload: 8MB
jetstream {
  store_dir: %q
  max_memory_store: 256MB
  max_file_store: 1GB
}
`, port, mport, filepath.Join(n.dir, "jetstream"))
	confPath := filepath.Join(n.dir, "nats.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		return fmt.Errorf("chaos: write nats.conf: %w", err)
	}
	n.Addr, n.port = "nats://127.0.0.1:"+strconv.Itoa(port), port
	n.restartRoles = []string{KindNATS}
	n.start = func(role string) error {
		p, err := startProc(n.dir, "nats.log", os.Environ(), bin, "-c", confPath)
		if err != nil {
			return err
		}
		n.register(role, p)
		if err := waitPort(p, port, 30*time.Second); err != nil {
			return err
		}
		// The port opens before JetStream has recovered its streams.
		return waitHealthy(p, "http://127.0.0.1:"+strconv.Itoa(mport)+"/healthz", 30*time.Second)
	}
	n.stopOne = func(_ string, p *proc) error {
		p.signal(syscall.SIGTERM, 30*time.Second)
		return nil
	}
	return nil
}

func waitHealthy(p *proc, url string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-p.exited:
			return fmt.Errorf("process exited before %s was healthy; log:\n%s", url, p.tail())
		case <-ctx.Done():
			return fmt.Errorf("%s not healthy after %v", url, timeout)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// --- Redis: a redis-server process on a free port, nothing persisted.

func (n *Node) setupRedis() error {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return fmt.Errorf("%w: redis-server (run scripts/brokers up redis)", ErrNotInstalled)
	}
	port, err := freePort()
	if err != nil {
		return err
	}
	n.Addr, n.port = "127.0.0.1:"+strconv.Itoa(port), port
	n.restartRoles = []string{KindRedis}
	n.start = func(role string) error {
		p, err := startProc(n.dir, "redis.log", os.Environ(), bin, "--bind", "127.0.0.1", "--port", strconv.Itoa(port),
			"--save", "", "--appendonly", "no", "--dir", n.dir)
		if err != nil {
			return err
		}
		n.register(role, p)
		return waitPort(p, port, 30*time.Second)
	}
	n.stopOne = func(_ string, p *proc) error {
		p.signal(syscall.SIGTERM, 10*time.Second)
		return nil
	}
	return nil
}

// --- RabbitMQ: a node of its own (name, ports, cookie, data), run in the
// foreground as a child; restarted with rabbitmqctl shutdown and a new
// start, as an operator would.

func (n *Node) setupRabbitMQ() error {
	serverBin, ctlBin := "", ""
	for _, d := range []string{"/usr/lib/rabbitmq/bin"} {
		if _, err := os.Stat(filepath.Join(d, "rabbitmq-server")); err == nil {
			// The /usr/sbin wrappers switch to the rabbitmq user; this
			// node runs as us, with its own HOME and cookie.
			serverBin, ctlBin = filepath.Join(d, "rabbitmq-server"), filepath.Join(d, "rabbitmqctl")
		}
	}
	if serverBin == "" {
		return fmt.Errorf("%w: rabbitmq-server (run scripts/brokers up rabbitmq)", ErrNotInstalled)
	}
	port, err := freePort()
	if err != nil {
		return err
	}
	distPort, err := freePort()
	if err != nil {
		return err
	}
	name := "mqrpc-chaos-" + strconv.Itoa(os.Getpid()) + "-" + strconv.Itoa(port) + "@localhost"
	files := map[string]string{
		"rabbitmq.conf": "listeners.tcp.default = 127.0.0.1:" + strconv.Itoa(port) + "\n" +
			"loopback_users.guest = true\nlog.console = false\n",
		"enabled_plugins":   "[].\n",
		"rabbitmq-env.conf": "",
	}
	for f, content := range files {
		if err := os.WriteFile(filepath.Join(n.dir, f), []byte(content), 0o644); err != nil {
			return fmt.Errorf("chaos: write %s: %w", f, err)
		}
	}
	if err := os.WriteFile(filepath.Join(n.dir, ".erlang.cookie"), []byte("MQRPCCHAOS"+strconv.Itoa(port)+strconv.FormatInt(time.Now().UnixNano(), 36)), 0o400); err != nil {
		return fmt.Errorf("chaos: write cookie: %w", err)
	}
	env := append(os.Environ(),
		"HOME="+n.dir,
		"RABBITMQ_NODENAME="+name,
		"RABBITMQ_NODE_IP_ADDRESS=127.0.0.1",
		"RABBITMQ_NODE_PORT="+strconv.Itoa(port),
		"RABBITMQ_DIST_PORT="+strconv.Itoa(distPort),
		"RABBITMQ_CONFIG_FILE="+filepath.Join(n.dir, "rabbitmq.conf"),
		"RABBITMQ_CONF_ENV_FILE="+filepath.Join(n.dir, "rabbitmq-env.conf"),
		"RABBITMQ_ENABLED_PLUGINS_FILE="+filepath.Join(n.dir, "enabled_plugins"),
		"RABBITMQ_MNESIA_BASE="+filepath.Join(n.dir, "mnesia"),
		"RABBITMQ_LOG_BASE="+filepath.Join(n.dir, "log"),
		"RABBITMQ_PID_FILE="+filepath.Join(n.dir, "pid"),
		"ERL_EPMD_ADDRESS=127.0.0.1",
		"RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=-kernel inet_dist_use_interface {127,0,0,1}",
		"RABBITMQ_CTL_ERL_ARGS=-kernel inet_dist_use_interface {127,0,0,1}",
	)
	ctl := func(timeout time.Duration, args ...string) error {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		cmd := exec.CommandContext(ctx, ctlBin, append([]string{"-q", "-n", name}, args...)...)
		cmd.Env, cmd.Dir = env, n.dir
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("rabbitmqctl %s: %w: %s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	n.Addr, n.port = "amqp://guest:guest@127.0.0.1:"+strconv.Itoa(port)+"/", port
	n.restartRoles = []string{KindRabbitMQ}
	n.start = func(role string) error {
		bin, args := nofileRaised(serverBin)
		p, err := startProc(n.dir, "server.log", env, bin, args...)
		if err != nil {
			return err
		}
		n.register(role, p)
		if err := waitPort(p, port, 120*time.Second); err != nil {
			return err
		}
		return ctl(60*time.Second, "await_startup")
	}
	n.stopOne = func(_ string, p *proc) error {
		err := ctl(60*time.Second, "shutdown")
		if err != nil {
			p.kill()
		}
		select {
		case <-p.exited:
		case <-time.After(60 * time.Second):
			p.kill()
		}
		return err
	}
	return nil
}

// --- RocketMQ: a name server and a broker JVM from the jars scripts/brokers
// downloaded, on ports of their own; a restart cycles the broker only and
// keeps its store.

// RocketMQLib returns the directory of the RocketMQ jars that scripts/brokers
// keeps in its cache (the version of scripts/versions.env, or
// MQRPC_ROCKETMQ_VERSION).
func RocketMQLib() (string, error) {
	state := os.Getenv("MQRPC_STATE_DIR")
	if state == "" {
		cache := os.Getenv("XDG_CACHE_HOME")
		if cache == "" {
			home, _ := os.UserHomeDir()
			cache = filepath.Join(home, ".cache")
		}
		state = filepath.Join(cache, "mqrpc")
	}
	ver := os.Getenv("MQRPC_ROCKETMQ_VERSION")
	if ver == "" {
		var err error
		if ver, err = version("ROCKETMQ_VERSION"); err != nil {
			return "", err
		}
	}
	return filepath.Join(state, "rocketmq", ver, "lib"), nil
}

// rocketmqRuntime runs RocketMQ JVMs from the jars scripts/brokers cached,
// with the JVM flags and heaps of scripts/versions.env, as scripts/brokers
// passes them.
type rocketmqRuntime struct {
	java, lib, flags   string
	nsHeap, brokerHeap string
}

func findRocketMQ() (rocketmqRuntime, error) {
	lib, err := RocketMQLib()
	if err != nil {
		return rocketmqRuntime{}, err
	}
	if _, err := os.Stat(lib); err != nil {
		return rocketmqRuntime{}, fmt.Errorf("%w: RocketMQ jars not in %s (run scripts/brokers up rocketmq)", ErrNotInstalled, lib)
	}
	java, err := exec.LookPath("java")
	if err != nil {
		return rocketmqRuntime{}, fmt.Errorf("%w: java (run scripts/brokers up rocketmq)", ErrNotInstalled)
	}
	rt := rocketmqRuntime{java: java, lib: lib}
	for _, v := range []struct {
		key string
		to  *string
	}{{"ROCKETMQ_JVM_FLAGS", &rt.flags}, {"ROCKETMQ_NAMESRV_HEAP", &rt.nsHeap}, {"ROCKETMQ_BROKER_HEAP", &rt.brokerHeap}} {
		if *v.to, err = version(v.key); err != nil {
			return rocketmqRuntime{}, err
		}
	}
	return rt, nil
}

// args is the JVM command line of main with conf, logs under dir.
func (r rocketmqRuntime) args(dir, home, nsAddr, heap, main, conf string) []string {
	return append(strings.Fields(r.flags), "-Xmx"+heap,
		"-Duser.home="+dir, "-Drocketmq.home.dir="+home, "-Drocketmq.client.logRoot="+filepath.Join(dir, "logs"),
		"-Drocketmq.namesrv.addr="+nsAddr,
		"-cp", filepath.Join(r.lib, "*"), main, "-c", conf)
}

// brokerPort returns a free port for a RocketMQ broker, which listens on
// it, on it-2 (the "fast" channel) and on it+1 (HA), none of them in taken.
func brokerPort(taken ...int) (int, error) {
	clash := func(p int) bool {
		for _, t := range taken {
			if p == t || p-2 == t || p+1 == t || p == t-2 || p == t+1 {
				return true
			}
		}
		return false
	}
	for i := 0; i < 50; i++ {
		p, err := freePort()
		if err != nil {
			return 0, err
		}
		if p > 1030 && !clash(p) && portFree(p-2) && portFree(p+1) {
			return p, nil
		}
	}
	return 0, errors.New("chaos: no free port triple for a RocketMQ broker")
}

// brokerConf is the configuration of a RocketMQ master, as
// scripts/brokers.d/rocketmq.sh writes it, on port with its store.
func brokerConf(cluster, name, nsAddr string, port int, store string) string {
	return strings.Join([]string{
		"brokerClusterName=" + cluster,
		"brokerName=" + name,
		"brokerId=0",
		"brokerRole=ASYNC_MASTER",
		"flushDiskType=ASYNC_FLUSH",
		"namesrvAddr=" + nsAddr,
		"brokerIP1=127.0.0.1",
		"listenPort=" + strconv.Itoa(port),
		"storePathRootDir=" + store,
		"storePathCommitLog=" + filepath.Join(store, "commitlog"),
		"mappedFileSizeCommitLog=104857600",
		"maxHashSlotNum=50000",
		"maxIndexNum=200000",
		"timerWheelEnable=false",
		"autoCreateTopicEnable=true",
		"autoCreateSubscriptionGroup=true",
		"diskMaxUsedSpaceRatio=95",
		"waitTimeMillsInSendQueue=5000",
		"waitTimeMillsInPullQueue=10000",
		"storeReplyMessageEnable=false",
	}, "\n") + "\n"
}

func (n *Node) setupRocketMQ() error {
	rt, err := findRocketMQ()
	if err != nil {
		return err
	}
	nsPort, err := freePort()
	if err != nil {
		return err
	}
	bPort, err := brokerPort(nsPort)
	if err != nil {
		return err
	}
	home := filepath.Join(n.dir, "home")
	store := filepath.Join(n.dir, "store")
	for _, d := range []string{filepath.Join(home, "conf"), filepath.Join(n.dir, "logs"), store} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("chaos: mkdir: %w", err)
		}
	}
	nsAddr := "127.0.0.1:" + strconv.Itoa(nsPort)
	nsConf := filepath.Join(home, "conf", "namesrv.conf")
	bConf := filepath.Join(home, "conf", "broker.conf")
	confs := map[string]string{
		nsConf: "listenPort=" + strconv.Itoa(nsPort) + "\n",
		bConf:  brokerConf("ChaosCluster", "chaos-broker", nsAddr, bPort, store),
	}
	for f, c := range confs {
		if err := os.WriteFile(f, []byte(c), 0o644); err != nil {
			return fmt.Errorf("chaos: write %s: %w", f, err)
		}
	}
	env := append(os.Environ(), "ROCKETMQ_HOME="+home)
	java := rt.java
	jvm := func(heap, main, conf string) []string { return rt.args(n.dir, home, nsAddr, heap, main, conf) }
	n.Addr, n.port = nsAddr, bPort
	n.restartRoles = []string{"broker"}
	n.start = func(role string) error {
		var (
			p    *proc
			err  error
			port int
		)
		switch role {
		case "namesrv":
			p, err = startProc(n.dir, "namesrv.log", env, java, jvm(rt.nsHeap, "org.apache.rocketmq.namesrv.NamesrvStartup", nsConf)...)
			port = nsPort
		default:
			p, err = startProc(n.dir, "broker.log", env, java, jvm(rt.brokerHeap, "org.apache.rocketmq.broker.BrokerStartup", bConf)...)
			port = bPort
		}
		if err != nil {
			return err
		}
		n.register(role, p)
		if err := waitPort(p, port, 120*time.Second); err != nil {
			return err
		}
		if role == "broker" {
			// Clients find the broker (and the default topic that
			// auto-creates topics) through the name server only once
			// the broker registered there.
			return waitRegistered(p, nsAddr, "127.0.0.1:"+strconv.Itoa(bPort), 120*time.Second)
		}
		return nil
	}
	n.stopOne = func(_ string, p *proc) error {
		// SIGTERM runs the broker's shutdown hook, which flushes the
		// commit log and the consumer offsets.
		p.signal(syscall.SIGTERM, 30*time.Second)
		return nil
	}
	return nil
}

// waitRegistered polls the RocketMQ name server at nsAddr until its cluster
// info lists brokerAddr.
func waitRegistered(p *proc, nsAddr, brokerAddr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		info, err := clusterInfo(nsAddr)
		if err == nil && strings.Contains(info, brokerAddr) {
			return nil
		}
		select {
		case <-p.exited:
			return fmt.Errorf("broker exited before registering; log:\n%s", p.tail())
		case <-time.After(250 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("broker %s not registered with %s after %v (last: %v)", brokerAddr, nsAddr, timeout, err)
		}
	}
}

// clusterInfo asks a RocketMQ name server for its cluster info (remoting
// request code 106, GET_BROKER_CLUSTER_INFO) and returns the raw answer.
func clusterInfo(nsAddr string) (string, error) {
	_, _, body, err := remoting(nsAddr, 106, nil)
	return string(body), err
}

// remoting sends one RocketMQ remoting request (JSON header: code and
// extFields, no body) to addr and returns the answer's code, remark and
// body. The frame is: total length, header length (serialization type JSON
// in the high byte: 0), JSON header, body.
func remoting(addr string, code int, ext map[string]string) (int, string, []byte, error) {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return 0, "", nil, fmt.Errorf("chaos: dial %s: %w", addr, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	hdr, err := json.Marshal(map[string]any{"code": code, "flag": 0, "language": "GO", "opaque": 1,
		"serializeTypeCurrentRPC": "JSON", "version": 500, "extFields": ext})
	if err != nil {
		return 0, "", nil, err
	}
	frame := make([]byte, 8+len(hdr))
	binary.BigEndian.PutUint32(frame[0:], uint32(4+len(hdr)))
	binary.BigEndian.PutUint32(frame[4:], uint32(len(hdr)))
	copy(frame[8:], hdr)
	if _, err := c.Write(frame); err != nil {
		return 0, "", nil, fmt.Errorf("chaos: request to %s: %w", addr, err)
	}
	var lenBuf [8]byte
	if _, err := io.ReadFull(c, lenBuf[:]); err != nil {
		return 0, "", nil, fmt.Errorf("chaos: answer of %s: %w", addr, err)
	}
	total, hlen := binary.BigEndian.Uint32(lenBuf[:4]), binary.BigEndian.Uint32(lenBuf[4:])&0xffffff
	if total > 16<<20 || hlen+4 > total {
		return 0, "", nil, fmt.Errorf("chaos: answer of %s: %d bytes, header %d", addr, total, hlen)
	}
	rest := make([]byte, total-4)
	if _, err := io.ReadFull(c, rest); err != nil {
		return 0, "", nil, fmt.Errorf("chaos: answer of %s: %w", addr, err)
	}
	var h struct {
		Code   int    `json:"code"`
		Remark string `json:"remark"`
	}
	if err := json.Unmarshal(rest[:hlen], &h); err != nil {
		return 0, "", nil, fmt.Errorf("chaos: answer header of %s: %w", addr, err)
	}
	return h.Code, h.Remark, rest[hlen:], nil
}

// CreateTopic creates topic with queues read and write queues on the
// RocketMQ broker at brokerAddr (remoting request 17,
// UPDATE_AND_CREATE_TOPIC, as mqadmin updateTopic does).
func CreateTopic(brokerAddr, topic string, queues int) error {
	n := strconv.Itoa(queues)
	code, remark, _, err := remoting(brokerAddr, 17, map[string]string{
		"topic": topic, "defaultTopic": "TBW102", "readQueueNums": n, "writeQueueNums": n,
		"perm": "6", "topicFilterType": "SINGLE_TAG", "topicSysFlag": "0", "order": "false",
	})
	if err == nil && code != 0 {
		err = fmt.Errorf("chaos: create topic %s on %s: code %d: %s", topic, brokerAddr, code, remark)
	}
	return err
}
