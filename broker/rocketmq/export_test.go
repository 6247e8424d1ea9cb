package rocketmq

import (
	"time"

	"github.com/apache/rocketmq-client-go/v2/producer"
)

// HeartbeatFunc exposes heartbeatFunc to the benchmarks, which register the
// raw rocketmq-client-go requester the same way.
var HeartbeatFunc = heartbeatFunc

// Producer is the producer interface a Broker drives, for fakes.
type Producer = rocketProducer

// NewWithProducer returns a Broker driving p instead of a real client.
func NewWithProducer(p Producer, opts ...Option) *Broker {
	b, err := newBroker("127.0.0.1:9876", opts...)
	if err != nil {
		panic(err)
	}
	b.producer = p
	return b
}

// HooksFound reports which client hooks hooksOf finds on p.
func HooksFound(p any) (heartbeat, lookup bool) {
	h := hooksOf(p)
	return h.heartbeat != nil, h.lookup != nil
}

// SetHooks replaces b's client hooks.
func SetHooks(b *Broker, heartbeat func(), lookup func(topic string) error) {
	b.hooks = clientHooks{heartbeat: heartbeat, lookup: lookup}
}

// AvoidFor exposes avoidFor.
const AvoidFor = avoidFor

// Selector returns b's queue selector, which a fake producer calls as the
// client would, and sets its clock (nil: keep it).
func Selector(b *Broker, now func() time.Time) producer.QueueSelector {
	if now != nil {
		b.faults.mu.Lock()
		b.faults.now = now
		b.faults.mu.Unlock()
	}
	return b.faults
}
