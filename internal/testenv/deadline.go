package testenv

import (
	"time"

	"github.com/mqrpc/mqrpc/broker"
)

// WantDeadline is what a broker must make of the values of every
// mqrpc-deadline header a received message carries (names differing only
// in case are distinct headers on NATS and AMQP): bad when any value is
// malformed, else the earliest deadline (zero for none). It is written
// apart from broker.MergeDeadline so that it can check it.
func WantDeadline(values []string) (earliest time.Time, bad bool) {
	for _, v := range values {
		d, err := broker.ParseDeadline(v)
		switch {
		case err != nil:
			bad = true
		case !d.IsZero() && (earliest.IsZero() || d.Before(earliest)):
			earliest = d
		}
	}
	return earliest, bad
}

// SameDeadline compares deadlines that went through broker.FormatDeadline,
// which moves a deadline past the year 2262 (beyond time.UnixNano's range)
// by up to a millisecond.
func SameDeadline(a, b time.Time) bool {
	if a.Equal(b) {
		return true
	}
	const maxNanos = 1<<63 - 1
	if a.After(time.Unix(0, maxNanos)) {
		d := b.Sub(a)
		return d >= 0 && d <= time.Millisecond
	}
	return false
}
