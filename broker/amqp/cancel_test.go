package amqp_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/amqp"
	"github.com/mqrpc/mqrpc/internal/testenv"
)

// TestWithoutCancelPermission: a user who may declare its service's queue
// but not mqrpc.cancel (nor server-named queues) serves and calls as
// before, without cancel notices: each side logs a warning, and a cancelled
// call still says canceled.
func TestWithoutCancelPermission(t *testing.T) {
	base, vhost := vhostURL(t)
	id := strings.ReplaceAll(broker.NewID(), "-", "")
	user, password := "mqrpc-nocancel-"+id, "pw-"+id
	ctl(t, "add_user", user, password)
	t.Cleanup(func() { ctl(t, "delete_user", user) })
	ctl(t, "set_permissions", "-p", vhost, user, "^restricted-.*", ".*", ".*")
	logs := &testenv.LogBuffer{}
	b := open(t, withUserInfo(t, base, user, password), amqp.WithLogger(testenv.DebugLogger(logs)))
	subj := "restricted-" + broker.NewID()
	started := make(chan struct{}, 1)
	serve(t, b, subj, func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
		if string(req.Body) == "wait" {
			started <- struct{}{}
			time.Sleep(200 * time.Millisecond)
		}
		return echo(ctx, req)
	})
	rep, err := b.Request(ctxT(t, 10*time.Second), &broker.Message{Subject: subj, Body: []byte("x")})
	require.NoError(t, err)
	assert.Equal(t, "x", string(rep.Body))

	ctx, cancel := context.WithCancel(context.Background())
	go func() { <-started; cancel() }()
	_, err = b.Request(ctx, &broker.Message{Subject: subj, Body: []byte("wait")})
	assert.ErrorIs(t, err, context.Canceled)
	assert.NotErrorIs(t, err, broker.ErrTimeout)
	assert.Contains(t, logs.String(), "calling without cancel notices")
	assert.Contains(t, logs.String(), "serving without cancel notices")

	rep, err = b.Request(ctxT(t, 10*time.Second), &broker.Message{Subject: subj, Body: []byte("after")})
	require.NoError(t, err, "the connection survived the cancel")
	assert.Equal(t, "after", string(rep.Body))
}
