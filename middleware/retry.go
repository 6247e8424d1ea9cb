package middleware

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"time"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/rpc"
)

// HeaderAttempt carries the attempt number (2, 3, ...) on the retries of a
// call; the first attempt does not carry it. Servers may read it for
// logging; deduplication uses Message.ID, which stays the same.
const HeaderAttempt = "mqrpc-attempt"

// Defaults of RetryPolicy.
const (
	DefaultMaxAttempts    = 3
	DefaultInitialBackoff = 100 * time.Millisecond
	DefaultMaxBackoff     = 5 * time.Second
	DefaultMultiplier     = 2.0
)

// RetryPolicy configures Retry. The zero value is a sensible policy: three
// attempts, exponential backoff from 100ms to 5s with full jitter,
// Unavailable and Aborted retried, only calls marked idempotent retried,
// and a default RetryBudget.
type RetryPolicy struct {
	// MaxAttempts is the most attempts per call, the first included.
	// Default 3 (DefaultMaxAttempts); 1 disables retries.
	MaxAttempts int
	// InitialBackoff is the cap of the wait before the first retry.
	// Default 100ms.
	InitialBackoff time.Duration
	// MaxBackoff caps the wait before any retry. Default 5s.
	MaxBackoff time.Duration
	// Multiplier grows the cap of the wait after each retry. Default 2;
	// values below 1 select the default.
	Multiplier float64
	// PerAttemptTimeout, when positive, bounds each attempt (its ctx and
	// its Message.Deadline, so the server gives up on it too). An attempt
	// that runs out of its own time is retried with DeadlineExceeded while
	// the call's deadline allows. Default 0: each attempt may use all the
	// time the call has left, and DeadlineExceeded is not retried.
	PerAttemptTimeout time.Duration
	// RetryableCodes are the status codes retried. Default: Unavailable
	// (no responders, lost connection, a server or circuit breaker
	// refusing) and Aborted. ResourceExhausted is not retried by default:
	// it means a server is shedding load, or a message is too large, and
	// retrying either makes things worse. Canceled is never retried.
	RetryableCodes []rpc.Code
	// Idempotent reports whether a call may execute more than once and so
	// may be retried after it possibly reached a server. Default: the
	// call's rpc.Idempotent option (CallInfo.Idempotent). Use
	// IdempotentMethods for a per-method list, or AlwaysIdempotent when
	// every server deduplicates (Dedup). A call that was certainly not
	// delivered (broker.ErrNoResponders, ErrCircuitOpen) is retried
	// whatever this says, within MaxAttempts and the budget.
	Idempotent func(info rpc.CallInfo) bool
	// Budget caps retries as a fraction of calls. Default: a budget of its
	// own per Retry middleware, NewRetryBudget(DefaultRetryRatio,
	// DefaultMinRetriesPerSecond) (10% of calls plus 10 per second).
	Budget *RetryBudget
	// OnRetry, if not nil, is called before each retry with the attempt
	// about to start (2 for the first retry), the error of the previous
	// one and the wait before it.
	OnRetry func(ctx context.Context, info rpc.CallInfo, attempt int, err error, wait time.Duration)
	// OnGiveUp, if not nil, is called when a retryable failure is not
	// retried because the budget is spent or the deadline leaves no time
	// for the wait. reason is "budget" or "deadline".
	OnGiveUp func(ctx context.Context, info rpc.CallInfo, err error, reason string)
}

// AlwaysIdempotent is a RetryPolicy.Idempotent that allows retrying every
// call. Use it only when the servers deduplicate requests by Message.ID
// (Dedup), which makes any call safe to repeat.
func AlwaysIdempotent(rpc.CallInfo) bool { return true }

// IdempotentMethods returns a RetryPolicy.Idempotent that allows retrying
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
// RetryPolicy.RetryableCodes), the call is idempotent or certainly was not
// delivered, attempts remain, the RetryBudget allows it, and the wait
// before it ends before the call's deadline: Retry never sleeps past the
// deadline, it returns the last error at once instead. The wait is
// exponential backoff with full jitter: uniformly random between zero and
// min(MaxBackoff, InitialBackoff*Multiplier^(retry-1)).
//
// Every attempt sends a copy of the request with the same Message.ID, so a
// server's Dedup middleware recognises the repeats; retries also carry
// HeaderAttempt. The error returned is the last attempt's.
//
// Place Retry inside Timeout (which bounds the whole call) and outside
// Routing and the circuit breaker, so each attempt is routed and checked
// afresh.
func Retry(p RetryPolicy) rpc.Middleware {
	if p.MaxAttempts == 0 {
		p.MaxAttempts = DefaultMaxAttempts
	}
	if p.InitialBackoff <= 0 {
		p.InitialBackoff = DefaultInitialBackoff
	}
	if p.MaxBackoff <= 0 {
		p.MaxBackoff = DefaultMaxBackoff
	}
	if p.MaxBackoff < p.InitialBackoff {
		p.MaxBackoff = p.InitialBackoff
	}
	if p.Multiplier < 1 {
		p.Multiplier = DefaultMultiplier
	}
	if p.RetryableCodes == nil {
		p.RetryableCodes = []rpc.Code{rpc.Unavailable, rpc.Aborted}
	}
	p.RetryableCodes = slices.Clone(p.RetryableCodes)
	if p.Idempotent == nil {
		p.Idempotent = func(info rpc.CallInfo) bool { return info.Idempotent }
	}
	if p.Budget == nil {
		p.Budget = NewRetryBudget(DefaultRetryRatio, DefaultMinRetriesPerSecond)
	}
	return func(next broker.Handler) broker.Handler {
		return &retrier{p: p, next: next}
	}
}

type retrier struct {
	p    RetryPolicy
	next broker.Handler
}

func (r *retrier) ServeMessage(ctx context.Context, req *broker.Message) (*broker.Message, error) {
	r.p.Budget.Deposit()
	info, _ := rpc.CallInfoFromContext(ctx)
	mayRepeat := r.p.Idempotent(info)
	if r.p.MaxAttempts <= 1 {
		return r.attempt(ctx, req, 1, false)
	}
	for attempt := 1; ; attempt++ {
		last := attempt >= r.p.MaxAttempts
		reply, err := r.attempt(ctx, req, attempt, !last)
		if err == nil || last || ctx.Err() != nil {
			return reply, err
		}
		if !r.retryable(err) || !(mayRepeat || notDelivered(err)) {
			return reply, err
		}
		wait := r.backoff(attempt)
		if d, ok := ctx.Deadline(); ok && !time.Now().Add(wait).Before(d) {
			r.giveUp(ctx, info, err, "deadline")
			return reply, err
		}
		if !r.p.Budget.TryWithdraw() {
			r.giveUp(ctx, info, err, "budget")
			return reply, err
		}
		if r.p.OnRetry != nil {
			r.p.OnRetry(ctx, info, attempt+1, err, wait)
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
	if r.p.OnGiveUp != nil {
		r.p.OnGiveUp(ctx, info, err, reason)
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
	if r.p.PerAttemptTimeout <= 0 {
		return r.next.ServeMessage(ctx, m)
	}
	actx, cancel := context.WithTimeout(ctx, r.p.PerAttemptTimeout)
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
	if code == rpc.DeadlineExceeded && r.p.PerAttemptTimeout > 0 {
		// A server refused the attempt because its (per-attempt) deadline
		// passed on the way; the call may still have time.
		return true
	}
	return slices.Contains(r.p.RetryableCodes, code)
}

// notDelivered reports whether err proves the request reached no server,
// which makes a retry safe for any call.
func notDelivered(err error) bool {
	return errors.Is(err, broker.ErrNoResponders) || errors.Is(err, ErrCircuitOpen)
}

// backoff returns the wait before retry number n (1 for the first retry):
// full jitter over an exponentially growing cap.
func (r *retrier) backoff(n int) time.Duration {
	c := float64(r.p.InitialBackoff)
	for i := 1; i < n && c < float64(r.p.MaxBackoff); i++ {
		c *= r.p.Multiplier
	}
	c = min(c, float64(r.p.MaxBackoff))
	return time.Duration(rand.Int64N(int64(c) + 1))
}
