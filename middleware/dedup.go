package middleware

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/rpc"
)

// HeaderReplayed is set to "true" on a successful reply that Dedup
// answered from its cache, or from the run of an identical request in
// flight, instead of running the method again.
const HeaderReplayed = "mqrpc-replayed"

// Defaults of Dedup's options and NewMemoryDedupStore.
const (
	// DefaultDedupSize is how many outcomes the in-memory store keeps.
	DefaultDedupSize = 10000
	// DefaultDedupTTL is how long a store keeps an outcome. It must
	// outlast the retries and redeliveries of a request: the longest call
	// deadline your clients use is a good value.
	DefaultDedupTTL = 5 * time.Minute
	// DefaultDedupLease is how long a claim on a key in a DedupClaimer
	// lasts without renewal: after a server process dies mid-request, a
	// repeat of the request runs once the lease has passed.
	DefaultDedupLease = 15 * time.Second
	// DefaultDedupStoreWait is how long Dedup waits for a store that
	// cannot be read or claimed before it fails the delivery: longer
	// than a replicated store's leader election (a JetStream R3 bucket:
	// 4-9 s).
	DefaultDedupStoreWait = 15 * time.Second
)

// ErrDedupLeaseLost is returned by DedupLease.Renew when the claim is no
// longer held: it expired, and may have been taken by another run.
var ErrDedupLeaseLost = errors.New("middleware: dedup claim lost")

// DedupStore keeps the outcome of requests by key, for Dedup. An outcome
// is the reply message (error replies included), or nil for a request that
// needed no reply (one-way).
//
// Implementations must be safe for concurrent use. Load must return a
// message the caller may keep and modify (a copy); Store must not retain
// reply, which the caller goes on to send, but copy it.
//
// A store shared by several server processes that only loads and stores
// answers a repeat of a finished request in any of them, but a repeat that
// reaches another process while the first run is still going runs again.
// A shared store that also implements DedupClaimer closes that gap.
type DedupStore interface {
	// Load returns the outcome stored for key, and whether there is one.
	Load(ctx context.Context, key string) (reply *broker.Message, ok bool, err error)
	// Store records the outcome of key.
	Store(ctx context.Context, key string, reply *broker.Message) error
}

// DedupClaimer is a DedupStore that claims keys atomically, so that
// server processes sharing it run a request once even when its repeats
// reach several of them at the same time. Dedup uses it instead of Load
// and Store when the store implements it: a run claims the key, renews the
// claim while the method runs, and commits the outcome in its place; a
// repeat that finds the key claimed waits for the outcome. A claim that is
// not renewed (its process died) expires after its lease, and a repeat
// then runs the request.
//
// The stores in middleware/dedupstore (Redis, NATS JetStream key-value)
// and MemoryDedupStore implement it, and the conformance suite in
// middleware/dedupstore/storetest checks an implementation.
type DedupClaimer interface {
	DedupStore
	// Claim returns the outcome stored for key (Done), or, when key has
	// no outcome and no live claim, claims it for lease and returns the
	// claim (Lease), or neither when another live claim holds key. Of any
	// number of callers racing for a key, in any processes, one gets the
	// claim. lease is positive.
	Claim(ctx context.Context, key string, lease time.Duration) (DedupClaim, error)
}

// DedupClaim is the answer of DedupClaimer.Claim: the caller's claim, the
// stored outcome, or neither (the key is claimed by another run).
type DedupClaim struct {
	// Lease is the caller's claim on the key; nil when it got none.
	Lease DedupLease
	// Done reports that the key has an outcome: Reply, a copy the caller
	// may keep, or nil for a request that needed no reply.
	Done  bool
	Reply *broker.Message
}

// DedupLease is one run's claim on a key. Its methods are not called
// concurrently with each other. Commit and Release get a context that is
// not cancelled with the request's (the request may have timed out while
// the method ran): the store bounds their time.
type DedupLease interface {
	// Renew extends the claim by its lease from now. It returns an error
	// wrapping ErrDedupLeaseLost when the claim is no longer held.
	Renew(ctx context.Context) error
	// Commit replaces the claim with the outcome reply (nil for one-way),
	// kept for the store's TTL. It stores the outcome even when the claim
	// was lost. It must not retain reply.
	Commit(ctx context.Context, reply *broker.Message) error
	// Release drops the claim without an outcome, so a repeat runs the
	// request at once. It does nothing when the claim is no longer held.
	Release(ctx context.Context) error
}

// DedupOption configures Dedup.
type DedupOption func(*dedupConfig)

type dedupConfig struct {
	Store          DedupStore
	Lease          time.Duration
	Key            func(req *broker.Message) string
	TransientCodes []rpc.Code
	OnDuplicate    func(ctx context.Context, req *broker.Message, inFlight bool)
	OnStoreError   func(ctx context.Context, req *broker.Message, err error)
	StoreWait      time.Duration
	storeWaitSet   bool
}

// WithDedupStore sets the store that keeps outcomes. Server processes that
// compete for the same requests share a store (see DedupClaimer). Default
// (and nil): NewMemoryDedupStore(DefaultDedupSize, DefaultDedupTTL), of its
// own per Dedup middleware.
func WithDedupStore(s DedupStore) DedupOption { return func(c *dedupConfig) { c.Store = s } }

// WithDedupLease sets how long a claim in a DedupClaimer holds a key
// without renewal: a run renews it every lease/3, and a repeat runs the
// request once lease has passed since the last renewal of a claim whose
// process died. Shorter leases recover sooner after a crash and cost more
// renewals. Default (and zero or less): DefaultDedupLease.
func WithDedupLease(lease time.Duration) DedupOption {
	return func(c *dedupConfig) { c.Lease = lease }
}

// WithDedupStoreWait sets how long a request waits, trying again with a
// backoff, for a store that cannot be read or claimed (unreachable, or
// electing a leader) before its delivery fails; the request's own
// deadline ends the wait sooner. A durable broker counts every failed
// delivery towards dead-lettering, so a store outage shorter than this
// costs a request time, not a delivery. It also bounds how long a run
// tries to store its outcome (whatever the request's deadline; the reply
// waits for it), since an outcome not stored lets a repeat run the method
// again once the claim's lease passed. Default: DefaultDedupStoreWait;
// zero or less gives up at the first error.
func WithDedupStoreWait(d time.Duration) DedupOption {
	return func(c *dedupConfig) { c.StoreWait, c.storeWaitSet = d, true }
}

// WithDedupKey sets the function that returns the deduplication key of a
// request; "" means the request is not deduplicated. Default (and nil):
// Message.ID, which a client keeps across the retries of one call. Message
// IDs are trusted: callers that can choose them can read each other's
// cached replies, so scope the key (for instance by a caller identity
// header) when callers do not trust each other.
func WithDedupKey(key func(req *broker.Message) string) DedupOption {
	return func(c *dedupConfig) { c.Key = key }
}

// WithTransientCodes sets the error codes whose replies are not stored, so
// a repeat runs the method again: they say the work was not done, or not
// finished, and a retry is meant to try again. Default (and no codes):
// Unavailable, ResourceExhausted, Aborted, DeadlineExceeded, Canceled.
// Delivery failures (errors that are not *rpc.Error) are never stored.
func WithTransientCodes(codes ...rpc.Code) DedupOption {
	return func(c *dedupConfig) { c.TransientCodes = slices.Clone(codes) }
}

// OnDuplicate sets a function called for each repeat that does not run
// the method: with inFlight true when it starts waiting for the first run
// still in flight (in this process or, with a DedupClaimer, in another),
// with inFlight false when it is answered from the store. It must not
// retain req. Default: none.
func OnDuplicate(fn func(ctx context.Context, req *broker.Message, inFlight bool)) DedupOption {
	return func(c *dedupConfig) { c.OnDuplicate = fn }
}

// OnStoreError sets a function called when storing an outcome (for the
// store wait, see WithDedupStoreWait), or renewing or releasing a claim,
// fails. The reply is still sent, but a repeat may
// run the method again (once the claim's lease passed). It must not retain
// req. Default: none.
func OnStoreError(fn func(ctx context.Context, req *broker.Message, err error)) DedupOption {
	return func(c *dedupConfig) { c.OnStoreError = fn }
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
//     DeadlineExceeded or Canceled) instead of running again: in one
//     process always, across processes with a shared DedupClaimer.
//   - When the store cannot be read or the key cannot be claimed (the
//     store is unreachable), the request is not run, rather than risk
//     running it twice: it tries again for WithDedupStoreWait, and then
//     the delivery fails (Unavailable wrapping broker.ErrDeliveryFailed):
//     a durable broker redelivers it later, a fast one drops it and its
//     caller sees its deadline pass. Answering with an Unavailable reply
//     instead would let a durable broker acknowledge, and so lose, an
//     accepted request.
//
// What is not covered: a server process that dies after the method's
// effect but before the outcome is stored (a store round trip) leaves a
// claim that expires after the lease, and a repeat then runs again; so
// does a repeat that comes after the store dropped the outcome (TTL,
// size). A method whose effect must happen exactly once commits that
// effect and its outcome in one transaction of its own.
//
// Place it inside a DeadlineGuard and outside limits, so a repeat is
// answered from the store without taking a slot. It is server middleware:
// a client chain with it panics when it is built.
func Dedup(opts ...DedupOption) rpc.Middleware {
	var cfg dedupConfig
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.Store == nil {
		cfg.Store = NewMemoryDedupStore(DefaultDedupSize, DefaultDedupTTL)
	}
	if cfg.Lease <= 0 {
		cfg.Lease = DefaultDedupLease
	}
	if !cfg.storeWaitSet {
		cfg.StoreWait = DefaultDedupStoreWait
	}
	if cfg.Key == nil {
		cfg.Key = func(req *broker.Message) string { return req.ID }
	}
	if len(cfg.TransientCodes) == 0 {
		cfg.TransientCodes = []rpc.Code{rpc.Unavailable, rpc.ResourceExhausted, rpc.Aborted, rpc.DeadlineExceeded, rpc.Canceled}
	}
	claimer, _ := cfg.Store.(DedupClaimer)
	return rpc.ServerOnly("middleware.Dedup", func(next broker.Handler) broker.Handler {
		return &deduper{cfg: cfg, claimer: claimer, next: next, flights: make(map[string]*flight)}
	})
}

type deduper struct {
	cfg     dedupConfig
	claimer DedupClaimer // cfg.Store, when it claims keys
	next    broker.Handler

	mu      sync.Mutex
	flights map[string]*flight // requests running now, by key
}

// flight is one run of a method that repeats may wait for.
type flight struct {
	done    chan struct{} // closed when reply and err are set
	waiters int           // guarded by deduper.mu
	reply   *broker.Message
	err     error
	renewer renewer // of its claim, with a DedupClaimer
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

	landed := false
	defer func() {
		if !landed {
			// The method panicked: free the key for waiters and
			// repeats, and let the panic go on to Recover.
			d.land(key, f, nil, rpc.Errorf(rpc.Aborted, "dedup: the run of the same request failed"))
		}
	}()
	var reply *broker.Message
	var err error
	if d.claimer != nil {
		reply, err = d.runClaimed(ctx, req, key, f)
	} else {
		reply, err = d.run(ctx, req, key)
	}
	landed = true
	d.land(key, f, reply, err)
	return reply, err
}

// land ends flight f of key with its outcome.
func (d *deduper) land(key string, f *flight, reply *broker.Message, err error) {
	d.mu.Lock()
	delete(d.flights, key)
	waiters := f.waiters
	d.mu.Unlock()
	if waiters > 0 {
		// The waiters get copies: the broker owns the reply we return.
		f.reply, f.err = cloneMessage(reply), err
	}
	close(f.done)
}

// run answers a request that is not in flight in this process, with a
// store that only loads and stores: from the store, or by running the
// method and storing its outcome.
func (d *deduper) run(ctx context.Context, req *broker.Message, key string) (*broker.Message, error) {
	var (
		stored *broker.Message
		ok     bool
		err    error
		out    storeOutage
	)
	for {
		stored, ok, err = d.cfg.Store.Load(ctx, key)
		if err == nil || !out.retry(ctx, d.cfg.StoreWait) {
			break
		}
	}
	if err != nil {
		return nil, rpc.Errorf(rpc.Unavailable, "dedup: load %q: %w: %w", key, err, broker.ErrDeliveryFailed)
	}
	if ok {
		if d.cfg.OnDuplicate != nil {
			d.cfg.OnDuplicate(ctx, req, false)
		}
		return replay(stored)
	}
	reply, err := d.next.ServeMessage(ctx, req)
	outcome, storable := d.outcome(reply, err)
	if !storable {
		return reply, err
	}
	d.commit(ctx, req, func(sctx context.Context) error { return d.cfg.Store.Store(sctx, key, outcome) })
	return reply, err
}

// commit stores an outcome with store, trying again for the store wait
// when it fails (a store electing a leader), with a ctx that is not
// cancelled with the request's: an outcome not stored lets a redelivery or
// a retry run the method again once the claim's lease passed.
func (d *deduper) commit(ctx context.Context, req *broker.Message, store func(context.Context) error) {
	sctx := context.WithoutCancel(ctx)
	var out storeOutage
	for {
		err := store(sctx)
		if err == nil {
			return
		}
		if !out.retry(sctx, d.cfg.StoreWait) {
			d.storeError(ctx, req, err)
			return
		}
	}
}

// Polling of a key claimed by another process: from claimPollMin,
// doubling up to claimPollMax.
const (
	claimPollMin = 5 * time.Millisecond
	claimPollMax = 250 * time.Millisecond
)

// Retries of a store that failed: from storeRetryMin, doubling up to
// storeRetryMax.
const (
	storeRetryMin = 50 * time.Millisecond
	storeRetryMax = time.Second
)

// storeOutage is one request's wait for a store that failed.
type storeOutage struct {
	since time.Time // of the first failure
	pause time.Duration
}

// retry reports whether to try the store again, after a pause, for a
// request whose store call just failed: while wait has not passed since
// the first failure and ctx lasts.
func (o *storeOutage) retry(ctx context.Context, wait time.Duration) bool {
	now := time.Now()
	if o.since.IsZero() {
		o.since, o.pause = now, storeRetryMin
	}
	if ctx.Err() != nil || now.Sub(o.since)+o.pause > wait {
		return false
	}
	t := time.NewTimer(o.pause)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
		return false
	}
	o.pause = min(2*o.pause, storeRetryMax)
	return true
}

// runClaimed answers a request that is not in flight in this process,
// with a store that claims keys: from the store, after waiting for a run
// in another process, or by claiming the key, running the method and
// committing its outcome.
func (d *deduper) runClaimed(ctx context.Context, req *broker.Message, key string, f *flight) (*broker.Message, error) {
	var lease DedupLease
	var out storeOutage
	poll, waiting := claimPollMin, false
	for lease == nil {
		c, err := d.claimer.Claim(ctx, key, d.cfg.Lease)
		switch {
		case err != nil && waiting && ctx.Err() != nil:
			return nil, gaveUp(ctx)
		case err != nil && out.retry(ctx, d.cfg.StoreWait):
			continue
		case err != nil:
			return nil, rpc.Errorf(rpc.Unavailable, "dedup: claim %q: %w: %w", key, err, broker.ErrDeliveryFailed)
		case c.Lease != nil:
			lease = c.Lease
			continue
		case c.Done:
			if d.cfg.OnDuplicate != nil {
				d.cfg.OnDuplicate(ctx, req, false)
			}
			return replay(c.Reply)
		}
		if !waiting {
			waiting = true
			if d.cfg.OnDuplicate != nil {
				d.cfg.OnDuplicate(ctx, req, true)
			}
		}
		t := time.NewTimer(poll)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, gaveUp(ctx)
		}
		poll = min(2*poll, claimPollMax)
	}

	// Commits and releases outlive the request's ctx: a request whose
	// deadline passed while the method ran still has its outcome stored,
	// or its claim released. The store bounds their time.
	sctx := context.WithoutCancel(ctx)
	r := &f.renewer
	r.start(sctx, d.cfg.Lease/3, lease, d, ctx, req)
	ran := false
	defer func() {
		if !ran { // the method panicked: a repeat may run it again
			r.stop()
			if rerr := lease.Release(sctx); rerr != nil {
				d.storeError(ctx, req, rerr)
			}
		}
	}()
	reply, err := d.next.ServeMessage(ctx, req)
	ran = true
	r.stop()

	if outcome, storable := d.outcome(reply, err); storable {
		d.commit(ctx, req, func(sctx context.Context) error { return lease.Commit(sctx, outcome) })
	} else if rerr := lease.Release(sctx); rerr != nil {
		d.storeError(ctx, req, rerr)
	}
	return reply, err
}

// outcome returns what to store for a run that returned reply and err,
// and false when the run is not to be stored (a repeat runs again).
func (d *deduper) outcome(reply *broker.Message, err error) (*broker.Message, bool) {
	if err == nil {
		return reply, true
	}
	var e *rpc.Error
	if errors.As(err, &e) && !slices.Contains(d.cfg.TransientCodes, e.Code()) {
		return rpc.ErrorReply(err), true
	}
	return nil, false
}

func (d *deduper) storeError(ctx context.Context, req *broker.Message, err error) {
	if d.cfg.OnStoreError != nil {
		d.cfg.OnStoreError(ctx, req, err)
	}
}

func gaveUp(ctx context.Context) error {
	return rpc.NewError(rpc.CodeOf(ctx.Err()), errors.New("dedup: gave up waiting for the same request in flight"))
}

// renewer renews a lease every interval while the method runs. It starts
// no goroutine until the first renewal is due, so a method faster than
// interval costs one timer.
type renewer struct {
	ctx      context.Context // not cancelled with the request
	interval time.Duration
	lease    DedupLease
	timer    *time.Timer
	// Where renewal errors go: d.storeError(reqCtx, req, err).
	d      *deduper
	reqCtx context.Context
	req    *broker.Message

	mu      sync.Mutex // held during a renewal, so stop waits for it
	stopped bool
}

// start starts the renewals; ctx is not cancelled with the request.
func (r *renewer) start(ctx context.Context, interval time.Duration, lease DedupLease, d *deduper, reqCtx context.Context, req *broker.Message) {
	r.ctx, r.interval, r.lease = ctx, interval, lease
	r.d, r.reqCtx, r.req = d, reqCtx, req
	r.timer = time.AfterFunc(interval, r.renew)
}

func (r *renewer) renew() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stopped {
		return
	}
	ctx, cancel := context.WithTimeout(r.ctx, r.interval)
	err := r.lease.Renew(ctx)
	cancel()
	if err != nil {
		r.d.storeError(r.reqCtx, r.req, fmt.Errorf("dedup: renew claim: %w", err))
		if errors.Is(err, ErrDedupLeaseLost) {
			return
		}
	}
	r.timer.Reset(r.interval)
}

// stop ends the renewals; a renewal under way finishes first.
func (r *renewer) stop() {
	r.mu.Lock()
	r.stopped = true
	r.mu.Unlock()
	r.timer.Stop()
}

func (d *deduper) wait(ctx context.Context, f *flight) (*broker.Message, error) {
	select {
	case <-f.done:
	case <-ctx.Done():
		return nil, gaveUp(ctx)
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
// at most size outcomes and claims, each outcome kept for at most ttl. It
// starts no goroutine: expired entries are dropped when read or when the
// cache is full. It is safe for concurrent use, and a DedupClaimer for
// the Dedup middlewares of one process that share it.
type MemoryDedupStore struct {
	ttl time.Duration
	now func() time.Time // the clock; replaced in tests

	mu     sync.Mutex
	cache  *simplelru.LRU[string, memEntry] // not expirable.LRU: its cleanup goroutine never ends (TestDedupExactlyOnce's goleak check)
	claims uint64                           // claim tokens handed out
}

// memEntry is an outcome (token 0) or a claim.
type memEntry struct {
	reply   *broker.Message
	token   uint64
	expires time.Time
}

var (
	_ DedupStore   = (*MemoryDedupStore)(nil)
	_ DedupClaimer = (*MemoryDedupStore)(nil)
)

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
	cache, _ := simplelru.NewLRU[string, memEntry](size, nil) // fails only for size < 1
	return &MemoryDedupStore{ttl: ttl, now: time.Now, cache: cache}
}

// get returns the live entry of key. s.mu is held.
func (s *MemoryDedupStore) get(key string) (memEntry, bool) {
	e, ok := s.cache.Get(key)
	if ok && !s.now().Before(e.expires) {
		s.cache.Remove(key)
		return memEntry{}, false
	}
	return e, ok
}

// Load implements DedupStore. It returns a copy of the stored reply.
func (s *MemoryDedupStore) Load(_ context.Context, key string) (*broker.Message, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.get(key)
	if !ok || e.token != 0 {
		return nil, false, nil
	}
	return cloneMessage(e.reply), true, nil
}

// Store implements DedupStore. It keeps a copy of reply.
func (s *MemoryDedupStore) Store(_ context.Context, key string, reply *broker.Message) error {
	e := memEntry{reply: cloneMessage(reply), expires: s.now().Add(s.ttl)}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cache.Add(key, e)
	return nil
}

// Claim implements DedupClaimer.
func (s *MemoryDedupStore) Claim(_ context.Context, key string, lease time.Duration) (DedupClaim, error) {
	if lease <= 0 {
		return DedupClaim{}, fmt.Errorf("middleware: dedup claim of %q: lease %v is not positive", key, lease)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.get(key); ok {
		if e.token != 0 {
			return DedupClaim{}, nil
		}
		return DedupClaim{Done: true, Reply: cloneMessage(e.reply)}, nil
	}
	s.claims++
	s.cache.Add(key, memEntry{token: s.claims, expires: s.now().Add(lease)})
	return DedupClaim{Lease: &memLease{s: s, key: key, token: s.claims, lease: lease}}, nil
}

// Len returns how many outcomes and claims the store holds, expired ones
// not yet dropped included.
func (s *MemoryDedupStore) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cache.Len()
}

type memLease struct {
	s     *MemoryDedupStore
	key   string
	token uint64
	lease time.Duration
}

// held returns whether the lease still holds its key. s.mu is held.
func (l *memLease) held() bool {
	e, ok := l.s.get(l.key)
	return ok && e.token == l.token
}

func (l *memLease) Renew(context.Context) error {
	l.s.mu.Lock()
	defer l.s.mu.Unlock()
	if !l.held() {
		return fmt.Errorf("middleware: dedup claim of %q: %w", l.key, ErrDedupLeaseLost)
	}
	l.s.cache.Add(l.key, memEntry{token: l.token, expires: l.s.now().Add(l.lease)})
	return nil
}

func (l *memLease) Commit(ctx context.Context, reply *broker.Message) error {
	return l.s.Store(ctx, l.key, reply)
}

func (l *memLease) Release(context.Context) error {
	l.s.mu.Lock()
	defer l.s.mu.Unlock()
	if l.held() {
		l.s.cache.Remove(l.key)
	}
	return nil
}
