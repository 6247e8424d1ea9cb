package middleware

import (
	"math"
	"sync"

	"golang.org/x/time/rate"
)

// Defaults of NewRetryBudget, used by Retry without WithRetryBudget.
const (
	// DefaultRetryRatio lets retries add at most 10% to the calls made.
	DefaultRetryRatio = 0.1
	// DefaultMinRetriesPerSecond keeps a few retries possible for clients
	// that make too few calls to earn them.
	DefaultMinRetriesPerSecond = 10
)

// RetryBudget caps retries to a fraction of calls, so that during an
// outage, when every call fails, retries add at most that fraction to the
// load instead of multiplying it by the number of attempts.
//
// It is a token bucket: every call deposits ratio tokens, every retry
// withdraws one. The balance is capped at the tokens 1000 calls earn
// (ratio*1000), so a long healthy period does not save up a burst of
// retries for the next outage. On top of that, minPerSecond retries per
// second are always allowed (a rate.Limiter with that rate and burst), so a
// client with little traffic can still retry.
//
// A RetryBudget is safe for concurrent use. Share one between several Retry
// middlewares to give them a common budget.
type RetryBudget struct {
	unlimited bool
	// Tokens are counted in thousandths, in integers, so that ten
	// deposits of 0.1 make exactly one retry.
	perCall int64
	max     int64
	min     *rate.Limiter // nil: no minimum

	mu      sync.Mutex
	balance int64
}

// budgetUnit is one retry, in thousandths of a token.
const budgetUnit = 1000

// NewRetryBudget returns a budget allowing retries of ratio times the calls
// (0.1 = 10%; precision 0.001) plus minPerSecond retries per second. A ratio below zero is
// taken as zero, and so is a minPerSecond below zero.
func NewRetryBudget(ratio, minPerSecond float64) *RetryBudget {
	perCall := int64(math.Round(math.Max(ratio, 0) * budgetUnit))
	b := &RetryBudget{perCall: perCall, max: perCall * 1000}
	if minPerSecond > 0 {
		b.min = rate.NewLimiter(rate.Limit(minPerSecond), int(math.Ceil(minPerSecond)))
	}
	return b
}

// UnlimitedRetryBudget returns a budget that allows every retry. Use it
// only where retries cannot overload a server (tests, or a policy with a
// small MaxAttempts and a server that sheds load by itself).
func UnlimitedRetryBudget() *RetryBudget { return &RetryBudget{unlimited: true} }

// Deposit records one call, earning ratio tokens.
func (b *RetryBudget) Deposit() {
	if b.unlimited || b.perCall == 0 {
		return
	}
	b.mu.Lock()
	b.balance = min(b.balance+b.perCall, b.max)
	b.mu.Unlock()
}

// TryWithdraw takes one token for a retry and reports whether the retry is
// allowed. A false result means the budget is spent: the caller should
// fail instead of retrying.
func (b *RetryBudget) TryWithdraw() bool {
	if b.unlimited {
		return true
	}
	b.mu.Lock()
	if b.balance >= budgetUnit {
		b.balance -= budgetUnit
		b.mu.Unlock()
		return true
	}
	b.mu.Unlock()
	return b.min != nil && b.min.Allow()
}
