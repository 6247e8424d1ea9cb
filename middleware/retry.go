package middleware

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/cenkalti/backoff/v5"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/rpc"
)

// HeaderAttempt carries the attempt number (2, 3, ...) on the retries of a
// call; the first attempt does not carry it. Servers may read it for
// logging; deduplication uses Message.ID, which stays the same.
const HeaderAttempt = "mqrpc-attempt"

// Defaults of Retry.
const (
	DefaultMaxAttempts    = 3
	DefaultInitialBackoff = 100 * time.Millisecond
	DefaultMaxBackoff     = 5 * time.Second
	DefaultMultiplier     = 2.0
)

// retryPolicy is what the RetryOptions set.
type retryPolicy struct {
	maxAttempts       int
	initialBackoff    time.Duration
	maxBackoff        time.Duration
	multiplier        float64
	perAttemptTimeout time.Duration
	retryableCodes    []rpc.Code
	idempotent        func(info rpc.CallInfo) bool
	budget            *RetryBudget
	onRetry           func(ctx context.Context, info rpc.CallInfo, attempt int, err error, wait time.Duration)
	onGiveUp          func(ctx context.Context, info rpc.CallInfo, err error, reason string)
}

// RetryOption configures Retry.
type RetryOption func(*retryPolicy)

// WithMaxAttempts sets the most attempts per call, the first included.
// Default 3 (DefaultMaxAttempts); 1 disables retries; 0 or less selects
// the default.
func WithMaxAttempts(n int) RetryOption { return func(p *retryPolicy) { p.maxAttempts = n } }

// WithBackoff sets the exponential backoff: initial caps the wait before
// the first retry, each retry multiplies the cap by multiplier, and max
// caps every wait. Defaults 100ms, 5s and 2; a value of zero or less (a
// multiplier below 1) selects its default.
func WithBackoff(initial, max time.Duration, multiplier float64) RetryOption {
	return func(p *retryPolicy) { p.initialBackoff, p.maxBackoff, p.multiplier = initial, max, multiplier }
}

// WithPerAttemptTimeout bounds each attempt to d (its ctx and its
// Message.Deadline, so the server gives up on it too). An attempt that
// runs out of its own time is retried with DeadlineExceeded while the
// call's deadline allows. Default 0: each attempt may use all the time the
// call has left, and DeadlineExceeded is not retried.
func WithPerAttemptTimeout(d time.Duration) RetryOption {
	return func(p *retryPolicy) { p.perAttemptTimeout = d }
}

// WithRetryableCodes sets the status codes retried. Default: Unavailable
// (no responders, lost connection, a server or circuit breaker refusing)
// and Aborted. ResourceExhausted is not retried by default: it means a
// server is shedding load, or a message is too large, and retrying either
// makes things worse. Canceled is never retried.
func WithRetryableCodes(codes ...rpc.Code) RetryOption {
	return func(p *retryPolicy) { p.retryableCodes = slices.Clone(codes) }
}

// WithIdempotent sets what decides whether a call may execute more than
// once and so may be retried after it possibly reached a server. Default:
// the call's rpc.Idempotent option (CallInfo.Idempotent); nil selects the
// default. Use IdempotentMethods for a per-method list, or
// AlwaysIdempotent when every server deduplicates (Dedup). A call that
// was certainly not delivered (broker.ErrNoResponders, ErrCircuitOpen) is
// retried whatever fn says, within the attempts and the budget.
func WithIdempotent(fn func(info rpc.CallInfo) bool) RetryOption {
	return func(p *retryPolicy) { p.idempotent = fn }
}

// WithRetryBudget caps retries as a fraction of calls with b, which may be
// shared by several Retry middlewares. Default: a budget of its own per
// Retry middleware, NewRetryBudget(DefaultRetryRatio,
// DefaultMinRetriesPerSecond) (10% of calls plus 10 per second); nil
// selects the default.
func WithRetryBudget(b *RetryBudget) RetryOption { return func(p *retryPolicy) { p.budget = b } }

// OnRetry sets a function called before each retry with the attempt about
// to start (2 for the first retry), the error of the previous one and the
// wait before it. Default: none.
func OnRetry(fn func(ctx context.Context, info rpc.CallInfo, attempt int, err error, wait time.Duration)) RetryOption {
	return func(p *retryPolicy) { p.onRetry = fn }
}

// OnGiveUp sets a function called when a retryable failure is not retried
// because the budget is spent or the deadline leaves no time for the
// wait; reason is "budget" or "deadline". Default: none.
func OnGiveUp(fn func(ctx context.Context, info rpc.CallInfo, err error, reason string)) RetryOption {
	return func(p *retryPolicy) { p.onGiveUp = fn }
}

// AlwaysIdempotent is a WithIdempotent function that allows retrying every
// call. Use it only when the servers deduplicate requests by Message.ID
// (Dedup), which makes any call safe to repeat.
func AlwaysIdempotent(rpc.CallInfo) bool { return true }

// IdempotentMethods returns a WithIdempotent function that allows retrying
// the listed methods, named "Service.Method", and the calls marked with
// rpc.Idempotent.
func IdempotentMethods(names ...string) func(rpc.CallInfo) bool {
	set := make(map[string]struct{}, len(names))
	for _, n := range names {
		set[n] = struct{}{}
	}
	return func(info rpc.CallInfo) bool {
		if info.Idempotent {
			return true
		}
		_, ok := set[info.Service+"."+info.Method]
		return ok
	}
}

// Retry returns client middleware that repeats failed attempts of a call.
//
// An attempt is retried when its status code is retryable (see
// WithRetryableCodes), the call is idempotent or certainly was not
// delivered, attempts remain, the RetryBudget allows it, and the wait
// before it ends before the call's deadline: Retry never sleeps past the
// deadline, it returns the last error at once instead. The wait is
// exponential backoff with full jitter: uniformly random between zero and
// min(max, initial*multiplier^(retry-1)) (WithBackoff).
//
// Every attempt sends a copy of the request with the same Message.ID, so a
// server's Dedup middleware recognises the repeats; retries also carry
// HeaderAttempt. The error returned is the last attempt's.
//
// Place Retry inside Timeout (which bounds the whole call) and outside
// Routing and the circuit breaker, so each attempt is routed and checked
// afresh.
//
// Retry is client middleware: a server chain with it panics when it is
// built.
func Retry(opts ...RetryOption) rpc.Middleware {
	var p retryPolicy
	for _, o := range opts {
		o(&p)
	}
	if p.maxAttempts <= 0 {
		p.maxAttempts = DefaultMaxAttempts
	}
	if p.initialBackoff <= 0 {
		p.initialBackoff = DefaultInitialBackoff
	}
	if p.maxBackoff <= 0 {
		p.maxBackoff = DefaultMaxBackoff
	}
	if p.maxBackoff < p.initialBackoff {
		p.maxBackoff = p.initialBackoff
	}
	if p.multiplier < 1 {
		p.multiplier = DefaultMultiplier
	}
	if p.retryableCodes == nil {
		p.retryableCodes = []rpc.Code{rpc.Unavailable, rpc.Aborted}
	}
	if p.idempotent == nil {
		p.idempotent = func(info rpc.CallInfo) bool { return info.Idempotent }
	}
	if p.budget == nil {
		p.budget = NewRetryBudget(DefaultRetryRatio, DefaultMinRetriesPerSecond)
	}
	return rpc.ClientOnly("middleware.Retry", func(next broker.Handler) broker.Handler {
		return &retrier{p: p, next: next}
	})
}

type retrier struct {
	p    retryPolicy
	next broker.Handler
}

func (r *retrier) ServeMessage(ctx context.Context, req *broker.Message) (*broker.Message, error) {
	r.p.budget.Deposit()
	info, _ := rpc.CallInfoFromContext(ctx)
	mayRepeat := r.p.idempotent(info)
	if r.p.maxAttempts <= 1 {
		return r.attempt(ctx, req, 1, false)
	}
	var bo *backoff.ExponentialBackOff // made at the first retry
	for attempt := 1; ; attempt++ {
		last := attempt >= r.p.maxAttempts
		reply, err := r.attempt(ctx, req, attempt, !last)
		if err == nil || last || ctx.Err() != nil {
			return reply, err
		}
		if !r.retryable(err) || !(mayRepeat || notDelivered(err)) {
			return reply, err
		}
		if bo == nil {
			bo = r.newBackoff()
		}
		wait := bo.NextBackOff()
		if d, ok := ctx.Deadline(); ok && !time.Now().Add(wait).Before(d) {
			r.giveUp(ctx, info, err, "deadline")
			return reply, err
		}
		if !r.p.budget.TryWithdraw() {
			r.giveUp(ctx, info, err, "budget")
			return reply, err
		}
		if r.p.onRetry != nil {
			r.p.onRetry(ctx, info, attempt+1, err, wait)
		}
		if wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return reply, err
			}
		}
	}
}

func (r *retrier) giveUp(ctx context.Context, info rpc.CallInfo, err error, reason string) {
	if r.p.onGiveUp != nil {
		r.p.onGiveUp(ctx, info, err, reason)
	}
}

// attempt runs one attempt. When another may follow, it sends a copy of
// req, because the broker takes ownership of the message it sends.
func (r *retrier) attempt(ctx context.Context, req *broker.Message, n int, copyReq bool) (*broker.Message, error) {
	m := req
	if copyReq || n > 1 {
		c := *req
		c.Header = req.Header.Clone()
		c.Body = bytes.Clone(req.Body)
		m = &c
	}
	if n > 1 {
		m.SetHeader(HeaderAttempt, strconv.Itoa(n))
	}
	if r.p.perAttemptTimeout <= 0 {
		return r.next.ServeMessage(ctx, m)
	}
	actx, cancel := context.WithTimeout(ctx, r.p.perAttemptTimeout)
	defer cancel()
	if d, _ := actx.Deadline(); m.Deadline.IsZero() || d.Before(m.Deadline) {
		m.Deadline = d
	}
	reply, err := r.next.ServeMessage(actx, m)
	if err != nil && actx.Err() != nil && ctx.Err() == nil {
		// The attempt ran out of its own time, not the call's: mark it so
		// the loop retries it.
		err = &attemptTimeoutError{err: err}
	}
	return reply, err
}

// attemptTimeoutError marks the failure of an attempt that hit
// PerAttemptTimeout. It unwraps to the original error, so the caller sees
// the same codes and sentinels.
type attemptTimeoutError struct{ err error }

func (e *attemptTimeoutError) Error() string {
	return fmt.Sprintf("attempt timed out: %v", e.err)
}
func (e *attemptTimeoutError) Unwrap() error { return e.err }

func (r *retrier) retryable(err error) bool {
	var ate *attemptTimeoutError
	if errors.As(err, &ate) {
		return true
	}
	code := rpc.CodeOf(err)
	if code == rpc.Canceled {
		return false
	}
	if code == rpc.DeadlineExceeded && r.p.perAttemptTimeout > 0 {
		// A server refused the attempt because its (per-attempt) deadline
		// passed on the way; the call may still have time.
		return true
	}
	return slices.Contains(r.p.retryableCodes, code)
}

// notDelivered reports whether err proves the request reached no server,
// which makes a retry safe for any call.
func notDelivered(err error) bool {
	return errors.Is(err, broker.ErrNoResponders) || errors.Is(err, ErrCircuitOpen)
}

// newBackoff returns the backoff of one call: full jitter over an
// exponentially growing cap. cenkalti/backoff draws uniformly from
// [cur*(1-f), cur*(1+f)]; with f = 1 and every interval halved that is
// [0, cap], the cap growing from initial by multiplier up to max.
func (r *retrier) newBackoff() *backoff.ExponentialBackOff {
	b := &backoff.ExponentialBackOff{
		InitialInterval:     r.p.initialBackoff / 2,
		RandomizationFactor: 1,
		Multiplier:          r.p.multiplier,
		MaxInterval:         r.p.maxBackoff / 2,
	}
	b.Reset()
	return b
}
