package chaos

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// RabbitMQCluster is a private 3-node RabbitMQ cluster: nodes on free
// loopback ports, each with its own data, one cookie, joined at first boot
// by classic-config peer discovery (as scripts/brokers.d/cluster/rabbitmq.sh).
// Every VM dies with the test process (Pdeathsig on the start script, which
// runs the VM in the foreground).
type RabbitMQCluster struct {
	nodeSet
	dir   string
	ports []int
	env   [][]string
}

// StartRabbitMQCluster starts size nodes and waits until each booted.
func StartRabbitMQCluster(dir string, size int) (*RabbitMQCluster, error) {
	const bin = "/usr/lib/rabbitmq/bin"
	if _, err := os.Stat(filepath.Join(bin, "rabbitmq-server")); err != nil {
		return nil, fmt.Errorf("%w: rabbitmq-server (run scripts/brokers up rabbitmq)", ErrNotInstalled)
	}
	c := &RabbitMQCluster{nodeSet: newNodeSet(size), dir: dir}
	cookie := "MQRPCCLUSTER" + strconv.FormatInt(time.Now().UnixNano(), 36)
	var peers strings.Builder
	dist := make([]int, size)
	for i := 0; i < size; i++ {
		p, err1 := freePort()
		d, err2 := freePort()
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("chaos: rabbitmq cluster ports: %v %v", err1, err2)
		}
		c.ports, dist[i] = append(c.ports, p), d
		c.Names = append(c.Names, fmt.Sprintf("mqrpc-cl%d-%d@localhost", os.Getpid(), i+1))
		fmt.Fprintf(&peers, "cluster_formation.classic_config.nodes.%d = %s\n", i+1, c.Names[i])
	}
	for i, name := range c.Names {
		nd := filepath.Join(dir, "n"+strconv.Itoa(i+1))
		if err := os.MkdirAll(nd, 0o755); err != nil {
			return nil, fmt.Errorf("chaos: mkdir: %w", err)
		}
		files := map[string]string{
			"rabbitmq.conf": "listeners.tcp.default = 127.0.0.1:" + strconv.Itoa(c.ports[i]) + "\n" +
				"loopback_users.guest = true\nlog.console = false\n" +
				"vm_memory_high_watermark.absolute = 1GB\ndisk_free_limit.absolute = 100MB\n" +
				"cluster_formation.peer_discovery_backend = classic_config\n" + peers.String(),
			"enabled_plugins":   "[].\n",
			"rabbitmq-env.conf": "",
		}
		for f, content := range files {
			if err := os.WriteFile(filepath.Join(nd, f), []byte(content), 0o644); err != nil {
				return nil, fmt.Errorf("chaos: write %s: %w", f, err)
			}
		}
		if err := os.WriteFile(filepath.Join(nd, ".erlang.cookie"), []byte(cookie), 0o400); err != nil {
			return nil, fmt.Errorf("chaos: write cookie: %w", err)
		}
		c.env = append(c.env, append(os.Environ(),
			"HOME="+nd,
			"RABBITMQ_NODENAME="+name,
			"RABBITMQ_NODE_IP_ADDRESS=127.0.0.1",
			"RABBITMQ_NODE_PORT="+strconv.Itoa(c.ports[i]),
			"RABBITMQ_DIST_PORT="+strconv.Itoa(dist[i]),
			"RABBITMQ_CONFIG_FILE="+filepath.Join(nd, "rabbitmq.conf"),
			"RABBITMQ_CONF_ENV_FILE="+filepath.Join(nd, "rabbitmq-env.conf"),
			"RABBITMQ_ENABLED_PLUGINS_FILE="+filepath.Join(nd, "enabled_plugins"),
			"RABBITMQ_MNESIA_BASE="+filepath.Join(nd, "mnesia"),
			"RABBITMQ_LOG_BASE="+filepath.Join(nd, "log"),
			"RABBITMQ_PID_FILE="+filepath.Join(nd, "pid"),
			"ERL_EPMD_ADDRESS=127.0.0.1",
			// One scheduler each: three VMs share 2 cores with the test.
			"RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=-kernel inet_dist_use_interface {127,0,0,1} +S 1:1 +A 8",
			"RABBITMQ_CTL_ERL_ARGS=-kernel inet_dist_use_interface {127,0,0,1}",
		))
	}
	if err := startAll(len(c.Names), c.spawn, c.wait, c.Close); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *RabbitMQCluster) nodeDir(i int) string { return filepath.Join(c.dir, "n"+strconv.Itoa(i+1)) }

func (c *RabbitMQCluster) spawn(i int) error {
	bin, args := nofileRaised("/usr/lib/rabbitmq/bin/rabbitmq-server")
	p, err := startProc(c.nodeDir(i), "server.log", c.env[i], bin, args...)
	if err != nil {
		return err
	}
	c.set(i, p)
	return nil
}

func (c *RabbitMQCluster) wait(i int) error {
	p := c.get(i)
	if err := waitPort(p, c.ports[i], 180*time.Second); err != nil {
		return fmt.Errorf("chaos: rabbitmq node %s: %w", c.Names[i], err)
	}
	if _, err := c.Ctl(i, 120*time.Second, "await_startup"); err != nil {
		return fmt.Errorf("chaos: rabbitmq node %s: %w", c.Names[i], err)
	}
	return nil
}

// Ctl runs rabbitmqctl against node i and returns its output.
func (c *RabbitMQCluster) Ctl(i int, timeout time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/usr/lib/rabbitmq/bin/rabbitmqctl", append([]string{"-q", "-n", c.Names[i]}, args...)...)
	cmd.Env, cmd.Dir = c.env[i], c.nodeDir(i)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("rabbitmqctl %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// URLFrom is the AMQP URL list of every node starting with node first:
// amqp.New tries them in turn, so a new client connects to that node.
func (c *RabbitMQCluster) URLFrom(first int) string {
	urls := make([]string, len(c.ports))
	for i := range c.ports {
		urls[i] = "amqp://guest:guest@127.0.0.1:" + strconv.Itoa(c.ports[(first+i)%len(c.ports)]) + "/"
	}
	return strings.Join(urls, ",")
}

// QueueLeader returns the node leading quorum queue name, asked of a live
// node (not skip).
func (c *RabbitMQCluster) QueueLeader(name string, skip int) (string, error) {
	for i := range c.Names {
		if i == skip {
			continue
		}
		out, err := c.Ctl(i, 30*time.Second, "list_queues", "name", "leader", "--no-table-headers")
		if err != nil {
			continue
		}
		for _, line := range strings.Split(out, "\n") {
			f := strings.Fields(line)
			if len(f) == 2 && f[0] == name {
				return f[1], nil
			}
		}
		return "", fmt.Errorf("chaos: queue %s not listed: %s", name, out)
	}
	return "", fmt.Errorf("chaos: no node answered for queue %s", name)
}

// Kill SIGKILLs node i's Erlang VM and waits until its port is free.
func (c *RabbitMQCluster) Kill(i int) error {
	return c.sigkill(i, filepath.Join(c.nodeDir(i), "pid"), c.ports[i])
}

// Start starts node i again on its ports and data and waits until it booted.
func (c *RabbitMQCluster) Start(i int) error {
	if err := c.spawn(i); err != nil {
		return err
	}
	return c.wait(i)
}

// Close stops every node (SIGKILL: the data is thrown away).
func (c *RabbitMQCluster) Close() {
	for i, p := range c.takeAll() {
		if p != nil {
			killPidFile(p, filepath.Join(c.nodeDir(i), "pid"), 10*time.Second)
		}
	}
}

// MemoryAlarms lists the memory alarms the nodes raised since since, as
// "<node> +<seconds after since>": while one is set, RabbitMQ blocks the
// publishers on every node of the cluster, so the calls of that time end
// DeadlineExceeded for a reason outside the library.
func (c *RabbitMQCluster) MemoryAlarms(since time.Time) []string {
	const layout = "2006-01-02 15:04:05.999999-07:00"
	var alarms []string
	for i, name := range c.Names {
		data, err := os.ReadFile(filepath.Join(c.nodeDir(i), "log", name+".log"))
		if err != nil {
			continue
		}
		own := "memory resource limit alarm set on node '" + name + "'"
		for _, line := range strings.Split(string(data), "\n") {
			if !strings.Contains(line, own) || len(line) < len(layout) {
				continue
			}
			at, err := time.Parse(layout, line[:len("2006-01-02 15:04:05.000000+00:00")])
			if err != nil || at.Before(since) {
				continue
			}
			alarms = append(alarms, fmt.Sprintf("%s +%v", name, at.Sub(since).Round(10*time.Millisecond)))
		}
	}
	return alarms
}
