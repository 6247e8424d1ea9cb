package middleware

import (
	"bytes"
	"container/list"
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/rpc"
)

// HeaderReplayed is set to "true" on a successful reply that Dedup
// answered from its cache, or from the run of an identical request in
// flight, instead of running the method again.
const HeaderReplayed = "mqrpc-replayed"

// Defaults of DedupConfig and NewMemoryDedupStore.
const (
	// DefaultDedupSize is how many outcomes the in-memory store keeps.
	DefaultDedupSize = 10000
	// DefaultDedupTTL is how long the in-memory store keeps an outcome.
	// It must outlast the retries of a call: the longest call deadline
	// your clients use is a good value.
	DefaultDedupTTL = 5 * time.Minute
)

// DedupStore keeps the outcome of requests by key, for Dedup. An outcome
// is the reply message (error replies included), or nil for a request that
// needed no reply (one-way).
//
// Implementations must be safe for concurrent use. Load must return a
// message the caller may keep and modify (a copy); Store must not retain
// reply, which the caller goes on to send, but copy it. A store shared by
// several servers (Redis, a database) makes deduplication work across
// them, while waiting for a duplicate in flight works within one process.
type DedupStore interface {
	// Load returns the outcome stored for key, and whether there is one.
	Load(ctx context.Context, key string) (reply *broker.Message, ok bool, err error)
	// Store records the outcome of key.
	Store(ctx context.Context, key string, reply *broker.Message) error
}

// DedupConfig configures Dedup. The zero value deduplicates by Message.ID
// in a DefaultDedupSize, DefaultDedupTTL in-memory store.
type DedupConfig struct {
	// Store keeps outcomes. Default: NewMemoryDedupStore(DefaultDedupSize,
	// DefaultDedupTTL), of its own per Dedup middleware.
	Store DedupStore
	// Key returns the deduplication key of a request; "" means the request
	// is not deduplicated. Default: Message.ID, which a client keeps
	// across the retries of one call. Message IDs are trusted: callers
	// that can choose them can read each other's cached replies, so scope
	// the key (for instance by a caller identity header) when callers do
	// not trust each other.
	Key func(req *broker.Message) string
	// TransientCodes are the error codes whose replies are not stored, so
	// a repeat runs the method again: they say the work was not done, or
	// not finished, and a retry is meant to try again. Default:
	// Unavailable, ResourceExhausted, Aborted, DeadlineExceeded, Canceled.
	// Delivery failures (errors that are not *rpc.Error) are never stored.
	TransientCodes []rpc.Code
	// OnDuplicate, if not nil, is called for each repeat that does not
	// run the method: with inFlight true when it starts waiting for the
	// first run still in flight, with inFlight false when it is answered
	// from the store. It must not retain req.
	OnDuplicate func(ctx context.Context, req *broker.Message, inFlight bool)
	// OnStoreError, if not nil, is called when storing an outcome fails.
	// The reply is still sent, but a repeat will run the method again.
	OnStoreError func(ctx context.Context, req *broker.Message, err error)
}

// Dedup returns server middleware that runs a method at most once per
// request key (Message.ID by default) while the store keeps its outcome,
// so a retried or redelivered call, idempotent or not, executes once:
//
//   - A repeat of a finished request gets the stored reply, with
//     HeaderReplayed set; a stored error reply is returned as the same
//     *rpc.Error.
//   - A repeat arriving while the first is still running waits for the
//     first's outcome (or for its own ctx to end, which answers it with
//     DeadlineExceeded or Canceled) instead of running again.
//   - When the store cannot be read, the request is refused with
//     Unavailable rather than risk running twice; a retry may succeed.
//
// Place it inside a DeadlineGuard and outside limits, so a repeat is
// answered from the store without taking a slot.
func Dedup(cfg DedupConfig) rpc.Middleware {
	if cfg.Store == nil {
		cfg.Store = NewMemoryDedupStore(DefaultDedupSize, DefaultDedupTTL)
	}
	if cfg.Key == nil {
		cfg.Key = func(req *broker.Message) string { return req.ID }
	}
	if cfg.TransientCodes == nil {
		cfg.TransientCodes = []rpc.Code{rpc.Unavailable, rpc.ResourceExhausted, rpc.Aborted, rpc.DeadlineExceeded, rpc.Canceled}
	}
	cfg.TransientCodes = slices.Clone(cfg.TransientCodes)
	return func(next broker.Handler) broker.Handler {
		return &deduper{cfg: cfg, next: next, flights: make(map[string]*flight)}
	}
}

type deduper struct {
	cfg  DedupConfig
	next broker.Handler

	mu      sync.Mutex
	flights map[string]*flight // requests running now, by key
}

// flight is one run of a method that repeats may wait for.
type flight struct {
	done    chan struct{} // closed when reply and err are set
	waiters int           // guarded by deduper.mu
	reply   *broker.Message
	err     error
}

func (d *deduper) ServeMessage(ctx context.Context, req *broker.Message) (*broker.Message, error) {
	key := d.cfg.Key(req)
	if key == "" {
		return d.next.ServeMessage(ctx, req)
	}
	d.mu.Lock()
	if f := d.flights[key]; f != nil {
		f.waiters++
		d.mu.Unlock()
		if d.cfg.OnDuplicate != nil {
			d.cfg.OnDuplicate(ctx, req, true)
		}
		return d.wait(ctx, f)
	}
	f := &flight{done: make(chan struct{})}
	d.flights[key] = f
	d.mu.Unlock()

	reply, err := d.run(ctx, req, key)

	d.mu.Lock()
	delete(d.flights, key)
	waiters := f.waiters
	d.mu.Unlock()
	if waiters > 0 {
		// The waiters get copies: the broker owns the reply we return.
		f.reply, f.err = cloneMessage(reply), err
	}
	close(f.done)
	return reply, err
}

// run answers a request that is not in flight: from the store, or by
// running the method and storing its outcome.
func (d *deduper) run(ctx context.Context, req *broker.Message, key string) (*broker.Message, error) {
	stored, ok, err := d.cfg.Store.Load(ctx, key)
	if err != nil {
		return nil, rpc.Errorf(rpc.Unavailable, "dedup: load %q: %w", key, err)
	}
	if ok {
		if d.cfg.OnDuplicate != nil {
			d.cfg.OnDuplicate(ctx, req, false)
		}
		return replay(stored)
	}
	reply, err := d.next.ServeMessage(ctx, req)
	var outcome *broker.Message
	switch {
	case err == nil:
		outcome = reply
	case d.storable(err):
		outcome = rpc.ErrorReply(err)
	default:
		return reply, err
	}
	if serr := d.cfg.Store.Store(ctx, key, outcome); serr != nil && d.cfg.OnStoreError != nil {
		d.cfg.OnStoreError(ctx, req, serr)
	}
	return reply, err
}

func (d *deduper) storable(err error) bool {
	var e *rpc.Error
	return errors.As(err, &e) && !slices.Contains(d.cfg.TransientCodes, e.Code())
}

func (d *deduper) wait(ctx context.Context, f *flight) (*broker.Message, error) {
	select {
	case <-f.done:
	case <-ctx.Done():
		return nil, rpc.NewError(rpc.CodeOf(ctx.Err()), errors.New("dedup: gave up waiting for the same request in flight"))
	}
	if f.err != nil {
		return nil, f.err
	}
	if f.reply == nil {
		return nil, nil
	}
	// Each waiter gets its own copy of the copy the first run left.
	return replay(cloneMessage(f.reply))
}

// replay returns a stored outcome as the middleware chain expects it: an
// error reply as its *rpc.Error, a successful one marked HeaderReplayed.
func replay(reply *broker.Message) (*broker.Message, error) {
	if reply == nil {
		return nil, nil
	}
	if err := rpc.ErrorFromReply(reply); err != nil {
		return nil, err
	}
	reply.SetHeader(HeaderReplayed, "true")
	return reply, nil
}

// cloneMessage returns a deep copy of m (nil for nil).
func cloneMessage(m *broker.Message) *broker.Message {
	if m == nil {
		return nil
	}
	c := *m
	c.Header = m.Header.Clone()
	c.Body = bytes.Clone(m.Body)
	return &c
}

// MemoryDedupStore is the default DedupStore: an in-process LRU cache of
// at most size outcomes, each kept for at most ttl. It starts no
// goroutine: expired entries are dropped when read or when the cache is
// full. It is safe for concurrent use.
type MemoryDedupStore struct {
	size int
	ttl  time.Duration
	now  func() time.Time // the clock; replaced in tests

	mu    sync.Mutex
	order *list.List // of *dedupEntry, most recently used first
	items map[string]*list.Element
}

type dedupEntry struct {
	key     string
	reply   *broker.Message
	expires time.Time
}

var _ DedupStore = (*MemoryDedupStore)(nil)

// NewMemoryDedupStore returns a store of at most size outcomes kept for
// ttl. Values below 1 select the defaults, DefaultDedupSize and
// DefaultDedupTTL.
func NewMemoryDedupStore(size int, ttl time.Duration) *MemoryDedupStore {
	if size < 1 {
		size = DefaultDedupSize
	}
	if ttl <= 0 {
		ttl = DefaultDedupTTL
	}
	return &MemoryDedupStore{size: size, ttl: ttl, now: time.Now, order: list.New(), items: make(map[string]*list.Element)}
}

// Load implements DedupStore. It returns a copy of the stored reply.
func (s *MemoryDedupStore) Load(_ context.Context, key string) (*broker.Message, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	el, ok := s.items[key]
	if !ok {
		return nil, false, nil
	}
	e := el.Value.(*dedupEntry)
	if !s.now().Before(e.expires) {
		s.order.Remove(el)
		delete(s.items, key)
		return nil, false, nil
	}
	s.order.MoveToFront(el)
	return cloneMessage(e.reply), true, nil
}

// Store implements DedupStore. It keeps a copy of reply.
func (s *MemoryDedupStore) Store(_ context.Context, key string, reply *broker.Message) error {
	e := &dedupEntry{key: key, reply: cloneMessage(reply), expires: s.now().Add(s.ttl)}
	s.mu.Lock()
	defer s.mu.Unlock()
	if el, ok := s.items[key]; ok {
		el.Value = e
		s.order.MoveToFront(el)
		return nil
	}
	s.items[key] = s.order.PushFront(e)
	for s.order.Len() > s.size {
		last := s.order.Back()
		s.order.Remove(last)
		delete(s.items, last.Value.(*dedupEntry).key)
	}
	return nil
}

// Len returns how many outcomes the store holds, expired ones not yet
// dropped included.
func (s *MemoryDedupStore) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.order.Len()
}
