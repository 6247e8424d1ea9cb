package kernel

// CauseSettler is an optional ability of a Driver, for a broker that keeps
// the reason with a message it retries or dead-letters (a header on the
// copy): the kernel calls SettleCause instead of Settle, with why the
// delivery ended as it did. For Failed, cause is the handler's error (a
// panic's, with its stack) or the subscription's reason for refusing the
// delivery (it was stopping); for Dropped, the Decode error of a malformed
// message, or nil for an expired one; for Done, nil.
type CauseSettler[D any] interface {
	SettleCause(d D, o Outcome, cause error)
}

// settle ends delivery d with outcome o, through SettleCause when the
// driver has it.
func (s *Subscription[D]) settle(d D, o Outcome, cause error) {
	if c, ok := s.drv.(CauseSettler[D]); ok {
		c.SettleCause(d, o, cause)
		return
	}
	s.drv.Settle(d, o)
}
