package jsonrpc_test

import (
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/adapters/jsonrpc"
	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/amqp"
	"github.com/mqrpc/mqrpc/internal/testenv"
	"github.com/mqrpc/mqrpc/rpc"
)

// javaClasspath returns the jars of the RabbitMQ Java client and Jackson:
// MQRPC_JAVA_CLASSPATH, or the versions below in the local Maven
// repository (mvn dependency:get -Dartifact=com.rabbitmq:amqp-client:5.25.0
// and com.fasterxml.jackson.core:jackson-databind:2.18.2 put them there).
func javaClasspath() (string, bool) {
	if cp := os.Getenv("MQRPC_JAVA_CLASSPATH"); cp != "" {
		return cp, true
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", false
	}
	repo := filepath.Join(home, ".m2", "repository")
	jars := []string{
		"com/rabbitmq/amqp-client/5.25.0/amqp-client-5.25.0.jar",
		"com/fasterxml/jackson/core/jackson-databind/2.18.2/jackson-databind-2.18.2.jar",
		"com/fasterxml/jackson/core/jackson-core/2.18.2/jackson-core-2.18.2.jar",
		"com/fasterxml/jackson/core/jackson-annotations/2.18.2/jackson-annotations-2.18.2.jar",
		"org/slf4j/slf4j-api/1.7.36/slf4j-api-1.7.36.jar",
	}
	for i, j := range jars {
		jars[i] = filepath.Join(repo, j)
		if _, err := os.Stat(jars[i]); err != nil {
			return "", false
		}
	}
	return strings.Join(jars, string(os.PathListSeparator)), true
}

// TestJavaClient runs RabbitMQ's own Java JsonRpcClient against a Go
// service over RabbitMQ. It needs a JDK and the client's jars (see
// javaClasspath), and is skipped without them, also under CI.
func TestJavaClient(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a JVM")
	}
	javac, err1 := exec.LookPath("javac")
	java, err2 := exec.LookPath("java")
	cp, ok := javaClasspath()
	if err1 != nil || err2 != nil || !ok {
		needJava(t)
	}
	url := testenv.AMQPURL(t)
	b, err := amqp.New(url)
	require.NoError(t, err)
	defer b.Close()
	queue := "mqrpc.test.jsonrpc.javaclient." + broker.NewID()
	serve(t, b, queue, nil)

	dir := t.TempDir()
	out, err := exec.Command(javac, "-d", dir, "-cp", cp, filepath.Join("testdata", "java", "Interop.java")).CombinedOutput()
	require.NoError(t, err, "javac: %s", out)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	out, err = exec.CommandContext(ctx, java, "-cp", dir+string(os.PathListSeparator)+cp, "Interop", url, queue).CombinedOutput()
	require.NoError(t, err, "java: %s", out)
	var lines []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if !strings.HasPrefix(l, "SLF4J:") { // no logger bound: a warning
			lines = append(lines, l)
		}
	}
	assert.Equal(t, []string{
		"service calc",
		"add/2 returns num as long",
		"add 40 2 = 42",
		"hello = hello java",
		"fail: JSONRPCError -32005 no such thing",
	}, lines)
}

// TestJavaServer calls RabbitMQ's own Java JsonRpcServer from a Go client
// speaking its dialect (WithVersion11), over RabbitMQ. Same requirements
// as TestJavaClient.
func TestJavaServer(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a JVM")
	}
	javac, err1 := exec.LookPath("javac")
	java, err2 := exec.LookPath("java")
	cp, ok := javaClasspath()
	if err1 != nil || err2 != nil || !ok {
		needJava(t)
	}
	url := testenv.AMQPURL(t)
	dir := t.TempDir()
	out, err := exec.Command(javac, "-d", dir, "-cp", cp, filepath.Join("testdata", "java", "Server.java")).CombinedOutput()
	require.NoError(t, err, "javac: %s", out)

	queue := "mqrpc.test.jsonrpc.javaserver." + broker.NewID()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, java, "-cp", dir+string(os.PathListSeparator)+cp, "Server", url, queue)
	stdin, err := cmd.StdinPipe()
	require.NoError(t, err)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	stderr := &testenv.LogBuffer{}
	cmd.Stderr = stderr
	require.NoError(t, cmd.Start())
	defer func() {
		_ = stdin.Close() // the server stops when stdin closes
		assert.NoError(t, cmd.Wait(), "java: %s", stderr.String())
	}()
	ready := make([]byte, 6)
	_, err = io.ReadFull(stdout, ready)
	require.NoError(t, err, "java: %s", stderr.String())
	require.Equal(t, "ready\n", string(ready))

	b, err := amqp.New(url)
	require.NoError(t, err)
	defer b.Close()
	c := jsonrpc.NewClient(b, queue, jsonrpc.WithVersion11())

	d, err := jsonrpc.Invoke[jsonrpc.ServiceDescription](ctx, c, "system.describe", nil)
	require.NoError(t, err)
	var names []string
	for _, p := range d.Procs {
		names = append(names, p.Name)
	}
	assert.Subset(t, names, []string{"add", "hello", "fail"})

	sum, err := jsonrpc.Invoke[int](ctx, c, "add", []int{40, 2})
	require.NoError(t, err)
	assert.Equal(t, 42, sum)
	hi, err := jsonrpc.Invoke[string](ctx, c, "hello", []string{"go"})
	require.NoError(t, err)
	assert.Equal(t, "hello go", hi)

	err = c.Call(ctx, "fail", []string{"on purpose"}, nil)
	var je *jsonrpc.Error
	require.ErrorAs(t, err, &je)
	assert.Equal(t, 500, je.Code)
	assert.Equal(t, "Internal Server Error", je.Message)
	assert.Equal(t, rpc.Internal, rpc.CodeOf(err))
}

// needJava skips (locally) or fails (under CI=true, where scripts/test
// fetches the jars) a test that cannot find a JDK and the Java client.
func needJava(t *testing.T) {
	t.Helper()
	msg := "needs javac, java and the RabbitMQ Java client's jars (MQRPC_JAVA_CLASSPATH or ~/.m2; scripts/test fetches them)"
	if testenv.CI() {
		t.Fatal(msg)
	}
	t.Skip(msg)
}
