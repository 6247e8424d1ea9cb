package amqp_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/internal/testenv"
)

// pythonWithPika returns a python3 and a PYTHONPATH under which pika
// imports, installing pika with pip into a cache directory of ours (never
// into the system's site-packages) when it is missing. Locally a missing
// python3 or a failed install skips the test; under CI=true it fails it.
func pythonWithPika(t *testing.T) (python, pythonPath string) {
	t.Helper()
	python, err := exec.LookPath("python3")
	if err != nil {
		need(t, "python3 not found; the pika interop test needs it")
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	pythonPath = filepath.Join(cache, "mqrpc", "python")
	env := append(os.Environ(), "PYTHONPATH="+pythonPath)
	imports := func() bool {
		cmd := exec.Command(python, "-c", "import pika")
		cmd.Env = env
		return cmd.Run() == nil
	}
	if imports() {
		return python, pythonPath
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
		"--target", pythonPath, "pika>=1.3,<2")
	if out, err := cmd.CombinedOutput(); err != nil || !imports() {
		need(t, "cannot install pika with pip: "+string(out))
	}
	return python, pythonPath
}

// TestPikaClient calls an mqrpc service from Python with pika, following
// docs/PROTOCOL.md only: evidence that the protocol works from another
// language and client library.
func TestPikaClient(t *testing.T) {
	url := testenv.AMQPURL(t)
	python, pythonPath := pythonWithPika(t)

	srv := open(t, url)
	subj := "pika-calc-" + broker.NewID()
	var sawDeadline atomic.Bool
	serve(t, srv, subj, func(_ context.Context, req *broker.Message) (*broker.Message, error) {
		sawDeadline.Store(!req.Deadline.IsZero())
		ct := req.Header.Get(broker.HeaderContentType)
		switch req.Header.Get(broker.HeaderMethod) {
		case "Add":
			var in struct{ A, B int }
			if err := json.Unmarshal(req.Body, &in); err != nil {
				return &broker.Message{Header: broker.Header{broker.HeaderStatus: "3", broker.HeaderStatusMessage: err.Error()}}, nil
			}
			out, _ := json.Marshal(map[string]int{"sum": in.A + in.B})
			return &broker.Message{Header: broker.Header{broker.HeaderContentType: ct}, Body: out}, nil
		default:
			return &broker.Message{Header: broker.Header{
				broker.HeaderContentType:   ct,
				broker.HeaderStatus:        "12",
				broker.HeaderStatusMessage: "unknown method " + req.Header.Get(broker.HeaderMethod),
			}}, nil
		}
	})

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, python, filepath.Join("testdata", "pika_client.py"), url, subj)
	cmd.Env = append(os.Environ(), "PYTHONPATH="+pythonPath)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	require.NoError(t, err, "pika client: %s", stderr.String())

	type reply struct {
		Status      int             `json:"status"`
		Message     string          `json:"message"`
		ContentType string          `json:"content_type"`
		Body        json.RawMessage `json:"body"`
	}
	var got []reply
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		var r reply
		require.NoError(t, json.Unmarshal(sc.Bytes(), &r), "line %q", sc.Text())
		got = append(got, r)
	}
	require.Len(t, got, 3, "output: %s", out)
	assert.Equal(t, 0, got[0].Status)
	assert.JSONEq(t, `{"sum":42}`, string(got[0].Body))
	assert.Equal(t, "application/json", got[0].ContentType)
	assert.JSONEq(t, `{"sum":0}`, string(got[1].Body))
	assert.Equal(t, 12, got[2].Status)
	assert.Equal(t, "unknown method Nope", got[2].Message)
	assert.True(t, sawDeadline.Load(), "mqrpc-deadline from Python reached the handler as Message.Deadline")
}
