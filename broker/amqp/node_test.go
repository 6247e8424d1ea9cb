package amqp_test

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/internal/testenv"
)

// Tests that drop connections or restart RabbitMQ must not disturb other
// tests sharing the RabbitMQ on 5672, so they use either a vhost of their
// own (close_all_connections takes a vhost) or a private node of their own
// on other ports (full restarts).

// envNode names the node behind MQRPC_AMQP_URL for rabbitmqctl.
const envNode = "MQRPC_RABBITMQ_NODE"

// need skips the test, or fails it under CI=true, with msg.
func need(t testing.TB, msg string) {
	t.Helper()
	if testenv.CI() {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// ctlPath finds rabbitmqctl, skipping (failing under CI) when RabbitMQ's
// tools are not installed on this machine.
func ctlPath(t testing.TB) string {
	t.Helper()
	for _, p := range []string{"rabbitmqctl", "/usr/sbin/rabbitmqctl", "/usr/lib/rabbitmq/bin/rabbitmqctl"} {
		if path, err := exec.LookPath(p); err == nil {
			return path
		}
	}
	need(t, "rabbitmqctl not found; install RabbitMQ with: scripts/brokers up rabbitmq")
	return ""
}

// ctl runs rabbitmqctl against the shared node.
func ctl(t testing.TB, args ...string) string {
	t.Helper()
	node := testenv.Lookup(envNode, "rabbit@localhost")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, ctlPath(t), append([]string{"-q", "-n", node}, args...)...)
	// rabbitmqctl may start an epmd daemon that keeps its output pipe
	// open: without a WaitDelay, the test would wait for it for ever.
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "rabbitmqctl %s: %s", strings.Join(args, " "), out)
	return string(out)
}

// vhostURL creates a fresh vhost on the shared node for this test, grants
// the URL's user access, deletes it at cleanup, and returns the URL for it.
func vhostURL(t testing.TB) (amqpURL, vhost string) {
	t.Helper()
	base := testenv.AMQPURL(t)
	u, err := url.Parse(base)
	require.NoError(t, err)
	user := "guest"
	if u.User != nil && u.User.Username() != "" {
		user = u.User.Username()
	}
	vhost = "mqrpc-test-" + broker.NewID()
	ctl(t, "add_vhost", vhost)
	t.Cleanup(func() { ctl(t, "delete_vhost", vhost) })
	ctl(t, "set_permissions", "-p", vhost, user, ".*", ".*", ".*")
	u.Path = "/" + vhost
	u.RawPath = "/" + url.PathEscape(vhost)
	return u.String(), vhost
}

// closeVhostConnections drops every connection to vhost, as a network
// failure or an operator would.
func closeVhostConnections(t testing.TB, vhost string) {
	t.Helper()
	ctl(t, "close_all_connections", "-p", vhost, "--limit", "10000", "mqrpc test: simulated connection loss")
}

// node is a private RabbitMQ node started by a test, on its own ports and
// data directory, so it can be restarted without disturbing anyone.
type node struct {
	name      string
	dir       string
	port      int
	tlsPort   int
	distPort  int
	serverBin string
	ctlBin    string
	env       []string

	mu  sync.Mutex
	cmd *exec.Cmd
	// exited is closed when the running server process ends.
	exited chan struct{}
}

// nodeTLS, when given, makes the private node also listen for amqps.
type nodeTLS struct {
	caFile, certFile, keyFile string
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startNode starts a private RabbitMQ node for t and stops it at cleanup.
// It takes 5-10 seconds.
func startNode(t testing.TB, tlsFiles *nodeTLS) *node {
	t.Helper()
	testenv.AMQPURL(t) // same skip/fail policy as the shared broker
	ctlBin := ctlPath(t)
	serverBin := ""
	for _, p := range []string{"/usr/lib/rabbitmq/bin/rabbitmq-server", "/usr/sbin/rabbitmq-server"} {
		if _, err := os.Stat(p); err == nil {
			serverBin = p
			break
		}
	}
	if serverBin == "" {
		need(t, "rabbitmq-server not installed; install it with: scripts/brokers up rabbitmq")
	}
	if filepath.Base(filepath.Dir(ctlBin)) == "sbin" {
		// The Debian wrappers switch to the rabbitmq user; the private
		// node runs as us, with its own cookie in its own HOME.
		ctlBin = "/usr/lib/rabbitmq/bin/rabbitmqctl"
	}
	dir := t.TempDir()
	n := &node{
		name:      "mqrpctest-" + strconv.Itoa(os.Getpid()) + "-" + strconv.Itoa(freePort(t)) + "@localhost",
		dir:       dir,
		port:      freePort(t),
		distPort:  freePort(t),
		serverBin: serverBin,
		ctlBin:    ctlBin,
	}
	conf := []string{
		"listeners.tcp.default = 127.0.0.1:" + strconv.Itoa(n.port),
		"loopback_users.guest = true",
		"log.console = false",
	}
	if tlsFiles != nil {
		n.tlsPort = freePort(t)
		conf = append(conf,
			"listeners.ssl.default = 127.0.0.1:"+strconv.Itoa(n.tlsPort),
			"ssl_options.cacertfile = "+tlsFiles.caFile,
			"ssl_options.certfile = "+tlsFiles.certFile,
			"ssl_options.keyfile = "+tlsFiles.keyFile,
			"ssl_options.verify = verify_none",
			"ssl_options.fail_if_no_peer_cert = false",
		)
	}
	require.NoError(t, os.WriteFile(filepath.Join(dir, "rabbitmq.conf"), []byte(strings.Join(conf, "\n")+"\n"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "enabled_plugins"), []byte("[].\n"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "rabbitmq-env.conf"), nil, 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, ".erlang.cookie"), []byte("MQRPCTEST"+strings.ToUpper(broker.NewID()[:16])), 0o400))
	n.env = append(os.Environ(),
		"HOME="+dir,
		"RABBITMQ_NODENAME="+n.name,
		"RABBITMQ_NODE_IP_ADDRESS=127.0.0.1",
		"RABBITMQ_NODE_PORT="+strconv.Itoa(n.port),
		"RABBITMQ_DIST_PORT="+strconv.Itoa(n.distPort),
		"RABBITMQ_CONFIG_FILE="+filepath.Join(dir, "rabbitmq.conf"),
		"RABBITMQ_CONF_ENV_FILE="+filepath.Join(dir, "rabbitmq-env.conf"),
		"RABBITMQ_ENABLED_PLUGINS_FILE="+filepath.Join(dir, "enabled_plugins"),
		"RABBITMQ_MNESIA_BASE="+filepath.Join(dir, "mnesia"),
		"RABBITMQ_LOG_BASE="+filepath.Join(dir, "log"),
		"RABBITMQ_PID_FILE="+filepath.Join(dir, "pid"),
		"ERL_EPMD_ADDRESS=127.0.0.1",
		"RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=-kernel inet_dist_use_interface {127,0,0,1}",
		"RABBITMQ_CTL_ERL_ARGS=-kernel inet_dist_use_interface {127,0,0,1}",
	)
	t.Cleanup(func() { n.stop(t, false) })
	n.start(t)
	return n
}

// URL returns the node's amqp:// URL.
func (n *node) URL() string { return fmt.Sprintf("amqp://guest:guest@127.0.0.1:%d/", n.port) }

// TLSURL returns the node's amqps:// URL (host name localhost, which the
// test certificate names).
func (n *node) TLSURL() string { return fmt.Sprintf("amqps://guest:guest@localhost:%d/", n.tlsPort) }

func (n *node) start(t testing.TB) {
	t.Helper()
	start := time.Now()
	cmd := exec.Command(n.serverBin)
	cmd.Env = n.env
	cmd.Dir = n.dir
	logf, err := os.OpenFile(filepath.Join(n.dir, "server.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	require.NoError(t, err)
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	require.NoError(t, cmd.Start())
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	n.mu.Lock()
	n.cmd, n.exited = cmd, exited
	n.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	for {
		c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(n.port), time.Second)
		if err == nil {
			_ = c.Close()
			break
		}
		select {
		case <-exited:
			log, _ := os.ReadFile(filepath.Join(n.dir, "server.log"))
			t.Fatalf("private RabbitMQ node exited during boot:\n%s", log)
		case <-ctx.Done():
			t.Fatalf("private RabbitMQ node did not open port %d in 90s", n.port)
		case <-time.After(100 * time.Millisecond):
		}
	}
	n.ctl(t, "await_startup")
	t.Logf("private RabbitMQ node %s up in %v", n.name, time.Since(start).Round(time.Millisecond))
}

// stop shuts the node down (kill: SIGKILL, as a crash) and waits for it.
func (n *node) stop(t testing.TB, kill bool) {
	n.mu.Lock()
	cmd, exited := n.cmd, n.exited
	n.cmd = nil
	n.mu.Unlock()
	if cmd == nil {
		return
	}
	if kill {
		// rabbitmq-server runs the Erlang VM as a child of a shell script
		// in the foreground, so the VM itself is killed, by the pid it
		// wrote at boot: a crash, with no chance to flush anything.
		pidText, err := os.ReadFile(filepath.Join(n.dir, "pid"))
		pid, perr := strconv.Atoi(strings.TrimSpace(string(pidText)))
		require.NoError(t, err, "pid file of the private node")
		require.NoError(t, perr, "pid file of the private node")
		require.NoError(t, syscall.Kill(pid, syscall.SIGKILL))
	} else if out, err := n.ctlErr("shutdown"); err != nil {
		t.Logf("rabbitmqctl shutdown: %v: %s", err, out)
		_ = cmd.Process.Kill()
	}
	select {
	case <-exited:
	case <-time.After(60 * time.Second):
		_ = cmd.Process.Kill()
		<-exited
	}
}

// restart stops the node (gracefully or by SIGKILL) and starts it again on
// the same ports and data.
func (n *node) restart(t testing.TB, kill bool) {
	t.Helper()
	n.stop(t, kill)
	n.start(t)
}

func (n *node) ctlErr(args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, n.ctlBin, append([]string{"-q", "-n", n.name}, args...)...)
	cmd.Env = n.env
	cmd.Dir = n.dir
	return cmd.CombinedOutput()
}

func (n *node) ctl(t testing.TB, args ...string) string {
	t.Helper()
	out, err := n.ctlErr(args...)
	require.NoError(t, err, "rabbitmqctl %s: %s", strings.Join(args, " "), out)
	return string(out)
}
