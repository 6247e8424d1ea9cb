package nats

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"strings"
	"time"

	natsgo "github.com/nats-io/nats.go"
)

// DefaultURL is the server New connects to when its url is empty.
const DefaultURL = "nats://127.0.0.1:4222"

// Option configures a Broker made by New.
type Option func(*config)

type config struct {
	urls          []string
	name          string
	logger        *slog.Logger
	reconnectWait time.Duration
	natsOpts      []natsgo.Option
	errs          []error
	js            *JetStreamConfig
}

func newConfig(url string, opts []Option) (*config, error) {
	c := &config{
		name:          "mqrpc",
		reconnectWait: 250 * time.Millisecond,
	}
	for _, p := range strings.Split(url, ",") {
		if p = strings.TrimSpace(p); p != "" {
			c.urls = append(c.urls, p)
		}
	}
	for _, o := range opts {
		o(c)
	}
	if len(c.errs) > 0 {
		return nil, c.errs[0]
	}
	if len(c.urls) == 0 {
		c.urls = []string{DefaultURL}
	}
	if c.logger == nil {
		c.logger = slog.New(slog.DiscardHandler)
	}
	if c.js != nil {
		js := c.js.withDefaults()
		if err := js.valid(); err != nil {
			return nil, err
		}
		c.js = &js
	}
	return c, nil
}

// WithTLS makes the connection use TLS with cfg (server CAs, client
// certificates, server name). Default: TLS only when the URL scheme is tls://
// or the server requires it, with the system roots. A nil cfg selects the
// default TLS settings but still requires TLS.
func WithTLS(cfg *tls.Config) Option {
	return func(c *config) {
		if cfg == nil {
			c.natsOpts = append(c.natsOpts, natsgo.Secure())
			return
		}
		c.natsOpts = append(c.natsOpts, natsgo.Secure(cfg))
	}
}

// WithUserInfo authenticates with a user name and password. Default: none,
// or those in the URL.
func WithUserInfo(user, password string) Option {
	return func(c *config) { c.natsOpts = append(c.natsOpts, natsgo.UserInfo(user, password)) }
}

// WithToken authenticates with a token. Default: none.
func WithToken(token string) Option {
	return func(c *config) { c.natsOpts = append(c.natsOpts, natsgo.Token(token)) }
}

// WithNkeyFile authenticates with the NKey seed stored in seedFile (the
// file is read once, by New). Default: none.
func WithNkeyFile(seedFile string) Option {
	return func(c *config) {
		o, err := natsgo.NkeyOptionFromSeed(seedFile)
		if err != nil {
			c.errs = append(c.errs, fmt.Errorf("nats: nkey seed %s: %w", seedFile, err))
			return
		}
		c.natsOpts = append(c.natsOpts, o)
	}
}

// WithCredentials authenticates with a decentralized-auth credentials file
// (a user JWT and its NKey seed, as written by nsc). The file is read on
// every (re)connect. Default: none.
func WithCredentials(credsFile string) Option {
	return func(c *config) { c.natsOpts = append(c.natsOpts, natsgo.UserCredentials(credsFile)) }
}

// WithName sets the connection name the server shows in its monitoring
// pages. Default "mqrpc".
func WithName(name string) Option {
	return func(c *config) {
		if name != "" {
			c.name = name
		}
	}
}

// WithLogger sets where the broker reports connection events and failed
// deliveries. Default: discard (the library never prints). Nil keeps the
// default.
func WithLogger(l *slog.Logger) Option {
	return func(c *config) { c.logger = l }
}

// WithReconnectWait sets the pause between reconnect attempts after the
// connection is lost (a random jitter of up to the same amount is added).
// The broker reconnects forever. Default 250ms; values <= 0 keep it.
func WithReconnectWait(d time.Duration) Option {
	return func(c *config) {
		if d > 0 {
			c.reconnectWait = d
		}
	}
}

// WithNATSOptions passes raw nats.go options to the connection, applied
// after the broker's own. It is the escape hatch for settings without an
// option here. Do not replace the disconnect, reconnect or closed
// handlers: the broker relies on them to fail calls in flight.
func WithNATSOptions(opts ...natsgo.Option) Option {
	return func(c *config) { c.natsOpts = append(c.natsOpts, opts...) }
}

// WithJetStream switches the broker to durable mode: requests and one-way
// messages are stored in a JetStream work-queue stream before they are
// delivered, servers acknowledge a request only after its reply was sent,
// and a request whose server died is redelivered to another. Zero fields
// of cfg take their documented defaults. Default: core NATS (fast,
// at-most-once, nothing stored).
//
// Every client and server of one service must use the same mode and the
// same Stream and SubjectPrefix.
func WithJetStream(cfg JetStreamConfig) Option {
	return func(c *config) { c.js = &cfg }
}

// JetStreamConfig configures durable mode (WithJetStream).
type JetStreamConfig struct {
	// Stream is the work-queue stream holding requests. It is created
	// when missing (an existing one is used as it is). Default "MQRPC".
	Stream string
	// SubjectPrefix is prepended to a message's subject to form the
	// stored subject: a request to "calc" is stored as
	// "<SubjectPrefix>.calc". The stream captures "<SubjectPrefix>.>".
	// Default "mqrpc.durable".
	SubjectPrefix string
	// MaxDeliver is how many times a request is handled before it is
	// dead-lettered: after a handler error on the last delivery, or when
	// it comes back again after its server died or timed out on it. Only
	// deliveries whose handler started count, and a crash of the server
	// process counts as one (see docs/PROTOCOL.md). Default 5.
	MaxDeliver int
	// AckWait is how long the broker waits for a server to acknowledge a
	// delivery before redelivering it. A running handler extends it
	// (in-progress acknowledgements every AckWait/2), so it bounds how
	// long a dead server holds a request. Default 30s.
	AckWait time.Duration
	// DeadLetterPrefix forms the dead-letter subject of a request:
	// "<DeadLetterPrefix>.<subject>". Dead letters keep the request's
	// headers and body and add mqrpc-dead-reason and mqrpc-deliveries.
	// Default "mqrpc.dead".
	DeadLetterPrefix string
	// DeadLetterStream stores the dead letters so nobody has to listen
	// for them; it captures "<DeadLetterPrefix>.>" and is created when
	// missing. Default Stream + "_DEAD".
	DeadLetterStream string
	// MaxAge bounds how long a stored request waits for a server.
	// Default 0: no limit. A request's own deadline still applies: servers
	// drop it unserved, and with nats-server 2.11 or later the stream
	// removes it by itself (the deadline is its per-message TTL).
	MaxAge time.Duration
	// MemoryStorage keeps the streams in memory instead of on disk: faster,
	// but a server restart loses the stored requests. Default false.
	MemoryStorage bool
	// DuplicateWindow is how long the stream remembers message IDs
	// (Nats-Msg-Id) to drop duplicates. Default 2m.
	DuplicateWindow time.Duration
	// InactiveThreshold removes a server group's durable consumer after no
	// server used it this long (stored requests are kept). Default 1h.
	InactiveThreshold time.Duration
	// Replicas is how many servers of a JetStream cluster keep a copy of
	// each stream New creates (the consumers follow their stream): 3 on a
	// 3-node cluster survives the loss of any one node, the stream leader
	// included. At most 5, and at most the cluster's size. Default 1.
	Replicas int
	// DeliveryBucket is the key-value bucket where servers record the
	// handler starts of redelivered requests, so that a request is charged
	// only for the deliveries it was actually handled in (see the
	// JetStream part of docs/PROTOCOL.md). It is created on first need,
	// with the streams' storage. Default Stream + "_DELIVERIES", with
	// characters a bucket name cannot hold replaced by "_".
	DeliveryBucket string
	// PublishAttempt bounds how long one attempt to store a message waits
	// for the stream's acknowledgement before the message is published
	// again (with the same Nats-Msg-Id: the stream stores it once).
	// Attempts go on until the caller's ctx ends. A stream whose leader
	// died does not answer until its replicas elected another, and a
	// short attempt reaches the new leader soon after; an attempt whose
	// connection dropped ends at once, and one no stream answered is
	// made again while the stream has no leader. Default 1s.
	PublishAttempt time.Duration
}

func (c JetStreamConfig) withDefaults() JetStreamConfig {
	if c.Stream == "" {
		c.Stream = "MQRPC"
	}
	if c.SubjectPrefix == "" {
		c.SubjectPrefix = "mqrpc.durable"
	}
	if c.MaxDeliver <= 0 {
		c.MaxDeliver = 5
	}
	if c.AckWait <= 0 {
		c.AckWait = 30 * time.Second
	}
	if c.DeadLetterPrefix == "" {
		c.DeadLetterPrefix = "mqrpc.dead"
	}
	if c.DeadLetterStream == "" {
		c.DeadLetterStream = c.Stream + "_DEAD"
	}
	if c.DuplicateWindow <= 0 {
		c.DuplicateWindow = 2 * time.Minute
	}
	if c.InactiveThreshold <= 0 {
		c.InactiveThreshold = time.Hour
	}
	if c.Replicas <= 0 {
		c.Replicas = 1
	}
	if c.PublishAttempt <= 0 {
		c.PublishAttempt = time.Second
	}
	if c.DeliveryBucket == "" {
		c.DeliveryBucket = strings.Map(func(r rune) rune {
			if r == '_' || r == '-' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' {
				return r
			}
			return '_'
		}, c.Stream+"_DELIVERIES")
	}
	c.SubjectPrefix = strings.TrimSuffix(c.SubjectPrefix, ".")
	c.DeadLetterPrefix = strings.TrimSuffix(c.DeadLetterPrefix, ".")
	return c
}

func (c JetStreamConfig) valid() error {
	if c.SubjectPrefix == c.DeadLetterPrefix ||
		strings.HasPrefix(c.DeadLetterPrefix+".", c.SubjectPrefix+".") ||
		strings.HasPrefix(c.SubjectPrefix+".", c.DeadLetterPrefix+".") {
		return fmt.Errorf("nats: jetstream: subject prefix %q and dead-letter prefix %q overlap",
			c.SubjectPrefix, c.DeadLetterPrefix)
	}
	if c.Replicas > 5 {
		return fmt.Errorf("nats: jetstream: %d replicas (at most 5)", c.Replicas)
	}
	for _, r := range c.DeliveryBucket {
		if !(r == '_' || r == '-' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9') {
			return fmt.Errorf("nats: jetstream: delivery bucket %q: only letters, digits, '_' and '-'", c.DeliveryBucket)
		}
	}
	if c.Stream == c.DeadLetterStream {
		return fmt.Errorf("nats: jetstream: stream and dead-letter stream are both %q", c.Stream)
	}
	return nil
}
