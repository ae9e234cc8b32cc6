package shm

import (
	"fmt"
	"io"
	"math/bits"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Fifo header layout (offsets from the fifo's base, which is 64-byte aligned):
//
//	line 0, producer line (written only by the producer)
//	  +0   tail        free-running count of bytes ever written
//	  +8   eof         non-zero once the producer called CloseWrite
//	line 1, consumer line (written only by the consumer)
//	  +64  head        free-running count of bytes ever consumed
//	  +72  rclosed     non-zero once the consumer called CloseRead
//	line 2, shared line (config, written once by InitFifo; wake flags)
//	  +128 magic       fifoMagic
//	  +136 capacity    informational only: sides use their trusted copy
//	  +144 rwait       reader waiting: set by the consumer, swapped to 0 by the producer
//	  +152 wwait       writer waiting: set by the producer, swapped to 0 by the consumer
//	+192  data, capacity bytes (a power of two); byte i of the stream is at
//	      data[i & (capacity-1)].
//
// The wake flags are not on the index lines: the side that polls them after
// every operation would otherwise miss in cache each time the peer moves its
// index. They are written only around sleeping, so the line stays shared.
const (
	fifoOffTail     = 0
	fifoOffEOF      = 8
	fifoOffHead     = 64
	fifoOffRClosed  = 72
	fifoOffMagic    = 128
	fifoOffCap      = 136
	fifoOffRWait    = 144
	fifoOffWWait    = 152
	fifoHeaderSize  = 192
	fifoMagic       = 0x3130_6f66_6966_7368 // "hsfifo01" little-endian
	MinFifoCapacity = 64
	MaxFifoCapacity = 1 << 40
)

// FifoFootprint returns the bytes a fifo of the given capacity occupies in a
// segment (header + data), or -1 if capacity is not a valid power of two.
func FifoFootprint(capacity int) int {
	if !validCap(capacity, MinFifoCapacity, MaxFifoCapacity) {
		return -1
	}
	return fifoHeaderSize + capacity
}

func validCap(c, lo, hi int) bool {
	return c >= lo && c <= hi && bits.OnesCount64(uint64(c)) == 1
}

// Fifo is one handle on a single-producer/single-consumer byte ring in a
// segment. The producer methods (Write, WriteVec, Free, CloseWrite,
// SetWriterWaiting, ...) must be called by one goroutine at a time, and the
// consumer methods (Read, Peek, Consume, Len, CloseRead, SetReaderWaiting,
// ...) by one goroutine at a time; the two sides may run concurrently on the
// same handle or on two handles (in two processes) of the same fifo.
//
// Trust: each side keeps its own index in private memory and only publishes
// it; the peer's index is read once per refresh into a local, validated
// (monotonic, never more than capacity apart) and only then used. The
// capacity is the caller's trusted value, never re-read from the segment.
// Any impossible value makes that side return ErrCorrupt from then on.
type Fifo struct {
	data    []byte // capacity bytes of the segment
	dataOff int    // where data starts in the segment (page arithmetic of Trim)
	mask    uint64 // capacity-1 (the capacity is not stored: a Conn holds two)
	hdr     *fifoHeader

	// No padding between the two sides' state: a process uses a handle
	// for one side only (each app, and the engine, opens its own), so the
	// lines are not contended; sessions pay no 200 bytes for it.

	// producer-private state
	pTail      uint64 // our tail, authoritative
	pHeadCache uint64 // last validated head
	pTrimmed   uint64 // pTail at the last Trim: nothing written since if equal
	pBad       bool   // the consumer's index was impossible: ErrCorrupt from now on
	pClosed    bool
	pTrimHeld  bool // the last Trim left unread bytes, whose pages go once read

	// consumer-private state
	cHead      uint64 // our head, authoritative
	cTailCache uint64 // last validated tail
	cBad       bool   // the producer's index was impossible: ErrCorrupt from now on
}

// InitFifo formats a fifo at off (64-byte aligned) in seg: zero indices and
// flags, magic, capacity. Engine side; the peer must not be using it yet.
func InitFifo(seg *Segment, off, capacity int) (*Fifo, error) {
	if err := FormatFifo(seg, off, capacity); err != nil {
		return nil, err
	}
	return OpenFifo(seg, off, capacity)
}

// FormatFifo is InitFifo for a caller that keeps no handle (the engine's
// side of a cut-through pair): nothing is allocated.
func FormatFifo(seg *Segment, off, capacity int) error {
	var f Fifo
	if err := f.mapAt(seg, off, capacity); err != nil {
		return err
	}
	h := f.hdr
	for _, w := range []*atomic.Uint64{&h.tail, &h.eof, &h.head, &h.rclosed, &h.rwait, &h.wwait} {
		w.Store(0)
	}
	h.capacity.Store(uint64(capacity))
	h.magic.Store(fifoMagic)
	return nil
}

// OpenFifo attaches to a fifo formatted by InitFifo. off and capacity must
// come from a trusted source (the engine's record, the engine's message);
// they are checked against the segment. The header's magic and capacity
// must agree, and the indices must be consistent, or ErrCorrupt.
func OpenFifo(seg *Segment, off, capacity int) (*Fifo, error) {
	f := new(Fifo)
	if err := f.Open(seg, off, capacity); err != nil {
		return nil, err
	}
	return f, nil
}

// Open is OpenFifo into a handle the caller holds (one embedded in a
// larger object: no allocation of its own). f must not be in use.
func (f *Fifo) Open(seg *Segment, off, capacity int) error {
	*f = Fifo{}
	if err := f.mapAt(seg, off, capacity); err != nil {
		return err
	}
	h := f.hdr
	if h.magic.Load() != fifoMagic || h.capacity.Load() != uint64(capacity) {
		*f = Fifo{}
		return fmt.Errorf("%w: fifo header at %d", ErrCorrupt, off)
	}
	hd, t := h.head.Load(), h.tail.Load()
	if t-hd > f.size() {
		*f = Fifo{}
		return fmt.Errorf("%w: fifo indices at %d", ErrCorrupt, off)
	}
	f.pTail, f.pHeadCache, f.pTrimmed = t, hd, t
	f.cHead, f.cTailCache = hd, t
	return nil
}

func (f *Fifo) mapAt(seg *Segment, off, capacity int) error {
	if seg == nil {
		return fmt.Errorf("%w: nil segment", ErrInvalid)
	}
	b := seg.Bytes()
	if b == nil {
		return ErrClosed
	}
	fp := FifoFootprint(capacity)
	if fp < 0 {
		return fmt.Errorf("%w: fifo capacity %d (power of two in [%d, %d])",
			ErrInvalid, capacity, MinFifoCapacity, MaxFifoCapacity)
	}
	if off < 0 || off%Align != 0 || off > len(b) || fp > len(b)-off || !addrAligned(b, off, Align) {
		return fmt.Errorf("%w: fifo at offset %d size %d in segment of %d (must be %d-byte aligned and fit)",
			ErrInvalid, off, fp, len(b), Align)
	}
	hdr, err := headerAt(b, off)
	if err != nil {
		return fmt.Errorf("%w: fifo header at offset %d", err, off)
	}
	f.data = b[off+fifoHeaderSize : off+fp : off+fp]
	f.dataOff = off + fifoHeaderSize
	f.mask = uint64(capacity) - 1
	f.hdr = hdr
	return nil
}

// size is the capacity (mask+1: not stored, a Conn holds two handles).
func (f *Fifo) size() uint64 { return f.mask + 1 }

// Cap returns the capacity in bytes.
func (f *Fifo) Cap() int { return int(f.size()) }

// ---- producer side ----

// refreshHead reads the consumer's head once and validates it: it may only
// move forward, and never past our tail.
func (f *Fifo) refreshHead() error {
	h := f.hdr.head.Load()
	if h-f.pHeadCache > f.pTail-f.pHeadCache {
		f.pBad = true
		return ErrCorrupt
	}
	f.pHeadCache = h
	return nil
}

// space returns the free bytes, refreshing the consumer's index only when
// the cached one does not leave room for want bytes.
func (f *Fifo) space(want int) (uint64, error) {
	if f.pBad {
		return 0, ErrCorrupt
	}
	if f.pClosed {
		return 0, ErrClosed
	}
	free := f.size() - (f.pTail - f.pHeadCache)
	if free < uint64(want) {
		if err := f.refreshHead(); err != nil {
			return 0, err
		}
		free = f.size() - (f.pTail - f.pHeadCache)
	}
	return free, nil
}

// put copies p (len(p) <= free) at the tail, wrapping around.
func (f *Fifo) put(tail uint64, p []byte) {
	pos := tail & f.mask
	n := copy(f.data[pos:], p)
	copy(f.data, p[n:])
}

// Write copies as much of p as fits and publishes it. It never blocks: a
// full fifo returns (0, nil). After CloseWrite it returns ErrClosed.
func (f *Fifo) Write(p []byte) (int, error) {
	free, err := f.space(len(p))
	if err != nil || free == 0 || len(p) == 0 {
		return 0, err
	}
	n := len(p)
	if uint64(n) > free {
		n = int(free)
	}
	f.put(f.pTail, p[:n])
	f.pTail += uint64(n)
	f.hdr.tail.Store(f.pTail)
	return n, nil
}

// WriteVec copies the buffers in order, as much as fits, straight into the
// ring (no intermediate buffer) and publishes them with one index store.
func (f *Fifo) WriteVec(bufs [][]byte) (int, error) {
	want := 0
	for _, b := range bufs {
		want += len(b)
	}
	free, err := f.space(want)
	if err != nil || free == 0 || want == 0 {
		return 0, err
	}
	t := f.pTail
	left := free
	for _, b := range bufs {
		if left == 0 {
			break
		}
		if uint64(len(b)) > left {
			b = b[:left]
		}
		f.put(t, b)
		t += uint64(len(b))
		left -= uint64(len(b))
	}
	n := int(t - f.pTail)
	f.pTail = t
	f.hdr.tail.Store(t)
	return n, nil
}

// Reserve returns the free space at the tail as up to two slices of the ring
// (the second when it wraps), for a producer that fills them in place — a
// socket read straight into the fifo — and publishes with Commit. Nothing is
// published until Commit; the consumer (who shares the memory) can scribble
// on the slices meanwhile, which only garbles its own stream. Full: two empty
// slices and a nil error.
func (f *Fifo) Reserve() (a, b []byte, err error) {
	free, err := f.space(int(f.size()))
	if err != nil || free == 0 {
		return nil, nil, err
	}
	pos := f.pTail & f.mask
	first := min(free, f.size()-pos)
	return f.data[pos : pos+first], f.data[:free-first], nil
}

// Commit publishes n bytes written into the space Reserve returned. n beyond
// that space is an error and publishes nothing.
func (f *Fifo) Commit(n int) error {
	if n < 0 || uint64(n) > f.size()-(f.pTail-f.pHeadCache) {
		return fmt.Errorf("shm: commit of %d bytes exceeds the reserved space", n)
	}
	if n == 0 {
		return nil
	}
	f.pTail += uint64(n)
	f.hdr.tail.Store(f.pTail)
	return nil
}

// Free returns the bytes that can be written now (re-reading the consumer's
// index).
func (f *Fifo) Free() (int, error) {
	if f.pBad {
		return 0, ErrCorrupt
	}
	if err := f.refreshHead(); err != nil {
		return 0, err
	}
	return int(f.size() - (f.pTail - f.pHeadCache)), nil
}

// CloseWrite marks the end of the stream (half-close). The flag is stored
// after the last tail store, so a reader that sees it and then re-reads the
// tail sees all the data: it reports io.EOF only once drained. Idempotent.
func (f *Fifo) CloseWrite() {
	f.pClosed = true
	f.hdr.eof.Store(1)
}

// TrimAfter is how long a producer lets pages it wrote stay before it gives
// back (Trim) those its fifo no longer holds: often enough that an idle
// session costs little, rarely enough that a stream refaults its ring at
// most once per period.
const TrimAfter = 2 * time.Second

// Trim gives the memory under the fifo's free space back to the kernel: the
// whole pages of the ring that hold no unread byte are removed from the
// memfd (MADV_REMOVE), so a fifo costs memory only for what it holds and
// what was written since the last Trim; the next write there faults in
// fresh pages. It returns the bytes released. Producer side (the producer
// is the only writer of the free space, and the consumer reads only
// [head, tail), so nothing needs the peer's cooperation); allowed after
// CloseWrite.
func (f *Fifo) Trim() (int, error) {
	if f.pBad {
		return 0, ErrCorrupt
	}
	if err := f.refreshHead(); err != nil {
		return 0, err
	}
	free := f.size() - (f.pTail - f.pHeadCache)
	pos := f.pTail & f.mask
	if free == f.size() {
		pos = 0 // empty: all of it, not two pieces around the tail's page
	}
	first := min(free, f.size()-pos)
	n1, err := f.release(pos, first)
	if err != nil {
		return n1, err
	}
	n2, err := f.release(0, free-first)
	if err == nil {
		f.pTrimmed, f.pTrimHeld = f.pTail, free != f.size()
	}
	return n1 + n2, err
}

// Written reports whether a Trim now may have pages to release: something
// was written since the last Trim (or since the fifo was opened), or the
// last Trim left bytes unread (their pages are free once the consumer read
// them, and only a Trim gives them back).
func (f *Fifo) Written() bool { return f.pTail != f.pTrimmed || f.pTrimHeld }

// release removes the whole pages of data[pos:pos+n]. The segment is mapped
// at a page boundary, so the page arithmetic is on segment offsets.
func (f *Fifo) release(pos, n uint64) (int, error) {
	pg := unix.Getpagesize()
	start := (f.dataOff+int(pos)+pg-1)&^(pg-1) - f.dataOff
	end := (f.dataOff+int(pos+n))&^(pg-1) - f.dataOff
	if end <= start {
		return 0, nil
	}
	if err := unix.Madvise(f.data[start:end], unix.MADV_REMOVE); err != nil {
		return 0, fmt.Errorf("shm: releasing fifo pages: %w", err)
	}
	return end - start, nil
}

// ReadClosed reports whether the consumer called CloseRead (producer view;
// the peer may lie, it is a hint).
func (f *Fifo) ReadClosed() bool { return f.hdr.rclosed.Load() != 0 }

// ---- consumer side ----

// refreshTail reads the producer's tail once and validates it: it may only
// move forward and never more than capacity ahead of our head.
func (f *Fifo) refreshTail() error {
	t := f.hdr.tail.Load()
	d := t - f.cHead
	if d > f.size() || d < f.cTailCache-f.cHead {
		f.cBad = true
		return ErrCorrupt
	}
	f.cTailCache = t
	return nil
}

// avail returns the readable bytes, refreshing the producer's index only if
// the cached one shows fewer than want. At 0 it checks for end of stream.
func (f *Fifo) avail(want int) (uint64, error) {
	if f.cBad {
		return 0, ErrCorrupt
	}
	n := f.cTailCache - f.cHead
	if n < uint64(want) || n == 0 {
		if err := f.refreshTail(); err != nil {
			return 0, err
		}
		n = f.cTailCache - f.cHead
		if n == 0 && f.hdr.eof.Load() != 0 {
			// EOF was stored after the final tail: re-read the tail so
			// data written just before the close is not lost.
			if err := f.refreshTail(); err != nil {
				return 0, err
			}
			n = f.cTailCache - f.cHead
			if n == 0 {
				return 0, io.EOF
			}
		}
	}
	return n, nil
}

// Read copies up to len(p) bytes out and consumes them. Empty: (0, nil);
// empty after CloseWrite: (0, io.EOF).
func (f *Fifo) Read(p []byte) (int, error) {
	n, err := f.avail(len(p))
	if err != nil || n == 0 {
		return 0, err
	}
	if uint64(len(p)) < n {
		n = uint64(len(p))
	}
	pos := f.cHead & f.mask
	c := copy(p[:n], f.data[pos:])
	copy(p[c:n], f.data)
	f.cHead += n
	f.hdr.head.Store(f.cHead)
	return int(n), nil
}

// Peek returns all readable bytes as at most two slices of the ring (the
// second non-empty only on wrap-around), without consuming them. The slices
// alias shared memory that the peer can scribble on: copy or validate before
// trusting the content. Commit with Consume. Empty: (nil, nil, nil); empty
// after CloseWrite: io.EOF.
func (f *Fifo) Peek() (a, b []byte, err error) {
	// Always re-read the tail (one load): a reader that needs more bytes
	// than the cached view shows (a partial frame) must see everything
	// already written, or it would wait for a wake-up that never comes.
	n, err := f.avail(int(f.size()) + 1)
	if err != nil || n == 0 {
		return nil, nil, err
	}
	pos := f.cHead & f.mask
	end := pos + n
	if end <= f.size() {
		return f.data[pos:end:end], nil, nil
	}
	return f.data[pos:f.size():f.size()], f.data[: end-f.size() : end-f.size()], nil
}

// Consume drops n bytes returned by Peek. n larger than what Peek returned is
// ErrInvalid (nothing consumed).
func (f *Fifo) Consume(n int) error {
	if f.cBad {
		return ErrCorrupt
	}
	if n < 0 || uint64(n) > f.cTailCache-f.cHead {
		return fmt.Errorf("%w: consume %d of %d readable", ErrInvalid, n, f.cTailCache-f.cHead)
	}
	if n == 0 {
		return nil
	}
	f.cHead += uint64(n)
	f.hdr.head.Store(f.cHead)
	return nil
}

// Len returns the readable bytes (re-reading the producer's index).
func (f *Fifo) Len() (int, error) {
	if f.cBad {
		return 0, ErrCorrupt
	}
	if err := f.refreshTail(); err != nil {
		return 0, err
	}
	return int(f.cTailCache - f.cHead), nil
}

// WriteClosed reports whether the producer called CloseWrite (consumer
// view). Data may still be readable: Read/Peek return io.EOF once drained.
func (f *Fifo) WriteClosed() bool { return f.hdr.eof.Load() != 0 }

// CloseRead tells the producer the consumer is gone (a hint; see ReadClosed).
func (f *Fifo) CloseRead() { f.hdr.rclosed.Store(1) }

// ---- wake-up flags ----
//
// See the package documentation for the protocol and why it cannot lose a
// wake-up.

// SetReaderWaiting announces that the consumer is about to block.
func (f *Fifo) SetReaderWaiting() { f.hdr.rwait.Store(1) }

// ClearReaderWaiting clears the flag and reports whether it was set.
func (f *Fifo) ClearReaderWaiting() bool { return f.hdr.rwait.Swap(0) != 0 }

// ReaderWaiting reports whether the consumer announced it is blocking.
func (f *Fifo) ReaderWaiting() bool { return f.hdr.rwait.Load() != 0 }

// TakeReaderWaiting is the producer's check after publishing data: true at
// most once per SetReaderWaiting, and then the caller must signal the
// consumer. The plain load first keeps the common case (nobody waiting)
// free of a locked read-modify-write on the shared line.
func (f *Fifo) TakeReaderWaiting() bool {
	return f.hdr.rwait.Load() != 0 && f.hdr.rwait.Swap(0) != 0
}

// SetWriterWaiting announces that the producer is about to block on a full fifo.
func (f *Fifo) SetWriterWaiting() { f.hdr.wwait.Store(1) }

// ClearWriterWaiting clears the flag and reports whether it was set.
func (f *Fifo) ClearWriterWaiting() bool { return f.hdr.wwait.Swap(0) != 0 }

// WriterWaiting reports whether the producer announced it is blocking.
func (f *Fifo) WriterWaiting() bool { return f.hdr.wwait.Load() != 0 }

// TakeWriterWaiting is the consumer's check after consuming: true at most
// once per SetWriterWaiting, and then the caller must signal the producer.
func (f *Fifo) TakeWriterWaiting() bool {
	return f.hdr.wwait.Load() != 0 && f.hdr.wwait.Swap(0) != 0
}
