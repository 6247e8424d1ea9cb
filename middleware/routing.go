package middleware

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"math/rand/v2"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/rpc"
)

// HeaderVersion is the conventional header a caller sets to pin a call to
// one version of a service, for RouteByHeader in a canary set-up.
const HeaderVersion = "mqrpc-version"

// RouteFunc picks the subject a client call is sent to. It returns "" to
// make no decision, leaving the call to the next RouteFunc, or to the
// subject the call already has (the service name, by default). An error
// fails the call; return an *rpc.Error to choose its code.
//
// RouteFuncs are called concurrently and must not modify req.
type RouteFunc func(ctx context.Context, info rpc.CallInfo, req *broker.Message) (subject string, err error)

// Routing returns client middleware that sets each request's Subject with
// the first of routes that makes a decision. Under Retry it routes every
// attempt afresh, so a weighted choice may send a retry elsewhere.
//
// Place it inside Retry and outside a CircuitBreaker, which keeps one
// breaker per routed subject.
func Routing(routes ...RouteFunc) rpc.Middleware {
	return rpc.ClientOnly("middleware.Routing", func(next broker.Handler) broker.Handler {
		return broker.HandlerFunc(func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
			info, _ := rpc.CallInfoFromContext(ctx)
			for _, r := range routes {
				subject, err := r(ctx, info, req)
				if err != nil {
					var e *rpc.Error
					if errors.As(err, &e) {
						return nil, err
					}
					return nil, rpc.Errorf(rpc.Internal, "route %s.%s: %w", info.Service, info.Method, err)
				}
				if subject != "" {
					req.Subject = subject
					break
				}
			}
			return next.ServeMessage(ctx, req)
		})
	})
}

// RouteTable routes by a static table whose keys are "Service.Method" or
// "Service"; the more specific key wins. Calls the table does not name get
// no decision. The table is copied.
func RouteTable(table map[string]string) RouteFunc {
	t := make(map[string]string, len(table))
	for k, v := range table {
		t[k] = v
	}
	return func(_ context.Context, info rpc.CallInfo, _ *broker.Message) (string, error) {
		if s, ok := t[info.Service+"."+info.Method]; ok {
			return s, nil
		}
		return t[info.Service], nil
	}
}

// RouteByHeader routes by the value of the request header name: a value
// the table holds selects its subject; a missing or unknown value gets no
// decision. With HeaderVersion it pins calls to a version. The table is
// copied.
func RouteByHeader(name string, table map[string]string) RouteFunc {
	t := make(map[string]string, len(table))
	for k, v := range table {
		t[k] = v
	}
	return func(_ context.Context, _ rpc.CallInfo, req *broker.Message) (string, error) {
		v := req.Header.Get(name)
		if v == "" {
			return "", nil
		}
		return t[v], nil
	}
}

// RouteService applies r to the calls of service only; other calls get no
// decision. Use it to give each service its own weighted or hashed
// routing on one client.
func RouteService(service string, r RouteFunc) RouteFunc {
	return func(ctx context.Context, info rpc.CallInfo, req *broker.Message) (string, error) {
		if info.Service != service {
			return "", nil
		}
		return r(ctx, info, req)
	}
}

// KeyFunc returns the key of a call, for RouteWeighted and RouteHash; ""
// means the call has none.
type KeyFunc func(ctx context.Context, info rpc.CallInfo, req *broker.Message) string

// HeaderKey returns a KeyFunc that reads the request header name.
func HeaderKey(name string) KeyFunc {
	return func(_ context.Context, _ rpc.CallInfo, req *broker.Message) string {
		return req.Header.Get(name)
	}
}

// WeightedSubject is a subject and its share of the calls, for
// RouteWeighted.
type WeightedSubject struct {
	Subject string
	// Weight is the subject's share relative to the others' weights; zero
	// or less sends it nothing.
	Weight int
}

// RouteWeighted splits calls over targets in proportion to their weights,
// as for a canary release: {"calc.v1", 95}, {"calc.v2", 5}. Without a key
// (key nil, or a call whose key is "") each call draws at random; with a
// key the choice is sticky: the same key always gets the same subject
// while the targets stay the same, so one user sees one version. When all
// weights are zero it makes no decision.
func RouteWeighted(key KeyFunc, targets ...WeightedSubject) RouteFunc {
	var ts []WeightedSubject
	total := 0
	for _, t := range targets {
		if t.Weight > 0 {
			ts = append(ts, t)
			total += t.Weight
		}
	}
	return func(ctx context.Context, info rpc.CallInfo, req *broker.Message) (string, error) {
		if total == 0 {
			return "", nil
		}
		var n int
		if k := keyOf(ctx, key, info, req); k != "" {
			n = int(mix64(hashString(k)) % uint64(total))
		} else {
			n = rand.IntN(total)
		}
		for _, t := range ts {
			if n < t.Weight {
				return t.Subject, nil
			}
			n -= t.Weight
		}
		return ts[len(ts)-1].Subject, nil // unreachable
	}
}

// ErrNoRouteKey is returned (in an InvalidArgument *rpc.Error) by
// RouteHash for a call without a key.
var ErrNoRouteKey = errors.New("middleware: call has no routing key")

// RouteHash shards calls over subjects by a key with consistent
// (rendezvous, highest-random-weight) hashing: a key always goes to the
// same subject, and when a subject is added or removed only the keys of
// that subject move. The hash is FNV-1a with a 64-bit finalizer, the same
// in every process and every release, so clients in several processes
// agree. Rendezvous hashing costs one hash per subject per call, which is
// nothing next to a broker round trip for the handful of subjects a
// service is sharded over.
//
// A call without a key fails with InvalidArgument (ErrNoRouteKey): sending
// it to an arbitrary shard would break the sharding silently. With no
// subjects it makes no decision.
func RouteHash(key KeyFunc, subjects ...string) RouteFunc {
	type node struct {
		subject string
		h       uint64
	}
	nodes := make([]node, len(subjects))
	for i, s := range subjects {
		nodes[i] = node{s, hashString(s)}
	}
	return func(ctx context.Context, info rpc.CallInfo, req *broker.Message) (string, error) {
		if len(nodes) == 0 {
			return "", nil
		}
		k := keyOf(ctx, key, info, req)
		if k == "" {
			return "", rpc.NewError(rpc.InvalidArgument, fmt.Errorf("shard %s.%s: %w", info.Service, info.Method, ErrNoRouteKey))
		}
		kh := hashString(k)
		best, bestScore := 0, uint64(0)
		for i, n := range nodes {
			if s := mix64(kh ^ n.h); i == 0 || s > bestScore {
				best, bestScore = i, s
			}
		}
		return nodes[best].subject, nil
	}
}

func keyOf(ctx context.Context, key KeyFunc, info rpc.CallInfo, req *broker.Message) string {
	if key == nil {
		return ""
	}
	return key(ctx, info, req)
}

func hashString(s string) uint64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte(s))
	return h.Sum64()
}

// mix64 is the splitmix64 finalizer: it spreads FNV's weak low bits over
// the whole word.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}
