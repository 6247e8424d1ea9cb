package nats_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/broker"
	natsbroker "github.com/mqrpc/mqrpc/broker/nats"
	"github.com/mqrpc/mqrpc/broker/nats/embedded"
)

// selfSigned makes a certificate for 127.0.0.1 that is its own CA.
func selfSigned(t *testing.T) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "mqrpc test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	leaf, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
}

// roundTrip serves an echo on b and calls it through b.
func roundTrip(t *testing.T, b *natsbroker.Broker) {
	t.Helper()
	subj := uniqueSubject(t)
	_, err := b.Serve(subj, broker.HandlerFunc(echoHandler))
	require.NoError(t, err)
	rep, err := b.Request(ctxTimeout(t, 5*time.Second), &broker.Message{Subject: subj, Body: []byte("secret")})
	require.NoError(t, err)
	assert.Equal(t, []byte("secret"), rep.Body)
}

func TestTLS(t *testing.T) {
	cert, pool := selfSigned(t)
	srv := startEmbedded(t, embedded.WithoutJetStream(), embedded.WithServerOptions(func(o *server.Options) {
		o.TLS = true
		o.TLSTimeout = 5
		o.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}))

	b := newBroker(t, srv.URL(), natsbroker.WithTLS(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}))
	require.True(t, b.Conn().TLSRequired())
	roundTrip(t, b)

	_, err := natsbroker.New(srv.URL(), natsbroker.WithTLS(nil))
	require.Error(t, err, "a certificate from an unknown authority is refused")
}

func TestAuthentication(t *testing.T) {
	dir := t.TempDir()

	userKey, err := nkeys.CreateUser()
	require.NoError(t, err)
	userPub, err := userKey.PublicKey()
	require.NoError(t, err)
	userSeed, err := userKey.Seed()
	require.NoError(t, err)
	seedFile := filepath.Join(dir, "user.nk")
	require.NoError(t, os.WriteFile(seedFile, userSeed, 0o600))
	otherKey, err := nkeys.CreateUser()
	require.NoError(t, err)
	otherSeed, err := otherKey.Seed()
	require.NoError(t, err)
	otherFile := filepath.Join(dir, "other.nk")
	require.NoError(t, os.WriteFile(otherFile, otherSeed, 0o600))

	tests := []struct {
		name       string
		server     func(*server.Options)
		good, bad  natsbroker.Option
		badMessage string
	}{
		{
			name:   "UserPassword",
			server: func(o *server.Options) { o.Username, o.Password = "alice", "s3cret" },
			good:   natsbroker.WithUserInfo("alice", "s3cret"),
			bad:    natsbroker.WithUserInfo("alice", "wrong"),
		},
		{
			name:   "Token",
			server: func(o *server.Options) { o.Authorization = "t0ken" },
			good:   natsbroker.WithToken("t0ken"),
			bad:    natsbroker.WithToken("guess"),
		},
		{
			name:   "NKey",
			server: func(o *server.Options) { o.Nkeys = []*server.NkeyUser{{Nkey: userPub}} },
			good:   natsbroker.WithNkeyFile(seedFile),
			bad:    natsbroker.WithNkeyFile(otherFile),
		},
		{
			name:   "Credentials",
			server: operatorMode(t, dir),
			good:   natsbroker.WithCredentials(filepath.Join(dir, "good.creds")),
			bad:    natsbroker.WithCredentials(filepath.Join(dir, "bad.creds")),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := startEmbedded(t, embedded.WithoutJetStream(), embedded.WithServerOptions(tt.server))
			roundTrip(t, newBroker(t, srv.URL(), tt.good))
			_, err := natsbroker.New(srv.URL(), tt.bad)
			require.Error(t, err)
			_, err = natsbroker.New(srv.URL())
			require.Error(t, err, "no credentials")
		})
	}
}

// operatorMode sets up decentralized (JWT) authentication: an operator
// trusting one account, a user of it in dir/good.creds, and a user signed
// by a stranger account in dir/bad.creds.
func operatorMode(t *testing.T, dir string) func(*server.Options) {
	t.Helper()
	op, err := nkeys.CreateOperator()
	require.NoError(t, err)
	opPub, err := op.PublicKey()
	require.NoError(t, err)
	opClaims := jwt.NewOperatorClaims(opPub)
	opJWT, err := opClaims.Encode(op)
	require.NoError(t, err)
	opClaims, err = jwt.DecodeOperatorClaims(opJWT)
	require.NoError(t, err)

	acc, err := nkeys.CreateAccount()
	require.NoError(t, err)
	accPub, err := acc.PublicKey()
	require.NoError(t, err)
	accJWT, err := jwt.NewAccountClaims(accPub).Encode(op)
	require.NoError(t, err)

	writeCreds := func(name string, signer nkeys.KeyPair) {
		u, err := nkeys.CreateUser()
		require.NoError(t, err)
		uPub, err := u.PublicKey()
		require.NoError(t, err)
		uSeed, err := u.Seed()
		require.NoError(t, err)
		uJWT, err := jwt.NewUserClaims(uPub).Encode(signer)
		require.NoError(t, err)
		creds, err := jwt.FormatUserConfig(uJWT, uSeed)
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), creds, 0o600))
	}
	writeCreds("good.creds", acc)
	stranger, err := nkeys.CreateAccount()
	require.NoError(t, err)
	writeCreds("bad.creds", stranger)

	return func(o *server.Options) {
		o.TrustedOperators = []*jwt.OperatorClaims{opClaims}
		r := &server.MemAccResolver{}
		require.NoError(t, r.Store(accPub, accJWT))
		o.AccountResolver = r
	}
}

// recordingHandler keeps the messages of the records logged to it.
type recordingHandler struct {
	mu   sync.Mutex
	msgs []string
}

func (h *recordingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *recordingHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.msgs = append(h.msgs, r.Message)
	return nil
}
func (h *recordingHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *recordingHandler) WithGroup(string) slog.Handler      { return h }
func (h *recordingHandler) has(msg string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Contains(h.msgs, msg)
}

func TestNameAndLogger(t *testing.T) {
	srv := startEmbedded(t, embedded.WithoutJetStream())
	rec := &recordingHandler{}
	b := newBroker(t, srv.URL(), natsbroker.WithName("billing-client"),
		natsbroker.WithLogger(slog.New(rec)), natsbroker.WithReconnectWait(20*time.Millisecond))

	connz, err := srv.NATSServer().Connz(&server.ConnzOptions{})
	require.NoError(t, err)
	require.Len(t, connz.Conns, 1)
	assert.Equal(t, "billing-client", connz.Conns[0].Name)

	require.NoError(t, srv.Restart())
	require.Eventually(t, func() bool { return rec.has("nats: reconnected") }, 10*time.Second, 10*time.Millisecond)
	assert.True(t, rec.has("nats: disconnected"))
	roundTrip(t, b)
}
