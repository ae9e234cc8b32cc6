package shm

import (
	"math/bits"
	"sync/atomic"
)

// EventBits is a set of per-session event bits in shared memory: one side
// marks the sessions it made progress on (Set) before ringing a doorbell,
// and the side woken takes exactly those (Drain) instead of looking at
// every session it serves. Two levels: one bit per session, and a summary
// bit per word of 64 session bits, so a drain reads n/4096 summary words
// plus the words with something set.
//
// Layout at the region's offset (8-byte aligned): the summary words
// (n/4096, rounded up), then n/64 session words; bit i of the set is bit
// i%64 of session word i/64, whose summary bit is bit (i/64)%64 of summary
// word i/4096.
//
// Any number of setters (say, all goroutines of an app) and one drainer. A
// setter sets the session bit, then the summary bit; the drainer swaps the
// summary word, then each word it names: a bit set while a drain runs is
// taken by it or by the next one (its summary bit stays set), so nothing
// is lost as long as every Set is followed by a ring. The drainer trusts
// nothing in the region: it reports only indices below n, however the
// words were written.
type EventBits struct {
	sum   []atomic.Uint64
	words []atomic.Uint64
	n     int
}

// EventBitsMax bounds the bits of one set (a million sessions).
const EventBitsMax = 1 << 20

// EventBitsSize returns the bytes a set of n bits takes (n a positive
// multiple of 64, at most EventBitsMax), or -1.
func EventBitsSize(n int) int {
	if n <= 0 || n%64 != 0 || n > EventBitsMax {
		return -1
	}
	return 8 * (eventSummaryWords(n) + n/64)
}

func eventSummaryWords(n int) int { return (n/64 + 63) / 64 }

// FormatEventBits clears the set of n bits at off in seg (the side that
// creates it, before the other maps it) and opens it.
func FormatEventBits(seg *Segment, off, n int) (*EventBits, error) {
	e, err := OpenEventBits(seg.Bytes(), off, n)
	if err != nil {
		return nil, err
	}
	for i := range e.sum {
		e.sum[i].Store(0)
	}
	for i := range e.words {
		e.words[i].Store(0)
	}
	return e, nil
}

// OpenEventBits maps the set of n bits at off in b (a mapped segment), or
// returns ErrInvalid when it does not fit.
func OpenEventBits(b []byte, off, n int) (*EventBits, error) {
	if EventBitsSize(n) < 0 {
		return nil, ErrInvalid
	}
	ns := eventSummaryWords(n)
	all, err := wordsAt(b, off, ns+n/64)
	if err != nil {
		return nil, err
	}
	return &EventBits{sum: all[:ns:ns], words: all[ns:], n: n}, nil
}

// Len is the number of bits.
func (e *EventBits) Len() int { return e.n }

// Set marks bit i (ignored when out of range). Never blocks.
func (e *EventBits) Set(i int) {
	if uint(i) >= uint(e.n) {
		return
	}
	w := i >> 6
	e.words[w].Or(1 << (i & 63))
	e.sum[w>>6].Or(1 << (w & 63))
}

// Drain clears the set and calls fn with the index of each bit that was
// set, in increasing order within a word. One drainer at a time.
func (e *EventBits) Drain(fn func(i int)) {
	for g := range e.sum {
		s := e.sum[g].Swap(0)
		for s != 0 {
			w := g<<6 | bits.TrailingZeros64(s)
			s &= s - 1
			if w >= len(e.words) {
				continue // a summary bit past the last word: written by a liar
			}
			b := e.words[w].Swap(0)
			for b != 0 {
				fn(w<<6 | bits.TrailingZeros64(b))
				b &= b - 1
			}
		}
	}
}
