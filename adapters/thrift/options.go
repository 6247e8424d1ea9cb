package thrift

import (
	"time"

	"github.com/apache/thrift/lib/go/thrift"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/rpc"
)

// Option configures a Client, a Transport or a Server. Each option says
// which of them it applies to; the others ignore it.
type Option func(*config)

type config struct {
	protocol   Protocol
	tconf      *thrift.TConfiguration
	timeout    time.Duration
	middleware []rpc.Middleware
	header     broker.Header
	oneway     map[string]bool
}

func newConfig(opts []Option) config {
	cfg := config{timeout: 30 * time.Second}
	for _, o := range opts {
		o(&cfg)
	}
	if !cfg.protocol.valid() {
		cfg.protocol = Binary
	}
	return cfg
}

// WithProtocol sets the protocol. Clients and transports encode their
// requests with it; a server reads requests that name no protocol and
// cannot be recognised with it. Default: Binary.
func WithProtocol(p Protocol) Option { return func(c *config) { c.protocol = p } }

// WithConfiguration sets the Thrift configuration of the protocols (maximum
// message size, frame size, ...). Default: nil, Thrift's defaults.
func WithConfiguration(tc *thrift.TConfiguration) Option {
	return func(c *config) { c.tconf = tc }
}

// WithTimeout sets how long a client or transport call waits for its reply
// when its ctx has no deadline. Default: 30s. Zero or less means no default
// timeout.
func WithTimeout(d time.Duration) Option { return func(c *config) { c.timeout = d } }

// WithMiddleware wraps the broker round trip of a client or transport in
// mw, the first outermost, as rpc.WithClientMiddleware does. The innermost
// handler sends the request (broker Request, or Send for oneway calls,
// returning a nil reply) and turns a status reply into an *rpc.Error;
// rpc.CallInfoFromContext reports nothing for Thrift calls. Calling it
// again appends.
func WithMiddleware(mw ...rpc.Middleware) Option {
	return func(c *config) { c.middleware = append(c.middleware, mw...) }
}

// WithHeader adds a header to every request of a client or transport.
// Names are case-insensitive.
func WithHeader(name, value string) Option {
	return func(c *config) {
		if c.header == nil {
			c.header = make(broker.Header, 2)
		}
		c.header.Set(name, value)
	}
}

// WithOneway names the oneway methods of the service for a Transport, so
// that their CALL messages, as Go's thrift.TStandardClient writes them, are
// sent one-way (see the package documentation). Client does not need it.
// Calling it again adds methods. Default: none.
func WithOneway(methods ...string) Option {
	return func(c *config) {
		if c.oneway == nil {
			c.oneway = make(map[string]bool, len(methods))
		}
		for _, m := range methods {
			c.oneway[m] = true
		}
	}
}
