package chaos

import (
	"context"
	"fmt"
	"strings"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/middleware"
	"github.com/mqrpc/mqrpc/middleware/dedupstore/natskv"
	"github.com/mqrpc/mqrpc/middleware/dedupstore/redisstore"
)

// ChildLease is the Dedup claim lease of the child servers: a request
// claimed by a killed child runs elsewhere this long after its last
// renewal. Short, so the scenarios need not wait the default 15 s.
const ChildLease = 3 * time.Second

// Shared dedup stores of the child server processes, named by a spec:
//
//	natskv:<nats URL>|<bucket>   middleware/dedupstore/natskv
//	redis:<host:port>|<prefix>   middleware/dedupstore/redisstore
//	<directory>                  FileDedupStore
func NATSKVSpec(natsURL, bucket string) string { return "natskv:" + natsURL + "|" + bucket }

// RedisSpec names a redisstore on the Redis at addr, its keys under prefix.
func RedisSpec(addr, prefix string) string { return "redis:" + addr + "|" + prefix }

// openStore opens the store spec names; onCommit is called with the key of
// every outcome this process stores. The returned func closes it.
func openStore(spec string, onCommit func(key string)) (middleware.DedupStore, func(), error) {
	kind, rest, _ := strings.Cut(spec, ":")
	a, b, _ := strings.Cut(rest, "|")
	switch kind {
	case "natskv":
		return openNATSKV(a, b, 10*time.Second, onCommit)
	case "redis":
		c := redis.NewClient(&redis.Options{Addr: a})
		return reporting{redisstore.New(c, redisstore.WithPrefix(b)), onCommit}, func() { _ = c.Close() }, nil
	}
	return FileDedupStore{Dir: spec, OnStore: onCommit}, func() {}, nil
}

// openNATSKV opens the natskv store on bucket (made with opts when it does
// not exist, within setup) on a connection of its own to urls that
// reconnects for ever; every outcome stored is reported to onCommit. The
// returned func closes the connection.
func openNATSKV(urls, bucket string, setup time.Duration, onCommit func(key string), opts ...natskv.Option) (middleware.DedupStore, func(), error) {
	nc, err := natsgo.Connect(urls, natsgo.Name("chaos-dedup"), natsgo.MaxReconnects(-1), natsgo.ReconnectWait(100*time.Millisecond))
	if err != nil {
		return nil, nil, fmt.Errorf("chaos: dedup store: %w", err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("chaos: dedup store: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), setup)
	defer cancel()
	s, err := natskv.New(ctx, js, bucket, opts...)
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("chaos: dedup store: %w", err)
	}
	return reporting{s, onCommit}, nc.Close, nil
}

// reporting is a DedupClaimer that reports every outcome it commits.
type reporting struct {
	middleware.DedupClaimer
	onCommit func(key string)
}

func (r reporting) Store(ctx context.Context, key string, reply *broker.Message) error {
	err := r.DedupClaimer.Store(ctx, key, reply)
	if err == nil {
		r.onCommit(key)
	}
	return err
}

func (r reporting) Claim(ctx context.Context, key string, lease time.Duration) (middleware.DedupClaim, error) {
	c, err := r.DedupClaimer.Claim(ctx, key, lease)
	if c.Lease != nil {
		c.Lease = reportingLease{c.Lease, key, r.onCommit}
	}
	return c, err
}

type reportingLease struct {
	middleware.DedupLease
	key      string
	onCommit func(key string)
}

func (l reportingLease) Commit(ctx context.Context, reply *broker.Message) error {
	err := l.DedupLease.Commit(ctx, reply)
	if err == nil {
		l.onCommit(l.key)
	}
	return err
}
