// Package dialrocketmq registers the rocketmq:// scheme with broker/dial
// when a program imports it for its side effect:
//
//	import _ "github.com/mqrpc/mqrpc/broker/rocketmq/dialrocketmq"
//
//	b, err := dial.Open("rocketmq://127.0.0.1:9876") // or rocketmq://ns1:9876,ns2:9876
//
// dial.Open then calls rocketmq.New with the whole URL (its list of name
// servers); dial's WithName and WithLogger do not reach it. A program that
// needs rocketmq.New's options (credentials, a producer group, a logger)
// gives dial its own constructor with dial.WithScheme instead, which takes
// precedence over this registration.
//
// The package lives in broker/rocketmq's module, so only programs that
// import it download and link rocketmq-client-go; linking that client
// starts a goroutine of its own (see broker/dial). Registering starts none.
package dialrocketmq

import (
	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/dial"
	"github.com/mqrpc/mqrpc/broker/rocketmq"
)

func init() {
	dial.Register("rocketmq", func(rawURL string) (broker.Broker, error) {
		return rocketmq.New(rawURL)
	})
}
