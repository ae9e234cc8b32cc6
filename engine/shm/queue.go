package shm

import (
	"fmt"
	"io"
	"runtime"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// MsgSize is the largest message a Queue slot holds (engine/wire encoded).
const MsgSize = 256

// Queue layout (offsets from its 64-byte aligned base):
//
//	+0    tail     (producer line) messages ever sent
//	+64   head     (consumer line) messages ever received
//	+128  magic    (shared line)   queueMagic
//	+136  slots                    informational only
//	+144  rwait                    receiver waiting: set by the receiver, swapped to 0 by the sender
//	+192  slot i at 192 + i*slotStride: an 8-byte length word, then MsgSize bytes
const (
	qOffTail     = 0
	qOffHead     = 64
	qOffMagic    = 128
	qOffSlots    = 136
	qOffRWait    = 144
	qHeaderSize  = 192
	slotStride   = 8 + MsgSize
	queueMagic   = 0x3130_7571_6d67_7368 // "hsgmqu01" little-endian
	MaxQueueSlot = 1 << 20
)

// DefaultSpin is how long Recv polls an empty queue before sleeping on the
// eventfd. Short: the machine has 2 cores and a spinning receiver steals
// the sender's CPU.
var DefaultSpin = 20 * time.Microsecond

// QueueFootprint returns the bytes a queue of the given number of slots (a
// power of two, 1..MaxQueueSlot) occupies, rounded up to Align; -1 if invalid.
func QueueFootprint(slots int) int {
	if !validCap(slots, 1, MaxQueueSlot) {
		return -1
	}
	return (qHeaderSize + slots*slotStride + Align - 1) &^ (Align - 1)
}

// Queue is a single-sender/single-receiver ring of fixed-size message slots
// in a segment, with an eventfd for wake-ups. Send must be called by one
// goroutine at a time, TryRecv/Recv by one goroutine at a time. The same
// trust rules as Fifo apply; a length word larger than MsgSize is ErrCorrupt.
type Queue struct {
	data  []byte // the slots
	mask  uint64
	slots uint64
	efd   int

	tailW, headW, rwaitW *atomic.Uint64

	// Spin is how long Recv polls before sleeping (DefaultSpin at open).
	Spin time.Duration

	interrupted atomic.Bool

	_          [64]byte
	sTail      uint64
	sHeadCache uint64
	sErr       error

	_          [64]byte
	rHead      uint64
	rTailCache uint64
	rErr       error
	_          [64]byte
}

// InitQueue formats a queue at off (64-byte aligned) in seg. efd is the
// receiver's eventfd (see NewEventFD); it is switched to non-blocking mode.
func InitQueue(seg *Segment, off, slots int, efd int) (*Queue, error) {
	q, err := mapQueue(seg, off, slots, efd)
	if err != nil {
		return nil, err
	}
	q.tailW.Store(0)
	q.headW.Store(0)
	q.rwaitW.Store(0)
	b := seg.Bytes()
	w, _ := wordAt(b, off+qOffSlots)
	w.Store(uint64(slots))
	w, _ = wordAt(b, off+qOffMagic)
	w.Store(queueMagic)
	return q, nil
}

// OpenQueue attaches to a queue formatted by InitQueue; off and slots come
// from a trusted source and must match the header.
func OpenQueue(seg *Segment, off, slots int, efd int) (*Queue, error) {
	q, err := mapQueue(seg, off, slots, efd)
	if err != nil {
		return nil, err
	}
	b := seg.Bytes()
	mw, _ := wordAt(b, off+qOffMagic)
	sw, _ := wordAt(b, off+qOffSlots)
	if mw.Load() != queueMagic || sw.Load() != uint64(slots) {
		return nil, fmt.Errorf("%w: queue header at %d", ErrCorrupt, off)
	}
	h, t := q.headW.Load(), q.tailW.Load()
	if t-h > q.slots {
		return nil, fmt.Errorf("%w: queue indices at %d", ErrCorrupt, off)
	}
	q.sTail, q.sHeadCache = t, h
	q.rHead, q.rTailCache = h, t
	return q, nil
}

func mapQueue(seg *Segment, off, slots int, efd int) (*Queue, error) {
	if seg == nil {
		return nil, fmt.Errorf("%w: nil segment", ErrInvalid)
	}
	b := seg.Bytes()
	if b == nil {
		return nil, ErrClosed
	}
	fp := QueueFootprint(slots)
	if fp < 0 {
		return nil, fmt.Errorf("%w: queue slots %d (power of two in [1, %d])", ErrInvalid, slots, MaxQueueSlot)
	}
	if off < 0 || off%Align != 0 || off > len(b) || fp > len(b)-off || !addrAligned(b, off, Align) {
		return nil, fmt.Errorf("%w: queue at offset %d size %d in segment of %d", ErrInvalid, off, fp, len(b))
	}
	if efd >= 0 {
		if err := unix.SetNonblock(efd, true); err != nil {
			return nil, fmt.Errorf("shm: eventfd %d: %w", efd, err)
		}
	}
	q := &Queue{
		data:  b[off+qHeaderSize : off+fp : off+fp],
		mask:  uint64(slots) - 1,
		slots: uint64(slots),
		efd:   efd,
		Spin:  DefaultSpin,
	}
	q.tailW, _ = wordAt(b, off+qOffTail)
	q.headW, _ = wordAt(b, off+qOffHead)
	q.rwaitW, _ = wordAt(b, off+qOffRWait)
	return q, nil
}

// Slots returns the number of slots.
func (q *Queue) Slots() int { return int(q.slots) }

// EventFD returns the receiver's eventfd given at Init/Open.
func (q *Queue) EventFD() int { return q.efd }

// slotLen returns the length word of slot i (i already masked: in bounds).
func (q *Queue) slotLen(i uint64) *atomic.Uint64 {
	w, _ := wordAt(q.data, int(i*slotStride))
	return w
}

// Send copies msg (1..MsgSize bytes) into the next slot, publishes it and,
// if the receiver announced it is sleeping, signals its eventfd. Full:
// ErrQueueFull, nothing queued. An error from the eventfd write (only a bad
// fd causes one) is returned although the message was queued.
func (q *Queue) Send(msg []byte) error {
	if q.sErr != nil {
		return q.sErr
	}
	if len(msg) > MsgSize {
		return ErrMsgSize
	}
	if len(msg) == 0 {
		return fmt.Errorf("%w: empty message", ErrInvalid)
	}
	if q.sTail-q.sHeadCache >= q.slots {
		h := q.headW.Load()
		if h-q.sHeadCache > q.sTail-q.sHeadCache {
			q.sErr = ErrCorrupt
			return ErrCorrupt
		}
		q.sHeadCache = h
		if q.sTail-h >= q.slots {
			return ErrQueueFull
		}
	}
	i := q.sTail & q.mask
	q.slotLen(i).Store(uint64(len(msg)))
	copy(q.data[i*slotStride+8:], msg)
	q.sTail++
	q.tailW.Store(q.sTail)
	if q.rwaitW.Load() != 0 && q.rwaitW.Swap(0) != 0 {
		return Signal(q.efd)
	}
	return nil
}

// TryRecv copies the next message into buf and consumes it. Empty: (0, nil).
// A message longer than buf: io.ErrShortBuffer and nothing consumed (use
// MsgSize buffers). A zero length word (only a hostile peer writes one) is
// ErrCorrupt.
func (q *Queue) TryRecv(buf []byte) (int, error) {
	if q.rErr != nil {
		return 0, q.rErr
	}
	if q.rTailCache == q.rHead {
		t := q.tailW.Load()
		d := t - q.rHead
		if d > q.slots || d < q.rTailCache-q.rHead {
			q.rErr = ErrCorrupt
			return 0, ErrCorrupt
		}
		q.rTailCache = t
		if d == 0 {
			return 0, nil
		}
	}
	i := q.rHead & q.mask
	n := q.slotLen(i).Load()
	if n > MsgSize || n == 0 {
		q.rErr = ErrCorrupt
		return 0, ErrCorrupt
	}
	if n > uint64(len(buf)) {
		return 0, io.ErrShortBuffer
	}
	copy(buf[:n], q.data[i*slotStride+8:])
	q.rHead++
	q.headW.Store(q.rHead)
	return int(n), nil
}

// Recv returns the next message, waiting until the deadline (zero: none).
// It polls for Spin, then sets the waiting flag, re-checks, and blocks in
// poll(2) on the eventfd (see Fifo's wake-up protocol for the ordering
// argument). The thread blocks, not the netpoller. Returns ErrDeadline on
// timeout and ErrInterrupted after Wake.
func (q *Queue) Recv(buf []byte, deadline time.Time) (int, error) {
	for {
		if q.interrupted.Swap(false) {
			return 0, ErrInterrupted
		}
		if n, err := q.TryRecv(buf); n > 0 || err != nil {
			return n, err
		}
		if q.Spin > 0 && (deadline.IsZero() || time.Now().Before(deadline)) {
			start := time.Now()
			for i := 0; ; i++ {
				if n, err := q.TryRecv(buf); n > 0 || err != nil {
					return n, err
				}
				if i&15 == 15 {
					if time.Since(start) > q.Spin || q.interrupted.Load() {
						break
					}
					runtime.Gosched()
				}
			}
		}
		q.rwaitW.Store(1)
		if n, err := q.TryRecv(buf); n > 0 || err != nil {
			q.rwaitW.Store(0)
			return n, err
		}
		if q.interrupted.Swap(false) {
			q.rwaitW.Store(0)
			return 0, ErrInterrupted
		}
		if err := WaitFD(q.efd, deadline); err != nil {
			q.rwaitW.Store(0)
			if err == ErrDeadline {
				// a message may have arrived right at the deadline
				if n, err2 := q.TryRecv(buf); n > 0 || err2 != nil {
					return n, err2
				}
			}
			return 0, err
		}
	}
}

// Wake makes a blocked (or the next) Recv on this handle return
// ErrInterrupted. For shutting a receiver down from the same process.
func (q *Queue) Wake() error {
	q.interrupted.Store(true)
	return Signal(q.efd)
}
