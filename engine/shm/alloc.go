package shm

import (
	"fmt"
	"sort"
	"sync"
)

// Align is the alignment of every Allocator extent and the alignment
// InitFifo/InitQueue require: one cache line.
const Align = 64

type extent struct{ off, size int }

// Allocator hands out 64-byte aligned extents of one segment. It lives in
// the engine's private memory (nothing of it is in the segment), so it is
// trusted. First fit over an address-ordered free list with coalescing;
// safe for concurrent use.
type Allocator struct {
	mu    sync.Mutex
	size  int
	free  []extent    // sorted by off, never adjacent (coalesced)
	used  map[int]int // off -> size
	inUse int
}

// NewAllocator manages [0, size) of a segment (size rounded down to Align).
func NewAllocator(size int) *Allocator {
	size &^= Align - 1
	a := &Allocator{size: size, used: map[int]int{}}
	if size > 0 {
		a.free = []extent{{0, size}}
	}
	return a
}

// Alloc returns the offset of n bytes (rounded up to Align), or ErrNoSpace.
func (a *Allocator) Alloc(n int) (int, error) {
	if n <= 0 || n > a.size {
		if n <= 0 {
			return 0, fmt.Errorf("%w: alloc %d bytes", ErrInvalid, n)
		}
		return 0, ErrNoSpace
	}
	n = (n + Align - 1) &^ (Align - 1)
	a.mu.Lock()
	defer a.mu.Unlock()
	for i, e := range a.free {
		if e.size < n {
			continue
		}
		if e.size == n {
			a.free = append(a.free[:i], a.free[i+1:]...)
		} else {
			a.free[i] = extent{e.off + n, e.size - n}
		}
		a.used[e.off] = n
		a.inUse += n
		return e.off, nil
	}
	return 0, ErrNoSpace
}

// Free returns an extent obtained from Alloc. Freeing an offset that is not
// allocated is ignored (and reported as false).
func (a *Allocator) Free(off int) bool { return a.Release(off) > 0 }

// Release is Free that returns the size of the extent freed (0 if off was
// not allocated), for a caller that gives its memory back (Segment.Punch).
func (a *Allocator) Release(off int) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	n, ok := a.used[off]
	if !ok {
		return 0
	}
	delete(a.used, off)
	a.inUse -= n
	i := sort.Search(len(a.free), func(i int) bool { return a.free[i].off > off })
	// merge with the previous and/or next free extent
	prev := i > 0 && a.free[i-1].off+a.free[i-1].size == off
	next := i < len(a.free) && off+n == a.free[i].off
	switch {
	case prev && next:
		a.free[i-1].size += n + a.free[i].size
		a.free = append(a.free[:i], a.free[i+1:]...)
	case prev:
		a.free[i-1].size += n
	case next:
		a.free[i] = extent{off, n + a.free[i].size}
	default:
		a.free = append(a.free, extent{})
		copy(a.free[i+1:], a.free[i:])
		a.free[i] = extent{off, n}
	}
	return n
}

// InUse returns the number of allocated bytes (after rounding).
func (a *Allocator) InUse() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.inUse
}

// Size returns the number of bytes managed.
func (a *Allocator) Size() int { return a.size }
