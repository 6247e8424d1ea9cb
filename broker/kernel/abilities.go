package kernel

import (
	"context"

	"github.com/mqrpc/mqrpc/broker"
)

// The optional abilities of a Driver, for brokers that keep their messages
// (redeliver, dead-letter) and so need a say in a delivery beyond Settle.
// Serve finds them by type assertion, once.

// Admitter is an optional ability of a Driver: Admit runs after the decode
// and the expiry check, right before the delivery ctx is made and the
// handler called. It may wait (for a Lane, say) as long as ctx, the
// subscription's, lives. When it reports false the handler does not run
// and the kernel settles nothing: Admit settled d itself (handed it back,
// dead-lettered it). After a true, the kernel checks the expiry again, as
// Admit may have waited.
type Admitter[D any] interface {
	Admit(ctx context.Context, d D, req *broker.Message) bool
}

// Abandoner is an optional ability of a Driver: a delivery the
// subscription gave up on as it aborted (its caller heard Unavailable, and
// the handler's own reply, if any, was not sent) is settled with Abandon
// instead of Settle. A durable broker hands it back at once, so another
// server runs it and a retry of the caller gets its reply; it is neither
// a failure of the request nor done. Without the ability such a delivery
// is settled Failed or Done by how its handler returned.
type Abandoner[D any] interface {
	Abandon(d D)
}

// abilities are the optional abilities of a subscription's driver.
type abilities[D any] struct {
	admit   Admitter[D]
	abandon Abandoner[D]
}

func abilitiesOf[D any](drv Driver[D]) abilities[D] {
	var a abilities[D]
	a.admit, _ = drv.(Admitter[D])
	a.abandon, _ = drv.(Abandoner[D])
	return a
}

// abandoned settles d, whose caller the abort answered, when the driver
// can tell an abandoned delivery apart; it reports false otherwise.
func (s *Subscription[D]) abandoned(d D) bool {
	if s.ab.abandon == nil {
		return false
	}
	s.ab.abandon.Abandon(d)
	return true
}
