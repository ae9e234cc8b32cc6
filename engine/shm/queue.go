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
// in a segment, with a doorbell for wake-ups: each side opens it with its own
// end of the doorbell (NewDoorbell); Send rings it, Recv waits on it. Send
// must be called by one goroutine at a time, TryRecv/Recv by one goroutine at
// a time. The same trust rules as Fifo apply; a length word larger than
// MsgSize is ErrCorrupt.
type Queue struct {
	data  []byte // the slots
	mask  uint64
	slots uint64
	bell  int // this side's doorbell end; -1: none
	intr  int // a process-private eventfd for Wake (EnableWake); -1: none

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

// InitQueue formats a queue at off (64-byte aligned) in seg. bell is this
// side's end of the doorbell shared with the other side (-1: none; then the
// peer is never woken and Recv only spins and sleeps on Wake). The caller
// keeps owning bell.
func InitQueue(seg *Segment, off, slots int, bell int) (*Queue, error) {
	q, err := mapQueue(seg, off, slots, bell)
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
func OpenQueue(seg *Segment, off, slots int, bell int) (*Queue, error) {
	q, err := mapQueue(seg, off, slots, bell)
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

func mapQueue(seg *Segment, off, slots int, bell int) (*Queue, error) {
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
	q := &Queue{
		data:  b[off+qHeaderSize : off+fp : off+fp],
		mask:  uint64(slots) - 1,
		slots: uint64(slots),
		bell:  bell,
		intr:  -1,
		Spin:  DefaultSpin,
	}
	q.tailW, _ = wordAt(b, off+qOffTail)
	q.headW, _ = wordAt(b, off+qOffHead)
	q.rwaitW, _ = wordAt(b, off+qOffRWait)
	return q, nil
}

// Slots returns the number of slots.
func (q *Queue) Slots() int { return int(q.slots) }

// Bell returns the doorbell end given at Init/Open.
func (q *Queue) Bell() int { return q.bell }

// EnableWake makes Wake usable: it creates an eventfd private to this
// process that Recv waits on besides the doorbell (the doorbell cannot be
// rung from our own end). Call it before the first Recv; Close releases it.
func (q *Queue) EnableWake() error {
	if q.intr >= 0 {
		return nil
	}
	fd, err := NewEventFD()
	if err != nil {
		return err
	}
	q.intr = fd
	return nil
}

// Close releases what EnableWake created (not the doorbell, which the
// caller owns). The queue must not be used afterwards.
func (q *Queue) Close() {
	if q.intr >= 0 {
		unix.Close(q.intr)
		q.intr = -1
	}
}

// slotLen returns the length word of slot i (i already masked: in bounds).
func (q *Queue) slotLen(i uint64) *atomic.Uint64 {
	w, _ := wordAt(q.data, int(i*slotStride))
	return w
}

// Send copies msg (1..MsgSize bytes) into the next slot, publishes it and,
// if the receiver announced it is sleeping, rings the doorbell (which never
// blocks). Full: ErrQueueFull, nothing queued. An error from the ring (a
// closed or bad doorbell) is returned although the message was queued.
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
	if q.rwaitW.Load() != 0 && q.rwaitW.Swap(0) != 0 && q.bell >= 0 {
		return Ring(q.bell)
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
// poll(2) on its doorbell end (and the Wake eventfd; see Fifo's wake-up
// protocol for the ordering argument). The thread blocks, not the
// netpoller. Returns ErrDeadline on timeout and ErrInterrupted after Wake.
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
		if err := q.wait(deadline); err != nil {
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

// wait sleeps on the doorbell and the Wake eventfd.
func (q *Queue) wait(deadline time.Time) error {
	var fds [2]unix.PollFd
	n := 0
	if q.bell >= 0 {
		fds[n] = unix.PollFd{Fd: int32(q.bell), Events: unix.POLLIN}
		n++
	}
	if q.intr >= 0 {
		fds[n] = unix.PollFd{Fd: int32(q.intr), Events: unix.POLLIN}
		n++
	}
	if n == 0 {
		// nothing can wake us: sleep until the deadline, then look again
		d := time.Millisecond
		if !deadline.IsZero() {
			d = min(d, time.Until(deadline))
		}
		time.Sleep(d)
		if !deadline.IsZero() && !time.Now().Before(deadline) {
			return ErrDeadline
		}
		return nil
	}
	return waitFDs(fds[:n], deadline, func(fd int) error {
		if fd == q.intr {
			return drainFD(fd)
		}
		return DrainBell(fd)
	})
}

// Wake makes a blocked (or the next) Recv on this handle return
// ErrInterrupted. For shutting a receiver down from the same process; needs
// EnableWake.
func (q *Queue) Wake() error {
	q.interrupted.Store(true)
	if q.intr < 0 {
		return fmt.Errorf("%w: Wake without EnableWake", ErrInvalid)
	}
	return Signal(q.intr)
}

// Pending reports, without consuming anything, whether TryRecv would return
// a message or an error: for a receiver that polls many queues and sleeps on
// their doorbells itself (an event loop) instead of calling Recv.
func (q *Queue) Pending() bool {
	return q.rErr != nil || q.rHead != q.rTailCache || q.tailW.Load() != q.rHead
}

// ArmWake sets the receiver's waiting flag: the sender's next Send rings
// the doorbell. A receiver that sleeps on the doorbell itself calls it,
// then re-checks Pending before sleeping (a message sent before the flag
// was visible rang nothing). Recv does this on its own.
func (q *Queue) ArmWake() { q.rwaitW.Store(1) }

// DisarmWake clears the waiting flag again: the receiver polls the queue
// and needs no rings meanwhile.
func (q *Queue) DisarmWake() { q.rwaitW.Store(0) }
