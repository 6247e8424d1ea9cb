// Package natskv is a shared store for middleware.Dedup on a NATS
// JetStream key-value bucket (github.com/nats-io/nats.go/jetstream), so
// that a request redelivered or retried to another server process runs
// once. For NATS users it needs nothing but the NATS server they have
// (with JetStream enabled).
//
// Servers that compete for the same requests share one bucket:
//
//	js, _ := jetstream.New(nc)
//	store, err := natskv.New(ctx, js, "mqrpc_dedup")
//	srv := rpc.NewServer(rpc.WithServerMiddleware(
//		middleware.Dedup(middleware.WithDedupStore(store)),
//	))
//
// # Guarantee
//
// A run claims the request's key with KeyValue.Create (atomic in
// JetStream: of the processes racing for a key, one gets it), renews the
// claim while the method runs (a compare-and-set update on the claim's
// revision), and puts the outcome in its place, kept for the bucket's TTL.
// A repeat that finds the key claimed waits for the outcome; one that finds
// the outcome is answered from it.
//
// A claim whose process died (SIGKILL, power loss) is not renewed. The
// NATS server itself removes it a lease after its last renewal
// (middleware.WithDedupLease, rounded up to whole seconds; each claim
// revision carries it as a per-message TTL, measured on the server's
// clock), and a repeat then claims the key anew. So after a crash every
// request the dead process held can run again a lease after the crash,
// however many they are and however late a repeat first looks. This needs
// per-message TTLs in the bucket (NATS server 2.11 or later): New creates
// its bucket with them. In a bucket without them (made by an older version
// of this package or on an older server) a process takes a claim over once
// it has seen the same revision of it for a whole lease on its own
// monotonic clock (which, as the server's expiry, compares no clocks), so
// each repeat waits up to a lease from when it first looks. Either way the
// new claim is a compare-and-set on the key's last revision, which only
// one process can win.
//
// When the NATS server cannot be reached (or the bucket elects a leader),
// Dedup waits for it (middleware.WithDedupStoreWait), then refuses
// requests with Unavailable instead of running them unguarded: a durable
// broker redelivers them, a client's Retry tries again, and nothing runs
// twice.
// A claim or outcome that cannot be written is reported to
// middleware.OnStoreError.
//
// Request keys are stored hashed (SHA-256, base64url), since key-value
// keys allow few characters.
package natskv

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/middleware"
	"github.com/mqrpc/mqrpc/middleware/dedupstore/internal/record"
)

// Store is a middleware.DedupClaimer on a JetStream key-value bucket. It
// is safe for concurrent use.
type Store struct {
	kv jetstream.KeyValue
	js jetstream.JetStream
	// put is the subject prefix of the bucket's keys for publishing,
	// when its claims carry a per-message TTL; "" when they cannot.
	put string

	mu   sync.Mutex
	seen map[string]sighting // claims of others this process waits on, by bucket key
}

// sighting is when this process first saw a revision of a claim.
type sighting struct {
	rev   uint64
	at    time.Time // with its monotonic reading
	lease time.Duration
}

var _ middleware.DedupClaimer = (*Store)(nil)

type config struct {
	ttl      time.Duration
	ttlSet   bool
	replicas int
	storage  jetstream.StorageType
}

// Option configures New.
type Option func(*config)

// WithTTL sets how long the bucket keeps an outcome (its TTL, the
// stream's max age) when New creates it; it must outlast the retries and
// redeliveries of a request, and the lease. For a bucket that exists, New
// fails when its TTL differs. Default: middleware.DefaultDedupTTL.
func WithTTL(d time.Duration) Option {
	return func(c *config) { c.ttl, c.ttlSet = d, true }
}

// WithReplicas sets the bucket's replicas when New creates it. Default 1.
func WithReplicas(n int) Option { return func(c *config) { c.replicas = n } }

// WithMemoryStorage keeps a bucket New creates in memory instead of
// files: faster, lost when the NATS server restarts. Default: files.
func WithMemoryStorage() Option { return func(c *config) { c.storage = jetstream.MemoryStorage } }

// New opens the key-value bucket named bucket, creating it when it does
// not exist (history 1, the TTL of WithTTL, file storage, per-message
// TTLs when the server has them), and returns a store on it. The bucket
// should hold nothing but this store's keys. The store uses js until its
// last request; it does not close it.
func New(ctx context.Context, js jetstream.JetStream, bucket string, opts ...Option) (*Store, error) {
	cfg := config{ttl: middleware.DefaultDedupTTL, replicas: 1, storage: jetstream.FileStorage}
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.ttl <= 0 {
		return nil, fmt.Errorf("natskv: TTL %v is not positive", cfg.ttl)
	}
	kv, err := js.KeyValue(ctx, bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		kvc := jetstream.KeyValueConfig{
			Bucket:      bucket,
			Description: "mqrpc Dedup: claims and outcomes of requests",
			History:     1,
			TTL:         cfg.ttl,
			Storage:     cfg.storage,
			Replicas:    cfg.replicas,
			// Per-message TTLs, so the server drops a claim nobody
			// renews; the markers it leaves then go after a second.
			LimitMarkerTTL: time.Second,
		}
		kv, err = js.CreateKeyValue(ctx, kvc)
		if errors.Is(err, jetstream.ErrLimitMarkerTTLNotSupported) { // NATS server before 2.11
			kvc.LimitMarkerTTL = 0
			kv, err = js.CreateKeyValue(ctx, kvc)
		}
		if errors.Is(err, jetstream.ErrBucketExists) { // created meanwhile
			kv, err = js.KeyValue(ctx, bucket)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("natskv: bucket %q: %w", bucket, err)
	}
	st, err := kv.Status(ctx)
	if err != nil {
		return nil, fmt.Errorf("natskv: bucket %q: %w", bucket, err)
	}
	if cfg.ttlSet && st.TTL() != cfg.ttl {
		return nil, fmt.Errorf("natskv: bucket %q exists with TTL %v, not %v: change or delete it", bucket, st.TTL(), cfg.ttl)
	}
	return &Store{kv: kv, js: js, put: putPrefix(js, kv, st), seen: make(map[string]sighting)}, nil
}

// putPrefix returns the subject prefix under which the store publishes a
// claim with a TTL (as KeyValue.Update would, which takes no TTL), or ""
// when the bucket has no per-message TTLs, or is a mirror (whose writes go
// elsewhere).
func putPrefix(js jetstream.JetStream, kv jetstream.KeyValue, st jetstream.KeyValueStatus) string {
	bs, ok := st.(*jetstream.KeyValueBucketStatus)
	if !ok || !bs.StreamInfo().Config.AllowMsgTTL || bs.StreamInfo().Config.Mirror != nil {
		return ""
	}
	pre := "$KV." + kv.Bucket() + "."
	// The API prefix of a domain or an import, as KeyValue's own puts.
	switch o := js.Options(); {
	case o.Domain != "":
		return "$JS." + o.Domain + ".API." + pre
	case o.APIPrefix != "" && o.APIPrefix != jetstream.DefaultAPIPrefix:
		return strings.TrimSuffix(o.APIPrefix, ".") + "." + pre
	}
	return pre
}

// bucketKey maps a request key onto a key-value key.
func bucketKey(key string) string {
	sum := sha256.Sum256([]byte(key))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// maxClaimTries bounds the create / read / update rounds of one Claim
// when other processes change the key meanwhile; after it Claim answers
// "claimed by another", and the caller tries again later.
const maxClaimTries = 5

// Claim implements middleware.DedupClaimer.
func (s *Store) Claim(ctx context.Context, key string, lease time.Duration) (middleware.DedupClaim, error) {
	if lease < time.Millisecond {
		return middleware.DedupClaim{}, fmt.Errorf("natskv: claim %q: lease %v is below 1ms", key, lease)
	}
	k := bucketKey(key)
	value := record.Claim(rand.Text(), lease)
	for range maxClaimTries {
		rev, err := s.create(ctx, k, value, lease)
		if err == nil {
			return s.claimed(key, k, value, rev, lease), nil
		}
		if !conflict(err) {
			return middleware.DedupClaim{}, fmt.Errorf("natskv: claim %q: %w", key, err)
		}
		e, err := s.kv.Get(ctx, k)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue // released or expired meanwhile
		}
		if err != nil {
			return middleware.DedupClaim{}, fmt.Errorf("natskv: claim %q: %w", key, err)
		}
		if bytes.Equal(e.Value(), value) {
			// An attempt that timed out was stored after all (see
			// writes): the claim is this call's own.
			return s.claimed(key, k, value, e.Revision(), lease), nil
		}
		rec, err := record.Parse(e.Value())
		if err != nil {
			return middleware.DedupClaim{}, fmt.Errorf("natskv: claim %q: key %q: %w", key, k, err)
		}
		if !rec.Claim {
			s.forget(k)
			return middleware.DedupClaim{Done: true, Reply: rec.Reply}, nil
		}
		if !s.stale(k, e.Revision(), rec.Lease) {
			return middleware.DedupClaim{}, nil
		}
		// The claim was not renewed for a whole lease: its process died.
		rev, err = s.update(ctx, k, value, e.Revision(), lease)
		if err == nil {
			return s.claimed(key, k, value, rev, lease), nil
		}
		if !conflict(err) {
			return middleware.DedupClaim{}, fmt.Errorf("natskv: claim %q: %w", key, err)
		}
	}
	return middleware.DedupClaim{}, nil
}

// conflict reports a lost compare-and-set: the key exists, or changed.
func conflict(err error) bool {
	return errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch)
}

func (s *Store) claimed(key, k string, value []byte, rev uint64, lease time.Duration) middleware.DedupClaim {
	s.forget(k)
	return middleware.DedupClaim{Lease: &claim{s: s, key: key, k: k, value: value, rev: rev, lease: lease}}
}

// claimTTL is the per-message TTL of a claim for lease: whole seconds
// (the server's unit, which it would round down), rounded up, so the
// server never drops a claim before its lease has passed.
func claimTTL(lease time.Duration) time.Duration {
	return (lease + time.Second - 1).Truncate(time.Second)
}

// writeAttempt bounds one attempt of a write to the bucket (a claim, a
// renewal, an outcome, a release). A bucket whose stream leader died does
// not answer until its replicas elected another (seconds, in a cluster); a
// write that waited for its caller's deadline would hold its request that
// long after the new leader is there. See writes.
const writeAttempt = time.Second

// writes runs the write f in attempts of at most writeAttempt until one
// is answered (stored, or refused) or ctx ends; without a deadline in ctx,
// for the JetStream client's default timeout. An attempt that timed out
// may have been stored all the same: a claim or renewal that finds the
// key changed recognises its own value (unique to the claim), an outcome
// is put again, a release finds the claim gone.
func writes[T any](ctx context.Context, js jetstream.JetStream, f func(context.Context) (T, error)) (T, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, js.Options().DefaultTimeout)
		defer cancel()
	}
	for {
		actx, cancel := context.WithTimeout(ctx, writeAttempt)
		v, err := f(actx)
		timedOut := actx.Err() != nil
		cancel()
		if err == nil || ctx.Err() != nil || !timedOut {
			return v, err
		}
	}
}

// create puts a claim on k when k holds nothing (or a delete marker).
func (s *Store) create(ctx context.Context, k string, value []byte, lease time.Duration) (uint64, error) {
	return writes(ctx, s.js, func(ctx context.Context) (uint64, error) {
		if s.put == "" {
			return s.kv.Create(ctx, k, value)
		}
		return s.kv.Create(ctx, k, value, jetstream.KeyTTL(claimTTL(lease)))
	})
}

// update puts a claim on k in place of its revision rev: a renewal, or
// the takeover of a dead claim.
func (s *Store) update(ctx context.Context, k string, value []byte, rev uint64, lease time.Duration) (uint64, error) {
	return writes(ctx, s.js, func(ctx context.Context) (uint64, error) { return s.updateOnce(ctx, k, value, rev, lease) })
}

func (s *Store) updateOnce(ctx context.Context, k string, value []byte, rev uint64, lease time.Duration) (uint64, error) {
	if s.put == "" {
		return s.kv.Update(ctx, k, value, rev)
	}
	ack, err := s.js.PublishMsg(ctx, &natsgo.Msg{Subject: s.put + k, Data: value},
		jetstream.WithExpectLastSequencePerSubject(rev), jetstream.WithMsgTTL(claimTTL(lease)))
	if err != nil {
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
			apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant) {
			return 0, fmt.Errorf("%w: %w", err, jetstream.ErrKeyRevisionMismatch)
		}
		return 0, err
	}
	return ack.Sequence, nil
}

// stale reports whether this process has seen revision rev of a claim
// for at least lease, and notes the revision when it is new.
func (s *Store) stale(k string, rev uint64, lease time.Duration) bool {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if sg, ok := s.seen[k]; ok && sg.rev == rev {
		return now.Sub(sg.at) >= sg.lease
	}
	if len(s.seen) >= 4096 {
		// Drop sightings nobody came back for (waiters that gave up).
		for kk, sg := range s.seen {
			if now.Sub(sg.at) > 2*sg.lease {
				delete(s.seen, kk)
			}
		}
	}
	s.seen[k] = sighting{rev: rev, at: now, lease: lease}
	return false
}

func (s *Store) forget(k string) {
	s.mu.Lock()
	delete(s.seen, k)
	s.mu.Unlock()
}

// Load implements middleware.DedupStore. A key that is only claimed has
// no outcome yet.
func (s *Store) Load(ctx context.Context, key string) (*broker.Message, bool, error) {
	e, err := s.kv.Get(ctx, bucketKey(key))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("natskv: load %q: %w", key, err)
	}
	rec, err := record.Parse(e.Value())
	if err != nil {
		return nil, false, fmt.Errorf("natskv: load %q: key %q: %w", key, e.Key(), err)
	}
	if rec.Claim {
		return nil, false, nil
	}
	return rec.Reply, true, nil
}

// Store implements middleware.DedupStore: it puts the outcome of key,
// claimed or not, kept for the bucket's TTL.
func (s *Store) Store(ctx context.Context, key string, reply *broker.Message) error {
	k, value := bucketKey(key), record.Outcome(reply)
	if _, err := writes(ctx, s.js, func(ctx context.Context) (uint64, error) { return s.kv.Put(ctx, k, value) }); err != nil {
		return fmt.Errorf("natskv: store %q: %w", key, err)
	}
	return nil
}

// claim is a middleware.DedupLease: a claim this process holds, at its
// latest revision.
type claim struct {
	s     *Store
	key   string // the request's key
	k     string // the bucket's key
	value []byte
	rev   uint64
	lease time.Duration
}

func (c *claim) Renew(ctx context.Context) error {
	rev, err := c.s.update(ctx, c.k, c.value, c.rev, c.lease)
	if conflict(err) {
		// Still this claim when an attempt that timed out was stored.
		if e, gerr := c.s.kv.Get(ctx, c.k); gerr == nil && bytes.Equal(e.Value(), c.value) {
			rev, err = e.Revision(), nil
		}
	}
	if conflict(err) || errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("natskv: renew claim of %q: %w", c.key, middleware.ErrDedupLeaseLost)
	}
	if err != nil {
		return fmt.Errorf("natskv: renew claim of %q: %w", c.key, err)
	}
	c.rev = rev
	return nil
}

func (c *claim) Commit(ctx context.Context, reply *broker.Message) error {
	return c.s.Store(ctx, c.key, reply)
}

func (c *claim) Release(ctx context.Context) error {
	_, err := writes(ctx, c.s.js, func(ctx context.Context) (struct{}, error) {
		return struct{}{}, c.s.kv.Delete(ctx, c.k, jetstream.LastRevision(c.rev))
	})
	if err != nil && !conflict(err) {
		return fmt.Errorf("natskv: release claim of %q: %w", c.key, err)
	}
	return nil
}
