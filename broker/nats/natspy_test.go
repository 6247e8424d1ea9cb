package nats_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/internal/testenv"
	"github.com/mqrpc/mqrpc/rpc"
)

// pythonWithNATS returns a python3 and a PYTHONPATH under which nats-py
// imports, installing it with pip into a cache directory of ours (never
// into the system's site-packages) when it is missing. Locally a missing
// python3 or a failed install skips the test; under CI=true it fails it.
func pythonWithNATS(t *testing.T) (python, pythonPath string) {
	t.Helper()
	need := func(msg string) {
		t.Helper()
		if testenv.CI() {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	python, err := exec.LookPath("python3")
	if err != nil {
		need("python3 not found; the nats-py stream test needs it")
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	pythonPath = filepath.Join(cache, "mqrpc", "python")
	env := append(os.Environ(), "PYTHONPATH="+pythonPath)
	imports := func() bool {
		cmd := exec.Command(python, "-c", "import nats")
		cmd.Env = env
		return cmd.Run() == nil
	}
	if imports() {
		return python, pythonPath
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
		"--target", pythonPath, "nats-py>=2.6,<3")
	if out, err := cmd.CombinedOutput(); err != nil || !imports() {
		need("cannot install nats-py with pip: " + string(out))
	}
	return python, pythonPath
}

// TestNATSPyReadsServerStream reads an mqrpc server stream from Python
// with nats-py, following docs/PROTOCOL.md ("Streams") only: evidence that
// a foreign client can read the frames.
func TestNATSPyReadsServerStream(t *testing.T) {
	url := testenv.NATSURL(t)
	python, pythonPath := pythonWithNATS(t)

	b := newBroker(t, url)
	subject := uniqueSubject(t)
	type countReq struct{ N int }
	type number struct{ I int }
	srv := rpc.NewServer()
	require.NoError(t, rpc.HandleServerStream(srv, "Count", func(ctx context.Context, in *countReq, send func(*number) error) error {
		for i := 1; i <= in.N; i++ {
			if err := send(&number{I: i}); err != nil {
				return err
			}
		}
		rpc.SetReplyHeader(ctx, "x-total", strconv.Itoa(in.N))
		return nil
	}))
	sub, err := b.Serve(subject, srv)
	require.NoError(t, err)
	t.Cleanup(func() { _ = sub.Stop(context.Background()) })

	const n = 300 // six times the Python reader's window: the stream lives on its credit frames
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, python, filepath.Join("testdata", "natspy_stream.py"), url, subject, "Count", strconv.Itoa(n))
	cmd.Env = append(os.Environ(), "PYTHONPATH="+pythonPath)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	require.NoError(t, err, "nats-py client: %s\n%s", stderr.String(), out)

	type line struct {
		Seq     int               `json:"seq"`
		Body    number            `json:"body"`
		End     bool              `json:"end"`
		Status  int               `json:"status"`
		Count   int               `json:"count"`
		Trailer map[string]string `json:"trailer"`
	}
	var got []line
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		var l line
		require.NoError(t, json.Unmarshal(sc.Bytes(), &l), "line %q", sc.Text())
		got = append(got, l)
	}
	require.Len(t, got, n+1, "output: %s", out)
	for i := 0; i < n; i++ {
		require.Equal(t, i+1, got[i].Seq)
		require.Equal(t, i+1, got[i].Body.I)
	}
	end := got[n]
	assert.True(t, end.End)
	assert.Equal(t, 0, end.Status)
	assert.Equal(t, n, end.Count)
	assert.Equal(t, map[string]string{"x-total": strconv.Itoa(n)}, end.Trailer)
}
