// Package dial opens any of mqrpc's brokers from a URL, so a program
// switches brokers by configuration alone:
//
//	b, err := dial.Open("amqp://guest:guest@127.0.0.1:5672/")
//
// Schemes:
//
//	memory:                          a new in-process broker (broker/memory)
//	embedded:                        a NATS server started in this process on a free
//	                                 loopback port; closing the broker stops it
//	nats://host:port, tls://...      NATS (broker/nats)
//	amqp://..., amqps://...          RabbitMQ (broker/amqp)
//	rocketmq://host:port             RocketMQ through its name server, once registered
//	                                 (broker/rocketmq is a module of its own; see below)
//
// For a cluster, list its nodes separated by commas; the client connects to
// one that answers and fails over to the others by itself:
//
//	nats://n1:4222,nats://n2:4222,nats://n3:4222
//	amqp://u:p@r1:5672/,amqp://u:p@r2:5672/   (tried in turn)
//	rocketmq://ns1:9876,ns2:9876              (name servers)
//
// Importing dial links the NATS (with the embedded server) and RabbitMQ
// clients, which live in mqrpc's main module; a program that needs one
// broker can import that broker's package alone. RocketMQ is a module of
// its own, github.com/mqrpc/mqrpc/broker/rocketmq, so that no other program
// downloads or links rocketmq-client-go (and its old dependencies), which
// starts a goroutine that never ends as soon as it is linked. Importing dial
// starts no goroutine. A program that wants rocketmq:// URLs imports the
// package that registers the scheme, for its side effect, as a database/sql
// program imports its driver:
//
//	import _ "github.com/mqrpc/mqrpc/broker/rocketmq/dialrocketmq"
//
// Register adds any other broker the same way, yours included; WithScheme
// gives one call of Open a scheme of its own instead.
package dial

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/amqp"
	"github.com/mqrpc/mqrpc/broker/memory"
	"github.com/mqrpc/mqrpc/broker/nats"
	"github.com/mqrpc/mqrpc/broker/nats/embedded"
	"github.com/mqrpc/mqrpc/internal/redact"
)

// Option configures Open.
type Option func(*config)

type config struct {
	name    string
	logger  *slog.Logger
	schemes map[string]func(rawURL string) (broker.Broker, error)
}

// WithName sets the connection name the broker shows in its management
// tools (NATS and RabbitMQ). Default: none.
func WithName(name string) Option { return func(c *config) { c.name = name } }

// WithLogger sets the logger the broker client reports connection events
// to. Default: discard.
func WithLogger(l *slog.Logger) Option { return func(c *config) { c.logger = l } }

// Opener opens the broker a URL names; it gets the whole URL, a
// comma-separated list included.
type Opener = func(rawURL string) (broker.Broker, error)

// builtin are the schemes Open knows without Register or WithScheme.
var builtin = []string{"memory", "embedded", "nats", "tls", "amqp", "amqps"}

var (
	registryMu sync.RWMutex
	registry   = map[string]Opener{}
)

// Register makes every later Open (in any goroutine) open URLs of scheme
// (case-insensitive) with open, as database/sql's Register does for
// drivers. It is meant for the init function of a package that a program
// imports for its side effect, such as
// github.com/mqrpc/mqrpc/broker/rocketmq/dialrocketmq for rocketmq://.
// Register is safe for concurrent use. It panics if scheme is empty or not
// a URL scheme (a letter, then letters, digits, '+', '-' or '.'), if open
// is nil, if scheme is one Open knows already (memory, embedded, nats, tls,
// amqp, amqps: WithScheme can take one over for a call), or if scheme was
// registered before. WithName and WithLogger do not reach open.
func Register(scheme string, open Opener) {
	s := strings.ToLower(scheme)
	if !validScheme(s) {
		panic(fmt.Sprintf("dial: Register of invalid scheme %q", scheme))
	}
	if open == nil {
		panic(fmt.Sprintf("dial: Register of scheme %q with a nil opener", scheme))
	}
	if slices.Contains(builtin, s) {
		panic(fmt.Sprintf("dial: Register of built-in scheme %q", scheme))
	}
	registryMu.Lock()
	defer registryMu.Unlock()
	if _, dup := registry[s]; dup {
		panic(fmt.Sprintf("dial: Register called twice for scheme %q", scheme))
	}
	registry[s] = open
}

// Schemes returns the schemes Open knows without WithScheme, sorted: the
// built-in ones and those given to Register.
func Schemes() []string {
	registryMu.RLock()
	defer registryMu.RUnlock()
	out := slices.Clone(builtin)
	for s := range registry {
		out = append(out, s)
	}
	slices.Sort(out)
	return out
}

func registered(scheme string) Opener {
	registryMu.RLock()
	defer registryMu.RUnlock()
	return registry[scheme]
}

// validScheme reports whether s is a URL scheme (RFC 3986: ALPHA *( ALPHA
// / DIGIT / "+" / "-" / "." )), lower-cased.
func validScheme(s string) bool {
	if s == "" {
		return false
	}
	for i, r := range s {
		switch {
		case r >= 'a' && r <= 'z':
		case i > 0 && (r >= '0' && r <= '9' || r == '+' || r == '-' || r == '.'):
		default:
			return false
		}
	}
	return true
}

// WithScheme makes Open open URLs of scheme (case-insensitive) with open,
// which gets the whole URL, a comma-separated list included. A scheme dial
// knows (memory, embedded, nats, tls, amqp, amqps) can be taken over too.
// WithName and WithLogger do not reach open: give its broker its own
// options. It takes precedence over Register. Default: none.
func WithScheme(scheme string, open Opener) Option {
	return func(c *config) {
		if c.schemes == nil {
			c.schemes = make(map[string]func(string) (broker.Broker, error))
		}
		c.schemes[strings.ToLower(scheme)] = open
	}
}

// ErrUnknownScheme is returned for a URL whose scheme names no broker.
var ErrUnknownScheme = errors.New("dial: unknown broker scheme")

// Open connects to the broker rawURL names. See the package doc for the
// schemes.
func Open(rawURL string, opts ...Option) (broker.Broker, error) {
	var cfg config
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.logger == nil {
		cfg.logger = slog.New(slog.DiscardHandler)
	}
	scheme, _, _ := strings.Cut(rawURL, ":")
	lower := strings.ToLower(scheme)
	open := cfg.schemes[lower]
	if open == nil && !slices.Contains(builtin, lower) {
		open = registered(lower)
	}
	if open != nil {
		b, err := open(rawURL)
		if err != nil {
			return nil, fmt.Errorf("dial: %w", err)
		}
		return b, nil
	}
	switch lower {
	case "memory":
		return memory.New(), nil
	case "embedded":
		srv, err := embedded.Start()
		if err != nil {
			return nil, fmt.Errorf("dial: start embedded NATS server: %w", err)
		}
		b, err := nats.New(srv.URL(), natsOptions(cfg)...)
		if err != nil {
			srv.Close()
			return nil, fmt.Errorf("dial: %w", err)
		}
		return &withServer{Broker: b, stop: srv.Close}, nil
	case "nats", "tls":
		b, err := nats.New(rawURL, natsOptions(cfg)...)
		if err != nil {
			return nil, fmt.Errorf("dial: %w", err)
		}
		return b, nil
	case "amqp", "amqps":
		aopts := []amqp.Option{amqp.WithLogger(cfg.logger)}
		if cfg.name != "" {
			aopts = append(aopts, amqp.WithConnectionName(cfg.name))
		}
		b, err := amqp.New(rawURL, aopts...)
		if err != nil {
			return nil, fmt.Errorf("dial: %w", err)
		}
		return b, nil
	case "rocketmq":
		return nil, fmt.Errorf("%w %q in %q: broker/rocketmq is a module of its own; "+
			"import _ \"github.com/mqrpc/mqrpc/broker/rocketmq/dialrocketmq\" to register it (see the package doc)",
			ErrUnknownScheme, scheme, rawURL)
	}
	return nil, fmt.Errorf("%w %q in %q (want memory, embedded, nats, tls, amqp, amqps, "+
		"one given to Register (see Schemes) or one given with WithScheme)", ErrUnknownScheme, scheme, rawURL)
}

// Redact returns rawURL fit to print or log: the user info of every URL in
// it (a user and password, or a NATS token: nats://token@host) is replaced
// by "redacted". It does not parse: a password that was not percent-encoded
// still goes whole, and so does a comma inside one, which would otherwise
// split the list of NATS URLs in the wrong place.
func Redact(rawURL string) string {
	parts := strings.Split(rawURL, ",")
	for _, p := range parts {
		if !strings.Contains(p, "://") {
			// Not a list of URLs (a comma inside the user info, or
			// a URL without a scheme): hide everything before the
			// last '@'.
			return redact.URL(rawURL)
		}
	}
	return redact.URLs(parts)
}

func natsOptions(cfg config) []nats.Option {
	opts := []nats.Option{nats.WithLogger(cfg.logger)}
	if cfg.name != "" {
		opts = append(opts, nats.WithName(cfg.name))
	}
	return opts
}

// withServer is a broker that owns the embedded server it talks to. It
// embeds the NATS broker itself, not the interface, so that the optional
// abilities (broker.Broadcaster, broker.Streamer) stay visible.
type withServer struct {
	*nats.Broker
	stop func()
}

func (w *withServer) Close() error {
	err := w.Broker.Close()
	w.stop()
	return err
}
