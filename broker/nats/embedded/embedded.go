// Package embedded runs a NATS server (nats-server) inside the current
// process, listening on a free loopback port, so programs and tests get a
// real NATS broker with nothing installed.
//
//	srv, err := embedded.Start()
//	if err != nil { ... }
//	defer srv.Close()
//	b, err := nats.New(srv.URL())
//
// It lives in its own package so that programs using broker/nats as a
// client do not link the server.
package embedded

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// DefaultMaxPayload is the largest message the embedded server accepts by
// default: 8 MiB, so a 1 MiB body with headers fits easily (nats-server's
// own default is 1 MiB).
const DefaultMaxPayload = 8 << 20

// Option configures Start.
type Option func(*config)

type config struct {
	port       int
	jetStream  bool
	storeDir   string
	maxPayload int32
	mutate     []func(*server.Options)
}

// WithPort listens on port instead of a free one chosen by the system.
func WithPort(port int) Option { return func(c *config) { c.port = port } }

// WithoutJetStream starts the server without JetStream (no durable mode).
// Default: JetStream on.
func WithoutJetStream() Option { return func(c *config) { c.jetStream = false } }

// WithStoreDir keeps JetStream data in dir, which Close leaves in place.
// Default: a new temporary directory, removed by Close.
func WithStoreDir(dir string) Option { return func(c *config) { c.storeDir = dir } }

// WithMaxPayload sets the largest message the server accepts, in bytes.
// Default DefaultMaxPayload; values <= 0 keep it.
func WithMaxPayload(n int32) Option {
	return func(c *config) {
		if n > 0 {
			c.maxPayload = n
		}
	}
}

// WithServerOptions edits the nats-server options before the server starts
// (TLS, accounts, authentication, ...). It runs after the options above.
func WithServerOptions(f func(*server.Options)) Option {
	return func(c *config) { c.mutate = append(c.mutate, f) }
}

// Server is a running in-process NATS server. Its methods are safe for
// concurrent use.
type Server struct {
	mu       sync.Mutex
	opts     *server.Options
	srv      *server.Server
	url      string
	storeDir string
	ownDir   bool
	closed   bool
}

// Start starts a NATS server on 127.0.0.1 and waits until it accepts
// connections.
func Start(opts ...Option) (*Server, error) {
	c := config{port: server.RANDOM_PORT, jetStream: true, maxPayload: DefaultMaxPayload}
	for _, o := range opts {
		o(&c)
	}
	s := &Server{storeDir: c.storeDir}
	if c.jetStream && s.storeDir == "" {
		dir, err := os.MkdirTemp("", "mqrpc-nats-")
		if err != nil {
			return nil, fmt.Errorf("embedded nats: store dir: %w", err)
		}
		s.storeDir, s.ownDir = dir, true
	}
	so := &server.Options{
		ServerName: "mqrpc-embedded",
		Host:       "127.0.0.1",
		Port:       c.port,
		JetStream:  c.jetStream,
		StoreDir:   s.storeDir,
		MaxPayload: c.maxPayload,
		// The server must never print or catch the program's signals.
		NoLog:  true,
		NoSigs: true,
	}
	if so.MaxPending < int64(so.MaxPayload)*4 {
		so.MaxPending = int64(so.MaxPayload) * 8
	}
	for _, f := range c.mutate {
		f(so)
	}
	s.opts = so
	if err := s.start(); err != nil {
		s.removeDir()
		return nil, err
	}
	// Restart must come back on the same port so clients reconnect.
	if a, ok := s.srv.Addr().(*net.TCPAddr); ok {
		so.Port = a.Port
	}
	return s, nil
}

func (s *Server) start() error {
	srv, err := server.NewServer(s.opts)
	if err != nil {
		return fmt.Errorf("embedded nats: %w", err)
	}
	srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		srv.Shutdown()
		return errors.New("embedded nats: server not ready after 10s")
	}
	s.srv = srv
	s.url = srv.ClientURL()
	return nil
}

// URL returns the client URL, such as nats://127.0.0.1:34567.
func (s *Server) URL() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.url
}

// NATSServer returns the running nats-server, for monitoring in tests.
func (s *Server) NATSServer() *server.Server {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.srv
}

// Stop shuts the server down but keeps its port and JetStream store, so
// Restart (or StartAgain) can bring it back; clients see a broker outage.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv != nil {
		s.srv.Shutdown()
		s.srv.WaitForShutdown()
		s.srv = nil
	}
}

// StartAgain starts a stopped server on the same port with the same
// JetStream store. It is a no-op when the server runs.
func (s *Server) StartAgain() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errors.New("embedded nats: server closed")
	}
	if s.srv != nil {
		return nil
	}
	var err error
	// The port may linger for a moment after shutdown; retry briefly.
	for i := 0; i < 50; i++ {
		if err = s.start(); err == nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return err
}

// Restart stops the server and starts it again on the same port with the
// same JetStream store: clients lose their connection and reconnect.
func (s *Server) Restart() error {
	s.Stop()
	return s.StartAgain()
}

// Close shuts the server down and removes its temporary store directory.
// Close is idempotent.
func (s *Server) Close() {
	s.Stop()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.closed = true
	s.removeDir()
}

func (s *Server) removeDir() {
	if s.ownDir {
		_ = os.RemoveAll(s.storeDir)
	}
}
