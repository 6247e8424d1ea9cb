package harness

import (
	"math/bits"
	"time"
)

// subBits is the number of mantissa bits a Histogram keeps below the
// leading one: 2^5 = 32 buckets per power of two, a relative error under
// 3.2%, and 64*32 buckets in all (16 KiB).
const subBits = 5

// Histogram records durations in logarithmic buckets, so that per-worker
// recording costs no allocation and merging is a loop over a fixed array.
// The zero value is empty and ready to use. It is not safe for concurrent
// use: give every worker its own and Merge them afterwards.
type Histogram struct {
	counts [64 << subBits]uint64
	n      uint64
	sum    uint64
	max    uint64
}

func bucketOf(v uint64) int {
	if v < 1<<subBits {
		return int(v)
	}
	e := bits.Len64(v) - 1 // position of the leading one, >= subBits
	m := (v >> (e - subBits)) & (1<<subBits - 1)
	return (e-subBits+1)<<subBits | int(m)
}

// lowerBound is the smallest value that falls into bucket i.
func lowerBound(i int) uint64 {
	if i < 1<<subBits {
		return uint64(i)
	}
	e := i>>subBits + subBits - 1
	m := uint64(i & (1<<subBits - 1))
	return (1<<subBits | m) << (e - subBits)
}

// Record adds one duration.
func (h *Histogram) Record(d time.Duration) {
	v := uint64(0)
	if d > 0 {
		v = uint64(d)
	}
	h.counts[bucketOf(v)]++
	h.n++
	h.sum += v
	if v > h.max {
		h.max = v
	}
}

// Merge adds the contents of o to h.
func (h *Histogram) Merge(o *Histogram) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
	h.sum += o.sum
	if o.max > h.max {
		h.max = o.max
	}
}

// Count returns the number of recorded durations.
func (h *Histogram) Count() uint64 { return h.n }

// Mean returns the mean duration, or 0 when h is empty.
func (h *Histogram) Mean() time.Duration {
	if h.n == 0 {
		return 0
	}
	return time.Duration(h.sum / h.n)
}

// Quantile returns the duration below which a fraction q of the recorded
// durations lie (q in [0, 1]), as the midpoint of its bucket; 0 when h is
// empty.
func (h *Histogram) Quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := uint64(q * float64(h.n))
	if rank >= h.n {
		rank = h.n - 1
	}
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen > rank {
			lo := lowerBound(i)
			hi := lowerBound(i + 1)
			mid := lo + (hi-lo)/2
			if mid > h.max {
				mid = h.max
			}
			return time.Duration(mid)
		}
	}
	return time.Duration(h.max)
}
