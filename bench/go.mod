module github.com/mqrpc/mqrpc/bench

go 1.25.0

replace github.com/mqrpc/mqrpc => ../

require (
	github.com/go-kit/kit v0.13.0
	github.com/mqrpc/mqrpc v0.0.0-00010101000000-000000000000
	github.com/nats-io/nats.go v1.51.0
	github.com/rabbitmq/amqp091-go v1.16.0
)

require (
	github.com/go-kit/log v0.2.0 // indirect
	github.com/go-logfmt/logfmt v0.5.1 // indirect
	github.com/klauspost/compress v1.19.2 // indirect
	github.com/nats-io/nkeys v0.4.16 // indirect
	github.com/nats-io/nuid v1.0.1 // indirect
	github.com/vmihailenco/msgpack/v5 v5.4.1 // indirect
	github.com/vmihailenco/tagparser/v2 v2.0.0 // indirect
	golang.org/x/crypto v0.55.0 // indirect
	golang.org/x/sys v0.47.0 // indirect
)
