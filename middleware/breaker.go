package middleware

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/sony/gobreaker/v2"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/rpc"
)

// ErrCircuitOpen is returned, in an Unavailable *rpc.Error, when a
// CircuitBreaker refuses a call without sending it. Retry treats such a
// call as not delivered.
var ErrCircuitOpen = errors.New("middleware: circuit open")

// BreakerCounts are the request counts a breaker keeps in its current
// state, passed to the WithTripWhen function.
type BreakerCounts = gobreaker.Counts

// BreakerState is the state of a circuit: BreakerClosed (calls pass),
// BreakerOpen (calls are refused) or BreakerHalfOpen (a few probe calls
// pass to test the destination).
type BreakerState = gobreaker.State

// The states of a circuit.
const (
	BreakerClosed   = gobreaker.StateClosed
	BreakerHalfOpen = gobreaker.StateHalfOpen
	BreakerOpen     = gobreaker.StateOpen
)

// Defaults of NewCircuitBreaker.
const (
	// DefaultBreakerFailures is how many consecutive failures open a
	// circuit.
	DefaultBreakerFailures = 5
	// DefaultBreakerTimeout is how long a circuit stays open before it
	// lets a probe through.
	DefaultBreakerTimeout = 10 * time.Second
)

// breakerConfig is what the BreakerOptions set.
type breakerConfig struct {
	maxRequests   uint32
	interval      time.Duration
	timeout       time.Duration
	readyToTrip   func(counts BreakerCounts) bool
	failureCodes  []rpc.Code
	onStateChange func(subject string, from, to BreakerState)
}

// BreakerOption configures NewCircuitBreaker. Without options a circuit
// opens after 5 consecutive failures, stays open 10s, then lets one probe
// call through.
type BreakerOption func(*breakerConfig)

// WithProbes sets how many probe calls pass while a circuit is half-open;
// that many successes close it. Default 1.
func WithProbes(n uint32) BreakerOption { return func(c *breakerConfig) { c.maxRequests = n } }

// WithCountInterval sets how often a closed circuit clears its counts.
// Default 0: never, only a success resets the consecutive failures.
func WithCountInterval(d time.Duration) BreakerOption {
	return func(c *breakerConfig) { c.interval = d }
}

// WithOpenTimeout sets how long a circuit stays open before it turns
// half-open. Default 10s (DefaultBreakerTimeout); 0 or less selects it.
func WithOpenTimeout(d time.Duration) BreakerOption { return func(c *breakerConfig) { c.timeout = d } }

// WithTripWhen sets what decides, after each failure of a closed circuit,
// whether it opens. Default: DefaultBreakerFailures consecutive failures;
// nil selects it.
func WithTripWhen(fn func(counts BreakerCounts) bool) BreakerOption {
	return func(c *breakerConfig) { c.readyToTrip = fn }
}

// WithFailureCodes sets the codes that count as a failure of the
// destination. Default: Unavailable (no responders, lost connection, a
// server refusing) and DeadlineExceeded (no reply in time). Other errors,
// application errors included, count as successes: the destination
// answered. Canceled (the caller gave up) and local errors about a message
// too large are not counted at all.
func WithFailureCodes(codes ...rpc.Code) BreakerOption {
	return func(c *breakerConfig) { c.failureCodes = slices.Clone(codes) }
}

// OnStateChange sets a function called when the circuit of subject
// changes state. It runs on the calling goroutine, with the breaker's lock
// held: it must not call the breaker. Default: none.
func OnStateChange(fn func(subject string, from, to BreakerState)) BreakerOption {
	return func(c *breakerConfig) { c.onStateChange = fn }
}

// CircuitBreaker is client middleware with one circuit per destination
// subject (after Routing, when it runs inside it): when calls to a subject
// keep failing, its circuit opens and calls to it are answered at once
// with Unavailable (wrapping ErrCircuitOpen) instead of waiting for a
// timeout, until the circuit lets a probe through and it succeeds. Other
// subjects are not affected.
//
// It is built on github.com/sony/gobreaker/v2. Circuits are made on first
// use and kept as long as the CircuitBreaker, so the subjects should be a
// bounded set (services and shards, not one per call). A CircuitBreaker is
// safe for concurrent use; install its Middleware on clients.
type CircuitBreaker struct {
	// Middleware is the breaker as client middleware: a server chain with
	// it panics when it is built.
	Middleware rpc.Middleware

	settings gobreaker.Settings

	mu       sync.Mutex
	circuits map[string]*gobreaker.TwoStepCircuitBreaker[struct{}]
}

// NewCircuitBreaker returns a CircuitBreaker configured by opts.
func NewCircuitBreaker(opts ...BreakerOption) *CircuitBreaker {
	var cfg breakerConfig
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.timeout <= 0 {
		cfg.timeout = DefaultBreakerTimeout
	}
	if cfg.readyToTrip == nil {
		cfg.readyToTrip = func(c BreakerCounts) bool { return c.ConsecutiveFailures >= DefaultBreakerFailures }
	}
	if cfg.failureCodes == nil {
		cfg.failureCodes = []rpc.Code{rpc.Unavailable, rpc.DeadlineExceeded}
	}
	failures := cfg.failureCodes
	b := &CircuitBreaker{
		settings: gobreaker.Settings{
			MaxRequests:   cfg.maxRequests,
			Interval:      cfg.interval,
			Timeout:       cfg.timeout,
			ReadyToTrip:   cfg.readyToTrip,
			OnStateChange: cfg.onStateChange,
			IsSuccessful: func(err error) bool {
				return !slices.Contains(failures, rpc.CodeOf(err))
			},
			IsExcluded: func(err error) bool {
				return errors.Is(err, context.Canceled) || rpc.CodeOf(err) == rpc.Canceled ||
					errors.Is(err, broker.ErrMessageTooLarge)
			},
		},
		circuits: make(map[string]*gobreaker.TwoStepCircuitBreaker[struct{}]),
	}
	b.Middleware = rpc.ClientOnly("middleware.CircuitBreaker", b.wrap)
	return b
}

func (b *CircuitBreaker) circuit(subject string) *gobreaker.TwoStepCircuitBreaker[struct{}] {
	b.mu.Lock()
	defer b.mu.Unlock()
	c := b.circuits[subject]
	if c == nil {
		s := b.settings
		s.Name = subject
		c = gobreaker.NewTwoStepCircuitBreaker[struct{}](s)
		b.circuits[subject] = c
	}
	return c
}

// State returns the state of the circuit of subject; a subject never
// called is BreakerClosed.
func (b *CircuitBreaker) State(subject string) BreakerState {
	b.mu.Lock()
	c := b.circuits[subject]
	b.mu.Unlock()
	if c == nil {
		return BreakerClosed
	}
	return c.State()
}

func (b *CircuitBreaker) wrap(next broker.Handler) broker.Handler {
	return broker.HandlerFunc(func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
		subject := req.Subject
		done, err := b.circuit(subject).Allow()
		if err != nil {
			return nil, rpc.NewError(rpc.Unavailable, fmt.Errorf("%s: %w (%w)", subject, ErrCircuitOpen, err))
		}
		reported := false
		defer func() {
			if !reported {
				// next panicked: count it, or a half-open circuit would
				// wait forever for its probe.
				done(rpc.Errorf(rpc.Unavailable, "panic"))
			}
		}()
		reply, err := next.ServeMessage(ctx, req)
		reported = true
		done(err)
		return reply, err
	})
}
