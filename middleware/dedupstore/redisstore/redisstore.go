// Package redisstore is a shared store for middleware.Dedup on Redis
// (github.com/redis/go-redis/v9), so that a request redelivered or retried
// to another server process runs once.
//
// Servers that compete for the same requests share one Store:
//
//	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379"})
//	srv := rpc.NewServer(rpc.WithServerMiddleware(
//		middleware.Dedup(middleware.WithDedupStore(redisstore.New(rdb))),
//	))
//
// # Guarantee
//
// A run claims the request's key with SET NX PX (atomic in Redis: of the
// processes racing for a key, one gets it), renews the claim while the
// method runs, and replaces it with the outcome, kept for the store's TTL.
// A repeat that finds the key claimed waits for the outcome; one that
// finds the outcome is answered from it. A claim whose process died
// (SIGKILL, power loss) is not renewed and expires after its lease
// (middleware.WithDedupLease): a repeat then runs the request. Expiry
// follows the Redis server's clock only; the servers' clocks do not
// matter.
//
// When Redis cannot be reached, Dedup refuses requests with Unavailable
// instead of running them unguarded: a durable broker redelivers them,
// a client's Retry tries again, and nothing runs twice. A claim or outcome
// that cannot be written is reported to middleware.OnStoreError.
//
// What Redis itself loses it cannot deduplicate: an outcome written just
// before a Redis crash without persistence, or on a primary that failed
// over before replicating it. Use persistence (appendonly) and, with
// replicas, WAIT-level care if that matters.
//
// Needs Redis 7.0 or later (SET with NX and GET together). Works with a
// single server, Sentinel (redis.NewFailoverClient) and Cluster: every
// command touches one key.
package redisstore

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/middleware"
	"github.com/mqrpc/mqrpc/middleware/dedupstore/internal/record"
)

// DefaultPrefix is the prefix of the keys the store writes.
const DefaultPrefix = "mqrpc:dedup:"

// Store is a middleware.DedupClaimer on Redis. It is safe for concurrent
// use; it holds no state but its client.
type Store struct {
	client redis.UniversalClient
	prefix string
	ttl    time.Duration
}

var _ middleware.DedupClaimer = (*Store)(nil)

// Option configures a Store.
type Option func(*Store)

// WithTTL sets how long an outcome is kept. It must outlast the retries
// and redeliveries of a request. Default: middleware.DefaultDedupTTL;
// values below 1 ms select the default.
func WithTTL(d time.Duration) Option {
	return func(s *Store) {
		if d >= time.Millisecond {
			s.ttl = d
		}
	}
}

// WithPrefix sets the prefix of the store's keys, so several services (or
// stores) can share a Redis database without mixing their keys. Default:
// DefaultPrefix; "" writes the request keys as they are.
func WithPrefix(p string) Option { return func(s *Store) { s.prefix = p } }

// New returns a store that keeps claims and outcomes in client, which
// may be a *redis.Client, a *redis.ClusterClient or any
// redis.UniversalClient. The store does not close the client.
func New(client redis.UniversalClient, opts ...Option) *Store {
	s := &Store{client: client, prefix: DefaultPrefix, ttl: middleware.DefaultDedupTTL}
	for _, o := range opts {
		o(s)
	}
	return s
}

// Claim implements middleware.DedupClaimer with one SET key claim NX PX
// lease GET: it claims key, or returns what key holds.
func (s *Store) Claim(ctx context.Context, key string, lease time.Duration) (middleware.DedupClaim, error) {
	if lease < time.Millisecond {
		return middleware.DedupClaim{}, fmt.Errorf("redisstore: claim %q: lease %v is below 1ms", key, lease)
	}
	value := record.Claim(rand.Text(), lease)
	old, err := s.client.SetArgs(ctx, s.prefix+key, value, redis.SetArgs{Mode: "NX", TTL: lease, Get: true}).Result()
	if errors.Is(err, redis.Nil) {
		return middleware.DedupClaim{Lease: &claim{s: s, key: key, value: value, lease: lease}}, nil
	}
	if err != nil {
		return middleware.DedupClaim{}, fmt.Errorf("redisstore: claim %q: %w", key, err)
	}
	rec, err := record.Parse([]byte(old))
	if err != nil {
		return middleware.DedupClaim{}, fmt.Errorf("redisstore: claim %q: key %q: %w", key, s.prefix+key, err)
	}
	if rec.Claim {
		return middleware.DedupClaim{}, nil
	}
	return middleware.DedupClaim{Done: true, Reply: rec.Reply}, nil
}

// Load implements middleware.DedupStore. A key that is only claimed has
// no outcome yet.
func (s *Store) Load(ctx context.Context, key string) (*broker.Message, bool, error) {
	b, err := s.client.Get(ctx, s.prefix+key).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("redisstore: load %q: %w", key, err)
	}
	rec, err := record.Parse(b)
	if err != nil {
		return nil, false, fmt.Errorf("redisstore: load %q: key %q: %w", key, s.prefix+key, err)
	}
	if rec.Claim {
		return nil, false, nil
	}
	return rec.Reply, true, nil
}

// Store implements middleware.DedupStore: it sets the outcome of key,
// claimed or not, for the store's TTL.
func (s *Store) Store(ctx context.Context, key string, reply *broker.Message) error {
	if err := s.client.Set(ctx, s.prefix+key, record.Outcome(reply), s.ttl).Err(); err != nil {
		return fmt.Errorf("redisstore: store %q: %w", key, err)
	}
	return nil
}

// Compare-and-set on the claim's value (unique by its token): a lease
// renews or releases only its own claim, never a later claim or an
// outcome.
var (
	renewScript  = redis.NewScript(`if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("PEXPIRE", KEYS[1], ARGV[2]) end return 0`)
	deleteScript = redis.NewScript(`if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) end return 0`)
)

// claim is a middleware.DedupLease: a claim this process holds.
type claim struct {
	s     *Store
	key   string
	value []byte // the claim's record, unique by its token
	lease time.Duration
}

func (c *claim) Renew(ctx context.Context) error {
	n, err := renewScript.Run(ctx, c.s.client, []string{c.s.prefix + c.key}, c.value, c.lease.Milliseconds()).Int()
	if err != nil {
		return fmt.Errorf("redisstore: renew claim of %q: %w", c.key, err)
	}
	if n == 0 {
		return fmt.Errorf("redisstore: renew claim of %q: %w", c.key, middleware.ErrDedupLeaseLost)
	}
	return nil
}

func (c *claim) Commit(ctx context.Context, reply *broker.Message) error {
	return c.s.Store(ctx, c.key, reply)
}

func (c *claim) Release(ctx context.Context) error {
	if err := deleteScript.Run(ctx, c.s.client, []string{c.s.prefix + c.key}, c.value).Err(); err != nil {
		return fmt.Errorf("redisstore: release claim of %q: %w", c.key, err)
	}
	return nil
}
