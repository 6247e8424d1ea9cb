package rpc

import "github.com/mqrpc/mqrpc/codec"

// ClientOption configures a Client made by NewClient.
type ClientOption interface {
	applyToClient(*clientConfig)
}

// ServerOption configures a Server made by NewServer.
type ServerOption interface {
	applyToServer(*serverConfig)
}

// Option configures a Client and a Server alike: give it to either side,
// or to both.
type Option interface {
	ClientOption
	ServerOption
}

type clientOptionFunc func(*clientConfig)

func (f clientOptionFunc) applyToClient(c *clientConfig) { f(c) }

type serverOptionFunc func(*serverConfig)

func (f serverOptionFunc) applyToServer(c *serverConfig) { f(c) }

type bothOption struct {
	client func(*clientConfig)
	server func(*serverConfig)
}

func (o bothOption) applyToClient(c *clientConfig) { o.client(c) }
func (o bothOption) applyToServer(c *serverConfig) { o.server(c) }

// WithMaxMessageSize limits request and reply bodies to n bytes. On a
// client a larger request fails before it is sent, and a larger reply
// fails instead of being decoded; on a server a larger request is answered
// with ResourceExhausted without running the method, and a larger reply is
// replaced by a ResourceExhausted error. Either way the error has code
// ResourceExhausted and wraps broker.ErrMessageTooLarge. Default
// DefaultMaxMessageSize; n < 0 means no limit.
func WithMaxMessageSize(n int) Option {
	return bothOption{
		client: func(c *clientConfig) { c.maxSize = n },
		server: func(c *serverConfig) { c.maxSize = n },
	}
}

// WithCodec sets the codec of a side. A client encodes its requests with
// it (default JSON). A server accepts it besides JSON and the codecs of
// WithCodecs, and decodes requests that name no content type with it
// (default JSON). A nil cd selects JSON.
func WithCodec(cd codec.Codec) Option {
	if cd == nil {
		cd = defaultCodec
	}
	return bothOption{
		client: func(c *clientConfig) { c.codec = cd },
		server: func(c *serverConfig) { c.codec = cd },
	}
}
