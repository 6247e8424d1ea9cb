package nats_test

import (
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	natsgo "github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/broker"
	natsbroker "github.com/mqrpc/mqrpc/broker/nats"
	"github.com/mqrpc/mqrpc/broker/nats/embedded"
	"github.com/mqrpc/mqrpc/internal/testenv"
)

// withCreds puts user info into a nats:// URL.
func withCreds(url, userinfo string) string {
	return strings.Replace(url, "nats://", "nats://"+userinfo+"@", 1)
}

// TestCredentialsNeverLogged connects with each kind of NATS secret, given
// as an option and inside the URL, through connects, an outage with failed
// reconnects, a reconnect, a call during the outage and wrong and
// unreachable credentials, and checks that no secret shows up in a log
// record at debug level or in an error string.
func TestCredentialsNeverLogged(t *testing.T) {
	const (
		user     = "alice"
		password = "pw-Sekr1t-7Hq"
		token    = "tok-Sekr1t-9Zx"
		wrong    = "wrong-Sekr1t-4Lm"
	)
	secrets := []string{password, token, wrong}
	userPass := func(o *server.Options) { o.Username, o.Password = user, password }
	tokenAuth := func(o *server.Options) { o.Authorization = token }

	tests := []struct {
		name   string
		server func(*server.Options)
		// good and bad return the URL and options for the server at url.
		good, bad func(url string) (string, []natsbroker.Option)
	}{
		{
			name:   "UserInfoOption",
			server: userPass,
			good: func(url string) (string, []natsbroker.Option) {
				return url, []natsbroker.Option{natsbroker.WithUserInfo(user, password)}
			},
			bad: func(url string) (string, []natsbroker.Option) {
				return url, []natsbroker.Option{natsbroker.WithUserInfo(user, wrong)}
			},
		},
		{
			name:   "UserInfoInURL",
			server: userPass,
			good: func(url string) (string, []natsbroker.Option) {
				return withCreds(url, user+":"+password), nil
			},
			bad: func(url string) (string, []natsbroker.Option) {
				return withCreds(url, user+":"+wrong), nil
			},
		},
		{
			name:   "TokenOption",
			server: tokenAuth,
			good: func(url string) (string, []natsbroker.Option) {
				return url, []natsbroker.Option{natsbroker.WithToken(token)}
			},
			bad: func(url string) (string, []natsbroker.Option) {
				return url, []natsbroker.Option{natsbroker.WithToken(wrong)}
			},
		},
		{
			name:   "TokenInURL",
			server: tokenAuth,
			good: func(url string) (string, []natsbroker.Option) {
				return withCreds(url, token), nil
			},
			bad: func(url string) (string, []natsbroker.Option) {
				return withCreds(url, wrong), nil
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := startEmbedded(t, embedded.WithoutJetStream(), embedded.WithServerOptions(tt.server))
			logs := &testenv.LogBuffer{}
			var errs []string
			note := func(err error) {
				if err != nil {
					errs = append(errs, err.Error())
				}
			}

			url, opts := tt.good(srv.URL())
			b := newBroker(t, url, append(opts, natsbroker.WithLogger(testenv.DebugLogger(logs)),
				natsbroker.WithReconnectWait(20*time.Millisecond))...)
			roundTrip(t, b)

			// A refused request (malformed deadline) logs at warn level.
			subj := uniqueSubject(t)
			_, err := b.Serve(subj, broker.HandlerFunc(echoHandler))
			require.NoError(t, err)
			require.NoError(t, b.Conn().PublishMsg(withBadDeadline(subj)))
			require.Eventually(t, func() bool { return strings.Contains(logs.String(), "nats: refused request") },
				10*time.Second, 10*time.Millisecond)

			// An outage: failed reconnects, a call that fails, then the
			// reconnect.
			srv.Stop()
			require.Eventually(t, func() bool { return strings.Contains(logs.String(), "nats: disconnected") },
				10*time.Second, 10*time.Millisecond)
			_, err = b.Request(ctxTimeout(t, time.Second), &broker.Message{Subject: subj, Body: []byte("x")})
			require.Error(t, err)
			note(err)
			time.Sleep(100 * time.Millisecond) // some reconnect attempts fail
			require.NoError(t, srv.StartAgain())
			require.Eventually(t, func() bool { return strings.Contains(logs.String(), "nats: reconnected") },
				10*time.Second, 10*time.Millisecond)
			roundTrip(t, b)
			note(b.Close())

			// Wrong credentials, and right ones for a server that is not
			// there.
			url, opts = tt.bad(srv.URL())
			_, err = natsbroker.New(url, append(opts, natsbroker.WithLogger(testenv.DebugLogger(logs)))...)
			require.Error(t, err)
			note(err)
			url, opts = tt.good(srv.URL())
			srv.Close()
			_, err = natsbroker.New(url, append(opts, natsbroker.WithLogger(testenv.DebugLogger(logs)))...)
			require.Error(t, err)
			note(err)

			testenv.AssertNoSecret(t, secrets, "a log record", logs.String())
			testenv.AssertNoSecret(t, secrets, "an error", errs...)
		})
	}
}

// withBadDeadline is a request to subj that servers refuse.
func withBadDeadline(subj string) *natsgo.Msg {
	return &natsgo.Msg{Subject: subj, Reply: "_INBOX.none", Header: natsgo.Header{broker.HeaderDeadline: {"soon"}}}
}
