package amqp_test

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

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/internal/testenv"
	"github.com/mqrpc/mqrpc/rpc"
)

// TestPikaReadsServerStream reads an mqrpc server stream over RabbitMQ from
// Python with pika, written from docs/PROTOCOL.md only (the RabbitMQ
// request and reply, and "Streams"): the frames, their order, the credit
// the reader grants (the stream is six times its window), its pings (the
// handler is silent for longer than the reader's 1 s heartbeat interval
// before it sends), and the end with status, count and trailers; then a stream
// the Python reader cancels, which stops the handler with Canceled.
func TestPikaReadsServerStream(t *testing.T) {
	url := testenv.AMQPURL(t)
	python, pythonPath := pythonWithPika(t)

	b := open(t, url)
	subject := "pika-stream-" + broker.NewID()
	type countReq struct{ N int }
	type number struct{ I int }
	handlerErr := make(chan error, 4)
	srv := rpc.NewServer()
	require.NoError(t, rpc.HandleServerStream(srv, "Count", func(ctx context.Context, in *countReq, send func(*number) error) error {
		// Silent for longer than the reader's heartbeat interval (1 s):
		// only the reader's pings keep the stream alive meanwhile.
		time.Sleep(1500 * time.Millisecond)
		for i := 1; i <= in.N; i++ {
			if err := send(&number{I: i}); err != nil {
				handlerErr <- err
				return err
			}
		}
		rpc.SetReplyHeader(ctx, "x-total", strconv.Itoa(in.N))
		handlerErr <- nil
		return nil
	}))
	sub, err := b.Serve(subject, srv)
	require.NoError(t, err)
	t.Cleanup(func() { _ = sub.Stop(context.Background()) })

	type line struct {
		Error   string            `json:"error"`
		Seq     int               `json:"seq"`
		Body    number            `json:"body"`
		End     bool              `json:"end"`
		Status  int               `json:"status"`
		Count   int               `json:"count"`
		Trailer map[string]string `json:"trailer"`
	}
	runPy := func(t *testing.T, args ...string) []line {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, python, append([]string{filepath.Join("testdata", "pika_stream.py"), url, subject, "Count"}, args...)...)
		cmd.Env = append(os.Environ(), "PYTHONPATH="+pythonPath)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		require.NoError(t, err, "pika stream reader: %s\n%s", stderr.String(), out)
		var got []line
		sc := bufio.NewScanner(bytes.NewReader(out))
		for sc.Scan() {
			var l line
			require.NoError(t, json.Unmarshal(sc.Bytes(), &l), "line %q", sc.Text())
			require.Empty(t, l.Error)
			got = append(got, l)
		}
		return got
	}

	t.Run("to the end", func(t *testing.T) {
		const n = 300 // six times the Python reader's window: the stream lives on its credit frames
		got := runPy(t, strconv.Itoa(n))
		require.Len(t, got, n+1)
		for i := 0; i < n; i++ {
			require.Equal(t, i+1, got[i].Seq)
			require.Equal(t, i+1, got[i].Body.I)
		}
		end := got[n]
		assert.True(t, end.End)
		assert.Equal(t, 0, end.Status)
		assert.Equal(t, n, end.Count)
		assert.Equal(t, map[string]string{"x-total": strconv.Itoa(n)}, end.Trailer)
		select {
		case err := <-handlerErr:
			assert.NoError(t, err)
		case <-time.After(10 * time.Second):
			t.Fatal("the handler did not return")
		}
	})
	t.Run("cancelled by the reader", func(t *testing.T) {
		const after = 10
		got := runPy(t, "1000000", strconv.Itoa(after))
		require.Len(t, got, after+1)
		for i := 0; i < after; i++ {
			require.Equal(t, i+1, got[i].Seq)
		}
		end := got[after]
		assert.True(t, end.End)
		assert.Equal(t, int(rpc.Canceled), end.Status)
		select {
		case err := <-handlerErr:
			assert.Equal(t, rpc.Canceled, rpc.CodeOf(err), "%v", err)
		case <-time.After(10 * time.Second):
			t.Fatal("the handler did not stop")
		}
	})
}
