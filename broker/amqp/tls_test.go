package amqp_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/amqp"
)

// testCA writes a fresh CA and a server certificate for localhost and
// 127.0.0.1 into dir, and returns the files and a pool trusting the CA.
func testCA(t testing.TB, dir string) (*nodeTLS, *x509.CertPool) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "mqrpc test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	require.NoError(t, err)
	caCert, err := x509.ParseCertificate(caDER)
	require.NoError(t, err)

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "localhost"},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	require.NoError(t, err)
	keyDER, err := x509.MarshalECPrivateKey(key)
	require.NoError(t, err)

	files := &nodeTLS{
		caFile:   filepath.Join(dir, "ca.pem"),
		certFile: filepath.Join(dir, "cert.pem"),
		keyFile:  filepath.Join(dir, "key.pem"),
	}
	write := func(path, typ string, b []byte) {
		require.NoError(t, os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b}), 0o600))
	}
	write(files.caFile, "CERTIFICATE", caDER)
	write(files.certFile, "CERTIFICATE", der)
	write(files.keyFile, "EC PRIVATE KEY", keyDER)
	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	return files, pool
}

// TestTLS serves and calls over amqps:// on a private node with a
// certificate made by the test, and checks that an untrusted certificate is
// refused.
func TestTLS(t *testing.T) {
	files, pool := testCA(t, t.TempDir())
	n := startNode(t, files)

	b := open(t, n.TLSURL(), amqp.WithTLS(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}))
	subj := "tls-" + broker.NewID()
	serve(t, b, subj, echo)
	reply, err := b.Request(ctxT(t, 10*time.Second), &broker.Message{Subject: subj, Body: []byte("secret")})
	require.NoError(t, err)
	assert.Equal(t, "secret", string(reply.Body))

	// The system roots do not trust the test CA.
	_, err = amqp.New(n.TLSURL(), amqp.WithDialTimeout(5*time.Second))
	require.Error(t, err)
	var uerr x509.UnknownAuthorityError
	assert.ErrorAs(t, err, &uerr)
}
