package rocketmq

import (
	"errors"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/apache/rocketmq-client-go/v2/primitive"
)

// Failing over between the masters of a cluster.
//
// A topic has queues on every master of its cluster. rocketmq-client-go
// learns that a master died only from the name server, which it asks every
// 30 s; until then it keeps choosing the dead master's queues, and a
// request (sent asynchronously) is never retried elsewhere. So a Broker
// chooses the queue itself (faultSelector): round robin over the topic's
// queues, skipping the masters a send could not reach in the last
// avoidFor. A send that failed before the master could store anything (the
// connection could not be made, or the request could not be written) is
// sent again at once to another master, and the route is asked for anew
// (the name server drops a dead master as soon as its connection closes).
// A send whose outcome is unknown (no answer) is not resent here: the
// message may be stored, and resending is the caller's choice (with the
// same message ID, which rpc's Dedup middleware makes safe).

// avoidFor is how long a Broker sends no message to a master it could not
// reach, or that came back into a route (see faultSelector). After it, one
// send tries that master again (and is resent elsewhere if it still cannot
// reach it); the route refresh usually drops a dead master well before.
const avoidFor = 10 * time.Second

// refreshEvery bounds how often a Broker asks the name server for its
// routes because a send failed.
const refreshEvery = time.Second

// faultSelector is the Broker's producer.QueueSelector: round robin over a
// topic's queues, skipping the masters to avoid. It records the queue it
// chose in the message's Queue field, so that the sender knows which master
// a failed send went to.
//
// A master is avoided for avoidFor after a send could not reach it, and
// after it comes back into a topic's route it had dropped out of: its
// queues are then served only once the servers' consumers have noticed it
// (Serve refreshes its route every serveRefreshEvery, and a consumer that
// kept the queues pulls again within 3 s), and a request stored there
// earlier would wait for that.
type faultSelector struct {
	mu    sync.Mutex
	next  map[string]uint32    // per topic
	avoid map[string]time.Time // master (broker name) -> until
	// routes is the last queue list seen per topic; gone holds per topic
	// the masters that dropped out of it.
	routes map[string][]*primitive.MessageQueue
	gone   map[string]map[string]bool
	now    func() time.Time
	// returned is called (without mu) when a master came back into a
	// route.
	returned func()
}

func newFaultSelector() *faultSelector {
	return &faultSelector{
		next:   make(map[string]uint32),
		avoid:  make(map[string]time.Time),
		routes: make(map[string][]*primitive.MessageQueue),
		gone:   make(map[string]map[string]bool),
		now:    time.Now,
	}
}

// Select implements producer.QueueSelector.
func (s *faultSelector) Select(msg *primitive.Message, mqs []*primitive.MessageQueue, lastBroker string) *primitive.MessageQueue {
	if len(mqs) == 0 {
		return nil
	}
	s.mu.Lock()
	now := s.now()
	back := false
	if prev, ok := s.routes[msg.Topic]; !ok || len(prev) != len(mqs) || &prev[0] != &mqs[0] {
		// The client replaced the route (it does only on a change).
		back = s.changed(msg.Topic, prev, mqs, now)
		s.routes[msg.Topic] = mqs
	}
	start := s.next[msg.Topic]
	s.next[msg.Topic] = start + 1
	var pick *primitive.MessageQueue
	for i := range mqs {
		q := mqs[(int(start)+i)%len(mqs)]
		if q.BrokerName != lastBroker && !s.avoided(q.BrokerName, now) {
			pick = q
			break
		}
	}
	if pick == nil {
		// Every master is suspect: try the one in turn anyway.
		pick = mqs[int(start)%len(mqs)]
	}
	msg.Queue = pick
	s.mu.Unlock()
	if back && s.returned != nil {
		s.returned()
	}
	return pick
}

// changed notes the masters that left topic's route from prev to mqs, and
// has those that came back avoided for avoidFor; it reports whether one
// came back. s.mu is held.
func (s *faultSelector) changed(topic string, prev, mqs []*primitive.MessageQueue, now time.Time) bool {
	in := make(map[string]bool, 2)
	for _, q := range mqs {
		in[q.BrokerName] = true
	}
	gone := s.gone[topic]
	for _, q := range prev {
		if !in[q.BrokerName] {
			if gone == nil {
				gone = make(map[string]bool)
				s.gone[topic] = gone
			}
			gone[q.BrokerName] = true
		}
	}
	back := false
	for master := range in {
		if gone[master] {
			delete(gone, master)
			s.avoid[master] = now.Add(avoidFor)
			back = true
		}
	}
	return back
}

// avoided reports whether master is to be avoided at now; s.mu is held.
func (s *faultSelector) avoided(master string, now time.Time) bool {
	until, ok := s.avoid[master]
	if ok && !now.Before(until) {
		delete(s.avoid, master)
		return false
	}
	return ok
}

// markDown makes Select avoid master for avoidFor. It reports whether
// master was not avoided already.
func (s *faultSelector) markDown(master string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	fresh := !s.avoided(master, now)
	s.avoid[master] = now.Add(avoidFor)
	return fresh
}

// alternative reports whether topic (as last seen by Select) has a queue
// on a master not avoided.
func (s *faultSelector) alternative(topic string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	for _, q := range s.routes[topic] {
		if !s.avoided(q.BrokerName, now) {
			return true
		}
	}
	return false
}

// notStored reports whether err, from a send, proves that the master did
// not store the message: the connection to it could not be made, or the
// request could not be written to it (a master stores only a whole
// request).
func notStored(err error) bool {
	var op *net.OpError
	if errors.As(err, &op) {
		return op.Op == "dial" || op.Op == "write"
	}
	// Errors wrapped without Unwrap (github.com/pkg/errors).
	s := err.Error()
	return strings.Contains(s, "dial tcp") || strings.Contains(s, "connect: connection refused")
}

// failover runs send, which sends msg once, and when it failed before a
// master could store msg and another master serves msg's topic, marks the
// master it went to unreachable, refreshes the routes soon and sends
// again. It returns send's last error.
func (b *Broker) failover(msg *primitive.Message, send func() error) error {
	for {
		msg.Queue = nil
		err := send()
		if err == nil || b.faults == nil || msg.Queue == nil || !notStored(err) {
			return err
		}
		if b.faults.markDown(msg.Queue.BrokerName) {
			b.log.Warn("rocketmq: master unreachable; avoiding it", "master", msg.Queue.BrokerName, "for", avoidFor, "err", err)
		}
		b.refreshRoutesSoon()
		if !b.faults.alternative(msg.Topic) {
			return err
		}
	}
}

// refreshRoutesSoon asks the name server for the routes of the Broker's
// topics in the background, at most once every refreshEvery.
func (b *Broker) refreshRoutesSoon() {
	if b.hooks.refresh == nil {
		return
	}
	if !b.refreshes.pass(refreshEvery) {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return // Close waits for background: no Add after it began
	}
	b.background.Go(b.hooks.refresh)
}
