package amqp

import (
	"crypto/tls"
	"log/slog"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// Option configures a Broker created by New.
type Option func(*config)

// QueueType selects the kind of request queue declared in durable mode.
type QueueType string

// Queue types for WithDurable.
const (
	// ClassicQueue is a durable classic queue.
	ClassicQueue QueueType = "classic"
	// QuorumQueue is a replicated quorum queue (x-queue-type=quorum).
	QuorumQueue QueueType = "quorum"
)

// Defaults of the options.
const (
	// DefaultDeadLetterExchange is the exchange failed requests are
	// published to in durable mode.
	DefaultDeadLetterExchange = "mqrpc.dead-letter"
	// DefaultMaxDeliveries is how many failed deliveries of a request a
	// durable broker allows before dead-lettering it.
	DefaultMaxDeliveries = 5
	// DefaultConnectionName is the connection name shown by RabbitMQ.
	DefaultConnectionName = "mqrpc"
	// DefaultDialTimeout bounds one connection attempt (TCP, TLS and AMQP
	// handshake).
	DefaultDialTimeout = 10 * time.Second
	// DefaultMaxMessageSize is RabbitMQ's default max_message_size
	// (128 MiB since 3.8).
	DefaultMaxMessageSize = 128 << 20
	// DefaultHeartbeat is the AMQP heartbeat interval; it bounds how long a
	// dead TCP connection goes unnoticed.
	DefaultHeartbeat = 10 * time.Second
	// DefaultRetryMinBackoff and DefaultRetryMaxBackoff bound the delay
	// before a failed request is delivered again in durable mode.
	DefaultRetryMinBackoff = 100 * time.Millisecond
	DefaultRetryMaxBackoff = 5 * time.Second
)

type config struct {
	tls            *tls.Config
	vhost          *string
	user, password *string
	exchange       string
	queueArgs      amqp091.Table
	prefetch       int
	connName       string
	logger         *slog.Logger
	durable        bool
	queueType      QueueType
	dlx            string
	maxDeliveries  int
	retryMin       time.Duration
	retryMax       time.Duration
	minBackoff     time.Duration
	maxBackoff     time.Duration
	dialTimeout    time.Duration
	heartbeat      time.Duration
	maxSize        int
}

func newConfig(opts []Option) config {
	c := config{
		connName:      DefaultConnectionName,
		queueType:     ClassicQueue,
		dlx:           DefaultDeadLetterExchange,
		maxDeliveries: DefaultMaxDeliveries,
		retryMin:      DefaultRetryMinBackoff,
		retryMax:      DefaultRetryMaxBackoff,
		minBackoff:    100 * time.Millisecond,
		maxBackoff:    5 * time.Second,
		dialTimeout:   DefaultDialTimeout,
		heartbeat:     DefaultHeartbeat,
		maxSize:       DefaultMaxMessageSize,
	}
	for _, o := range opts {
		o(&c)
	}
	if c.logger == nil {
		c.logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// WithTLS sets the TLS configuration used for amqps:// URLs. Default: nil,
// which for an amqps:// URL means the system roots and the URL's host name.
// It has no effect on amqp:// URLs.
func WithTLS(cfg *tls.Config) Option {
	return func(c *config) { c.tls = cfg }
}

// WithVHost sets the virtual host, overriding the one in the URL. Default:
// the URL's path, or "/" when it has none.
func WithVHost(vhost string) Option {
	return func(c *config) { c.vhost = &vhost }
}

// WithCredentials sets the user name and password (SASL PLAIN), overriding
// those in the URL. Default: the URL's user info, or guest/guest.
func WithCredentials(user, password string) Option {
	return func(c *config) { c.user, c.password = &user, &password }
}

// WithExchange routes requests through the named direct exchange, with the
// subject as routing key, instead of the default exchange. Serve declares the
// exchange (durable) and binds its queue to it; this is what allows a
// ServeConfig.Queue different from the subject. Default: "" (the default
// exchange: the subject is the queue name).
func WithExchange(name string) Option {
	return func(c *config) { c.exchange = name }
}

// WithQueueArgs adds arguments to every request queue this broker declares
// (x-max-length, x-message-ttl, x-delivery-limit, ...). All servers and, in
// durable mode, clients of one queue must use equal arguments, since RabbitMQ
// refuses to redeclare a queue with different ones. Default: none.
func WithQueueArgs(args amqp091.Table) Option {
	return func(c *config) { c.queueArgs = args }
}

// WithPrefetch sets the consumer prefetch (QoS) of every subscription.
// Default: 0, which ties it to ServeConfig.Concurrency so a server never
// holds more unacknowledged requests than it can handle at once.
func WithPrefetch(n int) Option {
	return func(c *config) { c.prefetch = n }
}

// WithConnectionName sets the client-provided connection name RabbitMQ shows
// in its management tools. Default: DefaultConnectionName.
func WithConnectionName(name string) Option {
	return func(c *config) { c.connName = name }
}

// WithLogger sets where the broker reports reconnections and dropped or
// failed deliveries. Default: nil, which discards everything; the library
// never prints.
func WithLogger(l *slog.Logger) Option {
	return func(c *config) { c.logger = l }
}

// WithDurable switches the broker to durable mode: request queues of type qt
// (ClassicQueue when empty) that survive a broker restart, persistent
// requests, publisher confirms (Send returns once RabbitMQ stored the
// message; a request RabbitMQ refuses, basic.nack, fails its call),
// acknowledgement only after the reply was published, retries with backoff
// (WithRetryBackoff) and dead-lettering after repeated failures (see
// WithDeadLetter). On the default exchange,
// clients also declare the request queue of a subject before their first
// request, so requests sent while no server runs are kept until one starts.
// All clients and servers of a subject must agree on the mode and queue
// type. Default: fast mode, with transient auto-delete queues and
// non-persistent messages.
func WithDurable(qt QueueType) Option {
	return func(c *config) {
		c.durable = true
		if qt != "" {
			c.queueType = qt
		}
	}
}

// WithDeadLetter sets, for durable mode, the exchange a request is
// published to after maxDeliveries failed deliveries, and that count. A
// delivery fails when its handler returns an error or panics, and when it
// is lost with its server: the process crashed, its connection or channel
// was lost, or it stopped before handling a request it had prefetched
// (RabbitMQ redelivers such a request flagged as redelivered). The
// dead-lettered message keeps its properties and headers and gains
// x-mqrpc-error (the last error) and x-mqrpc-deliveries. Serve declares the
// exchange (direct) and a queue "<queue>.dead-letter" bound to it with the
// queue name as routing key (a quorum queue with WithDurable(QuorumQueue),
// so it survives the loss of a node as the request queue does). Defaults: DefaultDeadLetterExchange and
// DefaultMaxDeliveries; values below 1 and "" keep the defaults.
func WithDeadLetter(exchange string, maxDeliveries int) Option {
	return func(c *config) {
		if exchange != "" {
			c.dlx = exchange
		}
		if maxDeliveries > 0 {
			c.maxDeliveries = maxDeliveries
		}
	}
}

// WithRetryBackoff sets, for durable mode, the delays before a failed
// request is delivered again: min after its first failure, doubling with
// every further failure up to max. The request waits in a retry queue
// "<queue>.retry-<delay>" (one per delay, declared by Serve) and the other
// requests of its queue go on meanwhile. Each delay is jittered down to
// half of it. Defaults: DefaultRetryMinBackoff and DefaultRetryMaxBackoff;
// values below 1 ms keep the defaults, and a max below min is min.
func WithRetryBackoff(min, max time.Duration) Option {
	return func(c *config) {
		if min >= time.Millisecond {
			c.retryMin = min
		}
		if max >= time.Millisecond {
			c.retryMax = max
		}
		if c.retryMax < c.retryMin {
			c.retryMax = c.retryMin
		}
	}
}

// WithReconnectBackoff sets the delays between reconnection attempts: they
// start at min and double up to max, with jitter. Defaults: 100ms and 5s.
func WithReconnectBackoff(min, max time.Duration) Option {
	return func(c *config) {
		if min > 0 {
			c.minBackoff = min
		}
		if max >= c.minBackoff {
			c.maxBackoff = max
		}
	}
}

// WithDialTimeout bounds each connection attempt. Default:
// DefaultDialTimeout.
func WithDialTimeout(d time.Duration) Option {
	return func(c *config) {
		if d > 0 {
			c.dialTimeout = d
		}
	}
}

// WithHeartbeat sets the AMQP heartbeat interval. Default: DefaultHeartbeat.
func WithHeartbeat(d time.Duration) Option {
	return func(c *config) {
		if d > 0 {
			c.heartbeat = d
		}
	}
}

// WithMaxMessageSize sets the largest body the broker publishes; a larger
// request fails with broker.ErrMessageTooLarge before it is sent, and a
// larger reply is replaced by the handler's reply to a TooLarge rejection. Set it to the server's max_message_size
// when that was changed: RabbitMQ closes the channel of a publish over its
// limit. Default: DefaultMaxMessageSize.
func WithMaxMessageSize(n int) Option {
	return func(c *config) {
		if n > 0 {
			c.maxSize = n
		}
	}
}
