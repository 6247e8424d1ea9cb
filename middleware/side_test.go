package middleware_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"golang.org/x/time/rate"

	"github.com/mqrpc/mqrpc/broker/memory"
	"github.com/mqrpc/mqrpc/middleware"
	"github.com/mqrpc/mqrpc/rpc"
)

// Each one-sided middleware refuses the other side when the chain is
// built; the two-sided ones fit both.
func TestMiddlewareSides(t *testing.T) {
	b := memory.New()
	defer b.Close()
	signer := middleware.NewHMACSigner("k", []byte("secret"))
	client := map[string]rpc.Middleware{
		"Retry":          middleware.Retry(),
		"Timeout":        middleware.Timeout(time.Second),
		"Routing":        middleware.Routing(),
		"CircuitBreaker": middleware.NewCircuitBreaker().Middleware,
		"HMAC client":    signer.Client(),
	}
	server := map[string]rpc.Middleware{
		"ConcurrencyLimit": middleware.ConcurrencyLimit(1),
		"RateLimit":        middleware.RateLimit(rate.NewLimiter(1, 1)),
		"Authorize":        middleware.Authorize(middleware.AllowCallers("x-caller", nil)),
		"ServerTimeout":    middleware.ServerTimeout(time.Second),
		"DeadlineGuard":    (&middleware.DeadlineGuard{}).Middleware,
		"HMAC server":      signer.Server(),
		"Dedup":            middleware.Dedup(),
	}
	both := map[string]rpc.Middleware{
		"Recover": middleware.Recover(),
		"Logging": middleware.Logging(nil),
		"Audit":   middleware.Audit(nil),
	}
	for name, mw := range client {
		assert.NotPanics(t, func() { rpc.NewClient(b, rpc.WithClientMiddleware(mw)) }, name)
		assert.Panics(t, func() { rpc.NewServer(rpc.WithServerMiddleware(mw)) }, name)
	}
	for name, mw := range server {
		assert.NotPanics(t, func() { rpc.NewServer(rpc.WithServerMiddleware(mw)) }, name)
		assert.Panics(t, func() { rpc.NewClient(b, rpc.WithClientMiddleware(mw)) }, name)
	}
	for name, mw := range both {
		assert.NotPanics(t, func() { rpc.NewClient(b, rpc.WithClientMiddleware(mw)) }, name)
		assert.NotPanics(t, func() { rpc.NewServer(rpc.WithServerMiddleware(mw)) }, name)
	}
}
