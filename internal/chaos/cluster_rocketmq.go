package chaos

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// RocketMQCluster is a private RocketMQ of two masters, broker-a and
// broker-b (brokerId 0 each, one cluster, no slaves), under one name server,
// on free loopback ports with a store each (as scripts/brokers.d/cluster/
// rocketmq.sh). A topic made with CreateTopics has queues on both, so
// producers and consumers use both masters. Every JVM dies with the test
// process (Pdeathsig).
type RocketMQCluster struct {
	nodeSet           // the brokers
	NameServer string // host:port
	dir        string
	rt         rocketmqRuntime
	home       string
	ports      []int // the brokers' listen ports
	ns         *proc
}

const (
	// ClusterNameRocketMQ is the brokerClusterName of RocketMQCluster.
	ClusterNameRocketMQ = "ChaosTwoMasters"
	// ClusterBrokerHeapRocketMQ is each master's heap: smaller than a
	// single broker's (scripts/versions.env), as
	// scripts/brokers.d/cluster/rocketmq.sh, since two of them share the
	// machine.
	ClusterBrokerHeapRocketMQ = "512m"
)

// StartRocketMQCluster starts the name server and both masters, and waits
// until both registered with the name server.
func StartRocketMQCluster(dir string) (*RocketMQCluster, error) {
	rt, err := findRocketMQ()
	if err != nil {
		return nil, err
	}
	c := &RocketMQCluster{nodeSet: newNodeSet(2), dir: dir, rt: rt, home: filepath.Join(dir, "home")}
	c.Names = []string{"broker-a", "broker-b"}
	nsPort, err := freePort()
	if err != nil {
		return nil, err
	}
	c.NameServer = "127.0.0.1:" + strconv.Itoa(nsPort)
	taken := []int{nsPort}
	for range c.Names {
		p, err := brokerPort(taken...)
		if err != nil {
			return nil, err
		}
		c.ports, taken = append(c.ports, p), append(taken, p)
	}
	confs := map[string]string{c.conf("namesrv"): "listenPort=" + strconv.Itoa(nsPort) + "\n"}
	for i, name := range c.Names {
		store := filepath.Join(dir, name, "store")
		if err := os.MkdirAll(store, 0o755); err != nil {
			return nil, fmt.Errorf("chaos: mkdir: %w", err)
		}
		confs[c.conf(name)] = brokerConf(ClusterNameRocketMQ, name, c.NameServer, c.ports[i], store)
	}
	if err := os.MkdirAll(filepath.Join(c.home, "conf"), 0o755); err != nil {
		return nil, fmt.Errorf("chaos: mkdir: %w", err)
	}
	for f, content := range confs {
		if err := os.WriteFile(f, []byte(content), 0o644); err != nil {
			return nil, fmt.Errorf("chaos: write %s: %w", f, err)
		}
	}
	c.ns, err = c.jvm("namesrv", c.rt.nsHeap, "org.apache.rocketmq.namesrv.NamesrvStartup")
	if err != nil {
		return nil, err
	}
	if err := waitPort(c.ns, nsPort, 120*time.Second); err != nil {
		c.Close()
		return nil, fmt.Errorf("chaos: rocketmq name server: %w", err)
	}
	if err := startAll(len(c.Names), c.spawn, c.wait, c.Close); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *RocketMQCluster) conf(name string) string {
	return filepath.Join(c.home, "conf", name+".conf")
}

// jvm starts the JVM of role (the name server or a broker's name).
func (c *RocketMQCluster) jvm(role, heap, main string) (*proc, error) {
	d := filepath.Join(c.dir, role)
	if err := os.MkdirAll(filepath.Join(d, "logs"), 0o755); err != nil {
		return nil, fmt.Errorf("chaos: mkdir: %w", err)
	}
	env := append(os.Environ(), "ROCKETMQ_HOME="+c.home)
	return startProc(d, role+".log", env, c.rt.java, c.rt.args(d, c.home, c.NameServer, heap, main, c.conf(role))...)
}

func (c *RocketMQCluster) spawn(i int) error {
	p, err := c.jvm(c.Names[i], ClusterBrokerHeapRocketMQ, "org.apache.rocketmq.broker.BrokerStartup")
	if err != nil {
		return err
	}
	c.set(i, p)
	return nil
}

func (c *RocketMQCluster) wait(i int) error {
	p := c.get(i)
	if err := waitPort(p, c.ports[i], 120*time.Second); err != nil {
		return fmt.Errorf("chaos: rocketmq %s: %w", c.Names[i], err)
	}
	if err := waitRegistered(p, c.NameServer, c.BrokerAddr(i), 120*time.Second); err != nil {
		return fmt.Errorf("chaos: rocketmq %s: %w", c.Names[i], err)
	}
	return nil
}

// BrokerAddr is the address of broker i.
func (c *RocketMQCluster) BrokerAddr(i int) string { return "127.0.0.1:" + strconv.Itoa(c.ports[i]) }

// CreateTopics creates topic with queues queues on each master.
func (c *RocketMQCluster) CreateTopics(topic string, queues int) error {
	for i := range c.Names {
		if err := CreateTopic(c.BrokerAddr(i), topic, queues); err != nil {
			return err
		}
	}
	return nil
}

// Kill SIGKILLs broker i and waits until its port is free.
func (c *RocketMQCluster) Kill(i int) error { return c.sigkill(i, "", c.ports[i]) }

// Start starts broker i again on its port and store and waits until it
// registered with the name server.
func (c *RocketMQCluster) Start(i int) error {
	if err := c.spawn(i); err != nil {
		return err
	}
	return c.wait(i)
}

// Close stops the brokers and the name server.
func (c *RocketMQCluster) Close() {
	for _, p := range c.takeAll() {
		if p != nil {
			p.signal(syscall.SIGTERM, 30*time.Second)
		}
	}
	if c.ns != nil {
		c.ns.signal(syscall.SIGTERM, 30*time.Second)
		c.ns = nil
	}
}
