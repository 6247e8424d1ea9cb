package rocketmq_test

import (
	"bytes"
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/rocketmq"
	"github.com/mqrpc/mqrpc/internal/testenv"
)

// TestRealCredentialsNeverLogged uses ACL credentials (WithCredentials)
// with a debug-level logger, which also receives rocketmq-client-go's own
// records, through a connect, a one-way message, a request nobody serves,
// a server, and a client whose name server is unreachable, and checks that
// the secret key never appears in a log record or an error string. The
// shared test broker has no ACL, so the calls may succeed or fail; either
// way the secret must stay out.
func TestRealCredentialsNeverLogged(t *testing.T) {
	addr := realBroker(t)
	const (
		accessKey = "ak-mqrpc-creds"
		secret    = "sk-Sekr1t-Rq"
	)
	logs := &testenv.LogBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	var errs []string
	note := func(err error) {
		if err != nil {
			errs = append(errs, err.Error())
		}
	}

	b, err := rocketmq.New(addr, rocketmq.WithCredentials(accessKey, secret), rocketmq.WithLogger(logger))
	require.NoError(t, err)
	subject := topic(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	note(b.Send(ctx, &broker.Message{Subject: subject, Body: []byte("one-way")}))
	rctx, rcancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer rcancel()
	_, err = b.Request(rctx, &broker.Message{Subject: subject, Body: []byte("nobody")})
	note(err)
	sub, err := b.Serve(subject, broker.HandlerFunc(echoHandler))
	note(err)
	if err == nil {
		sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer scancel()
		note(sub.Stop(sctx))
	}
	note(b.Close())

	// A name server nobody runs.
	down, err := rocketmq.New("127.0.0.1:1", rocketmq.WithCredentials(accessKey, secret), rocketmq.WithLogger(logger))
	note(err)
	if err == nil {
		sctx, scancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer scancel()
		note(down.Send(sctx, &broker.Message{Subject: subject, Body: []byte("x")}))
		note(down.Close())
	}

	require.NotEmpty(t, logs.String(), "the logger saw the client's records")
	t.Logf("%d errors, %d log records checked; errors: %q", len(errs), bytes.Count([]byte(logs.String()), []byte("\n")), errs)
	testenv.AssertNoSecret(t, []string{secret, "Sekr1t"}, "a log record or an error", append(errs, logs.String())...)
}
