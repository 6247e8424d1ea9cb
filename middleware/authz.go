package middleware

import (
	"context"
	"errors"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/rpc"
)

// AuthorizeFunc decides whether a request may run. It returns nil to allow
// it, or an error to refuse it: an *rpc.Error keeps its code, any other
// error is answered with PermissionDenied. It must be safe for concurrent
// use.
type AuthorizeFunc func(ctx context.Context, method string, req *broker.Message) error

// Authorize is a server middleware that asks fn before each request; a
// refused request never reaches the method. Put it after signature
// verification, so it judges authenticated headers.
func Authorize(fn AuthorizeFunc) rpc.Middleware {
	return rpc.ServerOnly("middleware.Authorize", func(next broker.Handler) broker.Handler {
		return broker.HandlerFunc(func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
			if err := fn(ctx, req.Header.Get(broker.HeaderMethod), req); err != nil {
				var rerr *rpc.Error
				if errors.As(err, &rerr) {
					return nil, rerr
				}
				return nil, rpc.NewError(rpc.PermissionDenied, err)
			}
			return next.ServeMessage(ctx, req)
		})
	})
}

// AllowCallers returns an AuthorizeFunc that allows a method only to the
// callers listed for it, the caller named by the header callerHeader (for
// example "mqrpc-caller", set by the client and protected by HMAC signing
// or the broker's own authentication). Methods not in acl are refused;
// "*" as a method name lists callers allowed everything.
func AllowCallers(callerHeader string, acl map[string][]string) AuthorizeFunc {
	allowed := make(map[string]map[string]bool, len(acl))
	for m, callers := range acl {
		set := make(map[string]bool, len(callers))
		for _, c := range callers {
			set[c] = true
		}
		allowed[m] = set
	}
	return func(_ context.Context, method string, req *broker.Message) error {
		caller := req.Header.Get(callerHeader)
		if caller == "" {
			return rpc.Errorf(rpc.Unauthenticated, "no caller identity in header %s", callerHeader)
		}
		if allowed[method][caller] || allowed["*"][caller] {
			return nil
		}
		return rpc.Errorf(rpc.PermissionDenied, "caller %q may not call %s", caller, method)
	}
}
