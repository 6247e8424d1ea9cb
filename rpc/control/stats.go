package control

import (
	"context"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mqrpc/mqrpc/broker"
)

// maxCounted bounds the number of method names counted on their own;
// requests naming further methods (unknown ones, say, from a client with
// typos) are counted together under OtherMethods, so a stream of made-up
// names cannot grow the table without end.
const maxCounted = 256

// OtherMethods is the name the counters of requests for methods beyond
// the first 256 names seen are kept under.
const OtherMethods = "(other)"

// counters are one method's statistics. Every field is an atomic, so
// counting a call takes no lock.
type counters struct {
	requests atomic.Int64
	errors   atomic.Int64
	nanos    atomic.Int64
	inFlight atomic.Int64
	lastErr  atomic.Pointer[string]
}

// meter wraps a handler and counts its calls by the mqrpc-method header.
type meter struct {
	next    broker.Handler
	started time.Time

	mu      sync.Mutex // serializes adding a name
	methods atomic.Pointer[map[string]*counters]
}

func newMeter(next broker.Handler) *meter {
	m := &meter{next: next, started: time.Now().UTC()}
	empty := map[string]*counters{}
	m.methods.Store(&empty)
	return m
}

func (m *meter) counters(name string) *counters {
	if c := (*m.methods.Load())[name]; c != nil {
		return c
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	old := *m.methods.Load()
	if c := old[name]; c != nil {
		return c
	}
	if len(old) >= maxCounted {
		name = OtherMethods
		if c := old[name]; c != nil {
			return c
		}
	}
	next := make(map[string]*counters, len(old)+1)
	for k, v := range old {
		next[k] = v
	}
	c := new(counters)
	next[name] = c
	m.methods.Store(&next)
	return c
}

// Reject forwards broker.Rejecter to the wrapped handler, so the status
// replies of rejected requests are still built by it (rpc.Server).
func (m *meter) Reject(req *broker.Message, r *broker.Rejection) *broker.Message {
	return broker.RejectReply(m.next, req, r)
}

// ServeMessage counts the call around the wrapped handler.
func (m *meter) ServeMessage(ctx context.Context, req *broker.Message) (*broker.Message, error) {
	c := m.counters(req.Header.Get(broker.HeaderMethod))
	c.inFlight.Add(1)
	start := time.Now()
	reply, err := m.next.ServeMessage(ctx, req)
	c.nanos.Add(int64(time.Since(start)))
	c.requests.Add(1)
	c.inFlight.Add(-1)
	if err != nil {
		c.errors.Add(1)
		s := "delivery failed: " + err.Error()
		c.lastErr.Store(&s)
	} else if reply != nil {
		if code := reply.Header[broker.HeaderStatus]; code != "" && code != "0" {
			c.errors.Add(1)
			s := codeName(code)
			if msg := reply.Header[broker.HeaderStatusMessage]; msg != "" {
				s += ": " + msg
			}
			c.lastErr.Store(&s)
		}
	}
	return reply, err
}

// codeNames are the names of the status codes (rpc's, gRPC's set); the
// control package does not import rpc, which imports it.
var codeNames = [...]string{"OK", "Canceled", "Unknown", "InvalidArgument", "DeadlineExceeded",
	"NotFound", "AlreadyExists", "PermissionDenied", "ResourceExhausted", "FailedPrecondition",
	"Aborted", "OutOfRange", "Unimplemented", "Internal", "Unavailable", "DataLoss", "Unauthenticated"}

func codeName(code string) string {
	if n, err := strconv.Atoi(code); err == nil && n >= 0 && n < len(codeNames) {
		return codeNames[n]
	}
	return "code " + code
}

// snapshot returns the counters of the methods in names (with zeros for
// those not called yet) and of every other method called, sorted by name.
func (m *meter) snapshot(subject, queue string, names []string) []*EndpointStats {
	methods := *m.methods.Load()
	seen := make(map[string]bool, len(names)+len(methods))
	all := make([]string, 0, len(names)+len(methods))
	for _, n := range names {
		if !seen[n] {
			seen[n] = true
			all = append(all, n)
		}
	}
	for n := range methods {
		if !seen[n] {
			seen[n] = true
			all = append(all, n)
		}
	}
	sort.Strings(all)
	out := make([]*EndpointStats, 0, len(all))
	for _, n := range all {
		es := &EndpointStats{Name: n, Subject: subject, QueueGroup: queue}
		if c := methods[n]; c != nil {
			es.NumRequests = int(c.requests.Load())
			es.NumErrors = int(c.errors.Load())
			es.ProcessingTime = time.Duration(c.nanos.Load())
			es.InFlight = c.inFlight.Load()
			if es.NumRequests > 0 {
				es.AverageProcessingTime = es.ProcessingTime / time.Duration(es.NumRequests)
			}
			if p := c.lastErr.Load(); p != nil {
				es.LastError = *p
			}
		}
		if es.Name == "" {
			es.Name = "(none)" // requests without a method header
		}
		out = append(out, es)
	}
	return out
}
