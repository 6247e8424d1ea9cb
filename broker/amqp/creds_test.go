package amqp_test

import (
	"context"
	"errors"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/amqp"
	"github.com/mqrpc/mqrpc/internal/testenv"
)

// withUserInfo returns raw with its user info replaced by user and
// password (none when user is empty).
func withUserInfo(t *testing.T, raw, user, password string) string {
	t.Helper()
	u, err := url.Parse(raw)
	require.NoError(t, err)
	u.User = nil
	if user != "" {
		u.User = url.UserPassword(user, password)
	}
	return u.String()
}

// TestCredentialsNeverLogged runs a broker with a user of its own, given in
// the URL and with WithCredentials, through a connect, calls, a lost
// connection whose reconnects fail authentication until the password is
// restored, a reconnect, a wrong password, a malformed URL and an
// unreachable server, and checks that no password shows up in a log record
// at debug level or in an error string.
func TestCredentialsNeverLogged(t *testing.T) {
	base, vhost := vhostURL(t)
	id := strings.ReplaceAll(broker.NewID(), "-", "")
	user := "mqrpc-creds-" + id
	password := "pw-Sekr1t-" + id
	wrong := "wrong-Sekr1t-" + id
	secrets := []string{password, wrong, "Sekr1t"}
	ctl(t, "add_user", user, password)
	t.Cleanup(func() { ctl(t, "delete_user", user) })
	ctl(t, "set_permissions", "-p", vhost, user, ".*", ".*", ".*")

	tests := []struct {
		name string
		// good and bad give the URL and options with the right and a
		// wrong password.
		good, bad func() (string, []amqp.Option)
	}{
		{
			name: "InURL",
			good: func() (string, []amqp.Option) { return withUserInfo(t, base, user, password), nil },
			bad:  func() (string, []amqp.Option) { return withUserInfo(t, base, user, wrong), nil },
		},
		{
			name: "WithCredentials",
			good: func() (string, []amqp.Option) {
				return withUserInfo(t, base, "", ""), []amqp.Option{amqp.WithCredentials(user, password)}
			},
			bad: func() (string, []amqp.Option) {
				return withUserInfo(t, base, "", ""), []amqp.Option{amqp.WithCredentials(user, wrong)}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			logs := &testenv.LogBuffer{}
			var errs []string
			note := func(err error) {
				if err != nil {
					errs = append(errs, err.Error())
				}
			}
			common := []amqp.Option{
				amqp.WithLogger(testenv.DebugLogger(logs)),
				amqp.WithReconnectBackoff(20*time.Millisecond, 100*time.Millisecond),
				amqp.WithDialTimeout(5 * time.Second),
				amqp.WithConnectionName(t.Name()),
			}

			u, opts := tt.good()
			b, err := amqp.New(u, append(opts, common...)...)
			require.NoError(t, err)
			t.Cleanup(func() { _ = b.Close() })
			subj := "creds-" + broker.NewID()
			serve(t, b, subj, func(_ context.Context, req *broker.Message) (*broker.Message, error) {
				if string(req.Body) == "fail" {
					return nil, errors.New("refused")
				}
				return &broker.Message{Body: req.Body}, nil
			})
			rep, err := b.Request(ctxT(t, 5*time.Second), &broker.Message{Subject: subj, Body: []byte("hi")})
			require.NoError(t, err)
			assert.Equal(t, "hi", string(rep.Body))
			// A failed delivery is logged.
			require.NoError(t, b.Send(ctxT(t, 5*time.Second), &broker.Message{Subject: subj, Body: []byte("fail")}))
			require.Eventually(t, func() bool { return strings.Contains(logs.String(), "delivery failed") },
				10*time.Second, 10*time.Millisecond)

			// The connection is lost and the password changed meanwhile:
			// reconnects fail authentication until it is restored.
			ctl(t, "change_password", user, wrong+"x")
			closeVhostConnections(t, vhost)
			require.Eventually(t, func() bool { return strings.Contains(logs.String(), "amqp: reconnect failed") },
				20*time.Second, 10*time.Millisecond)
			_, err = b.Request(ctxT(t, 200*time.Millisecond), &broker.Message{Subject: subj, Body: []byte("x")})
			require.Error(t, err)
			note(err)
			ctl(t, "change_password", user, password)
			require.Eventually(t, func() bool { return strings.Contains(logs.String(), "amqp: reconnected") },
				20*time.Second, 10*time.Millisecond)
			require.EventuallyWithT(t, func(c *assert.CollectT) {
				rep, err := b.Request(ctxT(t, 2*time.Second), &broker.Message{Subject: subj, Body: []byte("again")})
				if assert.NoError(c, err) {
					assert.Equal(c, "again", string(rep.Body))
				}
			}, 20*time.Second, 50*time.Millisecond)
			note(b.Close())

			// A wrong password.
			u, opts = tt.bad()
			_, err = amqp.New(u, append(opts, common...)...)
			require.Error(t, err)
			note(err)

			testenv.AssertNoSecret(t, secrets, "a log record", logs.String())
			testenv.AssertNoSecret(t, secrets, "an error", errs...)
		})
	}
}

// TestCredentialsNotInDialErrors checks the errors of New for URLs with a
// password that cannot be parsed or reached.
func TestCredentialsNotInDialErrors(t *testing.T) {
	const password = "pw-Sekr1t-Qa"
	for _, raw := range []string{
		"amqp://u:" + password + "@127.0.0.1:1/",                // nothing listens
		"amqp://u:" + password + "@127.0.0.1:notaport/",         // bad port
		"amqp://u:" + password + "%zz@127.0.0.1:5672/",          // bad escape
		"amqp://u:" + password + "/x@127.0.0.1:5672/",           // unescaped '/' in the password
		"amqp://u:" + password + "@[::1/",                       // bad host
		"amqp://u:" + password + "@127.0.0.1:5672/?heartbeat=x", // bad parameter
		"amqps://u:" + password + "@127.0.0.1:99999/",           // port out of range
		"amqp://u:" + password + " @127.0.0.1:5672/",            // white space
	} {
		t.Run("", func(t *testing.T) {
			logs := &testenv.LogBuffer{}
			_, err := amqp.New(raw, amqp.WithDialTimeout(time.Second), amqp.WithLogger(testenv.DebugLogger(logs)))
			require.Error(t, err)
			testenv.AssertNoSecret(t, []string{password, "Sekr1t"}, "an error", err.Error())
			testenv.AssertNoSecret(t, []string{password, "Sekr1t"}, "a log record", logs.String())
		})
	}
}

// TestURLList: New takes a comma-separated list of URLs and connects to the
// first that accepts (the first here is a closed port); calls work through
// it. With none reachable, New fails and names each URL, without its
// password.
func TestURLList(t *testing.T) {
	good := testenv.AMQPURL(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	closed := "amqp://guest:Sekr1t-closed@" + l.Addr().String() + "/"
	require.NoError(t, l.Close())

	b, err := amqp.New(closed+","+good, amqp.WithDialTimeout(2*time.Second))
	require.NoError(t, err, "the second URL works")
	t.Cleanup(func() { _ = b.Close() })
	subj := "urllist-" + strings.ReplaceAll(broker.NewID(), "-", "")
	sub, err := b.Serve(subj, broker.HandlerFunc(func(_ context.Context, m *broker.Message) (*broker.Message, error) {
		return &broker.Message{Body: m.Body}, nil
	}))
	require.NoError(t, err)
	t.Cleanup(func() { _ = sub.Stop(context.Background()) })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	reply, err := b.Request(ctx, &broker.Message{ID: broker.NewID(), Subject: subj, Body: []byte("ping")})
	require.NoError(t, err)
	assert.Equal(t, "ping", string(reply.Body))

	_, err = amqp.New(closed+","+closed, amqp.WithDialTimeout(2*time.Second))
	require.Error(t, err)
	assert.Equal(t, 2, strings.Count(err.Error(), "amqp://redacted@"+l.Addr().String()), "each URL tried: %v", err)
	testenv.AssertNoSecret(t, []string{"Sekr1t"}, "an error", err.Error())
}
